"""urg_ray/train_input.py: every record checked on the driver, one quality key per file."""

import subprocess
import sys
from pathlib import Path

import pytest

from conftest import make_record
from urg_ray.data import DataError, write_records
from urg_ray.train_input import file_score_key, read_training_file

ROOT = Path(__file__).resolve().parents[1]


def _scores(*keys):
    return [{k: 1.0 + j for k in keys} for j in range(4)]


def test_the_key_is_the_first_every_candidate_of_every_record_has():
    records = [make_record(0, scores=_scores("bartscore", "bleu")), make_record(1, scores=_scores("bleu"))]
    # bartscore is in record 0 only: quality() would pick it there and bleu in record 1
    assert file_score_key(records, ["bartscore", "bleu"]) == "bleu"
    assert file_score_key(records[:1], ["bartscore", "bleu"]) == "bartscore"


def test_a_record_at_a_later_line_without_the_key_is_named_by_file_line_and_field(tmp_path):
    records = [make_record(i, scores=_scores("bleu")) for i in range(5)]
    records[3].candidates[2].scores = {"rougeL": 0.5}
    path = tmp_path / "train.jsonl"
    write_records(path, records)
    with pytest.raises(DataError) as err:
        read_training_file(path, ["bartscore", "bleu"])
    assert str(err.value).startswith(f"{path}:4: field 'candidates.2.scores': no 'bleu' score (has ['rougeL'])")


def test_line_numbers_count_blank_lines_and_failed_candidates_are_not_judged(tmp_path):
    records = [make_record(i, scores=_scores("bleu")) for i in range(3)]
    failed = records[1].candidates[0]
    failed.scores, failed.text = {}, ""
    setattr(failed, "error", "timeout")  # a failed generation carries no scores: not a missing key
    path = tmp_path / "train.jsonl"
    write_records(path, records)
    kept, key = read_training_file(path, ["bleu"])
    assert key == "bleu" and [len(r.candidates) for r in kept] == [4, 3, 4]

    lines = path.read_text().splitlines()
    records[2].candidates[1].scores = {"rouge1": 0.5}
    path.write_text(lines[0] + "\n\n" + lines[1] + "\n" + records[2].model_dump_json() + "\n")
    with pytest.raises(DataError, match=rf"^{path}:4: field 'candidates.1.scores': no 'bleu' score"):
        read_training_file(path, ["bleu"])


def test_jobs_train_exits_2_before_ray_naming_file_line_field(tmp_path):
    records = [make_record(i, scores=_scores("bleu")) for i in range(6)]
    records[4].candidates[1].scores = {"bertscore": 0.9}
    train, dev = tmp_path / "train.jsonl", tmp_path / "dev.jsonl"
    write_records(train, records)
    write_records(dev, records[:2])
    proc = subprocess.run(
        [sys.executable, "jobs/train.py", "--set", "data.synthetic=false", "--set", f"data.train_file={train}",
         "--set", f"data.dev_file={dev}", "--set", f"train.storage_path={tmp_path}/runs"],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert f"{train}:5: field 'candidates.1.scores': no 'bleu' score" in proc.stderr
    assert "Started a local Ray instance" not in proc.stdout + proc.stderr
    assert not (tmp_path / "runs").exists()
