"""Evaluate URG checkpoints and baselines on a MixInstruct-format test file: one table.

    python jobs/evaluate.py --urg URG=outputs/train/model --out outputs/eval
    python jobs/evaluate.py --urg URG=a/model --urg "URG w/o ERM"=b/model \\
        --ranker PairRanker=c/model --ranker SimCLS=d/model --fuser GenFuser=e/model --out docs/results

Rows: each candidate model, random and oracle selection, each ranker's top-1 pick (with rank
correlations), URG fusion, and NAME-Gen for every --ranker: its top-k fused by each --fuser
(PairRanker-Gen is LLM-Blender). `--robustness` adds URG Table 5 for every URG and fuser given.
`--bounds` (synthetic data, with the facts file make_data wrote beside it) adds each URG fusing
its top-1 alone (NAME (k=1)) and the bound rows of urg_ray.evaluation (style-stripped oracle and
top-1 of each URG's ranking, ideal fusions), and a table of where each fused row's right facts
come from: the candidates it was shown, other candidates, or none (its memory of the world). The
facts are read in the world they were made in: `--synthetic` (the knobs make_data was given),
else the config make_data wrote beside them (TEST.world.yaml), else the default world; both
given must describe one world. `--paired A=B` adds a paired bootstrap
interval of row A minus row B. Writes DIR/eval.json, DIR/eval_records.json (per-record scores,
fused texts and the candidates each fusion was shown), DIR/eval.md, DIR/eval.png (and DIR/robustness.png).

Runs with different seeds, summarised (mean ± std, pooled and per-run paired intervals):

    python jobs/evaluate.py --summarize docs/results/study/seed0 docs/results/study/seed1 \
        docs/results/study/seed2 --paired URG=PairRanker-Gen --out docs/results/study

The MixInstruct test split (5,000 records, with cmp_results: a GPT-Rank column) on a GPU, as the papers:

    python jobs/evaluate.py --config jobs/configs/flan-t5-xl.yaml --paper --device cuda --dtype bfloat16 \
        --urg URG-3B=runs/urg-flan-t5-xl/model --ranker PairRanker=runs/pair-ranker-deberta-v3-large/model \
        --ranker SummaReranker=... --ranker SimCLS=... --fuser GenFuser=runs/gen-fuser-flan-t5-xl/model --out eval
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _cli import INPUT_ERRORS, bad_input, job_config, job_parser, name_value, start_ray  # noqa: E402

from urg_ray.config import ConfigError  # noqa: E402
from urg_ray.data import DataError, drop_failed, read_records  # noqa: E402
from urg_ray.evaluation import METRICS, PAPER_METRICS  # noqa: E402

if TYPE_CHECKING:
    from urg_ray.synthetic import SyntheticConfig

PAPER_BARTSCORE = "facebook/bart-large-cnn"  # BARTScore's (Yuan et al. 2021), as LLM-Blender scored MixInstruct
PAPER_BERTSCORE = "roberta-large"  # bert-score's default English model


def planned_rows(named: dict[str, list[tuple[str, str]]], bounds: bool) -> set[str]:
    """Names of the rows the models given will add (what --paired may name, besides candidate models)."""
    rows = {"Random"}
    for name, _ in named["urg"]:
        rows |= {f"{name}-rank", name} | ({f"{name} (k=1)"} if bounds else set())
    for ranker, _ in named["ranker"]:
        rows.add(ranker)
        rows |= {f"{ranker}-Gen" + (f" ({fuser})" if len(named["fuser"]) > 1 else "") for fuser, _ in named["fuser"]}
    return rows


def summarize(folders: list[str], paired: list[tuple[str, str]], out: str) -> int:
    import json

    from urg_ray.evaluation import summarize_runs
    from urg_ray.evaluation_report import write_summary_chart, write_summary_markdown

    try:
        runs = [json.loads((Path(f) / "eval.json").read_text()) for f in folders]
        records = [json.loads((Path(f) / "eval_records.json").read_text()) for f in folders]
        summary = summarize_runs(runs, records, paired)
    except (OSError, ValueError, KeyError) as err:
        return bad_input(ValueError(f"--summarize {' '.join(folders)}: {err!r}"))
    Path(out).mkdir(parents=True, exist_ok=True)
    (Path(out) / "summary.json").write_text(json.dumps(summary | {"runs": folders}, indent=2))
    (Path(out) / "summary.md").write_text(write_summary_markdown(summary))
    chart = write_summary_chart(summary, Path(out))
    print(f"[evaluate] wrote {Path(out) / 'summary.json'}, {Path(out) / 'summary.md'} and {chart} "
          f"({len(folders)} runs)")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = job_parser(__doc__.splitlines()[0], default_out="outputs/eval")
    parser.add_argument("--urg", action="append", default=[], metavar="NAME=FOLDER", help="a URG checkpoint")
    parser.add_argument("--ranker", action="append", default=[], metavar="NAME=FOLDER",
                        help="a baseline ranker (PairRanker, SummaReranker, SimCLS) folder")
    parser.add_argument("--fuser", action="append", default=[], metavar="NAME=FOLDER", help="a GenFuser folder")
    parser.add_argument("--test-file", help="default: data.test_file of the config")
    parser.add_argument("--max-records", type=int, default=None)
    parser.add_argument("--robustness", action="store_true", help="URG Table 5 for each URG and fuser")
    parser.add_argument("--bounds", action="store_true", help="NAME (k=1) for each URG and the bound rows from "
                        "the synthetic world's latent facts (see --facts)")
    parser.add_argument("--facts", help="the test file's facts (default: TEST.facts.jsonl beside TEST.jsonl)")
    parser.add_argument("--synthetic", metavar="YAML", help="with --bounds: the SyntheticConfig fields make_data "
                        "was given (e.g. jobs/configs/study-synthetic.yaml), the world the fused answers' facts "
                        "are read in (default: TEST.world.yaml beside the facts, which make_data writes; "
                        "both given must describe one world)")
    parser.add_argument("--paired", action="append", default=[], metavar="A=B",
                        help="a paired bootstrap interval of row A minus row B (repeatable)")
    parser.add_argument("--summarize", nargs="+", metavar="FOLDER",
                        help="summarise these evaluations (one per seed) into OUT/summary.{json,md,png}; no models")
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
    parser.add_argument("--shards", type=int, default=1,
                        help="copies of each model, one per Ray actor (one GPU each on cuda); "
                             "every call split across them")
    args = parser.parse_args(argv)
    if args.paper:
        args.metrics = ",".join(PAPER_METRICS) if args.metrics == ",".join(METRICS) else args.metrics
        args.bartscore_model = args.bartscore_model or PAPER_BARTSCORE
        args.bertscore_model = args.bertscore_model or PAPER_BERTSCORE
    try:
        paired = [name_value(v, "--paired") for v in args.paired]
        if args.synthetic and (args.summarize or not args.bounds):
            raise ValueError("--synthetic needs --bounds (it names the world the facts file was made in)")
        if args.summarize:
            if args.urg or args.ranker or args.fuser:
                raise ValueError("--summarize reads finished evaluations; it takes no --urg, --ranker or --fuser")
            return summarize(args.summarize, paired, args.out)
        cfg = job_config(args)
        named = {kind: [name_value(v, f"--{kind}", folder=True) for v in getattr(args, kind)]
                 for kind in ("urg", "ranker", "fuser")}
        test_file = args.test_file or cfg.data.test_file
        records = drop_failed(read_records(test_file))[0][: args.max_records]
        models = {c.model for r in records for c in r.candidates}
        for a, b in paired:
            unknown = [n for n in (a, b) if n not in planned_rows(named, args.bounds) | models]
            if unknown:
                raise ValueError(f"--paired {a}={b}: no row {unknown[0]!r} among "
                                 f"{sorted(planned_rows(named, args.bounds) | models)}")
        world, facts, world_config = (load_world(args.facts, args.synthetic, test_file, records) if args.bounds
                                      else ({}, {}, None))
    except (*INPUT_ERRORS, ValueError) as err:
        return bad_input(err)

    import torch

    from urg_ray.baselines import rank_and_fuse
    from urg_ray.evaluation import Evaluator
    from urg_ray.protocol import load_model as load_on_cpu

    def load_model(path: str):
        if args.shards > 1:  # e.g. one copy per GPU of the node (urg_ray/sharded.py)
            from urg_ray.sharded import ShardedModel

            start_ray(args.verbose)
            return ShardedModel(path, args.shards, device=args.device, dtype=args.dtype)
        return load_on_cpu(path).to(device=args.device, dtype=getattr(torch, args.dtype))

    print(f"[evaluate] scoring {len(records)} records x their candidates", flush=True)
    ev = Evaluator(records, cfg.data.score_keys, metric_names=[m.strip() for m in args.metrics.split(",") if m.strip()],
                   batch_size=args.batch_size, bertscore_model=args.bertscore_model,
                   bartscore_model=args.bartscore_model or "tiny-bart")
    ev.add_reference_rows()
    generate = {"max_new_tokens": args.max_new_tokens}

    def add_fused(name: str, results) -> None:  # FusionResults: the texts and the candidates each fusion was shown
        ev.add_fusion(name, [r.text for r in results], shown=[r.selected for r in results])

    top_k = 3  # of the ideal fusions: the first URG's k
    for i, (name, path) in enumerate(named["urg"]):
        model = load_model(path)
        top_k = model.config.top_k if i == 0 else top_k
        print(f"[evaluate] {name}: ranking and fusing", flush=True)
        ev.add_ranker(f"{name}-rank", model)
        add_fused(name, ev.fuse_in_batches(lambda q, c: model.rank_and_fuse(q, c, **generate), ev.candidates))
        if args.bounds:  # the same model fusing its top-1 alone: does fusing k candidates add anything?
            add_fused(f"{name} (k=1)", ev.fuse_in_batches(
                lambda q, c: model.rank_and_fuse(q, c, top_k=1, **generate), ev.candidates))
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
            add_fused(row, ev.fuse_in_batches(lambda q, c: rank_and_fuse(ranker, fuser, q, c, **generate),
                                              ev.candidates))
        if args.robustness:
            ev.add_robustness(name, lambda q, c: fuser.fuse(q, c, **generate))
    if args.bounds:
        print("[evaluate] bounds from the latent facts", flush=True)
        ev.add_bounds(world, top_k=top_k, rankers=[f"{name}-rank" for name, _ in named["urg"]])
        ev.add_fact_sources(facts, world_config)
    for a, b in paired:
        ev.add_paired(a, b)
    for path in ev.write(args.out):
        print(f"[evaluate] wrote {path}")
    return 0


def load_world(facts_file: str | None, synthetic: str | None, test_file: str,
               records) -> tuple[dict, dict, SyntheticConfig]:
    """Record id -> SyntheticExample from the facts file beside the test file (make_data writes it),
    the facts file read, and the SyntheticConfig of its world (`urg_ray.synthetic_facts.world_of`): a
    world that lacks the facts' reference facts is refused (`world_mismatch`; a larger world that holds
    them passes)."""
    from urg_ray.synthetic_facts import attach_facts, facts_path, read_facts, world_mismatch, world_of, world_path

    path = facts_file or facts_path(test_file)
    if not Path(path).is_file():
        raise ConfigError(f"--bounds: no facts file {path} (jobs/make_data.py writes it beside the test file; "
                          f"or give --facts)")
    try:
        config, source = world_of(path, synthetic)
    except ValueError as err:
        raise ConfigError(f"--bounds: {err}") from None
    facts = read_facts(path)
    mismatch = world_mismatch({r.id: facts[r.id] for r in records if r.id in facts}, config)
    if mismatch:
        if source is not None and source == world_path(path):  # the config beside the facts is stale
            raise ConfigError(f"--bounds: {path}: {mismatch}; {source} beside it is not the world it was made "
                              f"in: remake the data, or remove {source} and give --synthetic the knobs it was "
                              f"made with")
        where = f"the world of {source}" if source else "the default world"
        raise ConfigError(f"--bounds: {path}: {mismatch}; {where} is not the one it was made in; give --synthetic "
                          f"the knobs jobs/make_data.py made it with")
    world = {}
    for r in records:
        if r.id not in facts:
            raise DataError(f"{path}: no line for test record {r.id!r} of {test_file}")
        try:
            world[r.id] = attach_facts(r.model_dump(), facts[r.id])
        except ValueError as err:
            raise DataError(f"{path}: {err}") from None
    return world, facts, config


if __name__ == "__main__":
    sys.exit(main())
