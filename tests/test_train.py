"""jobs/train.py end to end: config errors before Ray, DeepSpeed on 2 CPU workers, resume."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from urg_ray import URG
from urg_ray.config import JobConfig, LossConfig
from urg_ray.train import build_model, warmup_linear

ROOT = Path(__file__).resolve().parents[1]


def run_job(*args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "jobs/train.py", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


def test_unknown_config_key_fails_before_ray_naming_key_and_file(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("train:\n  learning_rate: 0.1\n")
    proc = run_job("--config", str(config), timeout=120)
    assert proc.returncode == 2
    assert f"{config}: train.learning_rate: unknown key" in proc.stderr
    assert "Started a local Ray instance" not in proc.stdout + proc.stderr


def test_missing_data_file_fails_naming_path_and_config(tmp_path):
    config = tmp_path / "real.yaml"
    config.write_text(f"data:\n  synthetic: false\n  train_file: {tmp_path}/nope.jsonl\n")
    proc = run_job("--config", str(config), timeout=120)
    assert proc.returncode == 2
    assert f"{config}: data.train_file: {tmp_path}/nope.jsonl: no such file" in proc.stderr


def test_warmup_then_linear_decay():
    f = warmup_linear(warmup=4, total=12)
    assert [f(s) for s in (0, 3)] == [0.25, 1.0]
    assert f(8) == pytest.approx(0.5) and f(12) == 0.0


def test_gamma_is_off_then_ramps_to_its_value():
    cfg = LossConfig(gamma=5.0, rank_start_step=10, rank_ramp_steps=4)
    assert [cfg.gamma_at(s) for s in (0, 9, 10, 11, 13, 100)] == [0.0, 0.0, 1.25, 2.5, 5.0, 5.0]
    assert LossConfig(rank_start_step=0, rank_ramp_steps=0).gamma_at(0) == 5.0  # the paper: on from the start


def _latest_state(run_dir: Path) -> dict:
    states = sorted(run_dir.glob("checkpoint_*/train_state.json"), key=lambda p: json.loads(p.read_text())["step"])
    return json.loads(states[-1].read_text())


@pytest.mark.parametrize("method", ["pair_ranker", "summa_reranker", "simcls", "gen_fuser"])
def test_every_method_builds_from_the_shared_model_section(method):
    cfg = JobConfig.model_validate({"method": method, "model": {"encode_batch_size": 7, "top_k": 2}})
    model = build_model(cfg)
    assert model.config.method == method
    assert (model.config.encode_batch_size, model.config.top_k) == (7, 2)


def test_checkpoint_metric_defaults_to_the_models_own_and_rejects_what_it_cannot_report():
    from urg_ray.config import ConfigError
    from urg_ray.train import checkpoint_metric

    def job(method, metric=None):
        return JobConfig.model_validate({"method": method, "train": {"checkpoint_metric": metric}})

    assert [checkpoint_metric(job(m)) for m in ("urg", "simcls", "gen_fuser")] == [
        "dev_fused_bleu", "dev_top1_quality", "dev_fused_bleu"]
    assert checkpoint_metric(job("urg", "dev_spearman")) == "dev_spearman"
    with pytest.raises(ConfigError, match="train.checkpoint_metric: pair_ranker reports .* not dev_fused_bleu"):
        checkpoint_metric(job("pair_ranker", "dev_fused_bleu"))


@pytest.mark.slow
def test_deepspeed_training_checkpoints_reloads_and_resumes(tmp_path):
    """Two gloo workers, ZeRO-2: the export reloads with the scores the trained model had, a
    re-run with the same name continues from the saved step, and the loss goes down."""
    common = [
        "--set", f"train.storage_path={tmp_path}/runs", "--set", "train.name=t",
        "--set", f"data.train_file={tmp_path}/train.jsonl", "--set", f"data.dev_file={tmp_path}/dev.jsonl",
        "--set", "data.n_train=240", "--set", "data.n_dev=8", "--set", "train.dev_fuse_records=4",
        "--set", "train.checkpoint_every=10", "--set", "train.log_every=5", "--set", "train.warmup_steps=5",
        "--set", "train.lr=1e-3", "--out", str(tmp_path / "out"),
    ]
    first = run_job(*common, "--set", "train.max_steps=20")
    assert first.returncode == 0, first.stderr[-3000:]
    state = _latest_state(tmp_path / "runs" / "t")
    assert state["step"] == 20 and "resumed_from" not in state

    # the exported model holds exactly the weights training had: those of the best checkpoint's
    # DeepSpeed state (its fp32 master weights, which a resume continues from)
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    model = URG.from_pretrained(tmp_path / "out" / "model")
    summary = json.loads((tmp_path / "out" / "train_summary.json").read_text())
    assert summary["samples_per_s"] > 0 and summary["num_workers"] == 2
    trained = get_fp32_state_dict_from_zero_checkpoint(summary["best_checkpoint"], tag="deepspeed")
    exported = model.state_dict()
    assert set(trained) <= set(exported) and len(trained) > 0
    for name, weight in trained.items():
        torch.testing.assert_close(exported[name], weight, rtol=0, atol=0, msg=name)

    second = run_job(*common, "--set", "train.max_steps=30")
    assert second.returncode == 0, second.stderr[-3000:]
    state = _latest_state(tmp_path / "runs" / "t")
    assert state["resumed_from"] == 20 and state["step"] == 30
    steps = [h["step"] for h in state["history"]]
    assert steps == [5, 10, 15, 20, 25, 30]  # no step ran twice, none was skipped

    losses = [h["loss"] for h in state["history"]]
    assert all(math.isfinite(x) for x in losses)
    assert sum(losses[-2:]) / 2 < 0.9 * sum(losses[:2]) / 2  # first vs last windows of 10 steps


def _loop_that_loses_a_worker(config):
    """Worker 1 dies once (as a preempted node would), after the first checkpoint was reported
    (a second one being on storage means the first was registered)."""
    import os
    import threading
    import time

    import ray.train

    from urg_ray.train import train_loop_per_worker

    run_dir = Path(config["job"]["train"]["storage_path"]).resolve() / config["job"]["train"]["name"]
    marker = run_dir.parent / "killed-once"
    if ray.train.get_context().get_world_rank() == 1 and not marker.exists():
        def kill_after_two_checkpoints():
            while len(list(run_dir.glob("checkpoint_*/train_state.json"))) < 2:
                time.sleep(0.1)
            marker.touch()
            os._exit(1)

        threading.Thread(target=kill_after_two_checkpoints, daemon=True).start()
    train_loop_per_worker(config)


@pytest.mark.slow
def test_a_lost_worker_restarts_the_group_from_the_last_checkpoint(tmp_path):
    import ray
    from ray import cloudpickle  # Ray pickles with its own vendored copy

    from urg_ray.config import load_config
    from urg_ray.train import build_trainer, prepare_data

    cfg = load_config(None, [
        f"train.storage_path={tmp_path}/runs", "train.name=f", f"data.train_file={tmp_path}/train.jsonl",
        f"data.dev_file={tmp_path}/dev.jsonl", "data.n_train=320", "data.n_dev=4", "train.dev_fuse_records=0",
        "train.checkpoint_every=5", "train.max_steps=15", "train.max_failures=1",
    ])
    records = prepare_data(cfg)
    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import this test module
    ray.init(address="local", num_cpus=3, include_dashboard=False)  # before Ray Data would start one
    try:
        result = build_trainer(cfg, records, loop=_loop_that_loses_a_worker).fit()
    finally:
        ray.shutdown()
    assert result.error is None
    state = _latest_state(tmp_path / "runs" / "f")
    assert (tmp_path / "runs" / "killed-once").exists()
    assert state["step"] == 15 and state["resumed_from"] in (5, 10)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["pair_ranker", "gen_fuser"])
def test_a_baseline_trains_through_the_same_job(tmp_path, method):
    proc = run_job("--set", f"method={method}", "--set", f"train.storage_path={tmp_path}/runs", "--set", "train.name=b",
                   "--set", f"data.train_file={tmp_path}/train.jsonl", "--set", f"data.dev_file={tmp_path}/dev.jsonl",
                   "--set", "data.n_train=64", "--set", "data.n_dev=4", "--set", "train.dev_fuse_records=4",
                   "--set", "train.max_steps=4", "--set", "train.checkpoint_every=2", "--set", "train.log_every=2",
                   "--set", "model.target_max_length=16", "--out", str(tmp_path / "out"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    state = _latest_state(tmp_path / "runs" / "b")
    assert state["step"] == 4 and all(math.isfinite(h["loss"]) for h in state["history"])
    from urg_ray.protocol import load_model

    model = load_model(tmp_path / "out" / "model")
    assert model.config.method == method
    metric = "dev_fused_bleu" if method == "gen_fuser" else "dev_top1_quality"
    assert metric in state["metrics"]
