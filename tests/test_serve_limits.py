"""The ingress's request limits and its model name (serve/limits.py), without Serve: each limit
passes a request exactly at it and refuses one over it with the status, `param` and code the
HTTP API answers (tests/test_serve.py and tests/test_rerank.py check the same errors over HTTP)."""

import pytest

pytest.importorskip("ray")
from serve import protocol  # noqa: E402
from serve.config import LimitArgs  # noqa: E402
from serve.errors import APIError  # noqa: E402
from serve.limits import check_chat, check_model, check_rank_and_fuse, check_rerank, check_score  # noqa: E402

MODEL = "urg-ensemble"
# Small limits, written out: the expected counts below are these plus one, not read back from LIMITS.
LIMITS = LimitArgs(max_inputs=2, max_candidates=3, max_text_chars=10, max_new_tokens=5)
AT, OVER = "x" * 10, "x" * 11  # max_text_chars exactly, and one character more


def chat(**fields) -> None:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], **fields}
    check_chat(protocol.ChatRequest.model_validate(body), LIMITS, MODEL)


def rank_and_fuse(**fields) -> None:
    body = {"inputs": ["q0", "q1"], "candidates": [["a"], ["b", "c"]], **fields}
    check_rank_and_fuse(protocol.RankAndFuseRequest.model_validate(body), LIMITS)


def rerank(**fields) -> None:
    body = {"model": MODEL, "query": "q", "documents": ["a", "b"], **fields}
    check_rerank(protocol.RerankRequest.model_validate(body), LIMITS, MODEL)


def score(**fields) -> None:
    body = {"model": MODEL, "text_1": "q", "text_2": ["a", "b"], **fields}
    check_score(protocol.ScoreRequest.model_validate(body), LIMITS, MODEL)


def refused(check, **fields) -> APIError:
    with pytest.raises(APIError) as err:
        check(**fields)
    return err.value


def turns(last: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": "hi"}, {"role": "assistant", "content": last},
            {"role": "user", "content": "ok"}]


