"""Ray Serve ensemble: N candidate LLM deployments -> the URG ranker-fuser, behind an
OpenAI-compatible FastAPI ingress.

    serve run serve/app.yaml                     # CPU: the `make demo` ensemble, else tiny random-init ones
    serve run serve/app.gpu.yaml                 # GPU nodes: vLLM LLMServer candidates, autoscaling

`build_app(args)` is the application builder `import_path: serve.app:build_app` names; the YAML
carries its `args` (AppArgs, serve/config.py) and per-deployment options, never logic. Routes:

    POST /v1/chat/completions   the fused answer; `urg` lists each candidate's model, score, rank, selected
    POST /v1/rank_and_fuse      bring your own candidates (LLM-Blender's rank_and_fuse)
    POST /v1/rerank, /v2/rerank rank documents for a query, as vLLM and Cohere serve it (URG.rank, no fusion)
    POST /v1/score              vLLM's score API: text_1 against each text_2 (URG.rank, no fusion)
    GET  /v1/models             the ensemble's model id
    GET  /healthz               200 once every candidate and the ranker answered a warm-up, else 503
    GET  /                      the playground (serve/playground.html): ask, watch the candidates and the fused answer
    GET  /openapi.json, /docs, /redoc   the schema, behind the same auth as the API

Each candidate has a timeout; a failed or late one is dropped and listed in `urg.dropped`; with
none left the answer is 503 naming every reason. A blank fused answer is replaced by the
top-ranked candidate, and `urg.note` says so. Errors use the OpenAI error body. The ingress
admits at most `limits.max_in_flight` requests per replica (running or waiting): beyond, 429
with Retry-After before any candidate is called.
"""

# No `from __future__ import annotations` here: FastAPI must see the real `Request` type of the
# routes Serve wraps.
import asyncio
import contextlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Callable

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from ray import serve
from ray.serve import Application
from starlette.types import Receive, Scope, Send

from serve import protocol
from serve.candidates import (build_candidate, call_candidate, candidate_sampling, count_prompt_tokens, max_model_len,
                              served_source, short_reason)
from serve.config import AppArgs, Health, served_urg
from serve.errors import APIError, check_bearer, install_error_handlers, read_body
from serve.limits import check_chat, check_rank_and_fuse, check_rerank, check_score
from serve.metrics import EnsembleMetrics
from serve.openapi import ERRORS, STREAMED, install_openapi, json_body
from serve.ranker import FusionFailed, URGRankerFuser

log = logging.getLogger("ray.serve")


class HeldStream(StreamingResponse):
    """A StreamingResponse that calls `release` however it ends. Not a BackgroundTask: Starlette
    skips those when the client disconnects, and a generator's own `finally` waits for garbage
    collection when the stream is abandoned at a `yield` (or never runs, if it never started)."""

    def __init__(self, content, release: Callable[[], None], **kwargs: Any):
        super().__init__(content, **kwargs)
        self.release = release

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.release()


# The playground is one static page; its inline script and styles may only call this app.
PLAYGROUND = (Path(__file__).parent / "playground.html").read_text(encoding="utf-8")
PLAYGROUND_CSP = ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; "
                  "img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")

app = FastAPI(title="urg_ray ensemble", version="1", docs_url=None, redoc_url=None, openapi_url=None)
install_error_handlers(app)
install_openapi(app)


