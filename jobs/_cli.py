"""Shared command line of every job: --config FILE, repeated --set key=value, --out DIR."""

from __future__ import annotations

import argparse


def job_parser(description: str, default_out: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", help="YAML config (default: the built-in CPU defaults, as jobs/configs/tiny.yaml)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config field, e.g. --set train.lr=1e-4 (repeatable)")
    parser.add_argument("--out", default=default_out, help=f"output folder (default: {default_out})")
    return parser
