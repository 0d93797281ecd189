"""Training on Ray Train with DeepSpeed ZeRO-2: the only module that touches either.

Reads top to bottom: data preparation (on the driver, before Ray starts, so a bad record or a
resume from another run's checkpoint fails fast), the per-worker loop (set-up, resume, train,
evaluate, checkpoint), the trainer factory, and `fit`, which runs it and exports the best
checkpoint as a `URG.from_pretrained` folder. The records of each step are a function of the
step (urg_ray/data_order.py), and a checkpoint carries what a resume must match and each
worker's RNG state (urg_ray/resume.py), so a resumed run trains as the uninterrupted one would.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from urg_ray import resume
from urg_ray.config import ConfigError, JobConfig
from urg_ray.data import Record, write_records
from urg_ray.data_order import batch_indices, steps_per_epoch
from urg_ray.durable import replace_folder
from urg_ray.protocol import RankerFuser, mean, model_class
from urg_ray.resume import STATE_FILE
from urg_ray.train_input import file_score_key, read_training_file

MODEL_DIR = "model"  # inside each checkpoint: the safetensors export
DS_TAG = "deepspeed"  # inside each checkpoint: DeepSpeed's own (trusted, self-written) state
# Workers log through `logging`: Ray Train forwards it to the driver once (its patched print
# tees to stdout as well when another library has wrapped it, printing each line twice).
log = logging.getLogger("urg_ray.train")


# ---- data: validated on the driver ----------------------------------------------------------
def prepare_data(cfg: JobConfig, source: str = "<defaults>") -> dict[str, list[Record]]:
    """Read train and dev files (making the synthetic ones first when configured and missing),
    every record checked, and refuse a resume from checkpoints another run saved."""
    try:  # a metric the model cannot report fails here, not after training
        checkpoint_metric(cfg)
    except ConfigError as err:
        raise ConfigError(f"{source}: {err}") from None
    d = cfg.data
    if d.synthetic:  # the test split too, so jobs/evaluate.py finds it later
        from urg_ray.synthetic import make_dataset

        for path, n, seed in [(d.train_file, d.n_train, d.seed), (d.dev_file, d.n_dev, d.seed + 1),
                              (d.test_file, d.n_test, d.seed + 2)]:
            if not Path(path).is_file():
                write_records(path, make_dataset(n, n_candidates=d.n_candidates, seed=seed, id_prefix=Path(path).stem))
    if d.judged is not None:  # real judged answers: split and scored on first use
        from urg_ray.real_data import ensure_judged

        ensure_judged(d)
    files = {"train": d.train_file, "dev": d.dev_file}
    records = {}
    for split, path in files.items():
        if not Path(path).is_file():
            raise ConfigError(f"{source}: data.{split}_file: {path}: no such file")
        records[split], _ = read_training_file(path, d.score_keys)
    resume.check_saved_checkpoints(cfg, training_fingerprint(cfg, records))
    return records


def training_fingerprint(cfg: JobConfig, records: dict[str, list[Record]]) -> dict:
    """What a resume of this run must match (urg_ray/resume.py)."""
    return resume.fingerprint(cfg, file_score_key(records["train"], cfg.data.score_keys), cfg.train.num_workers)


def pack_records(records: list[Record]) -> dict[str, np.ndarray]:
    """Records as one UTF-8 byte array plus offsets: Ray's object store hands numpy arrays to
    every worker on a node without a copy, and a worker decodes only the records it trains on."""
    blobs = [r.model_dump_json().encode() for r in records]
    return {"bytes": np.frombuffer(b"".join(blobs), dtype=np.uint8),
            "offsets": np.cumsum([0] + [len(b) for b in blobs])}


def training_batch(packed: dict[str, np.ndarray], step: int, world: int, rank: int, batch_size: int,
                   seed: int) -> list[Record]:
    """The records worker `rank` trains on at global `step` (urg_ray/data_order.py)."""
    offsets = packed["offsets"]
    indices = batch_indices(step, len(offsets) - 1, world, rank, batch_size, seed)
    return [Record.model_validate_json(packed["bytes"][offsets[i]:offsets[i + 1]].tobytes()) for i in indices]


def build_model(cfg: JobConfig) -> RankerFuser:
    """The model a config asks for: URG or a peer baseline, all under one protocol."""
    overrides = cfg.model.model_dump(exclude={"preset"})
    model = model_class(cfg.method).from_pretrained(cfg.model.preset, seed=cfg.train.seed, **overrides)
    model.configure_loss(cfg.loss)
    return model


def checkpoint_metric(cfg: JobConfig) -> str:
    """The dev metric that picks the best checkpoint: as configured, else the model's own."""
    cls = model_class(cfg.method)
    metric = cfg.train.checkpoint_metric or cls.checkpoint_metric
    if metric not in cls.dev_metric_names():
        raise ConfigError(f"train.checkpoint_metric: {cfg.method} reports {', '.join(cls.dev_metric_names())}, "
                          f"not {metric}")
    return metric


