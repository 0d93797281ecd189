"""Request bodies of the HTTP API (pydantic) and the JSON the app answers with.

`/v1/chat/completions` takes the OpenAI chat body (fields it does not use, like `top_p` or
`user`, are accepted and ignored) plus two extensions, `fuse_top_k` and `candidate_max_tokens`
(the `openai` client sends them with `extra_body=`). `/v1/rank_and_fuse` takes LLM-Blender's
shape: `inputs` (questions) and, per input, its `candidates`.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart]

    @property
    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "\n".join(p.text for p in self.content)


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)  # of the fused answer (and of each candidate, capped)
    max_completion_tokens: int | None = Field(None, ge=1)  # the newer OpenAI name for max_tokens
    temperature: float | None = Field(None, ge=0, le=2)  # candidates' sampling; fusion is greedy
    n: int = Field(1, ge=1, le=1)  # one fused answer per request
    stream: bool = False
    fuse_top_k: int | None = Field(None, ge=1)  # extension: candidates fused (default: the URG config's k)
    candidate_max_tokens: int | None = Field(None, ge=1)  # extension: tokens per candidate answer

    @property
    def answer_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def question(self) -> str:
        """x for URG: the last user turn, with earlier turns as context when there are any."""
        if len(self.messages) == 1:
            return self.messages[0].text
        return "\n".join(f"{m.role}: {m.text}" for m in self.messages)


class CandidateText(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = "unknown"
    text: str


class RankAndFuseRequest(BaseModel):
    """LLM-Blender's `rank_and_fuse(inputs, candidates, top_k=...)`, over HTTP."""

    model_config = ConfigDict(extra="forbid")

    inputs: list[str] = Field(min_length=1)
    candidates: list[list[str | CandidateText]] = Field(min_length=1)
    top_k: int | None = Field(None, ge=1)
    max_new_tokens: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _one_list_per_input(self) -> "RankAndFuseRequest":
        if len(self.candidates) != len(self.inputs):
            raise ValueError(f"candidates: {len(self.candidates)} lists for {len(self.inputs)} inputs; "
                             "give one list of candidates per input")
        for i, cands in enumerate(self.candidates):
            if not cands:
                raise ValueError(f"candidates.{i}: at least one candidate is needed")
        return self


def candidate_table(models: list[str], texts: list[str], fused: dict[str, Any],
                    latencies: list[float] | None = None) -> list[dict[str, Any]]:
    """Per candidate, in input order: model, text, URG score, rank (1 = best) and whether its
    encoder states conditioned the fused answer."""
    rank_of = {index: position + 1 for position, index in enumerate(fused["ranks"])}
    selected = set(fused["selected"])
    rows = []
    for i, (model, text) in enumerate(zip(models, texts)):
        row = {"model": model, "text": text, "score": fused["scores"][i], "rank": rank_of[i], "selected": i in selected}
        if latencies is not None:
            row["latency_s"] = round(latencies[i], 4)
        rows.append(row)
    return rows


def chat_completion(model: str, text: str, extension: dict[str, Any]) -> dict[str, Any]:
    """An OpenAI `chat.completion` object; `urg` carries the candidates and the dropped ones."""
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop",
                     "logprobs": None}],
        "usage": None,
        "urg": extension,
    }


def chat_completion_chunks(completion: dict[str, Any]) -> list[dict[str, Any]]:
    """The same completion as `chat.completion.chunk` events: the fused text arrives in one delta
    (URG generates it in one call), then the finish chunk, which carries the `urg` extension."""
    base = {"id": completion["id"], "object": "chat.completion.chunk", "created": completion["created"],
            "model": completion["model"]}
    text = completion["choices"][0]["message"]["content"]
    return [
        {**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": text}, "finish_reason": None}]},
        {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}], "urg": completion["urg"]},
    ]
