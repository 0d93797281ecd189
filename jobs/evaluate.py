"""Evaluate URG checkpoints and baselines on a MixInstruct-format test file: one table.

    python jobs/evaluate.py --urg URG=outputs/train/model --out outputs/eval
    python jobs/evaluate.py --urg URG=a/model --urg "URG w/o ERM"=b/model \\
        --ranker PairRanker=c/model --ranker SimCLS=d/model --fuser GenFuser=e/model --out docs/results

Rows: each candidate model, random and oracle selection, each ranker's top-1 pick (with rank
correlations), URG fusion, and NAME-Gen for every --ranker: its top-k fused by each --fuser
(PairRanker-Gen is LLM-Blender). `--robustness` adds URG Table 5 for every URG and fuser given.
Writes DIR/eval.json, DIR/eval.md, DIR/eval.png (and DIR/robustness.png).

The MixInstruct test split (5,000 records, with cmp_results: a GPT-Rank column) on a GPU, as the papers:

    python jobs/evaluate.py --config jobs/configs/flan-t5-xl.yaml --paper --device cuda --dtype bfloat16 \
        --urg URG-3B=runs/urg-flan-t5-xl/model --ranker PairRanker=runs/pair-ranker-deberta-v3-large/model \
        --ranker SummaReranker=... --ranker SimCLS=... --fuser GenFuser=runs/gen-fuser-flan-t5-xl/model --out eval
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _cli import INPUT_ERRORS, bad_input, job_config, job_parser  # noqa: E402

from urg_ray.config import ConfigError  # noqa: E402
from urg_ray.data import drop_failed, read_records  # noqa: E402

METRICS = ("bleu", "rouge1", "rouge2", "rougeL", "rougeLsum", "bertscore")  # urg_ray.evaluation.METRICS
PAPER_METRICS = ("bertscore", "bartscore", "bleu", "rougeL")  # urg_ray.evaluation.PAPER_METRICS
PAPER_BARTSCORE = "facebook/bart-large-cnn"  # BARTScore's (Yuan et al. 2021), as LLM-Blender scored MixInstruct
PAPER_BERTSCORE = "roberta-large"  # bert-score's default English model


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
    parser.add_argument("--metrics", default=",".join(METRICS), help=f"comma-separated (default {','.join(METRICS)}; "
                        f"also bartscore)")
    parser.add_argument("--paper", action="store_true", help=f"the papers' columns ({','.join(PAPER_METRICS)}) "
                        f"with {PAPER_BARTSCORE} and {PAPER_BERTSCORE}, unless given below")
    parser.add_argument("--bartscore-model", help="a seq2seq model for BARTScore (default: the tiny BART)")
    parser.add_argument("--bertscore-model", help="a BERTScore model (default: the packaged MiniLM)")
    parser.add_argument("--device", default="cpu", help="where the models run, e.g. cuda (default cpu)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                        help="model weights' dtype (bfloat16 on GPUs)")
    parser.add_argument("--batch-size", type=int, default=32, help="records per rank/fuse/metric call")
    args = parser.parse_args(argv)
    if args.paper:
        args.metrics = ",".join(PAPER_METRICS) if args.metrics == ",".join(METRICS) else args.metrics
        args.bartscore_model = args.bartscore_model or PAPER_BARTSCORE
        args.bertscore_model = args.bertscore_model or PAPER_BERTSCORE
    try:
        cfg = job_config(args)
        named = {kind: [named_path(v) for v in getattr(args, kind)] for kind in ("urg", "ranker", "fuser")}
        for name, path in [p for group in named.values() for p in group]:
            if not Path(path).is_dir():
                raise ConfigError(f"{name}={path}: no such folder")
        records = drop_failed(read_records(args.test_file or cfg.data.test_file))[0][: args.max_records]
    except (*INPUT_ERRORS, ValueError) as err:
        return bad_input(err)

    import torch

    from urg_ray.baselines import rank_and_fuse
    from urg_ray.evaluation import Evaluator
    from urg_ray.protocol import load_model as load_on_cpu

    def load_model(path: str):
        return load_on_cpu(path).to(device=args.device, dtype=getattr(torch, args.dtype))

    print(f"[evaluate] scoring {len(records)} records x their candidates", flush=True)
    ev = Evaluator(records, cfg.data.score_keys, metric_names=[m.strip() for m in args.metrics.split(",") if m.strip()],
                   batch_size=args.batch_size, bertscore_model=args.bertscore_model,
                   bartscore_model=args.bartscore_model or "tiny-bart")
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
        for ranker_name, ranker in rankers:  # NAME-Gen: the ranker's top-k fused (PairRanker-Gen: LLM-Blender)
            row = f"{ranker_name}-Gen" + (f" ({name})" if len(named["fuser"]) > 1 else "")
            print(f"[evaluate] {row}: {ranker_name}'s top-k fused by {name}", flush=True)
            ev.add_fusion(row, ev.fuse_in_batches(
                lambda q, c: [r.text for r in rank_and_fuse(ranker, fuser, q, c, **generate)], ev.candidates))
        if args.robustness:
            ev.add_robustness(name, lambda q, c: fuser.fuse(q, c, **generate))
    for path in ev.write(args.out):
        print(f"[evaluate] wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
