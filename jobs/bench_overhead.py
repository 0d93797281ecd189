"""Each Ray layer against its bare engine (urg_ray/overhead.py): `python jobs/benchmark.py overhead`.

    python jobs/benchmark.py overhead --out docs/results                    # all four pairs
    python jobs/benchmark.py overhead --pairs serving,scoring --out docs/results

Writes OUT/performance.{json,md} (urg_ray/overhead_report.py); pairs not run keep their last figures.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # measure this checkout, not an installed copy
from _cli import bad_input  # noqa: E402


class ServeLoad:
    """jobs/serve_benchmark.py against serve/app.yaml (canned candidates), started at the first call.

    `urg` overrides the YAML's `urg` args (e.g. `num_threads`; reported with the figures)."""

    def __init__(self, serve_config: str = "serve/app.yaml", max_tokens: int = 16, urg: dict | None = None):
        import serve_benchmark

        self.bench, self.serve_config, self.max_tokens, self.url = serve_benchmark, Path(serve_config), max_tokens, None
        self.urg = dict(urg or {})

    def config(self) -> dict:
        """serve_config with `urg` overridden: what the app is started with."""
        import yaml

        config = yaml.safe_load(self.serve_config.read_text())
        config["applications"][0]["args"].setdefault("urg", {}).update(self.urg)
        return config

    def served_urg(self) -> str:
        """The URG the app serves (its checkpoint, fallback checkpoint or preset, as build_app picks
        it: serve.config.served_urg, then the ranker's fallback preset), for the in-process side."""
        from serve.config import URGArgs, served_urg
        from urg_ray.presets import resolve_urg_source

        urg, _ = served_urg(URGArgs.model_validate(self.config()["applications"][0]["args"]["urg"]))
        return resolve_urg_source(urg.model, urg.fallback_preset)

    def inputs(self, n: int) -> tuple[list[str], list[list[str]]]:
        """The questions and candidate lists serve_benchmark sends, for the in-process side."""
        bodies = [self.bench._body(self.bench.LoadConfig(endpoint="rank_and_fuse"), i)[1] for i in range(n)]
        return [b["inputs"][0] for b in bodies], [b["candidates"][0] for b in bodies]

    def __call__(self, clients: int, requests: int) -> dict:
        import asyncio

        from urg_ray.overhead import QUIET, wait_for_quiet

        if self.url is None:
            import yaml

            with tempfile.NamedTemporaryFile("w", suffix=".yaml") as f:
                yaml.safe_dump(self.config(), f)
                f.flush()
                self.url = self.bench._self_host(Path(f.name), canned=True)
        wait_for_quiet(QUIET["max_other_load"] + 0.1, QUIET["max_wait_s"])  # Serve's own idle processes count too
        cfg = self.bench.LoadConfig(clients=clients, requests=requests, endpoint="rank_and_fuse",
                                    max_tokens=self.max_tokens)
        return asyncio.run(self.bench.run_load(self.url, cfg))

    def close(self) -> None:
        if self.url is not None:
            import ray
            from ray import serve

            serve.shutdown()
            ray.shutdown()


def overhead_main(argv: list[str]) -> int:
    from urg_ray import overhead, overhead_report

    parser = argparse.ArgumentParser(prog="benchmark.py overhead", description=overhead.__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/results",
                        help="writes OUT/performance.{json,md} (default: docs/results)")
    parser.add_argument("--pairs", default=",".join(overhead_report.PAIRS),
                        help=f"comma-separated subset of {','.join(overhead_report.PAIRS)}; "
                             "the others keep their last figures")
    parser.add_argument("--tiny", action="store_true", help="a few steps/prompts/requests per pair: checks the harness")
    parser.add_argument("--note", action="append", default=[], help="a paragraph for performance.md (repeatable)")
    args = parser.parse_args(argv)
    pairs = [p.strip() for p in args.pairs.split(",") if p.strip()]
    unknown = sorted(set(pairs) - set(overhead_report.PAIRS))
    if unknown:
        return bad_input(ValueError(f"--pairs: unknown {', '.join(unknown)} "
                                    f"(known: {', '.join(overhead_report.PAIRS)})"))
    size = dict(training={"steps": 6, "log_every": 2}, generation={"n_prompts": 8},
                serving={"repeats": 8, "clients": 4},
                scoring={"n_records": 16, "n_candidates": 4}) if args.tiny else {}
    results = {}
    for pair in pairs:
        print(f"[overhead] {pair}: load average {os.getloadavg()}", flush=True)
        if pair == "serving":
            load = ServeLoad()
            try:
                questions, candidates = load.inputs(24)
                results[pair] = overhead.serving_pair(load, questions, candidates, max_new_tokens=load.max_tokens,
                                                      ranker=load.urg, model=load.served_urg(),
                                                      **size.get(pair, {}))
            finally:
                load.close()
        else:
            results[pair] = getattr(overhead, f"{pair}_pair")(**size.get(pair, {}))
        print(f"[overhead] {pair}: " + json.dumps({k: v for k, v in results[pair].items()
                                                    if k in overhead_report.GOALS[pair]}), flush=True)
    report = overhead_report.write_report(args.out, results, args.note)
    print(overhead_report.markdown(report))
    print(f"[overhead] wrote {Path(args.out) / 'performance.json'}, {Path(args.out) / 'performance.md'}")
    return 0
