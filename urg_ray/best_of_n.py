"""Best-of-n: a prompt's n samples become one record's candidates, URG keeps one per prompt.

Sampling is `urg_ray.generate.generate` (any of its engines): each prompt is asked n times as
`<id>#<k>` (`sample_prompts`), so every sample has its own seed and journal entry. Then
`pick_and_write` groups the samples (`group_samples`), ranks each prompt's answered ones with URG
(`pick_best`: eq. 6 scores land in the candidates' scores.urg) and writes the records, the picks
and a summary atomically. A failed sample (text "", "error") is kept in the records and never picked.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import Field, model_validator

from urg_ray.data import Record, is_failed, read_records, write_records
from urg_ray.durable import atomic_write
from urg_ray.generate_config import GenerateConfig, ModelSpec, tiny_models

if TYPE_CHECKING:
    from urg_ray.generate import Prompt
    from urg_ray.model import URG

SAMPLE_SEP = "#"  # <prompt id>#<k>, and <model>#<k> for the candidates


class BestOfNConfig(GenerateConfig):
    """GenerateConfig (prompts, models, sampling, ...) plus n and the URG ranker; `output` is the samples file."""

    n: int = Field(4, ge=1, le=1024)  # samples per prompt and model
    models: list[ModelSpec] = Field(default_factory=lambda: tiny_models()[:1], min_length=1)
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


def sample_prompts(prompts: list[Prompt], n: int) -> list[Prompt]:
    """Each prompt n times, as `<id>#<k>` (its own seed, its own journal entry)."""
    from urg_ray.generate import Prompt

    return [Prompt(f"{p.id}{SAMPLE_SEP}{k}", p.instruction, p.input, p.output) for p in prompts for k in range(n)]


def group_samples(samples: list[Record], prompts: list[Prompt], n: int) -> list[Record]:
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


def pick_best(urg: URG, records: list[Record], batch_size: int) -> list[dict]:
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


def pick_and_write(cfg: BestOfNConfig, out_dir: str | Path, prompts: list[Prompt], urg_source: str,
                   generate_summary: dict) -> dict:
    """After generation: URG picks one sample per prompt; writes `cfg.records`, `cfg.picks` and
    best_of_n_summary.json under `out_dir` (each replaced atomically) and returns the summary."""
    from urg_ray import URG

    out = Path(out_dir)
    records = group_samples(read_records(out / cfg.output), prompts, cfg.n)
    picks = pick_best(URG.from_pretrained(urg_source).eval(), records, cfg.rank_batch_size)
    write_records(out / cfg.records, records)
    with atomic_write(out / cfg.picks) as f:
        f.writelines(json.dumps(p, ensure_ascii=False) + "\n" for p in picks)
    summary = {"prompts": len(prompts), "n": cfg.n, "urg": urg_source,
               "picked": sum(p["model"] is not None for p in picks),
               "failed_samples": sum(len(p["failed"]) for p in picks), "generate": generate_summary}
    with atomic_write(out / "best_of_n_summary.json") as f:
        json.dump(summary, f, indent=1)
    return summary
