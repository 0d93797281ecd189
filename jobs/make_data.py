"""Write a synthetic MixInstruct-format data set: train.jsonl, dev.jsonl, test.jsonl.

    python jobs/make_data.py [--out data/synthetic] [--n-train 12000 --n-dev 200 --n-test 200]
                             [--n-candidates 8] [--seed 0] [--set knob=value ...]

Knobs are the fields of `urg_ray.synthetic.SyntheticConfig` (e.g. `--set off_topic_rate=0.1`,
`--set tasks=[define,list]`). Splits use seeds seed, seed+1, seed+2 and share one world.
Prints, per split, the headroom the data leaves: mean BLEU per model, of the best model, of the
oracle (best candidate per record), and of an ideal fusion of the true top-3's facts.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from urg_ray.config import DataConfig
from urg_ray.data import write_records
from urg_ray.metrics import bleu
from urg_ray.synthetic import MODELS, SyntheticConfig, SyntheticExample, ideal_fusion, make_examples


def parse_knobs(items: list[str]) -> dict[str, Any]:
    """`knob=value` pairs -> SyntheticConfig overrides; values parse as YAML, typed like the defaults."""
    defaults = SyntheticConfig()
    fields = {f.name for f in dataclasses.fields(SyntheticConfig)}
    knobs: dict[str, Any] = {}
    for item in items:
        key, sep, raw = (part.strip() for part in item.partition("="))
        if not sep or key not in fields:
            raise ValueError(f"--set {item!r}: expected knob=value with knob one of {sorted(fields)}")
        value, default = yaml.safe_load(raw), getattr(defaults, key)
        if isinstance(default, tuple):
            value = tuple(value) if isinstance(value, list) else (value,)
        elif isinstance(default, float) and type(value) is int:
            value = float(value)
        if type(value) is not type(default):
            raise ValueError(f"--set {item!r}: {key} needs a {type(default).__name__} (default {default!r})")
        knobs[key] = value
    return knobs


def headroom(examples: list[SyntheticExample], top_k: int = 3) -> dict[str, Any]:
    """Mean sentence BLEU per model, of the best model, of the oracle, and of ideal fusion of the
    true top-1 / top-k candidates' facts (reference wording, no model style)."""
    per_model: dict[str, list[float]] = {}
    for ex in examples:
        for cand in ex.record["candidates"]:
            per_model.setdefault(cand["model"], []).append(cand["scores"]["bleu"])
    means = {m: sum(v) / len(v) for m, v in per_model.items()}
    best = max(means, key=means.__getitem__)
    refs = [ex.record["output"] for ex in examples]
    oracle = [max(c["scores"]["bleu"] for c in ex.record["candidates"]) for ex in examples]

    def fused(k: int) -> float:
        return sum(bleu([ideal_fusion(ex, k) for ex in examples], refs)) / len(examples)

    return {"per_model": means, "best_model": best, "best_single": means[best],
            "oracle": sum(oracle) / len(oracle), "ideal_top1": fused(1), "ideal_topk": fused(top_k)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="data/synthetic", help="output folder")
    defaults = DataConfig()  # the same files `jobs/train.py` makes on first use
    parser.add_argument("--n-train", type=int, default=defaults.n_train)
    parser.add_argument("--n-dev", type=int, default=defaults.n_dev)
    parser.add_argument("--n-test", type=int, default=defaults.n_test)
    parser.add_argument("--n-candidates", type=int, default=8, help=f"1..{len(MODELS)}")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", dest="knobs", action="append", default=[], metavar="KNOB=VALUE",
                        help="override a SyntheticConfig field; repeatable")
    args = parser.parse_args(argv)
    try:
        config = SyntheticConfig(**parse_knobs(args.knobs))
    except (ValueError, TypeError) as err:
        print(f"make_data: {err}", file=sys.stderr)
        return 2

    out = Path(args.out)
    for offset, (split, n) in enumerate([("train", args.n_train), ("dev", args.n_dev), ("test", args.n_test)]):
        start = time.perf_counter()
        examples = make_examples(n, args.n_candidates, seed=args.seed + offset, config=config,
                                 id_prefix=f"synthetic/{split}")
        count = write_records(out / f"{split}.jsonl", [ex.record for ex in examples])
        print(f"wrote {out / f'{split}.jsonl'}: {count} records x {args.n_candidates} candidates "
              f"(seed {args.seed + offset}, {time.perf_counter() - start:.1f}s)")
        if not examples:
            continue
        h = headroom(examples)
        per_model = ", ".join(f"{m} {v:.1f}" for m, v in h["per_model"].items())
        print(f"  {split} BLEU: per model [{per_model}]; best single {h['best_single']:.1f} ({h['best_model']}); "
              f"oracle {h['oracle']:.1f}; ideal fusion of true top-3 facts {h['ideal_topk']:.1f} "
              f"(of top-1 facts {h['ideal_top1']:.1f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
