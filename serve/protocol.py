"""Request bodies of the HTTP API (pydantic) and the JSON the app answers with.

`/v1/chat/completions` takes the OpenAI chat body. Every field is either honoured or refused:
an unknown field, `n > 1` or `logprobs` is a 400 naming it, never silently ignored. Extensions:
`fuse_top_k` and `candidate_max_tokens` (the `openai` client sends them with `extra_body=`).
`/v1/rank_and_fuse` takes LLM-Blender's shape: `inputs` (questions) and, per input, its `candidates`.
`/v1/rerank` (`/v2/rerank`) and `/v1/score` take vLLM's and Cohere's ranking bodies.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

ROLES = ("system", "developer", "user", "assistant")  # `tool`/`function` turns need tool calling: refused


class TextPart(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]
    name: str | None = None  # accepted as OpenAI does; URG's question does not use it

    @property
    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "\n".join(p.text for p in self.content)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    include_usage: bool = False  # a last chunk with `usage` and no choices


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)  # of the fused answer (and of each candidate, capped)
    max_completion_tokens: int | None = Field(None, ge=1)  # the newer OpenAI name for max_tokens
    # Candidates' sampling (forwarded to every candidate); fusion is greedy.
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    seed: int | None = None
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    stop: str | list[str] | None = None  # forwarded to the candidates and applied to the fused text
    n: int | None = None  # one fused answer per request
    logprobs: bool | None = None
    top_logprobs: int | None = None
    user: str | None = None  # an end-user id, as OpenAI takes it (logged, not used)
    stream: bool = False
    stream_options: StreamOptions | None = None
    fuse_top_k: int | None = Field(None, ge=1)  # extension: candidates fused (default: the URG config's k)
    candidate_max_tokens: int | None = Field(None, ge=1)  # extension: tokens per candidate answer

    @field_validator("n")
    @classmethod
    def _one_answer(cls, n: int | None) -> int | None:
        if n is not None and n != 1:
            raise ValueError("only n=1 is supported (one fused answer per request)")
        return n

    @field_validator("logprobs", "top_logprobs")
    @classmethod
    def _no_logprobs(cls, value: Any) -> Any:
        if value:
            raise ValueError("logprobs are not supported: the fused answer comes from URG's greedy decoding")
        return value

    @field_validator("stop")
    @classmethod
    def _stop_list(cls, stop: str | list[str] | None) -> str | list[str] | None:
        stops = [stop] if isinstance(stop, str) else stop or []
        if len(stops) > 4 or any(not s for s in stops):
            raise ValueError("stop: up to 4 non-empty strings")
        return stop

    @property
    def answer_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    @property
    def stops(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])


def urg_question(messages: list[ChatMessage], max_chars: int) -> str:
    """x for URG: the last user turn first, then the earlier turns, newest kept.

    URG's collator keeps a question's first tokens (source_max_length), so the last user turn
    leads and what a long chat loses is its oldest turns (truncation from the left). A single
    user message is passed as it is, the shape URG was trained on.
    """
    last_user = max((i for i, m in enumerate(messages) if m.role == "user"), default=len(messages) - 1)
    question = messages[last_user].text
    earlier = [f"{m.role}: {m.text}" for i, m in enumerate(messages) if i != last_user]
    kept: list[str] = []
    budget = max_chars - len(question)
    for line in reversed(earlier):  # newest first, until the budget is spent
        budget -= len(line) + 1
        if budget < 0:
            break
        kept.append(line)
    if not kept:
        return question
    return question + "\n\nconversation so far:\n" + "\n".join(reversed(kept))


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


class RerankDocument(BaseModel):
    """Cohere's document object (its v1 API): the text to rank."""

    model_config = ConfigDict(extra="forbid")

    text: str


