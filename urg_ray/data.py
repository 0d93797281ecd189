"""MixInstruct records: read, validate, write; ground-truth quality; batch collation.

A record is exactly what the public MixInstruct dataset stores (LLM-Blender, Jiang et al. 2023)::

    {"id": "unified_chip2/69962", "instruction": "", "input": "...", "output": "<reference>",
     "candidates": [{"decoding_method": "top_p_sampling", "model": "vicuna-13b",
                     "text": "...", "scores": {"bleu": 5.6, "rougeL": 0.23, ...}}, ...],
     "cmp_results": "null"}

`cmp_results` is a JSON-encoded string (``"null"`` when absent). N may differ between records.
Errors name the file, the line and the field (`DataError`), and reading never drops a record
silently.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

log = logging.getLogger(__name__)

ERROR_FIELD = "error"  # a candidate whose generation failed: text "" and this extra field
QUESTION_TOKEN = "<Question>"
RESPONSE_TOKEN = "<response>"


class DataError(ValueError):
    """A malformed record; the message reads ``file:line: field: problem``."""


class Candidate(BaseModel):
    model_config = ConfigDict(extra="allow")

    decoding_method: str = "unknown"
    model: str
    text: str
    scores: dict[str, float] = Field(default_factory=dict)


class Record(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: str
    instruction: str = ""
    input: str = ""
    output: str
    candidates: list[Candidate] = Field(min_length=1)
    cmp_results: str = "null"

    @field_validator("id", mode="before")
    @classmethod
    def _id_as_str(cls, value: Any) -> Any:
        return str(value) if isinstance(value, int) else value

    @field_validator("cmp_results", mode="before")
    @classmethod
    def _cmp_results_as_json(cls, value: Any) -> Any:
        # The dataset stores a JSON-encoded string; accept the decoded form too.
        return value if isinstance(value, str) else json.dumps(value)

    @property
    def question(self) -> str:
        """x in the paper: instruction and input joined."""
        return "\n".join(part for part in (self.instruction, self.input) if part)


def _validate(obj: Any, where: str) -> Record:
    try:
        return Record.model_validate(obj)
    except ValidationError as err:
        first = err.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "<record>"
        more = f" (+{err.error_count() - 1} more)" if err.error_count() > 1 else ""
        raise DataError(f"{where}: field {field!r}: {first['msg']}{more}") from None


def _iter_json_array(text: str, path: Path) -> Iterable[tuple[int, Any]]:
    """Yield (line, element) of a JSON array, keeping each element's line number."""
    decoder = json.JSONDecoder()
    pos = text.index("[") + 1
    while True:
        while pos < len(text) and text[pos] in " \t\r\n,":
            pos += 1
        if pos >= len(text):
            raise DataError(f"{path}:{text.count(chr(10)) + 1}: unterminated JSON array")
        if text[pos] == "]":
            return
        line = text.count("\n", 0, pos) + 1
        try:
            obj, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}:{err.lineno}: invalid JSON: {err.msg}") from None
        yield line, obj


def read_records(path: str | os.PathLike) -> list[Record]:
    """Read a MixInstruct JSONL file or JSON-array file, validating every record."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    text = path.read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        items: Iterable[tuple[int, Any]] = _iter_json_array(text, path)
    else:
        items = _iter_jsonl(text, path)
    records = [_validate(obj, f"{path}:{line}") for line, obj in items]
    log.info("read %d records from %s", len(records), path)
    return records


def _iter_jsonl(text: str, path: Path) -> Iterable[tuple[int, Any]]:
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield line_no, json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}:{line_no}: invalid JSON: {err.msg} (column {err.colno})") from None


def write_records(path: str | os.PathLike, records: Iterable[Record | dict]) -> int:
    """Write records as JSONL (``.jsonl``) or a JSON array (any other suffix); returns the count.

    Dicts are validated first, so a file this writes always reads back.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [
        (r if isinstance(r, Record) else _validate(r, f"{path}: record {i}")).model_dump()
        for i, r in enumerate(records)
    ]
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        if path.suffix == ".jsonl":
            f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
        else:
            json.dump(rows, f, ensure_ascii=False, indent=1)
    tmp.replace(path)  # never leave a half-written file behind
    return len(rows)


def is_failed(candidate: Any) -> bool:
    """True for a candidate whose generation failed (it carries a non-empty ``error`` extra)."""
    extra = candidate if isinstance(candidate, dict) else (candidate.model_extra or {})
    return bool(extra.get(ERROR_FIELD))


def drop_failed(records: Iterable[Record]) -> tuple[list[Record], int]:
    """Records without their failed candidates (records left with none are dropped); and how many went."""
    kept, dropped = [], 0
    for r in records:
        ok = [c for c in r.candidates if not is_failed(c)]
        dropped += len(r.candidates) - len(ok)
        if ok:
            kept.append(r.model_copy(update={"candidates": ok}))
    return kept, dropped


