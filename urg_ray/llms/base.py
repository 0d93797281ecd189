"""The candidate-LLM interface: one `LLM` class, its `Sampling` settings, its `Answer`, and the engine registry.

    llm = build(LLMSpec(name="a", engine="transformers", source="tiny-gpt2"))
    [answer] = llm.generate([[{"role": "user", "content": "Hi"}]], Sampling(max_tokens=16))
    answer.text, answer.completion_tokens, answer.error      # error "" on success

Jobs (Ray Data actors, `urg_ray.generate_engines`) and Serve candidate deployments
(`serve/candidates.py`) are thin adapters over this interface. Adding an engine is one file with
an `LLM` subclass decorated with `@register("name")`, plus one line in `BUILTIN_ENGINES` (so that
the module is imported when a spec names it; a module imported by the caller needs no line).
"""

from __future__ import annotations

import asyncio
import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Sequence

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from urg_ray.llms.spec import LLMSpec

Conversation = list[dict]  # [{"role": "user", "content": "..."}, ...]


class Sampling(BaseModel):
    """How one answer is decoded (OpenAI's names). temperature 0 is greedy."""

    model_config = ConfigDict(extra="forbid")

    max_tokens: int = Field(64, ge=1)
    temperature: float = Field(0.0, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    seed: int | None = None
    stop: list[str] = Field(default_factory=list)
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0


@dataclass
class Answer:
    """One conversation's answer. `error` is "" on success, else why it failed (and `text` is "")."""

    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_s: float = 0.0  # this answer's generation time as the engine measured it
    error: str = ""

    @property
    def ok(self) -> bool:
        return not self.error


def failed(err: BaseException | str, latency_s: float = 0.0) -> Answer:
    """The Answer recorded for a conversation that failed."""
    message = err if isinstance(err, str) else f"{type(err).__name__}: {err}"
    return Answer(text="", latency_s=latency_s, error=message[:2000])


def per_item(sampling: "Sampling | Sequence[Sampling]", n: int) -> list[Sampling]:
    """One Sampling per conversation."""
    if isinstance(sampling, Sampling):
        return [sampling] * n
    sampling = list(sampling)
    if len(sampling) != n:
        raise ValueError(f"{len(sampling)} sampling settings for {n} conversations")
    return sampling


class LLM:
    """A candidate LLM. Subclasses implement `generate` (and `agenerate` when they are async-native).

    `generate` returns one Answer per conversation, in order; a conversation that fails gets an
    Answer with `error` set and never raises for the others.
    """

    max_model_len: int | None = None  # prompt + answer tokens the model takes; None: unknown

    def __init__(self, spec: "LLMSpec"):
        self.spec = spec

    def generate(self, conversations: Sequence[Conversation],
                 sampling: Sampling | Sequence[Sampling]) -> list[Answer]:
        raise NotImplementedError

    async def agenerate(self, conversations: Sequence[Conversation],
                        sampling: Sampling | Sequence[Sampling]) -> list[Answer]:
        return await asyncio.to_thread(self.generate, conversations, sampling)

    def count_prompt_tokens(self, conversation: Conversation) -> int | None:
        """Tokens of the prompt this conversation becomes; None when the engine cannot tell."""
        return None

    def close(self) -> None:
        """Release clients and models (idempotent)."""


# ---- registry -----------------------------------------------------------------------------
ENGINES: dict[str, type[LLM]] = {}
# engine name -> module that registers it, imported on first use (keeps torch/httpx out of config parsing)
BUILTIN_ENGINES: dict[str, str] = {
    "transformers": "urg_ray.llms.transformers_llm",
    "openai": "urg_ray.llms.openai_llm",
    "canned": "urg_ray.llms.canned",
    "vllm-actor": "urg_ray.llms.vllm_llm",
}
# served by Ray's own vLLM paths (ray.data.llm in jobs, ray.serve.llm LLMServer in Serve), not by build()
RAY_ENGINES = ("vllm",)


def register(name: str) -> Callable[[type[LLM]], type[LLM]]:
    """Class decorator: make an LLM subclass the engine `name` of every spec."""

    def add(cls: type[LLM]) -> type[LLM]:
        ENGINES[name] = cls
        return cls

    return add


def engine_names() -> list[str]:
    return sorted({*ENGINES, *BUILTIN_ENGINES, *RAY_ENGINES})


def engine_class(name: str) -> type[LLM]:
    if name not in ENGINES and name in BUILTIN_ENGINES:
        importlib.import_module(BUILTIN_ENGINES[name])
    if name in ENGINES:
        return ENGINES[name]
    if name in RAY_ENGINES:
        raise ValueError(f"engine {name!r} runs on Ray's own paths (ray.data.llm, ray.serve.llm LLMServer); "
                         "in-process vLLM is engine 'vllm-actor'")
    raise ValueError(f"unknown engine {name!r}; known: {', '.join(engine_names())}")


def build(spec: "LLMSpec") -> LLM:
    """The LLM a spec describes (loads its model)."""
    return engine_class(spec.engine)(spec)