@serve.deployment(ray_actor_options={"num_cpus": 0.1}, max_ongoing_requests=256)
@serve.ingress(app)
class Ingress:
    def __init__(self, args: dict[str, Any], candidates: dict[str, Any], ranker: Any):
        self.args = AppArgs.model_validate(args)
        self.specs = {c.name: c for c in self.args.candidates}
        self.candidates = candidates  # name -> DeploymentHandle (Serve substitutes the bound apps)
        # gRPC straight to the ranker's replica: one round trip, where Ray's actor call is a stream (Serve's
        # accept/reject reply, then the answer); see AppArgs.ranker_grpc
        self.ranker = ranker.options(_by_reference=False) if self.args.ranker_grpc else ranker
        self.token = self._read_key()
        self.in_flight = 0
        self.waiting_for = {*self.specs, "ranker"}
        self.trained: bool | None = None
        self.context_lengths: dict[str, int | None] = {}  # candidate -> max_model_len, asked once
        self.metrics = EnsembleMetrics()
        with contextlib.suppress(RuntimeError):  # no running loop: constructed outside Serve (unit tests)
            self._warmup_task = asyncio.get_running_loop().create_task(self._warm_up())
        log.info("ensemble %s over %s; auth %s", self.args.model_name, list(self.specs),
                 f"bearer (${self.args.auth_token_env})" if self.token else "none (auth: none in the app config)")

    def _read_key(self) -> str | None:
        if self.args.auth == "none":
            return None
        token = os.environ.get(self.args.auth_token_env, "")
        if not token:
            raise RuntimeError(
                f"auth: bearer, but ${self.args.auth_token_env} is not set in this replica's environment: "
                "set it (the cluster's environment or the deployment's runtime_env), or say `auth: none`")
        return token

    # ---- routes --------------------------------------------------------------------------
    @app.get("/healthz", response_model=Health, responses={503: {"model": Health, "description": "warming up"}})
    async def healthz(self) -> JSONResponse:
        """Answered by the ingress alone (no ranker call, no admission slot)."""
        ranker = {True: "trained", False: "untrained", None: "unknown"}[self.trained]
        health = Health(status="warming_up" if self.waiting_for else "ready", model=self.args.model_name,
                        ranker=ranker, candidates=list(self.specs), waiting_for=sorted(self.waiting_for))
        return JSONResponse(health.model_dump(), status_code=503 if self.waiting_for else 200)

    @app.get("/", include_in_schema=False)
    async def playground(self) -> HTMLResponse:
        """The playground page, loaded without the key (its API calls carry the key the user types)."""
        return HTMLResponse(PLAYGROUND, headers={"Content-Security-Policy": PLAYGROUND_CSP})

    @app.get("/openapi.json", include_in_schema=False)
    async def openapi(self, request: Request) -> JSONResponse:
        check_bearer(request, self.token)
        return JSONResponse(request.app.openapi())

    @app.get("/docs", include_in_schema=False)
    async def docs(self, request: Request) -> HTMLResponse:
        check_bearer(request, self.token)
        return get_swagger_ui_html(openapi_url=f"{request.scope.get('root_path', '')}/openapi.json", title=app.title)

    @app.get("/redoc", include_in_schema=False)
    async def redoc(self, request: Request) -> HTMLResponse:
        check_bearer(request, self.token)
        return get_redoc_html(openapi_url=f"{request.scope.get('root_path', '')}/openapi.json", title=app.title)

    @app.get("/v1/models", responses=ERRORS)
    async def models(self, request: Request) -> JSONResponse:
        check_bearer(request, self.token)
        card = {"id": self.args.model_name, "object": "model", "created": 0, "owned_by": "urg_ray",
                "candidates": list(self.specs)}
        return JSONResponse({"object": "list", "data": [card]})

    @app.post("/v1/chat/completions", responses={**ERRORS, **STREAMED}, openapi_extra=json_body(protocol.ChatRequest))
    async def chat_completions(self, request: Request):
        check_bearer(request, self.token)
        async with self._admitted():
            return await self._chat(request)

    @app.post("/v1/rank_and_fuse", responses=ERRORS, openapi_extra=json_body(protocol.RankAndFuseRequest))
    async def rank_and_fuse(self, request: Request) -> JSONResponse:
        check_bearer(request, self.token)
        async with self._admitted():
            return await self._rank_and_fuse(request)

    @app.post("/v1/rerank", responses=ERRORS, openapi_extra=json_body(protocol.RerankRequest))
    @app.post("/v2/rerank", responses=ERRORS, openapi_extra=json_body(protocol.RerankRequest))
    async def rerank(self, request: Request) -> JSONResponse:
        check_bearer(request, self.token)
        async with self._admitted():
            body = await read_body(request, protocol.RerankRequest, self.args.limits.max_body_bytes)
            check_rerank(body, self.args.limits, self.args.model_name)
            ranked = await self._rank(body.query, body.texts)
            return JSONResponse(protocol.rerank_response(self.args.model_name, body, ranked))

    @app.post("/v1/score", responses=ERRORS, openapi_extra=json_body(protocol.ScoreRequest))
    async def score(self, request: Request) -> JSONResponse:
        check_bearer(request, self.token)
        async with self._admitted():
            body = await read_body(request, protocol.ScoreRequest, self.args.limits.max_body_bytes)
            check_score(body, self.args.limits, self.args.model_name)
            groups = body.groups()
            ranked = await asyncio.gather(*(self._rank(q, [body.texts_2[i] for i in members]) for q, members in groups))
            return JSONResponse(protocol.score_response(self.args.model_name, groups, ranked))

    # ---- the two POST routes -------------------------------------------------------------
    async def _chat(self, request: Request) -> JSONResponse:
        body = await read_body(request, protocol.ChatRequest, self.args.limits.max_body_bytes)
        check_chat(body, self.args.limits, self.args.model_name)
        answer_tokens = body.answer_tokens or self.args.urg.max_new_tokens
        candidate_tokens = body.candidate_max_tokens
        messages = [{"role": m.role, "content": m.text} for m in body.messages]
        await self._check_context(messages, candidate_tokens)
        sampling = {"temperature": body.temperature, "top_p": body.top_p, "seed": body.seed, "stop": body.stops or None,
                    "presence_penalty": body.presence_penalty, "frequency_penalty": body.frequency_penalty}

        answers = await asyncio.gather(*(self._ask(name, messages, candidate_tokens, sampling)
                                         for name in self.specs))
        ok = [a for a in answers if a["failure"] is None]
        dropped = [{"model": a["model"], "reason": a["failure"]} for a in answers if a["failure"] is not None]
        if not ok:
            reasons = "; ".join(f"{d['model']}: {d['reason']}" for d in dropped)
            raise APIError(503, f"all {len(dropped)} candidates failed: {reasons}", code="all_candidates_failed")
        texts = [a["text"][: self.args.limits.max_text_chars] for a in ok]
        question = protocol.urg_question(body.messages, self.args.urg.question_max_chars)
        if body.stream:
            return await self._stream_chat(body, question, ok, texts, dropped, answer_tokens)
        fused = await self._fuse(question, texts, body.fuse_top_k, answer_tokens, body.stops)
        extension, usage = self._fused_answer(ok, texts, dropped, fused)
        return JSONResponse(protocol.chat_completion(self.args.model_name, fused["text"], extension, usage))

    def _fused_answer(self, ok: list[dict], texts: list[str], dropped: list[dict],
                      fused: dict[str, Any]) -> tuple[dict[str, Any], dict[str, int]]:
        """The `urg` extension and the `usage` of one fused chat answer (and its metrics)."""
        self.metrics.fused(fused, [a["model"] for a in ok])
        extra = [{"latency_s": round(a["latency_s"], 4), "usage": a["usage"]} for a in ok]
        fusion_usage = protocol.usage(fused["prompt_tokens"], fused["completion_tokens"])
        extension = {"candidates": protocol.candidate_table([a["model"] for a in ok], texts, fused, extra),
                     "dropped": dropped, "note": fused["note"], "fusion_usage": fusion_usage}
        counted = [a["usage"] for a in ok]  # what each candidate's engine counted, and URG's own tokenizer
        usage = protocol.usage(fused["prompt_tokens"] + sum(u["prompt_tokens"] for u in counted),
                               fused["completion_tokens"] + sum(u["completion_tokens"] for u in counted))
        return extension, usage

    async def _stream_chat(self, body: protocol.ChatRequest, question: str, ok: list[dict], texts: list[str],
                           dropped: list[dict], answer_tokens: int) -> StreamingResponse:
        """Server-sent chat.completion.chunks as URG decodes: the role, one chunk per piece, a last
        chunk with finish_reason and the `urg` table, then usage if asked. A failure up to the
        ranking is an HTTP error; after the first chunk, an `error` event (as vLLM sends) and [DONE].
        The request keeps its admission slot until the stream ends."""
        events = self.ranker.options(stream=True).stream_fuse.remote(question, texts, body.fuse_top_k, answer_tokens,
                                                                    body.stops)
        try:
            await self._call_ranker(events.__anext__())  # {"type": "ranked"}
        except APIError:
            events.cancel()  # e.g. timed out: the ranker stops too
            raise
        completion = protocol.chat_completion(self.args.model_name, "", {}, None)  # the chunks' id and created
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        finished = False

        def sse(data: dict[str, Any]) -> str:
            return f"data: {json.dumps(data)}\n\n"

        async def stream():
            nonlocal finished
            try:
                yield sse(protocol.chunk(completion, {"role": "assistant", "content": ""}))
                timeout = self.args.ranker_timeout_s
                while (event := await asyncio.wait_for(events.__anext__(), timeout))["type"] == "piece":
                    yield sse(protocol.chunk(completion, {"content": event["text"]}))
                finished = True
                extension, usage = self._fused_answer(ok, texts, dropped, event)
                extension["stream"] = {key: event[key] for key in ("generated_tokens", "tokens_at_first_piece")}
                yield sse(protocol.chunk(completion, {}, "stop", urg=extension))
                if include_usage:
                    yield sse(protocol.chunk(completion, None, usage=usage))
            except Exception as err:  # noqa: BLE001 - the status line is sent: report in the stream
                log.warning("streamed chat answer %s failed after it began: %s", completion["id"], short_reason(err))
                yield sse({"error": {"message": "the ranker-fuser failed while streaming this answer; the server "
                                     "log has the details", "type": "server_error", "param": None,
                                     "code": "stream_failed"}})
            yield "data: [DONE]\n\n"

        def release() -> None:  # after the stream, or once the client went away
            self.in_flight -= 1
            if not finished:
                events.cancel()  # the ranker stops generating

        self.in_flight += 1  # held by the stream; the route's own slot ends when this returns
        return HeldStream(stream(), release, media_type="text/event-stream")

    async def _rank_and_fuse(self, request: Request) -> JSONResponse:
        body = await read_body(request, protocol.RankAndFuseRequest, self.args.limits.max_body_bytes)
        check_rank_and_fuse(body, self.args.limits)
        max_new_tokens = body.max_new_tokens or self.args.urg.max_new_tokens
        rows = [[c if isinstance(c, protocol.CandidateText) else protocol.CandidateText(model=f"candidate-{j}", text=c)
                 for j, c in enumerate(cands)] for cands in body.candidates]
        fused = await asyncio.gather(*(self._fuse(q, [c.text for c in cands], body.top_k, max_new_tokens)
                                       for q, cands in zip(body.inputs, rows)))
        results = [{**f, "candidates": protocol.candidate_table([c.model for c in cands], [c.text for c in cands], f)}
                   for f, cands in zip(fused, rows)]
        return JSONResponse({"object": "urg.rank_and_fuse", "model": self.args.model_name, "results": results})

    # ---- admission, warm-up ---------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def _admitted(self):
        """One of `limits.max_in_flight` slots, or 429 before any work is done."""
        if self.in_flight >= self.args.limits.max_in_flight:
            self.metrics.rejected("in_flight_limit")
            raise APIError(429, f"{self.in_flight} requests in flight, the limit of this replica; retry shortly",
                           code="rate_limit_exceeded", headers={"Retry-After": "1"})
        self.in_flight += 1
        try:
            yield
        finally:
            self.in_flight -= 1

    async def _warm_up(self) -> None:
        """Ask every candidate and the ranker once; /healthz is ready when all have answered."""
        async def candidate(name: str) -> None:
            while True:
                answer = await self._ask(name, [{"role": "user", "content": "Hello"}], 1, {})
                if answer["failure"] is None:
                    with contextlib.suppress(Exception):  # asked again per request if this fails
                        self.context_lengths[name] = await max_model_len(self.candidates[name], self.specs[name])
                    break
                log.warning("warm-up: candidate %s: %s; retrying", name, answer["failure"])
                await asyncio.sleep(self.args.warmup_retry_s)
            self.waiting_for.discard(name)

        async def ranker() -> None:
            while True:
                try:
                    self.trained = (await self.ranker.info.remote())["trained"]
                    await self.ranker.rank_and_fuse.remote("Hello", ["Hi.", "Hello there."], None, 2)
                    break
                except Exception as err:  # noqa: BLE001 - retried until it answers
                    log.warning("warm-up: ranker-fuser: %s; retrying", short_reason(err))
                    await asyncio.sleep(self.args.warmup_retry_s)
            self.waiting_for.discard("ranker")

        await asyncio.gather(ranker(), *(candidate(name) for name in self.specs))
        log.info("ensemble %s ready: every candidate and the ranker-fuser answered a warm-up", self.args.model_name)

    # ---- helpers -------------------------------------------------------------------------
    async def _ask(self, name: str, messages: list[dict], max_tokens: int | None,
                   sampling: dict[str, Any]) -> dict[str, Any]:
        """{model, text, latency_s, usage, failure}: failure is None on success, else why it was dropped."""
        spec = self.specs[name]
        timeout = spec.timeout_s or self.args.candidate_timeout_s
        start = time.perf_counter()
        result = {"model": name, "text": "", "usage": None, "failure": None}
        reason = None
        try:
            answer = await asyncio.wait_for(
                call_candidate(self.candidates[name], spec, messages, candidate_sampling(spec, max_tokens, sampling)),
                timeout=timeout)
        except asyncio.TimeoutError:
            result["failure"], reason = f"timed out after {timeout:g} s", "timeout"
        else:
            if answer.error:
                log.warning("candidate %s failed: %s", name, answer.error)
                result["failure"], reason = f"failed: {answer.error}", "error"
            elif not answer.text.strip():
                result["failure"], reason = "failed: empty answer", "empty"
            else:
                result["text"] = answer.text
                result["usage"] = protocol.usage(answer.prompt_tokens, answer.completion_tokens)
        result["latency_s"] = time.perf_counter() - start
        self.metrics.candidate(name, result["latency_s"], reason)
        return result

    async def _check_context(self, messages: list[dict], max_tokens: int | None) -> None:
        """400 context_length_exceeded when the prompt and the answer's tokens exceed a candidate's
        max_model_len, counted with that candidate's tokenizer, before any candidate is called."""
        async def check(name: str) -> None:
            spec, handle = self.specs[name], self.candidates[name]
            try:
                if name not in self.context_lengths:
                    self.context_lengths[name] = await max_model_len(handle, spec)
                limit = self.context_lengths[name]
                prompt = None if limit is None else await count_prompt_tokens(handle, spec, messages)
            except Exception as err:  # noqa: BLE001 - an unreachable candidate is dropped by the call itself
                log.warning("context check: candidate %s: %s", name, short_reason(err))
                return
            answer = max_tokens or spec.max_tokens
            if prompt is not None and limit is not None and prompt + answer > limit:
                raise APIError(400, f"messages: {prompt} prompt tokens + {answer} answer tokens exceed candidate "
                               f"{name}'s context length of {limit} tokens; shorten the conversation",
                               param="messages", code="context_length_exceeded")

        await asyncio.gather(*(check(name) for name in self.specs))

    async def _fuse(self, question: str, texts: list[str], top_k: int | None, max_new_tokens: int,
                    stop: list[str] | None = None) -> dict[str, Any]:
        return await self._call_ranker(self.ranker.rank_and_fuse.remote(question, texts, top_k, max_new_tokens, stop))

    async def _rank(self, question: str, texts: list[str]) -> dict[str, Any]:
        return await self._call_ranker(self.ranker.rank.remote(question, texts))

    async def _call_ranker(self, call) -> dict[str, Any]:
        """A ranker-fuser call's answer, its failures as API errors (timeout, this input alone, full queue)."""
        try:
            return await asyncio.wait_for(call, timeout=self.args.ranker_timeout_s)
        except asyncio.TimeoutError:
            raise APIError(503, f"ranker-fuser timed out after {self.args.ranker_timeout_s:g} s",
                           code="ranker_timeout") from None
        except FusionFailed:
            raise APIError(400, "the ranker-fuser could not process this input (its batch-mates were answered); "
                           "the server log has the details", code="unprocessable_input") from None
        except Exception as err:  # noqa: BLE001
            from ray.serve.exceptions import BackPressureError

            if isinstance(err, BackPressureError):
                self.metrics.rejected("ranker_queue_full")
                raise APIError(429, "the ranker-fuser's queue is full; retry shortly", code="rate_limit_exceeded",
                               headers={"Retry-After": "1"}) from None
            log.warning("ranker-fuser call failed: %s", short_reason(err))
            raise APIError(503, "ranker-fuser unavailable", code="ranker_unavailable") from None


def build_app(args: dict[str, Any] | AppArgs) -> Application:
    """The application: candidates and the ranker-fuser, composed by the ingress.

    `args` are validated here (a bad field fails `serve run` before anything starts). Relative
    folders (URG's checkpoint, candidates' model sources) are read against the directory `serve
    run` is called from; a missing one is replaced by its fallback, and the log says which.
    """
    args = args if isinstance(args, AppArgs) else AppArgs.model_validate(args)
    urg, urg_fell_back = served_urg(args.urg)
    served = [served_source(c) for c in args.candidates]
    if args.fallback_note and (urg_fell_back or any(fell_back for _, fell_back in served)):
        log.warning("fallbacks served: %s", args.fallback_note)
    args = args.model_copy(update={"urg": urg, "candidates": [c for c, _ in served]})
    ranker = URGRankerFuser.options(**urg.deployment).bind(
        urg.model, urg.fallback_preset, urg.dtype, urg.max_batch_size, urg.batch_wait_timeout_s, urg.num_threads)
    candidates = {c.name: build_candidate(c) for c in args.candidates}
    return Ingress.options(**args.ingress).bind(args.model_dump(), candidates, ranker)