# ---- the per-worker loop --------------------------------------------------------------------
def deepspeed_config(cfg: JobConfig) -> dict:
    t = cfg.train
    return {
        "train_micro_batch_size_per_gpu": t.batch_size,
        "gradient_accumulation_steps": 1,
        "gradient_clipping": t.grad_clip,
        "zero_optimization": {"stage": t.zero_stage, "contiguous_gradients": True},
        "zero_allow_untested_optimizer": True,  # a torch AdamW: no fused_adam JIT build on CPU
        "bf16": {"enabled": t.bf16},
        "steps_per_print": 1 << 30,  # we log ourselves
    }


def warmup_linear(warmup: int, total: int):
    """LR multiplier: linear warm-up to the peak, then linear decay to 0 (paper §4.1)."""
    return lambda step: (step + 1) / warmup if step < warmup else max(0.0, (total - step) / max(1, total - warmup))


def quiet_worker(rank: int, verbose: bool) -> None:
    """The console shows rank 0's `urg_ray` log lines and warnings; everything else a worker
    writes goes to its Ray log file (`--verbose`: to the console as well)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler.setLevel(logging.INFO if rank == 0 or verbose else logging.WARNING)
    package = logging.getLogger("urg_ray")
    package.handlers[:] = [handler]
    package.setLevel(logging.INFO)
    package.propagate = False
    if not verbose:
        # Ray Train turns other libraries' prints into root-logger INFO records (DeepSpeed's op builds)
        logging.getLogger().setLevel(logging.WARNING)
        # deprecations inside DeepSpeed and torch.distributed, not ours to fix
        warnings.filterwarnings("ignore", category=FutureWarning, module="torch.distributed")
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # "Writing model shards" at every checkpoint


def cpu_has_bf16() -> bool:
    """Whether this CPU multiplies bf16 in hardware (AMX or AVX512-BF16, from /proc/cpuinfo's
    flags): elsewhere bf16 autocast is emulated and slower than fp32."""
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return False
    return bool(flags & {"amx_bf16", "avx512_bf16"})


def autocast_bf16(cfg: JobConfig) -> bool:
    """train.bf16_autocast where it helps: CPU training on a CPU with bf16 matmuls."""
    t = cfg.train
    if not t.bf16_autocast:
        return False
    if t.use_gpu or not cpu_has_bf16():
        log.warning("train.bf16_autocast ignored: %s", "CPU only" if t.use_gpu else "this CPU has no bf16 matmul "
                    "(amx_bf16 / avx512_bf16)")
        return False
    return True


def rng_state_file(rank: int) -> str:
    return f"rng_state.rank{rank}.json"  # inside each checkpoint, one per worker


def load_engine_state(engine, folder: str | os.PathLike) -> None:
    """Weights, optimiser and scheduler from a checkpoint. DeepSpeed only warns and returns
    (None, None) when the state is missing: a resume from fresh weights must not pass silently."""
    loaded, _ = engine.load_checkpoint(str(folder), tag=DS_TAG)
    if loaded is None:
        raise FileNotFoundError(f"{folder}: no DeepSpeed state under tag {DS_TAG!r}: cannot resume from it")


def train_loop_per_worker(config: dict[str, Any]) -> None:
    import ray.train
    import ray.train.torch
    import torch.distributed as dist

    cfg = JobConfig.model_validate(config["job"])
    t = cfg.train
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    verbose = config.get("verbose", False)
    quiet_worker(rank, verbose)
    torch.manual_seed(t.seed + rank)
    os.environ.setdefault("DS_ACCELERATOR", "cuda" if t.use_gpu else "cpu")  # no detection warning
    import deepspeed

    # -- set-up
    model = build_model(cfg).train()
    model.collator.score_keys = (config["score_keys"]["train"],)  # the file's one quality key
    optimizer = torch.optim.AdamW(model.parameters(), lr=t.lr, weight_decay=t.weight_decay)
    train_data = ray.get(config["train"])
    per_epoch = steps_per_epoch(len(train_data["offsets"]) - 1, world, t.batch_size)
    if per_epoch == 0:
        raise ValueError(f"{len(train_data['offsets']) - 1} training records < one batch on each of {world} workers")
    total = t.max_steps or math.ceil(t.epochs * per_epoch)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_linear(t.warmup_steps, total))
    engine, *_ = deepspeed.initialize(model=model.to(ray.train.torch.get_device()), optimizer=optimizer,
                                      lr_scheduler=scheduler, config=deepspeed_config(cfg))
    dev = [Record.model_validate_json(s) for s in config["dev"]][: t.dev_max_records]
    terms = ("loss", *model.log_terms)  # averaged over each log window
    bf16 = autocast_bf16(cfg)

    # -- resume: the run's own latest checkpoint, else an explicit folder
    step, state = 0, {"history": []}
    checkpoint = ray.train.get_checkpoint() or (ray.train.Checkpoint(t.resume_from) if t.resume_from else None)
    if checkpoint:
        with checkpoint.as_directory() as d:
            state = json.loads((Path(d) / STATE_FILE).read_text())
            resume.check_resume(state.get("fingerprint"), config["fingerprint"], checkpoint.path, t.resume_mismatch_ok)
            load_engine_state(engine, d)
            rng_file = Path(d) / rng_state_file(rank)
            if rng_file.is_file():  # absent only in a forced resume onto more workers
                resume.set_rng_state(json.loads(rng_file.read_text()))
        step = state["resumed_from"] = state["step"]
        if rank == 0:
            log.info(f"[train] resumed from step {step} ({checkpoint.path})")
    state["fingerprint"] = config["fingerprint"]  # after a forced resume, this run's

    def save(metrics_now: dict) -> None:
        with tempfile.TemporaryDirectory() as d:
            engine.save_checkpoint(d, tag=DS_TAG)  # collective: every rank writes its ZeRO shard
            (Path(d) / rng_state_file(rank)).write_text(json.dumps(resume.rng_state()))
            if rank == 0:
                model.save_pretrained(Path(d) / MODEL_DIR)
                state.update(step=step, metrics=metrics_now)
                (Path(d) / STATE_FILE).write_text(json.dumps(state))
            ray.train.report(metrics_now, checkpoint=ray.train.Checkpoint.from_directory(d))

    def dev_metrics() -> dict:
        out = [model.dev_metrics(dev, [config["score_keys"]["dev"]], fuse_records=t.dev_fuse_records)
               if rank == 0 else None]
        if world > 1:
            dist.broadcast_object_list(out, src=0)  # every rank reports the same numbers
        return out[0]

    def log_step(entry: dict, epoch: int) -> None:
        done = (step - first_step) / (total - first_step)
        eta = (time.perf_counter() - started) * (1 - done) / done
        parts = " ".join(f"{term.removesuffix('_loss')} {entry[term]:.4f}" for term in model.log_terms)
        shown = f"loss {entry['loss']:.4f}" + (f" ({parts})" if parts else "")
        if model.uses_gamma:
            shown += f" | gamma {cfg.loss.gamma_at(step):.2f}"
        log.info(f"[train] step {step}/{total} ({100 * step / total:.0f}%, eta {eta / 60:.1f} min) epoch {epoch} | "
                 f"{shown} | lr {scheduler.get_last_lr()[0]:.2e} | {entry['samples_per_s']:.1f} samples/s")

    # -- train: the records of each step come from the step alone (urg_ray/data_order.py)
    window = dict.fromkeys(terms, 0.0) | {"n": 0, "samples": 0, "t0": time.perf_counter()}
    first_step, throughput, started = step, [], time.perf_counter()
    while step < total:
        epoch = step // per_epoch
        records = training_batch(train_data, step, world, rank, t.batch_size, t.seed)
        batch = model.collator(records).to(engine.device)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = engine(batch, gamma=cfg.loss.gamma_at(step))
        engine.backward(out.loss)
        engine.step()
        step += 1
        window["n"] += 1
        window["samples"] += len(records) * world
        for term in terms:
            window[term] += getattr(out, term).item()
        if step % t.log_every == 0 or step == total:
            rate = window["samples"] / (time.perf_counter() - window["t0"])
            if step - first_step > t.log_every:  # the first window carries start-up costs
                throughput.append(rate)
            entry = {"step": step, "samples_per_s": rate, **{term: window[term] / window["n"] for term in terms}}
            state["history"].append(entry)
            if rank == 0:
                log_step(entry, epoch)
            window = dict.fromkeys(terms, 0.0) | {"n": 0, "samples": 0, "t0": time.perf_counter()}
        if step % t.checkpoint_every == 0 or step == total:
            found = {**dev_metrics(), "step": step, "samples_per_s": mean(throughput)}
            if rank == 0:
                log.info(f"[eval] step {step}: " + " ".join(f"{k} {v:.4f}" for k, v in found.items()
                                                             if k.startswith("dev_")))
            save(found)


# ---- the trainer and the driver side --------------------------------------------------------
def build_trainer(cfg: JobConfig, records: dict[str, list[Record]], loop=None, verbose: bool = False):
    """A TorchTrainer running `loop` (default: train_loop_per_worker) on `records`. Unless
    `verbose`, workers log only rank 0's progress and warnings to the console."""
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    t = cfg.train
    score_keys = {split: file_score_key(records[split], cfg.data.score_keys) for split in ("train", "dev")}
    return TorchTrainer(
        loop or train_loop_per_worker,
        train_loop_config={"job": cfg.model_dump(), "verbose": verbose, "score_keys": score_keys,
                           "train": ray.put(pack_records(records["train"])),
                           "fingerprint": resume.fingerprint(cfg, score_keys["train"], t.num_workers),
                           "dev": [r.model_dump_json() for r in records["dev"]]},
        scaling_config=ScalingConfig(num_workers=t.num_workers, use_gpu=t.use_gpu,
                                     resources_per_worker={"CPU": t.cpus_per_worker}),
        run_config=RunConfig(
            name=t.name, storage_path=str(Path(t.storage_path).resolve()),
            failure_config=FailureConfig(max_failures=t.max_failures),
            logging_config=ray.LoggingConfig(log_level="INFO" if verbose else "WARNING"),  # Ray Train's own
            checkpoint_config=CheckpointConfig(num_to_keep=t.keep_checkpoints,
                                               checkpoint_score_attribute=checkpoint_metric(cfg),
                                               checkpoint_score_order="max"),
        ),
    )


