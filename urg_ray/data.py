"""MixInstruct records: read, validate, write; ground-truth quality.

A record is exactly what the public MixInstruct dataset stores (LLM-Blender, Jiang et al. 2023)::

    {"id": "unified_chip2/69962", "instruction": "", "input": "...", "output": "<reference>",
     "candidates": [{"decoding_method": "top_p_sampling", "model": "vicuna-13b",
                     "text": "...", "scores": {"bleu": 5.6, "rougeL": 0.23, ...}}, ...],
     "cmp_results": "null"}

`cmp_results` is a JSON-encoded string (``"null"`` when absent). N may differ between records.
Errors name the file, the line and the field (`DataError`), and reading never drops a record
silently. No torch here: records become tensors in `urg_ray.collate`.
"""

from __future__ import annotations

import codecs
import json
import logging
import math
import os
import re
from pathlib import Path
from typing import IO, Any, Iterable, Iterator, Sequence

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from urg_ray.durable import atomic_write
from urg_ray.hub_data import local_path

log = logging.getLogger(__name__)

ERROR_FIELD = "error"  # a candidate whose generation failed: text "" and this extra field


class DataError(ValueError):
    """A malformed record; the message reads ``file:line: field: problem``."""


class Candidate(BaseModel):
    model_config = ConfigDict(extra="allow", allow_inf_nan=False)  # NaN would sort first in top-k

    decoding_method: str = "unknown"
    model: str
    text: str
    scores: dict[str, float] = Field(default_factory=dict)


def join_question(instruction: str, input: str) -> str:
    """x in the paper: the instruction and the input joined by a newline, an empty one left out.

    The one rule for the question text: records, generation prompts, the candidate LLMs' training
    questions and the benchmark inputs all use it, so a model sees the same text everywhere.
    """
    return "\n".join(part for part in (instruction, input) if part)


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
        """x in the paper: instruction and input joined (`join_question`)."""
        return join_question(self.instruction, self.input)


def _validate(obj: Any, where: str) -> Record:
    try:
        return Record.model_validate(obj)
    except ValidationError as err:
        first = err.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "<record>"
        more = f" (+{err.error_count() - 1} more)" if err.error_count() > 1 else ""
        raise DataError(f"{where}: field {field!r}: {first['msg']}{more}") from None


_CHUNK = 1 << 20  # bytes read at a time from a JSON array file
_JSON_WHITESPACE = re.compile(r"[ \t\r\n]*")
# Text that may hide a value JSON cannot carry through a round trip: only such values get walked
_SUSPECT = re.compile(r"NaN|Infinity|\\u[dD]")
_SURROGATE = re.compile("[\ud800-\udfff]")


def _bad_value(value: Any, field: str = "") -> tuple[str, str] | None:
    """(field, problem) of the first NaN/infinity or lone surrogate inside a decoded JSON value."""
    if isinstance(value, float) and not math.isfinite(value):
        literal = "NaN" if math.isnan(value) else "Infinity" if value > 0 else "-Infinity"
        return field or "<value>", f"{literal} is not a number JSON allows (NaN and infinities are rejected)"
    if isinstance(value, str) and _SURROGATE.search(value):
        return field or "<value>", "a lone surrogate escape (\\ud800-\\udfff) is not valid Unicode text"
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        name = f"{field}.{key}" if field else str(key)
        found = _bad_value(key, name) if isinstance(key, str) else None
        found = found or _bad_value(item, name)
        if found:
            return found
    return None


def _not_utf8(path: Path, line: int, err: UnicodeDecodeError) -> DataError:
    return DataError(f"{path}:{line}: not UTF-8 text ({err.reason}); convert the file to UTF-8")


def iter_json(path: str | os.PathLike, problems: list[str] | None = None) -> Iterator[tuple[int, Any]]:
    """(line, value) of each line of a JSONL file, or of each element of a JSON array file, streamed.

    A file whose first character (after an optional UTF-8 BOM and whitespace) is ``[`` is a JSON
    array; anything else is JSONL, whose lines end at ``\\n`` only (JSON strings may hold U+2028,
    U+0085 and the like raw). Memory stays bounded by the largest value, time linear in the file.
    Bad UTF-8, bad JSON, NaN/infinity and lone surrogates raise `DataError` naming ``file:line``
    (and the field); with `problems`, a bad JSONL line is reported there and skipped instead.
    An ``hf://owner/name/split`` path reads the hub file's cached copy (`urg_ray.hub_data`).
    """
    path = local_path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    with path.open("rb") as f:
        bom = len(codecs.BOM_UTF8) if f.read(len(codecs.BOM_UTF8)) == codecs.BOM_UTF8 else 0
        f.seek(bom)
        while (chunk := f.read(4096)) and not chunk.strip(b" \t\r\n"):
            pass
        f.seek(bom)
        if chunk.lstrip(b" \t\r\n").startswith(b"["):
            yield from _JsonArrayReader(f, path)
        else:
            yield from _iter_jsonl(f, path, problems)


def _iter_jsonl(f: IO[bytes], path: Path, problems: list[str] | None) -> Iterator[tuple[int, Any]]:
    for line_no, raw in enumerate(f, start=1):  # a binary file splits at b"\\n" only
        if not raw.strip(b" \t\r\n"):
            continue
        try:
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise _not_utf8(path, line_no, err) from None
            try:
                value = json.loads(text)
            except json.JSONDecodeError as err:
                raise DataError(f"{path}:{line_no}: invalid JSON: {err.msg} (column {err.colno})") from None
            bad = _bad_value(value) if _SUSPECT.search(text) else None
            if bad:
                raise DataError(f"{path}:{line_no}: field {bad[0]!r}: {bad[1]}")
        except DataError as err:
            if problems is None:
                raise
            problems.append(str(err))
            continue
        yield line_no, value


