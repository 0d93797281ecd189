"""What every job shares: the command line (--config FILE, repeated --set key=value, --out DIR,
--verbose, NAME=VALUE flags), bad input ending the job with a one-line error and exit status 2,
Ray start-up, and generation as the generate and best-of-n jobs run it."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from urg_ray.config import ConfigError, JobConfig, load_config
from urg_ray.data import DataError
from urg_ray.ray_setup import quiet_init_kwargs

BAD_INPUT = 2  # exit status: the config or an input file is wrong; nothing was started
INPUT_ERRORS = (ConfigError, DataError)
LOCAL_LOGS = "/tmp/ray/session_latest/logs"  # Ray's default temp dir


def job_parser(description: str, default_out: str | None, out_help: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", help="YAML config (default: the built-in CPU defaults, as jobs/configs/tiny.yaml)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config field, e.g. --set train.lr=1e-4 (repeatable)")
    parser.add_argument("--out", default=default_out, help=out_help or f"output folder (default: {default_out})")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="Ray's own logs and progress bars on the console too (they are always in Ray's log files)")
    return parser


def bad_input(err: Exception) -> int:
    print(f"error: {err}", file=sys.stderr)
    return BAD_INPUT


def name_value(value: str, flag: str, folder: bool = False) -> tuple[str, str]:
    """`NAME=FOLDER` (with `folder`: the folder must exist) or `A=B` of a repeatable `flag`, split in two;
    ValueError naming the flag otherwise."""
    name, sep, rest = value.partition("=")
    if not sep or not name or not rest:
        raise ValueError(f"{flag}: expected {'NAME=FOLDER' if folder else 'A=B'}, got {value!r}")
    if folder and not Path(rest).is_dir():
        raise ValueError(f"{flag} {value}: no such folder")
    return name, rest


def job_config(args: argparse.Namespace, schema: type[BaseModel] = JobConfig) -> Any:
    """`--config` with the `--set` overrides, validated (raises ConfigError naming file and key)."""
    return load_config(args.config, args.set, schema=schema)


def load_prompts_checked(cfg: Any) -> tuple[list, list[str]]:
    """The generation config's prompts, its engines checked first; a warning printed per line skipped.
    Raises DataError (no engine package, no valid prompt), so a job fails before Ray starts."""
    from urg_ray.generate import check_engines, load_prompts

    check_engines(cfg)
    prompts, problems = load_prompts(cfg)
    for problem in problems:
        print(f"warning: skipped prompt {problem}", file=sys.stderr)
    return prompts, problems


def start_ray(verbose: bool = False, num_cpus: int | None = None) -> None:
    """Connect to RAY_ADDRESS (as inside `ray job submit`), else start a local Ray with `num_cpus`.
    Unless `verbose`, Ray's processes log warnings only; their full logs stay in Ray's log folder."""
    import ray

    if ray.is_initialized():
        return
    address = os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, **quiet_init_kwargs(verbose, local=False))
        return
    # the dashboard serves the state API that Ray Train's placement-group cleaner polls
    ray.init(address="local", num_cpus=num_cpus or os.cpu_count() or 1, **quiet_init_kwargs(verbose))
    print(f"[ray] local Ray started; its logs: {LOCAL_LOGS}", flush=True)


def run_generation(job: str, cfg: Any, out: str, prompts: list, problems: list[str], todo: int,
                   verbose: bool = False) -> dict | int:
    """`urg_ray.generate.generate` as a job runs it: the library's progress printed as ``[job]`` lines,
    Ray started only when `todo` candidates are missing. Returns the summary, or the exit status
    with the error printed: 2 when another run holds the output, 1 for an OSError (a full disk:
    the journal keeps what was generated, a rerun finishes)."""
    from urg_ray.durable import Locked
    from urg_ray.generate import generate

    logging.basicConfig(level=logging.INFO, format=f"[{job}] %(message)s", stream=sys.stdout)
    if todo:
        start_ray(verbose)
    try:
        return generate(cfg, out, prompts, problems)
    except Locked as err:
        return bad_input(err)
    except OSError as err:
        print(f"error: {err}; rerun to finish (nothing already generated is generated again)", file=sys.stderr)
        return 1