def best_checkpoint(results: list[tuple[Any, dict]], metric: str) -> tuple[Any, dict] | None:
    """The (checkpoint, metrics) with the highest `metric`; NaN or missing values never win.
    None when no checkpoint has a value."""
    valid = [(c, m) for c, m in results if isinstance(m.get(metric), (int, float)) and not math.isnan(m[metric])]
    return max(valid, key=lambda cm: cm[1][metric], default=None)


def exported_checkpoint(result: Any, cfg: JobConfig) -> tuple[Any, dict]:
    """The (checkpoint, metrics) `fit` exports from a Ray Train result: with `train.export` "best",
    the best by `checkpoint_metric` (the last when none has a value); with "last", the last."""
    if cfg.train.export == "best" and (best := best_checkpoint(result.best_checkpoints, checkpoint_metric(cfg))):
        return best
    last = result.checkpoint
    return last, next((m for c, m in result.best_checkpoints if c.path == last.path), result.metrics)


def fit(cfg: JobConfig, records: dict[str, list[Record]], out_dir: str | os.PathLike, verbose: bool = False) -> dict:
    """Train, then copy the exported checkpoint's model (`exported_checkpoint`) to `out_dir/model`
    (replacing it whole); returns the summary."""
    started = time.time()
    result = build_trainer(cfg, records, verbose=verbose).fit()
    chosen, chosen_metrics = exported_checkpoint(result, cfg)
    out = Path(out_dir)
    target = out / MODEL_DIR
    with chosen.as_directory() as d:
        replace_folder(Path(d) / MODEL_DIR, target)
    summary = {"model_dir": str(target), "export": cfg.train.export, "exported_checkpoint": chosen.path,
               "exported_metrics": chosen_metrics,
               "final_metrics": result.metrics, "num_workers": cfg.train.num_workers, "use_gpu": cfg.train.use_gpu,
               "dtype": "bfloat16" if cfg.train.bf16 else "float32", "batch_size_per_worker": cfg.train.batch_size,
               "samples_per_s": result.metrics.get("samples_per_s"), "wall_s": round(time.time() - started, 1),
               "config": cfg.model_dump()}
    (out / "train_summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return summary
