"""`fit` exports the checkpoint with the best `checkpoint_metric`, skipping NaN, or the last one, without Ray:
the trainer is replaced by one whose result lists local checkpoints (ray.train.Checkpoint)."""

import json
import math
from types import SimpleNamespace

import pytest
from ray.train import Checkpoint

from urg_ray import train
from urg_ray.config import JobConfig

NAN = math.nan


def fake_fit(monkeypatch, tmp_path, method: str, reported: list[dict], **train_fields) -> dict:
    """Run `fit` over checkpoints whose model/ folders say which one they are."""
    checkpoints = []
    for i, metrics in enumerate(reported):
        folder = tmp_path / f"checkpoint_{i}"
        (folder / train.MODEL_DIR).mkdir(parents=True)
        (folder / train.MODEL_DIR / "which.txt").write_text(str(i))
        checkpoints.append((Checkpoint.from_directory(folder), metrics))
    # a report after the last checkpoint (its metrics are Result.metrics, not the checkpoint's)
    result = SimpleNamespace(best_checkpoints=checkpoints, checkpoint=checkpoints[-1][0],
                             metrics={**reported[-1], "samples_per_s": 1.0})
    monkeypatch.setattr(train, "build_trainer", lambda *a, **kw: SimpleNamespace(fit=lambda: result))
    cfg = JobConfig.model_validate({"method": method, "train": train_fields})
    summary = train.fit(cfg, {"train": [], "dev": []}, tmp_path / "out")
    summary["exported"] = int((tmp_path / "out" / train.MODEL_DIR / "which.txt").read_text())
    return summary


def test_urg_keeps_the_best_fused_bleu_and_skips_nan(monkeypatch, tmp_path):
    reported = [{"dev_fused_bleu": NAN, "dev_top1_quality": 9.0},  # NaN first: a naive max() would keep it
                {"dev_fused_bleu": 20.0, "dev_top1_quality": 1.0},
                {"dev_fused_bleu": 35.0, "dev_top1_quality": 2.0},
                {"dev_fused_bleu": 30.0, "dev_top1_quality": 8.0}]
    summary = fake_fit(monkeypatch, tmp_path, "urg", reported)
    assert summary["exported"] == 2 and summary["exported_metrics"] == reported[2]
    assert summary["exported_checkpoint"] == str(tmp_path / "checkpoint_2")
    assert json.loads((tmp_path / "out" / "train_summary.json").read_text())["exported_metrics"] == reported[2]


def test_a_configured_metric_overrides_the_models_own(monkeypatch, tmp_path):
    reported = [{"dev_fused_bleu": 35.0, "dev_top1_quality": 2.0, "dev_spearman": NAN},
                {"dev_fused_bleu": 20.0, "dev_top1_quality": 1.0, "dev_spearman": 0.4},
                {"dev_fused_bleu": 30.0, "dev_top1_quality": 8.0, "dev_spearman": 0.1}]
    assert fake_fit(monkeypatch, tmp_path, "urg", reported, checkpoint_metric="dev_spearman")["exported"] == 1


@pytest.mark.parametrize("method,best", [("gen_fuser", 0), ("pair_ranker", 1)])
def test_genfuser_is_judged_by_fused_bleu_and_a_ranker_by_top1_quality(monkeypatch, tmp_path, method, best):
    reported = [{"dev_fused_bleu": 40.0, "dev_top1_quality": NAN},
                {"dev_fused_bleu": NAN, "dev_top1_quality": 7.0},
                {"dev_fused_bleu": 10.0, "dev_top1_quality": 3.0}]
    if method == "gen_fuser":
        reported = [{"dev_fused_bleu": m["dev_fused_bleu"]} for m in reported]
    else:
        reported = [{"dev_top1_quality": m["dev_top1_quality"]} for m in reported]
    assert fake_fit(monkeypatch, tmp_path, method, reported)["exported"] == best


def test_all_nan_falls_back_to_the_last_checkpoint(monkeypatch, tmp_path):
    reported = [{"dev_fused_bleu": NAN}, {"dev_fused_bleu": NAN}]
    assert fake_fit(monkeypatch, tmp_path, "urg", reported)["exported"] == 1


def test_export_last_takes_the_last_checkpoint_and_its_own_metrics(monkeypatch, tmp_path):
    reported = [{"dev_fused_bleu": 35.0, "step": 500}, {"dev_fused_bleu": 20.0, "step": 1000}]
    summary = fake_fit(monkeypatch, tmp_path, "urg", reported, export="last")
    assert summary["exported"] == 1 and summary["export"] == "last"
    assert summary["exported_metrics"] == reported[1]
