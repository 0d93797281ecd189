"""Judged real data into train/dev/test files (urg_ray/real_data.py), checked on hand-made files."""

import gzip
import json

import pytest

from urg_ray.config import DataConfig, JudgedDataConfig, load_config
from urg_ray.data import DataError, read_records, quality
from urg_ray.real_data import ensure_judged, group_candidates, read_judged, split_by_instruction


def judged_record(i: int, models=("a", "b", "c"), reference: str = "the reference answer") -> dict:
    return {"id": f"q/{i}", "instruction": f"question {i}", "input": "", "output": reference,
            "candidates": [{"model": m, "text": f"answer {m} {i}", "scores": {"judge_win": (j + 1) / 10}}
                           for j, m in enumerate(models)], "cmp_results": "null"}


def write_gz(path, rows) -> str:
    with gzip.open(path, "wt", encoding="utf-8") as f:
        for row in rows:
            f.write(row if isinstance(row, str) else json.dumps(row) + "\n")
    return str(path)


def test_split_is_by_instruction_seeded_and_disjoint():
    records = read_judged_rows([judged_record(i) for i in range(20)])
    first, again = split_by_instruction(records, [10, 4, 6], 0), split_by_instruction(records, [10, 4, 6], 0)
    ids = {name: [r.id for r in split] for name, split in first.items()}
    assert {k: len(v) for k, v in ids.items()} == {"train": 10, "dev": 4, "test": 6}
    assert len(set(ids["train"]) | set(ids["dev"]) | set(ids["test"])) == 20
    assert ids == {name: [r.id for r in split] for name, split in again.items()}
    assert ids != {name: [r.id for r in s] for name, s in split_by_instruction(records, [10, 4, 6], 1).items()}
    with pytest.raises(DataError, match="needs 21"):
        split_by_instruction(records, [10, 5, 6], 0)


def read_judged_rows(rows):
    from urg_ray.data import Record

    return [Record.model_validate(r) for r in rows]


def test_group_candidates_keeps_every_answer_once():
    record = read_judged_rows([judged_record(0, models=tuple("abcdefghi"))])
    groups = group_candidates(record, 4, seed=0)
    assert [g.id for g in groups] == ["q/0#0", "q/0#1"]  # 4 + 5: a lone last candidate joins the one before
    assert [len(g.candidates) for g in groups] == [4, 5]
    assert sorted(c.model for g in groups for c in g.candidates) == list("abcdefghi")


def test_bad_line_names_file_line_and_field(tmp_path):
    bad = judged_record(1)
    bad["candidates"][0].pop("text")
    path = write_gz(tmp_path / "j.jsonl.gz", [judged_record(0), bad])
    with pytest.raises(DataError, match=r"j\.jsonl\.gz:2: field 'candidates\.0\.text'"):
        read_judged(path)


def test_ensure_judged_writes_scored_splits_with_extra_answers_in_train_only(tmp_path):
    source = write_gz(tmp_path / "judged.jsonl.gz", [judged_record(i) for i in range(10)])
    extra = write_gz(tmp_path / "extra.jsonl.gz", [judged_record(i, models=("x", "y")) for i in range(10)])
    data = DataConfig(train_file=str(tmp_path / "train.jsonl"), dev_file=str(tmp_path / "dev.jsonl"),
                      test_file=str(tmp_path / "test.jsonl"), synthetic=False, score_keys=["judge_win"],
                      judged=JudgedDataConfig(source_file=source, extra_file=extra, split=[6, 2, 2],
                                              metrics=["bleu", "rougeL"]))
    ensure_judged(data)
    train, dev, test = (read_records(getattr(data, f"{s}_file")) for s in ("train", "dev", "test"))
    assert (len(train), len(dev), len(test)) == (6, 2, 2)
    assert all(sorted(c.model for c in r.candidates) == ["a", "b", "c", "x", "y"] for r in train)
    for r in dev + test:
        assert [c.model for c in r.candidates] == ["a", "b", "c"]  # the evaluated ensemble only
        assert quality(r, ["judge_win"])[1] == pytest.approx([0.1, 0.2, 0.3])
        for c in r.candidates:
            assert set(c.scores) == {"judge_win", "bleu", "rougeL"}
            assert 0 <= c.scores["rougeL"] <= 1
    assert all(set(c.scores) == {"judge_win"} for r in train for c in r.candidates)  # train not scored by default
    (tmp_path / "train.jsonl").write_text("")  # existing files are kept: prepared on first use only
    ensure_judged(data)
    assert (tmp_path / "train.jsonl").read_text() == ""


def test_committed_config_reads_the_shared_data_by_relative_path():
    cfg = load_config("jobs/configs/real-minilm.yaml")
    assert cfg.model.preset == "minilm" and cfg.data.score_keys == ["judge_win"] and not cfg.data.synthetic
    assert cfg.data.judged.split == [445, 60, 100]
    assert cfg.data.judged.source_file == "../shared/data/alpaca_eval_judged.jsonl.gz"
