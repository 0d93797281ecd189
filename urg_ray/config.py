"""Typed configuration for every job: pydantic models loaded from YAML, with `--set` overrides.

One YAML per model size lives in `jobs/configs/`; every field has a default that runs on a
CPU laptop (the `tiny` preset). Unknown keys and bad values fail before anything starts, with
an error that names the key and the file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal, Sequence

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError


class ConfigError(ValueError):
    """A bad config file or override; the message names the file and the key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(_Strict):
    preset: str = "tiny"  # a preset name (urg_ray.presets.PRESETS) or a save_pretrained() folder
    random_init: bool = False  # hub presets only: same architecture, random weights (benchmarks)
    top_k: int = Field(3, ge=1)  # k: candidates fused (paper §4.1)
    source_max_length: int = Field(128, ge=1)  # tokens of x kept per pair
    candidate_max_length: int = Field(128, ge=1)  # tokens of y_i kept per pair
    target_max_length: int = Field(128, ge=2)  # tokens of the reference kept for training
    dropout: float | None = Field(None, ge=0, lt=1)  # overrides the backbone's dropout_rate
    encode_batch_size: int | None = Field(32, ge=1)  # pairs per encoder call (None: all at once)
    # learned absolute positions on top of T5's relative bias (urg_ray/positions.py); None: the
    # preset decides (on for random-init tiny, off for pretrained flan-t5, which already copies)
    absolute_positions: bool | None = None


class LossConfig(_Strict):
    """Eq. 7-11. `rank_loss: false` and `erm: false` are the paper's Table 3 ablations."""

    gamma: float = Field(5.0, ge=0)  # weight of L_rank
    beta: float = Field(2.0, ge=0)  # weight of L_kl
    top_m: int = Field(32, ge=1)  # m: tokens of p kept for the KL (eq. 8)
    tau: float = Field(2.0, gt=0)  # temperature of eq. 8
    rank_margin: float = Field(0.1, ge=0)  # eq. 7 as printed (0) is minimised by constant scores
    rank_min_gap: float = Field(0.0, ge=0)  # pairs whose ground-truth qualities differ by at most this give no pair
    normalize_scores: bool = True  # rank on s_i * N / sum(s): raw scores are ~1/(N*L) in size
    kl_detach_p: bool = True  # p (top-k) is the teacher: no gradient through it
    select_by: Literal["ground_truth", "predicted"] = "ground_truth"  # top-k / worst in training
    rank_loss: bool = True  # False: "w/o ranking loss"
    erm: bool = True  # False: "w/o ERM" (no KL, no top-k + worst CE)
    # gamma is 0 until rank_start_step, then ramps linearly to `gamma` over rank_ramp_steps:
    # a random-init fuser that does not copy yet gives the ranker nothing to learn from
    # (docs/design.md). Pretrained flan-t5 already copies: its configs set 0 and 0 (the paper).
    rank_start_step: int = Field(400, ge=0)
    rank_ramp_steps: int = Field(300, ge=0)

    def gamma_at(self, step: int) -> float:
        if step < self.rank_start_step:
            return 0.0
        ramp = (step - self.rank_start_step + 1) / self.rank_ramp_steps if self.rank_ramp_steps else 1.0
        return self.gamma * min(1.0, ramp)


class JudgedDataConfig(_Strict):
    """A judged MixInstruct file split by instruction into the three files (urg_ray/real_data.py)."""

    source_file: str = "../shared/data/alpaca_eval_judged.jsonl.gz"
    extra_file: str | None = None  # more judged answers to the same ids: train records only
    split: list[int] = Field(default_factory=lambda: [445, 60, 100], min_length=3, max_length=3)  # train/dev/test
    seed: int = 0
    train_candidates: int | None = Field(None, ge=2)  # train records cut into groups of this many candidates
    scored_splits: list[Literal["train", "dev", "test"]] = Field(default_factory=lambda: ["dev", "test"])
    metrics: list[Literal["bleu", "rouge1", "rouge2", "rougeL", "rougeLsum", "bertscore"]] = Field(
        default_factory=lambda: ["bleu", "rouge1", "rouge2", "rougeL", "rougeLsum", "bertscore"])


