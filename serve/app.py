"""Ray Serve ensemble: N candidate LLM deployments -> the URG ranker-fuser, behind an
OpenAI-compatible FastAPI ingress.

    serve run serve/app.yaml                     # CPU: tiny candidates + outputs/train/model (or `tiny`)
    serve run serve/app.gpu.yaml                 # GPU nodes: vLLM LLMServer candidates, autoscaling

`build_app(args)` is the application builder `import_path: serve.app:build_app` names; the YAML
carries its `args` (AppArgs) and per-deployment options, never logic. Routes:

    POST /v1/chat/completions   the fused answer; `urg` lists each candidate's model, score, rank, selected
    POST /v1/rank_and_fuse      bring your own candidates (LLM-Blender's rank_and_fuse)
    GET  /v1/models             the ensemble's model id
    GET  /healthz               200 when the ranker-fuser answers, else 503

Each candidate has a timeout; a failed or late one is dropped and listed in `urg.dropped`; with
none left the answer is 503 naming every reason. A blank fused answer is replaced by the
top-ranked candidate, and `urg.note` says so. Errors use the OpenAI error body.
"""

# No `from __future__ import annotations` here: FastAPI must see the real `Request` type of the
# routes Serve wraps.
import asyncio
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, model_validator
from ray import serve
from ray.serve import Application

from serve import protocol
from serve.candidates import CandidateArgs, build_candidate, call_candidate, short_reason
from serve.errors import APIError, check_bearer, install_error_handlers, read_body
from serve.ranker import URGRankerFuser

log = logging.getLogger("ray.serve")


class URGArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = "outputs/train/model"  # a save_pretrained folder (jobs/train.py writes this one) or a preset
    fallback_preset: str | None = "tiny"  # served when `model` is missing; null makes that an error
    dtype: str = Field("float32", pattern="^(float32|bfloat16|float16)$")
    max_batch_size: int = Field(8, ge=1)  # @serve.batch
    batch_wait_timeout_s: float = Field(0.01, ge=0)
    num_threads: int | None = Field(None, ge=1)  # torch threads per replica (default: Ray's OMP_NUM_THREADS)
    max_new_tokens: int = Field(64, ge=1)  # of the fused answer, unless the request asks for fewer
    deployment: dict[str, Any] = Field(default_factory=dict)  # Serve options (replicas, autoscaling, num_cpus)


class LimitArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_body_bytes: int = Field(256 * 1024, ge=1)  # larger bodies: 413
    max_inputs: int = Field(32, ge=1)  # questions per /v1/rank_and_fuse request
    max_candidates: int = Field(16, ge=1)  # candidates per question
    max_text_chars: int = Field(16_000, ge=1)  # per message, question or candidate
    max_new_tokens: int = Field(512, ge=1)  # the most a request may ask for


class AppArgs(BaseModel):
    """Everything `serve/app.yaml` sets under `args`."""

    model_config = ConfigDict(extra="forbid")

    model_name: str = "urg-ensemble"  # the `model` clients send to /v1/chat/completions
    candidates: list[CandidateArgs] = Field(min_length=1)
    urg: URGArgs = Field(default_factory=URGArgs)
    candidate_timeout_s: float = Field(30.0, gt=0)  # per candidate; a late one is dropped
    ranker_timeout_s: float = Field(120.0, gt=0)
    auth_token_env: str | None = "URG_SERVE_API_KEY"  # when this variable is set in the replica, Bearer auth is on
    limits: LimitArgs = Field(default_factory=LimitArgs)
    ingress: dict[str, Any] = Field(default_factory=dict)  # Serve options of the ingress deployment

    @model_validator(mode="after")
    def _unique_names(self) -> "AppArgs":
        names = [c.name for c in self.candidates]
        if len(set(names)) != len(names):
            raise ValueError(f"candidate names must be unique, got {names}")
        return self


app = FastAPI(title="urg_ray ensemble", docs_url="/docs")
install_error_handlers(app)


