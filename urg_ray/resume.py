"""What a resumed run must share with the run that saved the checkpoint, and the RNG state.

A checkpoint's `train_state.json` carries a fingerprint: the config fields that decide the data
order and the optimisation, the training data's identity (path, size, SHA-256 of its bytes),
its quality key and the world size. Resuming with any of them changed would continue at another
data offset or under another optimiser, silently; it is refused naming what changed, unless
`train.resume_mismatch_ok` is set. The run's length (`train.max_steps`, `train.epochs`) may
change: training on for more steps is what resuming is for. A moved file with the same bytes
is the same data.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import random
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from urg_ray.config import ConfigError, JobConfig

log = logging.getLogger(__name__)

STATE_FILE = "train_state.json"
# train.* fields that decide the data order or the optimisation (the rest are bookkeeping)
TRAIN_FIELDS = ("lr", "weight_decay", "warmup_steps", "batch_size", "grad_clip", "bf16", "bf16_autocast", "zero_stage",
                "seed")
INFORMATIONAL = ("data.train_file.path",)  # reported when changed, never refused


class ResumeMismatch(ConfigError):
    """The checkpoint was saved by a run with another config, data or world size."""


@lru_cache(maxsize=4)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def file_identity(path: str | os.PathLike) -> dict[str, Any]:
    """Path, size and SHA-256 of a file (hashed once per process while it is unchanged)."""
    path = Path(path).resolve()
    st = path.stat()
    return {"path": str(path), "size": st.st_size, "sha256": _sha256(str(path), st.st_size, st.st_mtime_ns)}


def fingerprint(cfg: JobConfig, score_key: str, world_size: int) -> dict[str, Any]:
    """The flat ``{"section.field": value}`` a resumed run must match."""
    flat: dict[str, Any] = {"method": cfg.method, "world_size": world_size, "data.score_key": score_key}
    flat |= {f"model.{k}": v for k, v in cfg.model.model_dump().items()}
    flat |= {f"loss.{k}": v for k, v in cfg.loss.model_dump().items()}
    flat |= {f"train.{k}": getattr(cfg.train, k) for k in TRAIN_FIELDS}
    flat |= {f"data.train_file.{k}": v for k, v in file_identity(cfg.data.train_file).items()}
    return flat


def differences(saved: dict[str, Any] | None, current: dict[str, Any]) -> list[str]:
    """``field: saved -> current`` for each refused difference (none: the same run)."""
    if saved is None:
        return ["the checkpoint has no fingerprint (saved before resumes were checked)"]
    changed = []
    for key in sorted(saved.keys() | current.keys()):
        if key not in INFORMATIONAL and saved.get(key, "<absent>") != current.get(key, "<absent>"):
            changed.append(f"{key}: {saved.get(key, '<absent>')!r} -> {current.get(key, '<absent>')!r}")
    return changed


def check_resume(saved: dict[str, Any] | None, current: dict[str, Any], where: str, allow_mismatch: bool) -> None:
    """Refuse to resume from the checkpoint at `where` if its fingerprint differs (unless allowed)."""
    changed = differences(saved, current)
    if saved and saved.get(INFORMATIONAL[0]) != current.get(INFORMATIONAL[0]) and not changed:
        log.info("%s: the training file moved (same bytes): %s -> %s", where, saved.get(INFORMATIONAL[0]),
                 current.get(INFORMATIONAL[0]))
    if not changed:
        return
    summary = "; ".join(changed)
    if allow_mismatch:
        log.warning("resuming from %s although it was saved by another run (train.resume_mismatch_ok): %s",
                    where, summary)
        return
    raise ResumeMismatch(
        f"{where}: this checkpoint was saved by a different run: {summary}. Resuming would continue at another "
        "data offset or under another optimiser. Start a new run (another train.name or train.storage_path), "
        "or set train.resume_mismatch_ok=true to resume anyway")


def saved_states(cfg: JobConfig) -> list[tuple[Path, dict]]:
    """(folder, train_state) of every checkpoint a run with this config would resume from: the
    run's own (`storage_path/name/checkpoint_*`) and `train.resume_from`."""
    t = cfg.train
    folders = sorted((Path(t.storage_path) / t.name).glob("checkpoint_*"))
    if t.resume_from:
        folders.append(Path(t.resume_from))
    found = []
    for folder in folders:
        state_file = folder / STATE_FILE
        if state_file.is_file():
            found.append((folder, json.loads(state_file.read_text())))
        elif folder == Path(t.resume_from or ""):
            raise ConfigError(f"train.resume_from: {folder}: no {STATE_FILE} (not a checkpoint of this trainer)")
    return found


def check_saved_checkpoints(cfg: JobConfig, current: dict[str, Any]) -> None:
    """On the driver, before Ray starts: `check_resume` against every checkpoint the run may resume from."""
    for folder, state in saved_states(cfg):
        check_resume(state.get("fingerprint"), current, str(folder), cfg.train.resume_mismatch_ok)


# ---- RNG state: JSON, never pickle ----------------------------------------------------------
def rng_state() -> dict[str, Any]:
    """This process's torch (CPU and CUDA) and Python RNG states, as JSON-ready values."""
    version, internal, gauss = random.getstate()
    state = {"python": [version, list(internal), gauss], "torch": _b64(torch.get_rng_state())}
    if torch.cuda.is_available():
        state["cuda"] = [_b64(s) for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    torch.set_rng_state(_unb64(state["torch"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([_unb64(s) for s in state["cuda"]])


def _b64(t: torch.Tensor) -> str:
    return base64.b64encode(t.numpy().tobytes()).decode("ascii")


def _unb64(s: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(s)), dtype=torch.uint8)
