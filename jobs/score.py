"""Score candidates against their references (BLEU, ROUGE, BERTScore, BARTScore) with Ray Data actors.

    python jobs/score.py                     # scores outputs/generate/candidates.jsonl (jobs/generate.py's default)
    python jobs/score.py --set input=data/mine/candidates.jsonl --out outputs/mine-scored
    python jobs/score.py --config jobs/configs/score-gpu.yaml --set input=...

Writes OUT/candidates.jsonl: the same MixInstruct records with each candidate's "scores" filled
(bleu 0-100; rouge1/2/L/Lsum and bertscore 0-1; bartscore a mean log-likelihood), and
OUT/score_summary.json (counts, candidates/s, mean score per model). Candidates whose generation
failed (they carry an "error") are dropped unless `--set failed=keep`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _cli import INPUT_ERRORS, bad_input, job_config, job_parser, start_ray  # noqa: E402

from urg_ray.data import DataError, read_records  # noqa: E402
from urg_ray.generate_config import ScoreConfig  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    args = job_parser(__doc__.splitlines()[0], default_out="outputs/score").parse_args(argv)
    try:  # everything that can be wrong with the inputs fails here, before Ray starts
        cfg = job_config(args, schema=ScoreConfig)
        if not Path(cfg.input).is_file():
            raise DataError(f"{cfg.input}: no such file (run jobs/generate.py first, or --set input=FILE)")
        records = read_records(cfg.input)
    except INPUT_ERRORS as err:
        return bad_input(err)
    n = sum(len(r.candidates) for r in records)
    print(f"[score] {len(records)} records, {n} candidates from {cfg.input}: {', '.join(cfg.metrics)}", flush=True)

    from urg_ray.scoring import score_file

    start_ray(args.verbose)
    summary = score_file(cfg, args.out, records)
    print(f"[score] scored {summary['candidates_scored']} candidates in {summary['wall_s']} s "
          f"on {summary['actors']} actors "
          f"({summary['candidates_per_s']} candidates/s); dropped {summary['failed_dropped']} failed candidates")
    for model, means in summary["mean_scores"].items():
        print(f"[score]   {model}: {json.dumps({k: round(v, 3) for k, v in means.items()})}")
    print(f"[score] {summary['records_out']} records -> {summary['output']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
