"""`LLMSpec`: one candidate LLM, as jobs (`urg_ray.generate_config.ModelSpec`) and Serve
(`serve.candidates.CandidateArgs`) both describe it. Those two add only where it runs (Ray Data
actors, Serve deployments) and its default sampling; the engine fields are these.

YAML names kept from both sides: `engine` (Serve's `kind`), `source` (Serve's `model_source`,
and `remote_model` for openai).
"""

from __future__ import annotations

from typing import Any

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, model_validator

from urg_ray.llms.base import RAY_ENGINES, Conversation, engine_class


class LLMSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    name: str  # the candidate's "model" in records and responses
    # a registered engine (urg_ray.llms.base.engine_names()); checked by `check_engine` where a job or app
    # starts, not here: a spec re-validated inside a Ray worker may name an engine only the driver registered
    engine: str = Field("vllm", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
                        validation_alias=AliasChoices("engine", "kind"))
    # hub id, local folder, tiny model name (urg_ray.tiny_llms), or the remote model (openai); default: name
    source: str | None = Field(None, validation_alias=AliasChoices("source", "model_source", "remote_model"))
    dtype: str = "auto"
    max_model_len: int = Field(2048, ge=16)  # prompt tokens at or above this are a per-answer error
    chat: bool | None = None  # apply the chat template / use /chat/completions; None: openai yes, others no
    chat_template: str | None = None  # for tokenizers without one (default: urg_ray.llms.chat.PLAIN_CHAT_TEMPLATE)
    engine_kwargs: dict[str, Any] = Field(default_factory=dict)  # extra vLLM engine args
    # openai
    base_url: str | None = None  # e.g. http://127.0.0.1:8000/v1
    api_key_env: str | None = "OPENAI_API_KEY"  # read from the environment; unset: no Authorization header
    timeout_s: float | None = Field(None, gt=0)  # per HTTP request; None: 60
    max_retries: int = Field(3, ge=0)  # on timeouts, connection errors, 408/409/429/5xx
    backoff_s: float = Field(1.0, ge=0)  # waits backoff_s * 2**attempt between tries (or the Retry-After)
    # canned
    answers: list[str] = Field(default_factory=list)  # answered in turn
    delay_s: float = Field(0.0, ge=0)  # latency before answering
    error: str | None = None  # always fail with this message

    @model_validator(mode="after")
    def _fields_of_engine(self) -> "LLMSpec":
        missing = self.missing_field()
        if missing:
            raise ValueError(f"model {self.name!r}: engine {self.engine} needs {missing}")
        return self

    def missing_field(self) -> str | None:
        if self.engine == "openai" and not self.base_url:
            return "base_url"
        if self.engine == "canned" and not (self.answers or self.error):
            return "answers (or error)"
        return None

    @property
    def kind(self) -> str:  # Serve's name for the engine
        return self.engine

    @property
    def model_source(self) -> str:
        return self.source or self.name

    @property
    def uses_chat(self) -> bool:
        return self.engine == "openai" if self.chat is None else self.chat


def check_engine(spec: LLMSpec) -> None:
    """Raise ValueError naming the model when its engine is not registered."""
    if spec.engine not in RAY_ENGINES:
        try:
            engine_class(spec.engine)
        except ValueError as err:
            raise ValueError(f"model {spec.name!r}: {err}") from None


def prompt_of(conversation: Conversation) -> str:
    """The raw prompt of a conversation sent without a chat template: its messages' text."""
    return "\n".join(str(m.get("content") or "") for m in conversation)
