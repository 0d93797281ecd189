"""urg_ray/resume.py and urg_ray/data_order.py: what a resume must match, the data order, the RNG state."""

import hashlib
import json
import random
from pathlib import Path

import pytest
import torch

from urg_ray.config import JobConfig
from urg_ray.data_order import batch_indices, steps_per_epoch
from urg_ray.resume import (STATE_FILE, ResumeMismatch, check_resume, check_saved_checkpoints, fingerprint, rng_state,
                            set_rng_state)


def _cfg(tmp_path, **train) -> JobConfig:
    return JobConfig.model_validate({"data": {"train_file": str(tmp_path / "train.jsonl")},
                                     "train": {"storage_path": str(tmp_path / "runs"), "name": "r", **train}})


def _save_checkpoint(cfg: JobConfig, fp: dict, name: str = "checkpoint_000000") -> None:
    folder = Path(cfg.train.storage_path) / cfg.train.name / name
    folder.mkdir(parents=True)
    (folder / STATE_FILE).write_text(json.dumps({"step": 10, "fingerprint": fp}))


def test_fingerprint_holds_the_file_bytes_hash_and_the_world_size(tmp_path):
    (tmp_path / "train.jsonl").write_bytes(b'{"id": 1}\n')
    fp = fingerprint(_cfg(tmp_path), "bleu", world_size=2)
    assert fp["data.train_file.sha256"] == hashlib.sha256(b'{"id": 1}\n').hexdigest()
    assert fp["data.train_file.size"] == 10
    assert (fp["world_size"], fp["train.lr"], fp["data.score_key"]) == (2, 1e-3, "bleu")


def test_resume_with_a_changed_train_file_is_refused_naming_it_and_proceeds_with_the_override(tmp_path):
    train = tmp_path / "train.jsonl"
    train.write_text('{"id": 1}\n')
    cfg = _cfg(tmp_path)
    _save_checkpoint(cfg, fingerprint(cfg, "bleu", 2))
    check_saved_checkpoints(cfg, fingerprint(cfg, "bleu", 2))  # the same run resumes

    train.write_text('{"id": 2}\n')  # same size, other bytes
    with pytest.raises(ResumeMismatch) as err:
        check_saved_checkpoints(cfg, fingerprint(cfg, "bleu", 2))
    assert "checkpoint_000000: this checkpoint was saved by a different run: data.train_file.sha256:" in str(err.value)
    assert "data.train_file.size" not in str(err.value)  # only what changed is named

    forced = _cfg(tmp_path, resume_mismatch_ok=True)
    check_saved_checkpoints(forced, fingerprint(forced, "bleu", 2))  # no error


@pytest.mark.parametrize("change, named", [
    ({"train": {"lr": 5e-4}}, "train.lr: 0.001 -> 0.0005"),
    ({"train": {"batch_size": 4}}, "train.batch_size: 8 -> 4"),
    ({"loss": {"gamma": 1.0}}, "loss.gamma: 5.0 -> 1.0"),
])
def test_a_changed_optimisation_or_order_field_is_refused(tmp_path, change, named):
    (tmp_path / "train.jsonl").write_text("{}\n")
    cfg = _cfg(tmp_path)
    saved = fingerprint(cfg, "bleu", 2)
    tree = cfg.model_dump()
    for section, fields in change.items():
        tree[section] |= fields
    with pytest.raises(ResumeMismatch, match=named.replace(".", r"\.")):
        check_resume(saved, fingerprint(JobConfig.model_validate(tree), "bleu", 2), "ckpt", allow_mismatch=False)


def test_world_size_and_quality_key_changes_are_refused_run_length_is_not(tmp_path):
    (tmp_path / "train.jsonl").write_text("{}\n")
    cfg = _cfg(tmp_path)
    saved = fingerprint(cfg, "bleu", 2)
    with pytest.raises(ResumeMismatch, match="world_size: 2 -> 1"):
        check_resume(saved, fingerprint(cfg, "bleu", 1), "ckpt", allow_mismatch=False)
    with pytest.raises(ResumeMismatch, match="data.score_key: 'bleu' -> 'bartscore'"):
        check_resume(saved, fingerprint(cfg, "bartscore", 2), "ckpt", allow_mismatch=False)
    longer = _cfg(tmp_path, max_steps=1000, epochs=3, checkpoint_every=7)
    check_resume(saved, fingerprint(longer, "bleu", 2), "ckpt", allow_mismatch=False)


def test_a_checkpoint_without_fingerprint_is_refused(tmp_path):
    (tmp_path / "train.jsonl").write_text("{}\n")
    cfg = _cfg(tmp_path)
    with pytest.raises(ResumeMismatch, match="no fingerprint"):
        check_resume(None, fingerprint(cfg, "bleu", 2), "ckpt", allow_mismatch=False)


def test_every_record_once_per_epoch_split_between_workers():
    n, world, batch = 50, 2, 4  # 6 global steps per epoch, 2 records left out
    per_epoch = steps_per_epoch(n, world, batch)
    assert per_epoch == 6
    for epoch in (0, 1):
        taken = [i for step in range(epoch * per_epoch, (epoch + 1) * per_epoch) for rank in range(world)
                 for i in batch_indices(step, n, world, rank, batch, seed=3)]
        assert len(taken) == 48 and len(set(taken)) == 48 and set(taken) <= set(range(n))
    epoch0 = [batch_indices(s, n, world, 0, batch, 3) for s in range(per_epoch)]
    epoch1 = [batch_indices(s, n, world, 0, batch, 3) for s in range(per_epoch, 2 * per_epoch)]
    assert epoch0 != epoch1  # reshuffled each epoch
    assert epoch0 != [batch_indices(s, n, world, 0, batch, 4) for s in range(per_epoch)]  # by the seed


def test_the_order_is_a_function_of_seed_and_epoch_only():
    # independently: the documented recipe, a str-seeded Python shuffle per epoch
    order = list(range(20))
    random.Random("urg_ray.epoch:7:1").shuffle(order)
    # epoch 1 starts at step 20 // (2 * 3) = 3; rank 1 takes the second 3 of the first global batch
    assert batch_indices(3, 20, 2, 1, 3, seed=7) == order[3:6]


def test_rng_state_round_trips_through_json():
    torch.manual_seed(11)
    random.seed(11)
    saved = json.loads(json.dumps(rng_state()))
    expected = (torch.rand(3), random.random(), torch.randint(0, 1000, (2,)))
    torch.manual_seed(0)
    random.seed(0)
    set_rng_state(saved)
    again = (torch.rand(3), random.random(), torch.randint(0, 1000, (2,)))
    torch.testing.assert_close(again[0], expected[0])
    assert again[1] == expected[1] and again[2].tolist() == expected[2].tolist()