def quality(record: Record, score_keys: Sequence[str] = ("bartscore", "bleu")) -> tuple[str, list[float]]:
    """Ground-truth quality r_i of each candidate: the first of `score_keys` all candidates have.

    Higher is better for every stored MixInstruct score (BARTScore is a log-likelihood).
    """
    for key in score_keys:
        if record.candidates and all(key in c.scores for c in record.candidates):
            return key, [c.scores[key] for c in record.candidates]
    have = sorted(set().union(*(c.scores for c in record.candidates))) if record.candidates else []
    raise DataError(
        f"record {record.id!r}: field 'candidates.*.scores': none of {list(score_keys)} is present "
        f"for every candidate (found: {have})"
    )


@dataclass
class Batch:
    """Tensors for one batch. Shapes: B questions, N = max candidates, L = max pair length."""

    input_ids: torch.Tensor  # (B, N, L) token ids of "<Question> x </s> <response> y_i"
    attention_mask: torch.Tensor  # (B, N, L) 1 for real tokens
    candidate_mask: torch.Tensor  # (B, N) True for real candidates (N may differ per question)
    labels: torch.Tensor | None = None  # (B, T) reference ids, -100 at padding
    quality: torch.Tensor | None = None  # (B, N) ground truth r_i, -inf at padded slots

    def to(self, device: torch.device | str) -> "Batch":
        """The same batch (subclasses included) with every tensor on `device`."""
        moved = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in vars(self).items()}
        return type(self)(**moved)


class Collator:
    """Builds per-candidate encoder inputs ``<Question> x </s> <response> y_i`` (paper §3.2).

    x and y are truncated separately (LLM-Blender's defaults: 128 tokens each), so an over-long
    question never pushes the candidate out of the window.
    """

    def __init__(self, tokenizer, source_max_length: int = 128, candidate_max_length: int = 128,
                 target_max_length: int = 128, score_keys: Sequence[str] = ("bartscore", "bleu")):
        self.tokenizer = tokenizer
        self.source_max_length = source_max_length
        self.candidate_max_length = candidate_max_length
        self.target_max_length = target_max_length
        self.score_keys = tuple(score_keys)
        self._question_prefix = self._ids(QUESTION_TOKEN)
        self._response_prefix = self._ids(RESPONSE_TOKEN)

    def _ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _batch_ids(self, texts: list[str], limit: int) -> list[list[int]]:
        if not texts:
            return []
        return [ids[:limit] for ids in self.tokenizer(texts, add_special_tokens=False)["input_ids"]]

    def encode_pairs(self, questions: Sequence[str], candidates: Sequence[Sequence[str]]) -> Batch:
        """Tokenize and pad B questions with their N_b candidates into (B, N_max, L) tensors."""
        if len(questions) != len(candidates):
            raise ValueError(f"{len(questions)} questions but {len(candidates)} candidate lists")
        for b, cands in enumerate(candidates):
            if isinstance(cands, str) or len(cands) == 0:
                raise ValueError(f"question {b}: candidates must be a non-empty list of strings")
        eos = self.tokenizer.eos_token_id
        question_ids = self._batch_ids(list(questions), self.source_max_length)
        flat = [str(c) for cands in candidates for c in cands]
        flat_ids = iter(self._batch_ids(flat, self.candidate_max_length))
        pairs = [
            [self._question_prefix + q + [eos] + self._response_prefix + next(flat_ids) + [eos] for _ in cands]
            for q, cands in zip(question_ids, candidates)
        ]
        n_max = max(len(p) for p in pairs)
        l_max = max(len(ids) for p in pairs for ids in p)
        input_ids = torch.full((len(pairs), n_max, l_max), self.tokenizer.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros_like(input_ids)
        candidate_mask = torch.zeros(len(pairs), n_max, dtype=torch.bool)
        for b, p in enumerate(pairs):
            candidate_mask[b, : len(p)] = True
            for n, ids in enumerate(p):
                input_ids[b, n, : len(ids)] = torch.tensor(ids)
                attention_mask[b, n, : len(ids)] = 1
        return Batch(input_ids, attention_mask, candidate_mask)

    def encode_targets(self, targets: Sequence[str]) -> torch.Tensor:
        """Reference ids + </s>, padded with -100 so the loss ignores padding. Shape (B, T)."""
        ids = [t + [self.tokenizer.eos_token_id] for t in self._batch_ids(list(targets), self.target_max_length - 1)]
        labels = torch.full((len(ids), max(map(len, ids))), -100, dtype=torch.long)
        for b, t in enumerate(ids):
            labels[b, : len(t)] = torch.tensor(t)
        return labels

    def __call__(self, records: Sequence[Record | dict]) -> Batch:
        """Collate training/evaluation records: pairs, reference labels and ground-truth quality."""
        records = [r if isinstance(r, Record) else Record.model_validate(r) for r in records]
        batch = self.encode_pairs([r.question for r in records], [[c.text for c in r.candidates] for r in records])
        batch.labels = self.encode_targets([r.output for r in records])
        batch.quality = torch.full(batch.candidate_mask.shape, float("-inf"))
        for b, r in enumerate(records):
            _, scores = quality(r, self.score_keys)
            batch.quality[b, : len(scores)] = torch.tensor(scores)
        return batch
