"""What `serve/app.yaml` sets under `args` (AppArgs: the candidates, the ranker-fuser, auth and
limits), checked before anything starts, which URG checkpoint is served (`served_urg`), and the
/healthz body."""

import logging
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from serve.candidates import CandidateArgs

log = logging.getLogger("ray.serve")


class URGArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = "outputs/train/model"  # a save_pretrained folder (jobs/train.py writes this one) or a preset
    fallback_model: str | None = None  # a folder served when `model` is missing
    fallback_preset: str | None = "tiny"  # served when both are missing (/healthz says untrained); null: an error
    dtype: str = Field("float32", pattern="^(float32|bfloat16|float16)$")
    max_batch_size: int = Field(8, ge=1)  # @serve.batch
    batch_wait_timeout_s: float = Field(0.01, ge=0)
    num_threads: int | None = Field(None, ge=1)  # torch threads per replica (default: Ray's OMP_NUM_THREADS)
    max_new_tokens: int = Field(64, ge=1)  # of the fused answer, unless the request asks for fewer
    question_max_chars: int = Field(2_000, ge=1)  # of a multi-turn chat's question; the oldest turns go first
    deployment: dict[str, Any] = Field(default_factory=dict)  # Serve options (replicas, autoscaling, num_cpus)


def served_urg(urg: URGArgs) -> tuple[URGArgs, bool]:
    """The URG args as they will be served, and whether that is a fallback; logged in one line.

    A preset name as `model` is served as it is; else the first of `model`, `fallback_model` that is
    a folder here, made absolute (replicas need not start where `serve run` did); else
    `fallback_preset`, passed on by name so the replica loads just that. Without a fallback preset
    `model` stays as written and the ranker-fuser fails naming it
    (`urg_ray.presets.resolve_urg_source`). Hub ids are not looked up.
    """
    from urg_ray.presets import PRESETS

    if urg.model in PRESETS:
        log.info("URG ranker-fuser: serving the %r preset (untrained weights)", urg.model)
        return urg, False
    if Path(urg.model).is_dir():
        log.info("URG ranker-fuser: serving the checkpoint %s", Path(urg.model).resolve())
        return urg.model_copy(update={"model": str(Path(urg.model).resolve())}), False
    if urg.fallback_model is not None and Path(urg.fallback_model).is_dir():
        log.warning("URG ranker-fuser: %s not found; serving the checkpoint %s instead", urg.model,
                    Path(urg.fallback_model).resolve())
        return urg.model_copy(update={"model": str(Path(urg.fallback_model).resolve())}), True
    missing = f"{urg.model} not found" if urg.fallback_model is None else \
        f"neither {urg.model} nor {urg.fallback_model} found"
    if urg.fallback_preset is None:
        log.warning("URG ranker-fuser: %s, and no fallback_preset is set: the ranker-fuser will fail", missing)
        return urg, True
    log.warning("URG ranker-fuser: %s; serving the %r preset instead (untrained weights)", missing,
                urg.fallback_preset)
    return urg.model_copy(update={"model": urg.fallback_preset}), True


class LimitArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_body_bytes: int = Field(256 * 1024, ge=1)  # larger bodies: 413
    max_inputs: int = Field(32, ge=1)  # questions per /v1/rank_and_fuse request
    max_candidates: int = Field(16, ge=1)  # candidates per question
    max_text_chars: int = Field(16_000, ge=1)  # per message, question or candidate
    max_new_tokens: int = Field(512, ge=1)  # the most a request may ask for
    max_in_flight: int = Field(64, ge=1)  # admitted requests per ingress replica, running or waiting; beyond: 429


class AppArgs(BaseModel):
    """Everything `serve/app.yaml` sets under `args`."""

    model_config = ConfigDict(extra="forbid")

    model_name: str = "urg-ensemble"  # the `model` clients send to /v1/chat/completions
    candidates: list[CandidateArgs] = Field(min_length=1)
    urg: URGArgs = Field(default_factory=URGArgs)
    candidate_timeout_s: float = Field(30.0, gt=0)  # per candidate; a late one is dropped
    ranker_timeout_s: float = Field(120.0, gt=0)
    # bearer: every replica must find its key in `auth_token_env`, or refuses to start; none: say so.
    auth: Literal["bearer", "none"] = "bearer"
    auth_token_env: str = "URG_SERVE_API_KEY"
    warmup_retry_s: float = Field(2.0, gt=0)  # between warm-up attempts of a candidate that failed one
    limits: LimitArgs = Field(default_factory=LimitArgs)
    ingress: dict[str, Any] = Field(default_factory=dict)  # Serve options of the ingress deployment
    # the ingress calls the ranker over Serve's gRPC transport (`_by_reference=False`, private in Ray
    # 2.60): ~1 ms less a request on one node (docs/results/performance.md); across nodes every
    # replica serves it on a random port, which the firewall must let through, so it is opt-in
    ranker_grpc: bool = False
    fallback_note: str | None = None  # logged once when a candidate or URG serves its fallback: how to build them

    @model_validator(mode="after")
    def _unique_names(self) -> "AppArgs":
        names = [c.name for c in self.candidates]
        if len(set(names)) != len(names):
            raise ValueError(f"candidate names must be unique, got {names}")
        return self


class Health(BaseModel):
    status: Literal["ready", "warming_up"]
    model: str
    ranker: Literal["trained", "untrained", "unknown"]  # untrained: preset weights, not a checkpoint
    candidates: list[str]
    waiting_for: list[str]  # what has not answered its warm-up yet