@serve.deployment(ray_actor_options={"num_cpus": 0.1}, max_ongoing_requests=256)
@serve.ingress(app)
class Ingress:
    def __init__(self, args: dict[str, Any], candidates: dict[str, Any], ranker: Any):
        self.args = AppArgs.model_validate(args)
        self.specs = {c.name: c for c in self.args.candidates}
        self.candidates = candidates  # name -> DeploymentHandle (Serve substitutes the bound apps)
        self.ranker = ranker
        self.token = os.environ.get(self.args.auth_token_env, "") if self.args.auth_token_env else ""
        log.info("ensemble %s over %s; auth %s", self.args.model_name, list(self.specs),
                 f"on (${self.args.auth_token_env})" if self.token else "off")

    # ---- routes --------------------------------------------------------------------------
    @app.get("/healthz")
    async def healthz(self) -> JSONResponse:
        try:
            info = await asyncio.wait_for(self.ranker.info.remote(), timeout=5)
        except Exception as err:  # noqa: BLE001 - any failure means "not ready"
            return APIError(503, f"ranker-fuser unavailable: {short_reason(err)}", code="ranker_unavailable").response()
        return JSONResponse({"status": "ok", "model": self.args.model_name, "ranker": info,
                             "candidates": list(self.specs)})

    @app.get("/v1/models")
    async def models(self, request: Request) -> JSONResponse:
        check_bearer(request, self.token)
        card = {"id": self.args.model_name, "object": "model", "created": 0, "owned_by": "urg_ray",
                "candidates": list(self.specs)}
        return JSONResponse({"object": "list", "data": [card]})

    @app.post("/v1/chat/completions")
    async def chat_completions(self, request: Request):
        check_bearer(request, self.token)
        body = await read_body(request, protocol.ChatRequest, self.args.limits.max_body_bytes)
        if body.model != self.args.model_name:
            raise APIError(404, f"model {body.model!r} does not exist; this server serves {self.args.model_name!r}",
                           param="model", code="model_not_found")
        limits = self.args.limits
        for i, message in enumerate(body.messages):
            self._check_length(message.text, f"messages.{i}.content")
        answer_tokens = self._check_tokens(body.answer_tokens, "max_tokens") or self.args.urg.max_new_tokens
        candidate_tokens = self._check_tokens(body.candidate_max_tokens, "candidate_max_tokens")
        messages = [{"role": m.role, "content": m.text} for m in body.messages]

        answers = await asyncio.gather(*(self._ask(name, messages, candidate_tokens, body.temperature)
                                         for name in self.specs))
        ok = [(name, text, seconds) for name, text, seconds, failure in answers if failure is None]
        dropped = [{"model": name, "reason": failure} for name, _, _, failure in answers if failure is not None]
        if not ok:
            reasons = "; ".join(f"{d['model']}: {d['reason']}" for d in dropped)
            raise APIError(503, f"all {len(dropped)} candidates failed: {reasons}", code="all_candidates_failed")
        texts = [text[: limits.max_text_chars] for _, text, _ in ok]
        fused = await self._fuse(body.question(), texts, body.fuse_top_k, answer_tokens)
        extension = {"candidates": protocol.candidate_table([n for n, _, _ in ok], texts, fused, [s for _, _, s in ok]),
                     "dropped": dropped, "note": fused["note"]}
        completion = protocol.chat_completion(self.args.model_name, fused["text"], extension)
        if not body.stream:
            return JSONResponse(completion)
        events = [f"data: {json.dumps(chunk)}\n\n" for chunk in protocol.chat_completion_chunks(completion)]
        return StreamingResponse(iter([*events, "data: [DONE]\n\n"]), media_type="text/event-stream")

    @app.post("/v1/rank_and_fuse")
    async def rank_and_fuse(self, request: Request) -> JSONResponse:
        check_bearer(request, self.token)
        body = await read_body(request, protocol.RankAndFuseRequest, self.args.limits.max_body_bytes)
        limits = self.args.limits
        if len(body.inputs) > limits.max_inputs:
            raise APIError(422, f"inputs: {len(body.inputs)} > the limit of {limits.max_inputs} per request",
                           param="inputs", code="too_many_inputs")
        for i, (question, cands) in enumerate(zip(body.inputs, body.candidates)):
            self._check_length(question, f"inputs.{i}")
            if len(cands) > limits.max_candidates:
                raise APIError(422, f"candidates.{i}: {len(cands)} > the limit of {limits.max_candidates}",
                               param=f"candidates.{i}", code="too_many_candidates")
            for j, cand in enumerate(cands):
                self._check_length(cand if isinstance(cand, str) else cand.text, f"candidates.{i}.{j}")
        max_new_tokens = self._check_tokens(body.max_new_tokens, "max_new_tokens") or self.args.urg.max_new_tokens
        rows = [[c if isinstance(c, protocol.CandidateText) else protocol.CandidateText(model=f"candidate-{j}", text=c)
                 for j, c in enumerate(cands)] for cands in body.candidates]
        fused = await asyncio.gather(*(self._fuse(q, [c.text for c in cands], body.top_k, max_new_tokens)
                                       for q, cands in zip(body.inputs, rows)))
        results = [{**f, "candidates": protocol.candidate_table([c.model for c in cands], [c.text for c in cands], f)}
                   for f, cands in zip(fused, rows)]
        return JSONResponse({"object": "urg.rank_and_fuse", "model": self.args.model_name, "results": results})

    # ---- helpers -------------------------------------------------------------------------
    def _check_length(self, text: str, param: str) -> None:
        if len(text) > self.args.limits.max_text_chars:
            raise APIError(413, f"{param}: {len(text)} characters > the limit of {self.args.limits.max_text_chars}",
                           param=param, code="text_too_long")

    def _check_tokens(self, tokens: int | None, param: str) -> int | None:
        if tokens is not None and tokens > self.args.limits.max_new_tokens:
            raise APIError(422, f"{param}: {tokens} > the limit of {self.args.limits.max_new_tokens}",
                           param=param, code="invalid_value")
        return tokens

    async def _ask(self, name: str, messages: list[dict], max_tokens: int | None,
                   temperature: float | None) -> tuple[str, str, float, str | None]:
        """(name, text, seconds, failure): failure is None on success, else why it was dropped."""
        spec = self.specs[name]
        timeout = spec.timeout_s or self.args.candidate_timeout_s
        start = time.perf_counter()
        try:
            text = await asyncio.wait_for(
                call_candidate(spec, self.candidates[name], messages, max_tokens or spec.max_tokens,
                               spec.temperature if temperature is None else temperature),
                timeout=timeout)
        except asyncio.TimeoutError:
            return name, "", time.perf_counter() - start, f"timed out after {timeout:g} s"
        except Exception as err:  # noqa: BLE001 - a failing candidate is dropped, never fatal
            log.warning("candidate %s failed: %s", name, short_reason(err))
            return name, "", time.perf_counter() - start, f"failed: {short_reason(err)}"
        if not text.strip():
            return name, "", time.perf_counter() - start, "failed: empty answer"
        return name, text, time.perf_counter() - start, None

    async def _fuse(self, question: str, texts: list[str], top_k: int | None, max_new_tokens: int) -> dict[str, Any]:
        try:
            return await asyncio.wait_for(self.ranker.rank_and_fuse.remote(question, texts, top_k, max_new_tokens),
                                          timeout=self.args.ranker_timeout_s)
        except asyncio.TimeoutError:
            raise APIError(503, f"ranker-fuser timed out after {self.args.ranker_timeout_s:g} s",
                           code="ranker_timeout") from None
        except Exception as err:  # noqa: BLE001
            from ray.serve.exceptions import BackPressureError

            if isinstance(err, BackPressureError):
                raise APIError(429, "the ranker-fuser's queue is full; retry shortly", code="rate_limit_exceeded",
                               headers={"Retry-After": "1"}) from None
            raise APIError(503, f"ranker-fuser unavailable: {short_reason(err)}", code="ranker_unavailable") from None


def build_app(args: dict[str, Any] | AppArgs) -> Application:
    """The application: candidates and the ranker-fuser, composed by the ingress.

    `args` are validated here (a bad field fails `serve run` before anything starts). A relative
    URG checkpoint path is made absolute against the directory `serve run` is called from.
    """
    args = args if isinstance(args, AppArgs) else AppArgs.model_validate(args)
    model = args.urg.model
    if not Path(model).is_absolute() and Path(model).is_dir():
        args = args.model_copy(update={"urg": args.urg.model_copy(update={"model": str(Path(model).resolve())})})
    urg = args.urg
    ranker = URGRankerFuser.options(**urg.deployment).bind(
        urg.model, urg.fallback_preset, urg.dtype, urg.max_batch_size, urg.batch_wait_timeout_s, urg.num_threads)
    candidates = {c.name: build_candidate(c) for c in args.candidates}
    return Ingress.options(**args.ingress).bind(args.model_dump(), candidates, ranker)
