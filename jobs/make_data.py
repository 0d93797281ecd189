"""Write a synthetic MixInstruct-format data set: the train, dev and test files a job config reads.

    python jobs/make_data.py                                  # data/synthetic/{train,dev,test}.jsonl
    python jobs/make_data.py --config jobs/configs/study.yaml --set data.n_train=16000
    python jobs/make_data.py --out /tmp/mine --knob off_topic_rate=0.1 --knob tasks=[define,list]
    python jobs/make_data.py --config jobs/configs/study.yaml --synthetic jobs/configs/study-synthetic.yaml

Sizes, candidates per record and seed come from the config's `data` section (data.n_train,
n_dev, n_test, n_candidates, seed); the files are its data.train_file, dev_file and test_file,
or train/dev/test.jsonl in `--out`. Knobs are the fields of `urg_ray.synthetic.SyntheticConfig`,
from a YAML file (`--synthetic`) and/or `--knob` (which wins). Splits use seeds seed, seed+1,
seed+2 and share one world. Beside each split, SPLIT.facts.jsonl holds each record's latent facts
(`urg_ray.synthetic_facts.write_facts`) and SPLIT.world.yaml its SyntheticConfig (`write_world_config`),
which `jobs/evaluate.py --bounds` reads: the facts, in the world they were made in.
Prints, per split, the headroom the data leaves: mean BLEU per model, of the best model, of the
oracle (best candidate per record), of the best candidate without its style, and of an ideal
fusion of the true top-1 / top-3's correct facts.
"""

from __future__ import annotations

import dataclasses
import itertools
import sys
import time
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _cli import INPUT_ERRORS, bad_input, job_config, job_parser  # noqa: E402

from urg_ray.data import write_records  # noqa: E402
from urg_ray.metrics import bleu  # noqa: E402
from urg_ray.synthetic import (  # noqa: E402
    MODELS, SyntheticConfig, SyntheticExample, ideal_fusion, knobs_file, make_examples, strip_style, typed_knob)
from urg_ray.synthetic_facts import facts_path, world_path, write_facts, write_world_config  # noqa: E402

KNOBS = {f.name for f in dataclasses.fields(SyntheticConfig)}


def parse_knobs(items: list[str]) -> dict[str, Any]:
    """`knob=value` pairs -> SyntheticConfig overrides; values parse as YAML, typed like the defaults."""
    knobs: dict[str, Any] = {}
    for item in items:
        key, sep, raw = (part.strip() for part in item.partition("="))
        if not sep:
            raise ValueError(f"--knob {item!r}: expected knob=value with knob one of {sorted(KNOBS)}")
        knobs[key] = typed_knob(key, yaml.safe_load(raw), f"--knob {item!r}")
    return knobs


def headroom(examples: list[SyntheticExample], top_k: int = 3) -> dict[str, Any]:
    """Mean sentence BLEU per model, of the best model, of the oracle, of the best candidate
    without its style (`stripped_oracle`), and of ideal fusion of the true top-1 / top-k
    candidates' correct facts (reference wording, no model style); `max_share`: the mean over
    records of the largest share of the reference's facts one candidate states correctly."""
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

    n = [len(ex.record["candidates"]) for ex in examples]
    stripped = bleu([strip_style(ex, i) for ex in examples for i in range(len(ex.record["candidates"]))],
                    [ref for ref, k in zip(refs, n) for _ in range(k)])
    starts = [0, *itertools.accumulate(n)]
    shares = [max(len(set(facts) & set(ex.reference_facts)) for facts in ex.candidate_facts) / len(ex.reference_facts)
              for ex in examples]
    return {"per_model": means, "best_model": best, "best_single": means[best],
            "oracle": sum(oracle) / len(oracle),
            "stripped_oracle": sum(max(stripped[s:s + k]) for s, k in zip(starts, n)) / len(examples),
            "ideal_top1": fused(1), "ideal_topk": fused(top_k), "max_share": sum(shares) / len(shares)}


def main(argv: list[str] | None = None) -> int:
    parser = job_parser(__doc__.split("\n")[0], default_out=None,
                        out_help="write train/dev/test.jsonl here (default: the config's data.*_file paths)")
    parser.add_argument("--synthetic", metavar="YAML", help="SyntheticConfig fields from a YAML mapping "
                        "(e.g. jobs/configs/study-synthetic.yaml)")
    parser.add_argument("--knob", dest="knobs", action="append", default=[], metavar="KNOB=VALUE",
                        help="override a SyntheticConfig field; repeatable")
    args = parser.parse_args(argv)
    try:
        data = job_config(args).data
        if not 1 <= data.n_candidates <= len(MODELS):
            raise ValueError(f"data.n_candidates: {data.n_candidates}, expected 1..{len(MODELS)}")
        config = SyntheticConfig(**(knobs_file(args.synthetic) if args.synthetic else {}) | parse_knobs(args.knobs))
    except (*INPUT_ERRORS, ValueError, TypeError) as err:
        return bad_input(err)

    files = {"train": data.train_file, "dev": data.dev_file, "test": data.test_file}
    if args.out:
        files = {split: Path(args.out) / f"{split}.jsonl" for split in files}
    sizes = {"train": data.n_train, "dev": data.n_dev, "test": data.n_test}
    for offset, (split, path) in enumerate(files.items()):
        start, seed = time.perf_counter(), data.seed + offset
        examples = make_examples(sizes[split], data.n_candidates, seed=seed, config=config,
                                 id_prefix=f"synthetic/{split}")
        count = write_records(path, [ex.record for ex in examples])
        facts = facts_path(path)
        world = world_path(facts)
        write_facts(facts, examples)
        write_world_config(world, config)
        print(f"wrote {path} (its facts {facts}, its world {world}): {count} records x "
              f"{data.n_candidates} candidates (seed {seed}, {time.perf_counter() - start:.1f}s)")
        if not examples:
            continue
        h = headroom(examples)
        per_model = ", ".join(f"{m} {v:.1f}" for m, v in h["per_model"].items())
        print(f"  {split} BLEU: per model [{per_model}]; best single {h['best_single']:.1f} ({h['best_model']}); "
              f"oracle {h['oracle']:.1f} (style-stripped {h['stripped_oracle']:.1f}); ideal fusion of true top-3 "
              f"facts {h['ideal_topk']:.1f} (of top-1 facts {h['ideal_top1']:.1f}); one candidate holds at most "
              f"{100 * h['max_share']:.0f}% of the reference's facts (mean over records)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