class _JsonArrayReader:
    """Elements of a JSON array, decoded incrementally from a byte stream (`json.JSONDecoder.raw_decode`
    over a sliding text buffer); `line` is the line of ``buf[pos]``, advanced as `pos` moves."""

    def __init__(self, f: IO[bytes], path: Path):
        self.f, self.path = f, path
        self.utf8 = codecs.getincrementaldecoder("utf-8")()
        self.buf, self.pos, self.line, self.eof = "", 0, 1, False

    def _more(self, at_least: int = 0) -> None:
        """Append the next chunk of text (reading at least `at_least` bytes: a long value doubles)."""
        chunk = self.f.read(max(_CHUNK, at_least))
        self.eof = not chunk
        try:
            text = self.utf8.decode(chunk, final=self.eof)
        except UnicodeDecodeError as err:
            line = self.line + self.buf.count("\n", self.pos) + err.object[: err.start].count(b"\n")
            raise _not_utf8(self.path, line, err) from None
        self.buf, self.pos = self.buf[self.pos:] + text, 0

    def _next_char(self) -> str:
        """The next non-whitespace character ("" at the end of the file), `pos` on it."""
        while True:
            end = _JSON_WHITESPACE.match(self.buf, self.pos).end()
            self.line += self.buf.count("\n", self.pos, end)
            self.pos = end
            if self.pos < len(self.buf):
                return self.buf[self.pos]
            if self.eof:
                return ""
            self._more()

    def _value(self, decoder: json.JSONDecoder) -> Any:
        while True:
            try:
                value, end = decoder.raw_decode(self.buf, self.pos)
            except json.JSONDecodeError as err:
                # An error near the end of the buffer (or an unterminated string) may only mean the
                # value goes on in the next chunk; anywhere else it is in the file.
                cut_short = err.pos + 64 >= len(self.buf) or err.msg.startswith("Unterminated string")
                if self.eof or not cut_short:
                    line = self.line + self.buf.count("\n", self.pos, err.pos)
                    raise DataError(f"{self.path}:{line}: invalid JSON: {err.msg}") from None
                self._more(len(self.buf) - self.pos)
                continue
            if end == len(self.buf) and not self.eof:  # a number may go on in the next chunk
                self._more(len(self.buf) - self.pos)
                continue
            bad = _bad_value(value) if _SUSPECT.search(self.buf, self.pos, end) else None
            if bad:
                raise DataError(f"{self.path}:{self.line}: field {bad[0]!r}: {bad[1]}")
            self.line += self.buf.count("\n", self.pos, end)
            self.pos = end
            return value

    def __iter__(self) -> Iterator[tuple[int, Any]]:
        decoder = json.JSONDecoder()
        self._next_char()  # "[", checked by the caller
        self.pos += 1
        expect = "a value or ']'"
        while True:
            char = self._next_char()
            if char == "]" and expect != "a value":
                break
            if char == "," and expect == "',' or ']'":
                self.pos, expect = self.pos + 1, "a value"
                continue
            if not char or char in ",]" or expect == "',' or ']'":
                found = repr(char) if char else "the end of the file"
                raise DataError(f"{self.path}:{self.line}: invalid JSON array: expected {expect}, found {found}")
            line = self.line
            yield line, self._value(decoder)
            expect = "',' or ']'"
        self.pos += 1
        if self._next_char():
            raise DataError(f"{self.path}:{self.line}: invalid JSON: extra data after the array")


def iter_records(path: str | os.PathLike) -> Iterator[Record]:
    """Stream the records of a MixInstruct JSONL or JSON-array file, validating each one."""
    for line, value in iter_json(path):
        yield _validate(value, f"{path}:{line}")


def read_records(path: str | os.PathLike) -> list[Record]:
    """Read a MixInstruct JSONL file or JSON-array file, validating every record."""
    records = list(iter_records(path))
    log.info("read %d records from %s", len(records), path)
    return records


def dumps_record(row: dict, where: str, indent: int | None = None) -> str:
    """One record as standard JSON text; NaN/infinity or a lone surrogate raises `DataError` naming
    `where` and the field."""
    try:
        text = json.dumps(row, ensure_ascii=False, allow_nan=False, indent=indent)
    except ValueError:  # NaN or an infinity
        text = None
    if text is None or _SURROGATE.search(text):  # a lone surrogate cannot be written as UTF-8
        field, problem = _bad_value(row) or ("<record>", "not representable as standard JSON")
        raise DataError(f"{where}: field {field!r}: {problem}")
    return text


def write_records(path: str | os.PathLike, records: Iterable[Record | dict]) -> int:
    """Write records as JSONL (``.jsonl``) or a JSON array (any other suffix); returns the count.

    Dicts are validated first, so a file this writes always reads back. Streams, and replaces
    `path` atomically (`urg_ray.durable.atomic_write`): an error, a full disk included, leaves the
    previous file as it was.
    """
    path = Path(path)
    jsonl, count = path.suffix == ".jsonl", 0
    with atomic_write(path) as f:
        for count, r in enumerate(records, start=1):
            where = f"{path}: record {count}"
            row = (r if isinstance(r, Record) else _validate(r, where)).model_dump()
            text = dumps_record(row, f"{where} (id {row['id']!r})", indent=None if jsonl else 1)
            f.write(text + "\n" if jsonl else ("[\n" if count == 1 else ",\n") + text)
        if not jsonl:
            f.write("\n]\n" if count else "[]\n")
    return count


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


def as_records(rows: Iterable[Record | dict]) -> list[Record]:
    """Rows as `Record`s (dicts are validated; records pass through as they are)."""
    return [r if isinstance(r, Record) else Record.model_validate(r) for r in rows]