class DataConfig(_Strict):
    train_file: str = "data/synthetic/train.jsonl"
    dev_file: str = "data/synthetic/dev.jsonl"
    test_file: str = "data/synthetic/test.jsonl"
    score_keys: list[str] = Field(default_factory=lambda: ["bartscore", "bleu"], min_length=1)
    synthetic: bool = True  # make the synthetic files when they are missing (the CPU default)
    n_candidates: int = Field(8, ge=1)  # synthetic only
    n_train: int = Field(12000, ge=1)  # synthetic only
    n_dev: int = Field(200, ge=1)  # synthetic only
    n_test: int = Field(200, ge=1)  # synthetic only
    seed: int = 0
    judged: JudgedDataConfig | None = None  # write the three files from a judged file when missing


class TrainConfig(_Strict):
    name: str = "urg-tiny"  # a re-run with the same name and storage_path resumes
    storage_path: str = "runs"
    num_workers: int = Field(2, ge=1)
    use_gpu: bool = False
    cpus_per_worker: float = Field(1, gt=0)
    batch_size: int = Field(8, ge=1)  # per worker; global batch = batch_size * num_workers
    epochs: float = Field(1.0, gt=0)
    max_steps: int | None = Field(None, ge=1)  # overrides epochs when set
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    warmup_steps: int = Field(100, ge=0)  # then linear decay to 0 (paper §4.1)
    grad_clip: float = Field(1.0, gt=0)
    bf16: bool = False
    # forward under torch.autocast(bfloat16) with fp32 weights and optimizer: only on CPUs with bf16
    # matmul instructions (AMX or AVX512-BF16; urg_ray.train.cpu_has_bf16), else ignored with a warning
    bf16_autocast: bool = False
    zero_stage: Literal[0, 1, 2] = 2
    log_every: int = Field(25, ge=1)
    checkpoint_every: int = Field(250, ge=1)  # evaluates on dev, then saves
    keep_checkpoints: int = Field(2, ge=1)
    max_failures: int = Field(2, ge=0)  # worker failures survived by restarting from the last checkpoint
    # picks the best checkpoint; None: the model's own (URG and GenFuser dev_fused_bleu, rankers dev_top1_quality)
    checkpoint_metric: Literal["dev_fused_bleu", "dev_top1_quality", "dev_spearman"] | None = None
    export: Literal["best", "last"] = "best"  # the checkpoint copied to OUT/model: best by that metric, or the last
    dev_max_records: int = Field(200, ge=1)  # ranked at each evaluation
    dev_fuse_records: int = Field(64, ge=0)  # of those, fused (greedy) for dev_fused_bleu
    resume_from: str | None = None  # a checkpoint folder; by default a re-run resumes its own
    # resume although the checkpoint was saved with another config, data or world size (urg_ray/resume.py)
    resume_mismatch_ok: bool = False
    seed: int = 0


class JobConfig(_Strict):
    method: Literal["urg", "pair_ranker", "summa_reranker", "simcls", "gen_fuser"] = "urg"
    model: ModelConfig = Field(default_factory=ModelConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)


def _parse_override(item: str) -> tuple[list[str], Any]:
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {item!r}: expected key=value, e.g. train.lr=1e-4")
    return key.strip().split("."), yaml.safe_load(raw) if raw.strip() else ""


def _apply(tree: dict, keys: list[str], value: Any, item: str) -> None:
    node = tree
    for k in keys[:-1]:
        node = node.setdefault(k, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {item!r}: {k!r} is not a section")
    node[keys[-1]] = value


def load_config(path: str | os.PathLike | None = None, overrides: Sequence[str] = (),
                schema: type[BaseModel] = JobConfig) -> Any:
    """Load `path` (YAML; None means all defaults), apply `key=value` overrides, validate."""
    source = str(path) if path else "<defaults>"
    tree: dict = {}
    if path:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{path}: config file not found")
        try:
            tree = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: invalid YAML: {err}") from None
        if not isinstance(tree, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level")
    for item in overrides:
        _apply(tree, *_parse_override(item), item)
    try:
        return schema.model_validate(tree)
    except ValidationError as err:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc']))}: {'unknown key' if e['type'] == 'extra_forbidden' else e['msg']}"
            for e in err.errors()
        )
        raise ConfigError(f"{source}{' (with --set overrides)' if overrides else ''}: {problems}") from None
