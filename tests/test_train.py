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
from urg_ray.train import best_checkpoint, build_model, load_engine_state, warmup_linear

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


def test_the_best_checkpoint_has_the_highest_metric_and_nan_never_wins():
    results = [("a", {"dev_fused_bleu": 10.0}), ("b", {"dev_fused_bleu": math.nan}), ("c", {"dev_fused_bleu": 12.5}),
               ("d", {"dev_top1_quality": 99.0}), ("e", {"dev_fused_bleu": 11.0})]
    assert best_checkpoint(results, "dev_fused_bleu") == ("c", {"dev_fused_bleu": 12.5})
    assert best_checkpoint([("b", {"m": math.nan}), ("x", {"m": 1.0})], "m")[0] == "x"  # NaN first still loses
    assert best_checkpoint([("b", {"m": math.nan})], "m") is None


def test_a_missing_deepspeed_state_is_an_error_not_a_warning(tmp_path):
    class Engine:  # DeepSpeed's load_checkpoint on a folder without the tag: a warning and (None, None)
        def load_checkpoint(self, folder, tag):
            return None, None

    with pytest.raises(FileNotFoundError, match=f"{tmp_path}: no DeepSpeed state under tag 'deepspeed'"):
        load_engine_state(Engine(), tmp_path)


def test_a_resume_with_changed_training_data_exits_2_before_ray(tmp_path):
    from urg_ray.config import load_config
    from urg_ray.resume import STATE_FILE
    from urg_ray.train import prepare_data, training_fingerprint

    overrides = [f"train.storage_path={tmp_path}/runs", "train.name=r", f"data.train_file={tmp_path}/train.jsonl",
                 f"data.dev_file={tmp_path}/dev.jsonl", "data.n_train=20", "data.n_dev=2"]
    cfg = load_config(None, overrides)
    checkpoint = tmp_path / "runs" / "r" / "checkpoint_000003"
    checkpoint.mkdir(parents=True)  # as a run over the original file leaves it
    (checkpoint / STATE_FILE).write_text(
        json.dumps({"step": 30, "fingerprint": training_fingerprint(cfg, prepare_data(cfg))}))
    lines = (tmp_path / "train.jsonl").read_text().splitlines(keepends=True)
    (tmp_path / "train.jsonl").write_text("".join(lines[1:] + lines[:1]))  # the same records, another order
    args = [x for o in overrides for x in ("--set", o)]
    proc = run_job(*args, timeout=300)
    assert proc.returncode == 2
    assert f"{checkpoint}: this checkpoint was saved by a different run: data.train_file.sha256: " in proc.stderr
    assert "data.train_file.size" not in proc.stderr  # only what changed is named
    assert "Started a local Ray instance" not in proc.stdout + proc.stderr


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
    trained = get_fp32_state_dict_from_zero_checkpoint(summary["exported_checkpoint"], tag="deepspeed")
    exported = model.state_dict()
    assert set(trained) <= set(exported) and len(trained) > 0
    for name, weight in trained.items():
        torch.testing.assert_close(exported[name], weight, rtol=0, atol=0, msg=name)

    # one more record: the saved data offset no longer means the same records
    train = tmp_path / "train.jsonl"
    first_line = json.loads(train.read_text().split("\n", 1)[0])
    with train.open("a") as f:
        f.write(json.dumps(first_line | {"id": "one-more"}) + "\n")
    refused = run_job(*common, "--set", "train.max_steps=30")
    assert refused.returncode == 2
    assert "this checkpoint was saved by a different run: data.train_file.sha256: " in refused.stderr
    assert "data.train_file.size: " in refused.stderr and "train.resume_mismatch_ok=true" in refused.stderr
    assert "Started a local Ray instance" not in refused.stdout + refused.stderr

    second = run_job(*common, "--set", "train.max_steps=30", "--set", "train.resume_mismatch_ok=true")
    assert second.returncode == 0, second.stderr[-3000:]
    state = _latest_state(tmp_path / "runs" / "t")
    assert state["resumed_from"] == 20 and state["step"] == 30
    steps = [h["step"] for h in state["history"]]
    assert steps == [5, 10, 15, 20, 25, 30]  # no step ran twice, none was skipped

    losses = [h["loss"] for h in state["history"]]
    assert all(math.isfinite(x) for x in losses)
    assert sum(losses[-2:]) / 2 < 0.9 * sum(losses[:2]) / 2  # first vs last windows of 10 steps


KILL_AT = 7  # the step (0-based, as the loop passes it to training_batch) at which worker 1 dies once