# (check, fields at the limit, the same one over it, status, param, code, message)
BOUNDARIES = [
    (chat, {"messages": turns(AT)}, {"messages": turns(OVER)}, 413, "messages.1.content", "text_too_long",
     "messages.1.content: 11 characters > the limit of 10"),
    (chat, {"max_tokens": 5}, {"max_tokens": 6}, 400, "max_tokens", "invalid_value", "max_tokens: 6 > the limit of 5"),
    (chat, {"max_completion_tokens": 5}, {"max_completion_tokens": 6}, 400, "max_completion_tokens", "invalid_value",
     "max_completion_tokens: 6 > the limit of 5"),
    (chat, {"candidate_max_tokens": 5}, {"candidate_max_tokens": 6}, 400, "candidate_max_tokens", "invalid_value",
     "candidate_max_tokens: 6 > the limit of 5"),
    (rank_and_fuse, {}, {"inputs": ["q0", "q1", "q2"], "candidates": [["a"], ["b"], ["c"]]}, 400, "inputs",
     "too_many_inputs", "inputs: 3 > the limit of 2 per request"),
    (rank_and_fuse, {"candidates": [["a"], ["b", "c", "d"]]}, {"candidates": [["a"], ["b", "c", "d", "e"]]}, 400,
     "candidates.1", "too_many_candidates", "candidates.1: 4 > the limit of 3"),
    (rank_and_fuse, {"inputs": ["q0", AT]}, {"inputs": ["q0", OVER]}, 413, "inputs.1", "text_too_long",
     "inputs.1: 11 characters > the limit of 10"),
    (rank_and_fuse, {"candidates": [["a"], ["b", AT]]}, {"candidates": [["a"], ["b", OVER]]}, 413, "candidates.1.1",
     "text_too_long", "candidates.1.1: 11 characters > the limit of 10"),
    (rank_and_fuse, {"candidates": [["a"], [{"model": "m", "text": AT}]]},
     {"candidates": [["a"], [{"model": "m", "text": OVER}]]}, 413, "candidates.1.0", "text_too_long",
     "candidates.1.0: 11 characters > the limit of 10"),
    (rank_and_fuse, {"max_new_tokens": 5}, {"max_new_tokens": 6}, 400, "max_new_tokens", "invalid_value",
     "max_new_tokens: 6 > the limit of 5"),
    (rerank, {"documents": ["a", "b", "c"]}, {"documents": ["a", "b", "c", "d"]}, 400, "documents",
     "too_many_candidates", "documents: 4 texts > the limit of 3 per request"),
    (rerank, {"query": AT}, {"query": OVER}, 413, "query", "text_too_long", "query: 11 characters > the limit of 10"),
    (rerank, {"documents": ["a", {"text": AT}]}, {"documents": ["a", {"text": OVER}]}, 413, "documents.1",
     "text_too_long", "documents.1: 11 characters > the limit of 10"),
    (score, {"text_2": ["a", "b", "c"]}, {"text_2": ["a", "b", "c", "d"]}, 400, "text_2", "too_many_candidates",
     "text_2: 4 texts > the limit of 3 per request"),
    (score, {"text_1": AT}, {"text_1": OVER}, 413, "text_1", "text_too_long",
     "text_1: 11 characters > the limit of 10"),
    (score, {"text_2": AT}, {"text_2": OVER}, 413, "text_2", "text_too_long",
     "text_2: 11 characters > the limit of 10"),
    (score, {"text_1": ["q", AT], "text_2": ["a", "b"]}, {"text_1": ["q", OVER], "text_2": ["a", "b"]}, 413, "text_1.1",
     "text_too_long", "text_1.1: 11 characters > the limit of 10"),
    (score, {"text_2": ["a", AT]}, {"text_2": ["a", OVER]}, 413, "text_2.1", "text_too_long",
     "text_2.1: 11 characters > the limit of 10"),
]


@pytest.mark.parametrize("check, at, over, status, param, code, message", BOUNDARIES,
                         ids=[f"{case[0].__name__}-{case[4]}" for case in BOUNDARIES])
def test_a_request_at_a_limit_passes_and_one_over_is_refused_naming_the_field(check, at, over, status, param, code,
                                                                              message):
    check(**at)
    error = refused(check, **over)
    assert (error.status, error.param, error.code, error.message) == (status, param, code, message)
    assert error.body()["error"] == {"message": message, "type": "invalid_request_error", "param": param, "code": code}


def test_the_first_field_over_its_limit_is_named():
    error = refused(chat, messages=turns(OVER), max_tokens=6)  # the messages are checked before max_tokens
    assert error.param == "messages.1.content"
    error = refused(rerank, query=OVER, documents=["a", OVER])  # the query before the documents
    assert error.param == "query"


@pytest.mark.parametrize("check", [chat, rerank, score])
def test_another_model_name_is_a_404_naming_the_served_one(check):
    error = refused(check, model="gpt-4")
    assert (error.status, error.param, error.code) == (404, "model", "model_not_found")
    assert error.message == "model 'gpt-4' does not exist; this server serves 'urg-ensemble'"
    assert error.body()["error"]["type"] == "invalid_request_error"


def test_the_model_is_checked_before_the_limits():
    assert refused(chat, model="gpt-4", messages=turns(OVER)).status == 404
    assert refused(rerank, model="gpt-4", documents=["a", "b", "c", "d"]).status == 404


def test_the_ranking_bodies_may_leave_the_model_out():
    check_rerank(protocol.RerankRequest.model_validate({"query": "q", "documents": ["a"]}), LIMITS, MODEL)
    check_score(protocol.ScoreRequest.model_validate({"text_1": "q", "text_2": "a"}), LIMITS, MODEL)
    check_model(None, MODEL)
    check_model(MODEL, MODEL)
