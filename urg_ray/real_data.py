"""Real judged answers as training data: split by instruction, score, write train/dev/test files.

The input is a MixInstruct file whose candidates carry a judge's label (e.g. AlpacaEval's
`judge_win`, ../shared/data/README.md). `prepare_judged` splits its records by instruction with a
seeded shuffle, adds the answers of an optional extra file to the train records only (more
comparisons per instruction; the evaluated ensemble stays the source file's), cuts each train
record's candidates into seeded groups of `train_candidates` (a record each: a bounded encoder
batch, every answer still seen once an epoch), and scores the candidates of `scored_splits`
against the reference with the scorer jobs/score.py's actors run (urg_ray.scoring).
"""

from __future__ import annotations

import gzip
import json
import logging
import random
from pathlib import Path

from pydantic import ValidationError

from urg_ray.config import DataConfig, JudgedDataConfig
from urg_ray.data import DataError, Record, write_records

log = logging.getLogger(__name__)
SPLITS = ("train", "dev", "test")


def read_judged(path: str | Path) -> list[Record]:
    """Records of a JSONL file, gzip-compressed when it ends in .gz; errors name file:line:field."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file (the judged data: see ../shared/data/README.md, or --set "
                        f"data.judged.source_file=FILE)")
    opener = gzip.open if path.suffix == ".gz" else open
    records = []
    with opener(path, "rt", encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                records.append(Record.model_validate(json.loads(line)))
            except json.JSONDecodeError as err:
                raise DataError(f"{path}:{number}: not JSON: {err.msg}") from None
            except ValidationError as err:
                first = err.errors()[0]
                field = ".".join(map(str, first["loc"])) or "<record>"
                raise DataError(f"{path}:{number}: field {field!r}: {first['msg']}") from None
    return records


def split_by_instruction(records: list[Record], sizes: list[int], seed: int) -> dict[str, list[Record]]:
    """train/dev/test of the given sizes, by a seeded shuffle of the records (one per instruction)."""
    if len({r.id for r in records}) != len(records):
        raise DataError("the judged file repeats a record id; one record per instruction is expected")
    if sum(sizes) > len(records):
        raise DataError(f"split {sizes} needs {sum(sizes)} records; the file has {len(records)}")
    order = list(records)
    random.Random(seed).shuffle(order)
    splits, start = {}, 0
    for name, size in zip(SPLITS, sizes):
        splits[name], start = order[start:start + size], start + size
    return splits


def add_extra_answers(records: list[Record], extra: list[Record]) -> list[Record]:
    """Each record with the extra file's candidates for the same id appended (same reference)."""
    by_id = {r.id: r for r in extra}
    out = []
    for r in records:
        more = by_id.get(r.id)
        if more is not None and more.output != r.output:
            raise DataError(f"record {r.id}: the extra file's reference differs from the source file's")
        out.append(r.model_copy(update={"candidates": r.candidates + (more.candidates if more else [])}))
    return out


def group_candidates(records: list[Record], size: int | None, seed: int) -> list[Record]:
    """Each record's candidates shuffled (seeded) and cut into records of at most `size`
    (ids `<id>#<k>`); a last group of one candidate, which ranks nothing, joins the group before."""
    if size is None:
        return records
    rng, out = random.Random(seed), []
    for r in records:
        order = list(r.candidates)
        rng.shuffle(order)
        groups = [order[i:i + size] for i in range(0, len(order), size)]
        if len(groups) > 1 and len(groups[-1]) == 1:
            lone = groups.pop()
            groups[-1] += lone
        out += [r.model_copy(update={"id": f"{r.id}#{k}", "candidates": g}) for k, g in enumerate(groups)]
    return out


def score_records(records: list[Record], metrics: list[str]) -> None:
    """Fill each candidate's `scores` with `metrics` against the record's reference, in place."""
    from urg_ray.generate_config import ScoreConfig
    from urg_ray.scoring import score_candidates

    pairs = [(c, r.output) for r in records for c in r.candidates]
    scores = score_candidates([c.text for c, _ in pairs], [ref for _, ref in pairs], ScoreConfig(metrics=metrics))
    for (candidate, _), values in zip(pairs, scores):
        candidate.scores.update(values)


def prepare_judged(data: DataConfig) -> dict[str, int]:
    """Write data.train_file / dev_file / test_file from `data.judged`; returns records per split."""
    cfg: JudgedDataConfig = data.judged
    splits = split_by_instruction(read_judged(cfg.source_file), cfg.split, cfg.seed)
    if cfg.extra_file:
        splits["train"] = add_extra_answers(splits["train"], read_judged(cfg.extra_file))
    splits["train"] = group_candidates(splits["train"], cfg.train_candidates, cfg.seed)
    for name in cfg.scored_splits:
        log.info("scoring %d %s records (%s)", len(splits[name]), name, ", ".join(cfg.metrics))
        score_records(splits[name], cfg.metrics)
    files = {"train": data.train_file, "dev": data.dev_file, "test": data.test_file}
    for name, records in splits.items():
        write_records(files[name], records)
    return {name: len(records) for name, records in splits.items()}


def ensure_judged(data: DataConfig) -> None:
    """Prepare the split files on first use (when any is missing)."""
    if data.judged is not None and not all(Path(f).is_file() for f in (data.train_file, data.dev_file, data.test_file)):
        counts = prepare_judged(data)
        log.info("prepared %s from %s", counts, data.judged.source_file)
