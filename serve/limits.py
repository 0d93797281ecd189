"""The ingress's checks of a parsed request against its limits (`AppArgs.limits`) and the one
model name it serves, made before any candidate or the ranker-fuser is called. Each failure is
the API's error (serve/errors.py) with the field in `param` and at the start of the message:

    404 model_not_found       `model` is not the served model's name
    413 text_too_long         a message, question, candidate, query or document over max_text_chars
    400 too_many_inputs       more than max_inputs questions (/v1/rank_and_fuse)
    400 too_many_candidates   more than max_candidates candidates, documents or text_2 texts
    400 invalid_value         a token count over max_new_tokens
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from serve import protocol
from serve.errors import APIError

if TYPE_CHECKING:
    from serve.config import LimitArgs


def check_model(model: str | None, model_name: str) -> None:
    """404 unless `model` is `model_name`; None (an optional `model` left out) passes."""
    if model is not None and model != model_name:
        raise APIError(404, f"model {model!r} does not exist; this server serves {model_name!r}",
                       param="model", code="model_not_found")


def check_chat(body: protocol.ChatRequest, limits: LimitArgs, model_name: str) -> None:
    """/v1/chat/completions: the model, each message's length, max_tokens and candidate_max_tokens."""
    check_model(body.model, model_name)
    for i, message in enumerate(body.messages):
        _check_length(message.text, f"messages.{i}.content", limits)
    # the field the client sent: max_completion_tokens (OpenAI's newer name) wins over max_tokens
    _check_tokens(body.answer_tokens, "max_completion_tokens" if body.max_completion_tokens else "max_tokens", limits)
    _check_tokens(body.candidate_max_tokens, "candidate_max_tokens", limits)


def check_rank_and_fuse(body: protocol.RankAndFuseRequest, limits: LimitArgs) -> None:
    """/v1/rank_and_fuse: the number of questions, each one's number of candidates, their lengths,
    and max_new_tokens."""
    if len(body.inputs) > limits.max_inputs:
        raise APIError(400, f"inputs: {len(body.inputs)} > the limit of {limits.max_inputs} per request",
                       param="inputs", code="too_many_inputs")
    for i, (question, cands) in enumerate(zip(body.inputs, body.candidates)):
        _check_length(question, f"inputs.{i}", limits)
        if len(cands) > limits.max_candidates:
            raise APIError(400, f"candidates.{i}: {len(cands)} > the limit of {limits.max_candidates}",
                           param=f"candidates.{i}", code="too_many_candidates")
        for j, cand in enumerate(cands):
            _check_length(cand if isinstance(cand, str) else cand.text, f"candidates.{i}.{j}", limits)
    _check_tokens(body.max_new_tokens, "max_new_tokens", limits)


def check_rerank(body: protocol.RerankRequest, limits: LimitArgs, model_name: str) -> None:
    """/v1/rerank, /v2/rerank: the model, the number of documents, the query's and documents' lengths."""
    _check_ranking(body.model, [("query", body.query)], [(f"documents.{i}", text) for i, text in enumerate(body.texts)],
                   "documents", limits, model_name)


def check_score(body: protocol.ScoreRequest, limits: LimitArgs, model_name: str) -> None:
    """/v1/score: the model, the number of text_2 texts, the lengths of text_1 and text_2."""
    _check_ranking(body.model, protocol.named("text_1", body.text_1), protocol.named("text_2", body.text_2), "text_2",
                   limits, model_name)


def _check_ranking(model: str | None, queries: list[tuple[str, str]], texts: list[tuple[str, str]], param: str,
                   limits: LimitArgs, model_name: str) -> None:
    """The ranking endpoints' model, number of texts to rank and lengths ((param, text) pairs)."""
    check_model(model, model_name)
    if len(texts) > limits.max_candidates:
        raise APIError(400, f"{param}: {len(texts)} texts > the limit of {limits.max_candidates} "
                       "per request", param=param, code="too_many_candidates")
    for name, text in [*queries, *texts]:
        _check_length(text, name, limits)


def _check_length(text: str, param: str, limits: LimitArgs) -> None:
    if len(text) > limits.max_text_chars:
        raise APIError(413, f"{param}: {len(text)} characters > the limit of {limits.max_text_chars}",
                       param=param, code="text_too_long")


def _check_tokens(tokens: int | None, param: str, limits: LimitArgs) -> None:
    if tokens is not None and tokens > limits.max_new_tokens:
        raise APIError(400, f"{param}: {tokens} > the limit of {limits.max_new_tokens}",
                       param=param, code="invalid_value")