def _watched_loop(config):
    """train_loop_per_worker, watched from inside each worker: the (step, record ids) of every batch
    go to consumed.rank<r>.jsonl, the first batch of a resumed attempt dumps rank 0's weights before
    it trains them, and in the run named "killed" worker 1 exits (once, as a preempted node would)
    when the loop asks for step KILL_AT."""
    import os

    import ray.train
    from safetensors.torch import save_file

    import urg_ray.train as train

    t = config["job"]["train"]
    watch = Path(t["storage_path"]).resolve().parent / t["name"]
    watch.mkdir(exist_ok=True)
    rank = ray.train.get_context().get_world_rank()
    built, first_step = [], []
    build_model, training_batch = train.build_model, train.training_batch

    def keep_model(cfg):
        built.append(build_model(cfg))
        return built[-1]

    def watched_batch(packed, step, *args):
        if not first_step:
            first_step.append(step)
            if step > 0 and rank == 0:
                weights = {k: v.detach().clone().contiguous() for k, v in built[0].state_dict().items()}
                save_file(weights, watch / f"resumed_at_{step}.safetensors")
        if t["name"] == "killed" and step == KILL_AT and rank == 1 and not (watch / "killed").exists():
            (watch / "killed").touch()
            os._exit(1)
        records = training_batch(packed, step, *args)
        with open(watch / f"consumed.rank{rank}.jsonl", "a") as f:
            f.write(json.dumps({"step": step, "ids": [r.id for r in records]}) + "\n")
        return records

    train.build_model, train.training_batch = keep_model, watched_batch
    train.train_loop_per_worker(config)


def _consumed(folder: Path) -> dict[tuple[int, int], list[list[str]]]:
    """(step, rank) -> the record ids of each time that step ran on that rank."""
    out: dict[tuple[int, int], list[list[str]]] = {}
    for rank in (0, 1):
        for line in (folder / f"consumed.rank{rank}.jsonl").read_text().splitlines():
            entry = json.loads(line)
            out.setdefault((entry["step"], rank), []).append(entry["ids"])
    return out


@pytest.mark.slow
def test_a_worker_killed_at_a_step_resumes_with_the_checkpoint_weights_and_the_same_records(tmp_path):
    """Worker 1 dies at step 7 (checkpoints at 3 and 6): the group restarts from a checkpoint, its
    weights before the first resumed step are exactly the checkpoint's, every step trains on the
    records an uninterrupted run trains on (10 steps of 2 x 8 over 96 records: two epochs), and
    with the RNG state restored each step's loss is the uninterrupted run's."""
    import ray
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
    from ray import cloudpickle  # Ray pickles with its own vendored copy
    from safetensors.torch import load_file

    from urg_ray.config import load_config
    from urg_ray.train import build_trainer, prepare_data

    def config(name):
        return load_config(None, [
            f"train.storage_path={tmp_path}/runs", f"train.name={name}", f"data.train_file={tmp_path}/train.jsonl",
            f"data.dev_file={tmp_path}/dev.jsonl", "data.n_train=96", "data.n_dev=4", "train.dev_fuse_records=0",
            "train.checkpoint_every=3", "train.max_steps=10", "train.max_failures=1", "train.keep_checkpoints=4",
            "train.warmup_steps=2", "train.log_every=1", "model.dropout=0.1",  # dropout: the RNG state matters
        ])

    records = prepare_data(config("straight"))
    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import this test module
    ray.init(address="local", num_cpus=3, include_dashboard=False)
    try:
        for name in ("straight", "killed"):
            result = build_trainer(config(name), records, loop=_watched_loop).fit()
            assert result.error is None, name
    finally:
        ray.shutdown()
    assert (tmp_path / "killed" / "killed").exists()
    assert _latest_state(tmp_path / "runs" / "killed")["step"] == 10
    assert not list((tmp_path / "straight").glob("resumed_at_*"))

    # the records: each (step, rank) of the killed run, every time it ran, as in the straight run
    straight, killed = _consumed(tmp_path / "straight"), _consumed(tmp_path / "killed")
    assert sorted(straight) == [(step, rank) for step in range(10) for rank in (0, 1)]
    assert all(len(runs) == 1 for runs in straight.values())
    assert sorted(killed) == sorted(straight)
    for key, runs in killed.items():
        assert all(ids == straight[key][0] for ids in runs), key
    all_ids = {i for step in range(6) for rank in (0, 1) for i in straight[step, rank][0]}
    assert len(all_ids) == 96  # the first epoch takes every record once

    # the weights: what the resumed attempt held before its first step = the checkpoint's
    (resumed,) = (tmp_path / "killed").glob("resumed_at_*.safetensors")
    step = int(resumed.stem.removeprefix("resumed_at_"))
    assert step in (3, 6)
    # ran again: lost steps only
    assert all(len(killed[s, 0]) == (2 if step <= s < KILL_AT else 1) for s in range(KILL_AT))
    (folder,) = [p.parent for p in (tmp_path / "runs" / "killed").glob("checkpoint_*/train_state.json")
                 if json.loads(p.read_text())["step"] == step]
    saved = get_fp32_state_dict_from_zero_checkpoint(str(folder), tag="deepspeed")
    weights = load_file(resumed)
    assert len(saved) > 0 and set(saved) <= set(weights)
    for name, weight in saved.items():
        torch.testing.assert_close(weights[name], weight, rtol=0, atol=0, msg=name)
    fresh = build_model(config("killed")).state_dict()
    assert any(not torch.equal(fresh[name], weight) for name, weight in saved.items())  # training moved them

    # the same records, weights, optimiser, schedule and dropout masks (the RNG state): the same losses
    history = {name: _latest_state(tmp_path / "runs" / name)["history"] for name in ("straight", "killed")}
    assert [h["step"] for h in history["killed"]] == [h["step"] for h in history["straight"]] == list(range(1, 11))
    assert [h["loss"] for h in history["killed"]] == pytest.approx([h["loss"] for h in history["straight"]], rel=1e-5)


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
