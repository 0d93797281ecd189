"""Training input checked on the driver, before Ray starts: every record, one quality key per file.

A bad record found inside a worker's collator stalls the other workers in a collective until it
times out, and Ray restarts the group until `max_failures`; found here it is one clear error.
The quality key r_i is chosen once for the whole file (the first of `data.score_keys` that every
candidate of every record has), so the loss and the dev metrics that choose checkpoints never
mix, say, BARTScore for one record with BLEU for the next.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Sequence

from urg_ray.data import DataError, Record, drop_failed, is_failed, iter_json, read_records

log = logging.getLogger(__name__)


def file_score_key(records: Sequence[Record], score_keys: Sequence[str]) -> str:
    """The first of `score_keys` that every (non-failed) candidate of every record has, with a
    finite value. `DataError` naming the record index (`record_line` turns it into a line)."""
    first_bad: dict[str, tuple[int, str]] = {}  # key -> (record index, problem) of its first failure
    for key in score_keys:
        for i, r in enumerate(records):
            problem = _missing(r, key)
            if problem:
                first_bad[key] = (i, problem)
                break
        else:
            return key
    # The key that held out longest is the one the file was meant to have: name where it breaks.
    key = max(score_keys, key=lambda k: first_bad[k][0])
    index, problem = first_bad[key]
    others = [k for k in score_keys if k != key]
    raise _KeyError(index, f"{problem}; score key {key!r} (from records before this one)"
                           + (f", and none of {others} is in every candidate either" if others else ""))


def _missing(record: Record, key: str) -> str | None:
    for j, c in enumerate(record.candidates):
        if is_failed(c):
            continue
        if key not in c.scores:
            return f"field 'candidates.{j}.scores': no {key!r} score (has {sorted(c.scores)})"
        if not math.isfinite(c.scores[key]):
            return f"field 'candidates.{j}.scores.{key}': {c.scores[key]} is not a finite number"
    return None


class _KeyError(DataError):
    def __init__(self, index: int, problem: str):
        super().__init__(problem)
        self.index, self.problem = index, problem


def record_line(path: str | os.PathLike, index: int) -> int:
    """The line of the `index`-th record of `path` (error path only: reads the file again)."""
    for i, (line, _) in enumerate(iter_json(path)):
        if i == index:
            return line
    raise IndexError(f"{path}: no record {index}")


def read_training_file(path: str | os.PathLike, score_keys: Sequence[str]) -> tuple[list[Record], str]:
    """Every record of `path` validated (failed candidates left out), and the file's quality key.

    Errors are `DataError`s reading ``file:line: field '...': problem``.
    """
    records = read_records(path)
    try:
        key = file_score_key(records, score_keys)
    except _KeyError as err:
        raise DataError(f"{path}:{record_line(path, err.index)}: {err.problem}") from None
    kept, failed = drop_failed(records)
    if failed:
        log.warning("%s: left out %d candidates whose generation failed", path, failed)
    log.info("%s: %d records, quality key %r", Path(path).name, len(kept), key)
    return kept, key
