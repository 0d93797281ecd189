"""Evaluate URG checkpoints and baselines on a MixInstruct-format test file: one table.

    python jobs/evaluate.py --urg URG=outputs/train/model --out outputs/eval
    python jobs/evaluate.py --urg URG=a/model --urg "URG w/o ERM"=b/model \\
        --ranker PairRanker=c/model --ranker SimCLS=d/model --fuser GenFuser=e/model --out docs/results

Rows: each candidate model, random and oracle selection, each ranker's top-1 pick (with rank
correlations), URG fusion, and LLM-Blender (the first --ranker's top-k fused by each --fuser).
`--robustness` adds URG Table 5 for every URG and fuser given. Writes DIR/eval.json,
DIR/eval.md, DIR/eval.png (and DIR/robustness.png).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _cli import INPUT_ERRORS, bad_input, job_config, job_parser  # noqa: E402

from urg_ray.config import ConfigError  # noqa: E402
from urg_ray.data import drop_failed, read_records  # noqa: E402


def named_path(value: str) -> tuple[str, str]:
    name, sep, path = value.partition("=")
    if not sep or not name or not path:
        raise ValueError(f"expected NAME=FOLDER, got {value!r}")
    return name, path


def main(argv: list[str] | None = None) -> int:
    parser = job_parser(__doc__.splitlines()[0], default_out="outputs/eval")
    parser.add_argument("--urg", action="append", default=[], metavar="NAME=FOLDER", help="a URG checkpoint")
    parser.add_argument("--ranker", action="append", default=[], metavar="NAME=FOLDER",
                        help="a baseline ranker (PairRanker, SummaReranker, SimCLS) folder")
    parser.add_argument("--fuser", action="append", default=[], metavar="NAME=FOLDER", help="a GenFuser folder")
    parser.add_argument("--test-file", help="default: data.test_file of the config")
    parser.add_argument("--max-records", type=int, default=None)
    parser.add_argument("--robustness", action="store_true", help="URG Table 5 for each URG and fuser")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    args = parser.parse_args(argv)
    try:
        cfg = job_config(args)
        named = {kind: [named_path(v) for v in getattr(args, kind)] for kind in ("urg", "ranker", "fuser")}
        for name, path in [p for group in named.values() for p in group]:
            if not Path(path).is_dir():
                raise ConfigError(f"{name}={path}: no such folder")
        records = drop_failed(read_records(args.test_file or cfg.data.test_file))[0][: args.max_records]
    except (*INPUT_ERRORS, ValueError) as err:
        return bad_input(err)

    from urg_ray.baselines import rank_and_fuse
    from urg_ray.evaluation import Evaluator
    from urg_ray.protocol import load_model

    print(f"[evaluate] scoring {len(records)} records x their candidates", flush=True)
    ev = Evaluator(records, cfg.data.score_keys)
    ev.add_reference_rows()
    generate = {"max_new_tokens": args.max_new_tokens}
    for name, path in named["urg"]:
        model = load_model(path)
        print(f"[evaluate] {name}: ranking and fusing", flush=True)
        ev.add_ranker(f"{name}-rank", model)
        ev.add_fusion(name, ev.fuse_in_batches(
            lambda q, c: [r.text for r in model.rank_and_fuse(q, c, **generate)], ev.candidates))
        if args.robustness:
            ev.add_robustness(name, lambda q, c: model.fuse(q, c, **generate))
    rankers = [(name, load_model(path)) for name, path in named["ranker"]]
    for name, ranker in rankers:
        print(f"[evaluate] {name}: ranking", flush=True)
        ev.add_ranker(name, ranker)
    for name, path in named["fuser"]:
        fuser = load_model(path)
        if rankers:
            ranker_name, ranker = rankers[0]
            print(f"[evaluate] LLM-Blender ({ranker_name} + {name}): ranking and fusing", flush=True)
            ev.add_fusion(f"{ranker_name} + {name}", ev.fuse_in_batches(
                lambda q, c: [r.text for r in rank_and_fuse(ranker, fuser, q, c, **generate)], ev.candidates))
        if args.robustness:
            ev.add_robustness(name, lambda q, c: fuser.fuse(q, c, **generate))
    for path in ev.write(args.out):
        print(f"[evaluate] wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
