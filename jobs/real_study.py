"""The judged ranking study on real answers (issue 15): docs/results/real/real.{md,json,png}.

    python jobs/real_study.py --config jobs/configs/real-minilm.yaml --out docs/results/real \\
        --model URG=outputs/real-urg/model --model PairRanker=outputs/real-pair_ranker/model \\
        --model SummaReranker=outputs/real-summa_reranker/model --model SimCLS=outputs/real-simcls/model

Baseline rows (each ensemble model, random, always-longest, best single model on train, oracle)
come from the data alone (urg_ray.judged_study). Each --model adds its rows by what it is: URG
gives NAME-rank (its top-1) and NAME (fused) (its fused answer, scored against the reference
only: no judge saw it); a PairRanker gives NAME (MaxLogits) and NAME (bubble); any other ranker
NAME. With --keep, the trained rows of earlier runs in OUT/real_records.json stay unless this
run computes them again, so each model can be evaluated in its own short run. The split files are
written on first use, as jobs/train.py does (data.judged).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _cli import INPUT_ERRORS, bad_input, job_config, job_parser, name_value  # noqa: E402

PAIR_AGGREGATIONS = {"max_logits": "MaxLogits", "bubble": "bubble"}


def in_batches(records, batch_size: int, call) -> list:
    out = []
    for start in range(0, len(records), batch_size):
        chunk = records[start:start + batch_size]
        out += call([r.question for r in chunk], [[c.text for c in r.candidates] for r in chunk])
    return out


def add_model_rows(study, name: str, model, batch_size: int, max_new_tokens: int, aggregations: list[str]) -> None:
    from urg_ray.generate_config import ScoreConfig
    from urg_ray.judged_study import REFERENCE_METRICS
    from urg_ray.scoring import score_candidates

    records = study.records
    sizes = [len(r.candidates) for r in records]
    if model.method == "urg":
        results = in_batches(records, batch_size, lambda q, c: model.rank_and_fuse(q, c, max_new_tokens=max_new_tokens))
        study.add_selection(f"{name}-rank", "ranker", [r.ranks[0] for r in results], [r.scores for r in results])
        scored = score_candidates([r.text for r in results], [r.output for r in records],
                                  ScoreConfig(metrics=list(REFERENCE_METRICS)))
        study.add_fusion(f"{name} (fused)", scored)
        return
    for aggregation in aggregations if model.method == "pair_ranker" else [None]:
        kwargs = {"aggregation": aggregation} if aggregation else {}
        row = f"{name} ({PAIR_AGGREGATIONS[aggregation]})" if aggregation else name
        start = time.perf_counter()

        def rank(q, c, kwargs=kwargs):
            found = model.rank(q, c, **kwargs)
            return [(order, scores[:n].tolist()) for order, scores, n in zip(found.ranks, found.scores, map(len, c))]

        ranked = in_batches(records, batch_size, rank)
        study.add_selection(row, "ranker", [order[0] for order, _ in ranked], [s for _, s in ranked])
        print(f"[real_study] {row}: {time.perf_counter() - start:.0f} s for {sum(sizes)} candidates", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = job_parser(__doc__.splitlines()[0], default_out="docs/results/real")
    parser.add_argument("--model", action="append", default=[], metavar="NAME=FOLDER",
                        help="a trained URG or ranker folder (repeatable)")
    parser.add_argument("--keep", action="store_true",
                        help="keep rows of models not given now from OUT/real_records.json")
    parser.add_argument("--pair-aggregation", action="append", choices=list(PAIR_AGGREGATIONS),
                        help="PairRanker rows (default: both)")
    parser.add_argument("--batch-size", type=int, default=4, help="test records per rank / fuse call")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--max-records", type=int, default=None, help="the first N test records (a quick look)")
    args = parser.parse_args(argv)
    try:
        cfg = job_config(args)
        named = [name_value(v, "--model", folder=True) for v in args.model]
        from urg_ray.data import read_records
        from urg_ray.judged_study import KIND_TITLES, JudgedStudy, rows_from_json
        from urg_ray.real_data import ensure_judged

        ensure_judged(cfg.data)
        records = read_records(cfg.data.test_file)[: args.max_records]
        study = JudgedStudy(records)
        study.add_baselines(read_records(cfg.data.train_file))
        kept = []
        saved = Path(args.out) / "real_records.json"
        if args.keep and saved.is_file():
            kept = [r for r in rows_from_json(json.loads(saved.read_text()), [r.id for r in records])
                    if r.kind in ("ranker", "fusion")]
    except (*INPUT_ERRORS, ValueError) as err:
        return bad_input(err)

    from urg_ray.protocol import load_model

    for name, path in named:
        model = load_model(path).eval()
        start = time.perf_counter()
        print(f"[real_study] {name} ({model.method}) on {len(records)} test records", flush=True)
        add_model_rows(study, name, model, args.batch_size, args.max_new_tokens,
                       args.pair_aggregation or list(PAIR_AGGREGATIONS))
        print(f"[real_study] {name}: {time.perf_counter() - start:.0f} s", flush=True)
    for row in kept:  # rows of earlier runs that this run did not compute again
        if row.name not in {r.name for r in study.rows}:
            study.add_row(row)
    kinds = list(KIND_TITLES)  # the table's order of kinds
    study.rows.sort(key=lambda r: (kinds.index(r.kind), r.name if r.kind in ("ranker", "fusion") else ""))
    best = next(r.name for r in study.rows if r.name.startswith("Best single model"))
    trained = [r.name for r in study.rows if r.kind == "ranker"]
    urg = [n for n in trained if n.endswith("-rank")]
    pairs = [(n, best) for n in trained]
    for u in urg:  # each URG against every other selector, each pair of URGs once
        pairs += [(u, n) for n in trained if n != u and (u, n)[::-1] not in pairs]
    data = study.to_json(pairs)
    for path in study.write(args.out, data):
        print(f"[real_study] wrote {path}")
    for row in data["rows"]:
        if "judge_win_pct" in row:
            print(f"[real_study] {row['name']:<48} {row['judge_win_pct']:5.1f} % "
                  f"[{row['judge_win_low']:.1f}, {row['judge_win_high']:.1f}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