class RerankRequest(BaseModel):
    """`/v1/rerank` and `/v2/rerank` as vLLM and Cohere take them; documents are strings or {"text"}."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = None  # vLLM's is optional; when given, this server's model name
    query: str
    documents: list[str | RerankDocument] = Field(min_length=1)
    top_n: int | None = Field(None, ge=0)  # None or 0 (vLLM's default): every document
    return_documents: bool = True  # Cohere's flag; vLLM always returns them
    user: str | None = None

    @property
    def texts(self) -> list[str]:
        return [d if isinstance(d, str) else d.text for d in self.documents]


class ScoreRequest(BaseModel):
    """`/v1/score` as vLLM takes it: text_1 against each text_2 (1:1, 1:N), or pairwise (N:N)."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = None
    text_1: str | list[str]
    text_2: str | list[str]
    encoding_format: Literal["float"] | None = None  # vLLM's examples send it; scores are floats
    user: str | None = None

    @field_validator("text_1", "text_2")
    @classmethod
    def _not_empty(cls, texts: str | list[str]) -> str | list[str]:
        if isinstance(texts, list) and not texts:
            raise ValueError("at least one text is needed")
        return texts

    @field_validator("text_2")
    @classmethod
    def _one_per_text_1(cls, texts_2: str | list[str], info: ValidationInfo) -> str | list[str]:
        text_1 = info.data.get("text_1")
        if isinstance(text_1, list) and (not isinstance(texts_2, list) or len(texts_2) != len(text_1)):
            raise ValueError(f"with a list of {len(text_1)} text_1, a list of as many text_2 (pairs, as zip)")
        return texts_2

    def groups(self) -> list[tuple[str, list[int]]]:
        """(query, indices of its text_2s): URG ranks the texts that share a query together."""
        texts_2 = [self.text_2] if isinstance(self.text_2, str) else self.text_2
        queries = self.text_1 if isinstance(self.text_1, list) else [self.text_1] * len(texts_2)
        groups: dict[str, list[int]] = {}
        for i, query in enumerate(queries):
            groups.setdefault(query, []).append(i)
        return list(groups.items())

    @property
    def texts_2(self) -> list[str]:
        return [self.text_2] if isinstance(self.text_2, str) else self.text_2


def named(param: str, value: str | list[str]) -> list[tuple[str, str]]:
    """(field name, text) pairs of a str-or-list field: `text_2`, or `text_2.0`, `text_2.1`, ..."""
    return [(param, value)] if isinstance(value, str) else [(f"{param}.{i}", text) for i, text in enumerate(value)]


def rerank_response(model: str, body: RerankRequest, ranked: dict[str, Any]) -> dict[str, Any]:
    """vLLM's rerank response: results best first, `top_n` of them (0/None: all)."""
    shares, texts = relevance(ranked["scores"]), body.texts
    order = ranked["ranks"][: body.top_n or None]
    results = [{"index": i, **({"document": {"text": texts[i]}} if body.return_documents else {}),
                "relevance_score": shares[i]} for i in order]
    tokens = ranked["prompt_tokens"]
    return {"id": f"rerank-{uuid.uuid4().hex}", "model": model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}, "results": results}


def score_response(model: str, groups: list[tuple[str, list[int]]], ranked: list[dict[str, Any]]) -> dict[str, Any]:
    """vLLM's score response: one score per text_2, in request order; each a share within its group."""
    scores: dict[int, float] = {}
    for (_, members), result in zip(groups, ranked):
        scores.update(zip(members, relevance(result["scores"])))
    tokens = sum(r["prompt_tokens"] for r in ranked)
    return {"id": f"score-{uuid.uuid4().hex}", "object": "list", "created": int(time.time()), "model": model,
            "data": [{"index": i, "object": "score", "score": scores[i]} for i in sorted(scores)],
            "usage": usage(tokens, 0)}


def relevance(scores: list[float]) -> list[float]:
    """URG's eq. 6 scores as shares of their sum: in [0, 1], summing to 1 over one ranking."""
    total = sum(scores)
    return [s / total if total > 0 else 1 / len(scores) for s in scores]


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    """Every non-2xx answer: OpenAI's error body."""

    error: ErrorDetail


def candidate_table(models: list[str], texts: list[str], fused: dict[str, Any],
                    extra: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Per candidate, in input order: model, text, URG score, rank (1 = best), whether its
    encoder states conditioned the fused answer, and `extra` fields (latency, usage)."""
    rank_of = {index: position + 1 for position, index in enumerate(fused["ranks"])}
    selected = set(fused["selected"])
    return [{"model": model, "text": text, "score": fused["scores"][i], "rank": rank_of[i], "selected": i in selected,
             **(extra[i] if extra else {})}
            for i, (model, text) in enumerate(zip(models, texts))]


def chat_completion(model: str, text: str, extension: dict[str, Any], usage: dict[str, int] | None,
                    finish_reason: str = "stop") -> dict[str, Any]:
    """An OpenAI `chat.completion` object; `urg` carries the candidates and the dropped ones."""
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish_reason,
                     "logprobs": None}],
        "usage": usage,
        "urg": extension,
    }


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def chunk(completion: dict[str, Any], delta: dict[str, Any] | None, finish_reason: str | None = None,
          **extra: Any) -> dict[str, Any]:
    """One `chat.completion.chunk` of `completion` (its id, created, model); no delta: no choices."""
    choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish_reason}]
    return {"id": completion["id"], "object": "chat.completion.chunk", "created": completion["created"],
            "model": completion["model"], "choices": choices, **extra}
