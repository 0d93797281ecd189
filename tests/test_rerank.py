"""The ranking endpoints of the Serve ingress: `/v1/rerank` (`/v2/rerank`) and `/v1/score`, with
request bodies as vLLM's and Cohere's documentation writes them (only `model` names ours).

The body checks and the response shapes run without Serve; the HTTP tests share one app (two
canned candidates, URG from the trained checkpoint or the tiny preset) and are slow."""

import concurrent.futures
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytest.importorskip("ray")
from serve import protocol  # noqa: E402
from serve.errors import APIError, validation_error  # noqa: E402

KEY = "rerank-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
MODEL = "urg-ensemble"
URG_MODEL = str(ROOT / "outputs/train/model")
MAX_DOCUMENTS = 8

# vLLM's docs (serving/openai_compatible_server.md, "Re-rank API" and "Score API").
VLLM_RERANK = {"model": MODEL, "query": "What is the capital of France?",
               "documents": ["The capital of Brazil is Brasilia.", "The capital of France is Paris.",
                             "Horses and cows are both animals"]}
VLLM_SCORE_1_1 = {"model": MODEL, "encoding_format": "float", "text_1": "What is the capital of France?",
                  "text_2": "The capital of France is Paris."}
VLLM_SCORE_1_N = {"model": MODEL, "text_1": "What is the capital of France?",
                  "text_2": ["The capital of Brazil is Brasilia.", "The capital of France is Paris."]}
VLLM_SCORE_N_N = {"model": MODEL, "encoding_format": "float",
                  "text_1": ["What is the capital of Brazil?", "What is the capital of France?"],
                  "text_2": ["The capital of Brazil is Brasilia.", "The capital of France is Paris."]}
# Cohere's v2 rerank reference (docs.cohere.com/v2/reference/rerank).
COHERE_RERANK = {"model": MODEL, "query": "What is the capital of the United States?", "top_n": 3, "documents": [
    "Carson City is the capital city of the American state of Nevada.",
    "The Commonwealth of the Northern Mariana Islands is a group of islands in the Pacific Ocean. "
    "Its capital is Saipan.",
    "Washington, D.C. (also known as simply Washington or DC, and officially as the District of Columbia) "
    "is the capital of the United States. It is a federal district.",
    "Capitalization or capitalisation in English grammar is the use of a capital letter at the start of a word. "
    "English usage varies from capitalization in other languages.",
    "Capital punishment has existed in the United States since beforethe United States was a country. "
    "As of 2017, capital punishment is legal in 30 of the 50 states."]}


def parse(schema, body) -> APIError | object:
    try:
        return schema.model_validate(body)
    except Exception as err:  # noqa: BLE001
        return validation_error(err)


# ---- without Serve ---------------------------------------------------------------------------
@pytest.mark.parametrize("body, param, code", [
    ({**VLLM_RERANK, "documents": []}, "documents", "invalid_value"),
    ({**VLLM_RERANK, "documents": "one string"}, "documents", "invalid_value"),
    ({**VLLM_RERANK, "documents": ["ok", 7]}, "documents.1", "invalid_value"),
    ({**VLLM_RERANK, "documents": [{"title": "no text"}]}, "documents.0.text", "missing_required_parameter"),
    ({**VLLM_RERANK, "documents": [{"text": 5}]}, "documents.0.text", "invalid_value"),
    ({**VLLM_RERANK, "query": ["a", "list"]}, "query", "invalid_value"),
    ({**VLLM_RERANK, "top_n": -1}, "top_n", "invalid_value"),
    ({**VLLM_RERANK, "max_tokens_per_doc": 512}, "max_tokens_per_doc", "unsupported_parameter"),
    ({"model": MODEL, "documents": ["a"]}, "query", "missing_required_parameter"),
])
def test_bad_rerank_bodies_are_400s_naming_the_field(body, param, code):
    error = parse(protocol.RerankRequest, body)
    assert isinstance(error, APIError)
    assert (error.status, error.code, error.param) == (400, code, param), error.param


@pytest.mark.parametrize("body, param", [
    ({**VLLM_SCORE_N_N, "text_2": ["only one"]}, "text_2"),
    ({**VLLM_SCORE_N_N, "text_2": "a string"}, "text_2"),
    ({**VLLM_SCORE_1_N, "text_2": []}, "text_2"),
    ({**VLLM_SCORE_1_N, "text_1": []}, "text_1"),
    ({**VLLM_SCORE_1_1, "encoding_format": "base64"}, "encoding_format"),
    ({**VLLM_SCORE_1_1, "text_2": 3}, "text_2"),
])
def test_bad_score_bodies_are_400s_naming_the_field(body, param):
    error = parse(protocol.ScoreRequest, body)
    assert isinstance(error, APIError) and (error.status, error.param) == (400, param), error.param


def test_error_messages_name_the_field_in_the_validators_own_words():
    empty = parse(protocol.ScoreRequest, {**VLLM_SCORE_1_N, "text_2": []})
    assert empty.message == "text_2: at least one text is needed"  # no pydantic "Value error, " prefix
    union = parse(protocol.RerankRequest, {**VLLM_RERANK, "documents": ["ok", 7]})
    assert union.message == "documents.1: Input should be a valid string"  # both branches name one field
    # A client's unknown key keeps its name even when it looks like a type pydantic would tag a union with.
    unknown = parse(protocol.RerankRequest, {**VLLM_RERANK, "documents": [{"text": "t", "Str": 1}]})
    assert (unknown.param, unknown.code) == ("documents.0.Str", "unsupported_parameter")


def test_the_documented_bodies_parse():
    for body in (VLLM_RERANK, COHERE_RERANK, {**VLLM_RERANK, "documents": [{"text": "Cohere v1 object"}, "plain"]}):
        assert isinstance(parse(protocol.RerankRequest, body), protocol.RerankRequest)
    for body in (VLLM_SCORE_1_1, VLLM_SCORE_1_N, VLLM_SCORE_N_N):
        assert isinstance(parse(protocol.ScoreRequest, body), protocol.ScoreRequest)


def test_rerank_response_is_best_first_with_shares_of_the_scores():
    body = protocol.RerankRequest.model_validate({**VLLM_RERANK, "top_n": 2})
    ranked = {"scores": [0.1, 0.3, 0.2], "ranks": [1, 2, 0], "prompt_tokens": 40}
    reply = protocol.rerank_response(MODEL, body, ranked)
    assert reply["model"] == MODEL and reply["usage"]["total_tokens"] == 40 and reply["id"]
    assert reply["results"] == [
        {"index": 1, "document": {"text": VLLM_RERANK["documents"][1]}, "relevance_score": pytest.approx(0.5)},
        {"index": 2, "document": {"text": VLLM_RERANK["documents"][2]}, "relevance_score": pytest.approx(1 / 3)}]
    quiet = protocol.RerankRequest.model_validate({**VLLM_RERANK, "top_n": 0, "return_documents": False})
    assert [r for r in protocol.rerank_response(MODEL, quiet, ranked)["results"]] == [
        {"index": i, "relevance_score": pytest.approx(s)} for i, s in [(1, 0.5), (2, 1 / 3), (0, 1 / 6)]]


def test_score_pairs_sharing_a_text_1_are_ranked_together():
    body = protocol.ScoreRequest.model_validate({"text_1": ["q1", "q2", "q1"], "text_2": ["a", "b", "c"]})
    groups = body.groups()
    assert groups == [("q1", [0, 2]), ("q2", [1])]
    ranked = [{"scores": [0.2, 0.6], "prompt_tokens": 10}, {"scores": [0.05], "prompt_tokens": 4}]
    reply = protocol.score_response(MODEL, groups, ranked)
    assert [(d["index"], d["object"]) for d in reply["data"]] == [(0, "score"), (1, "score"), (2, "score")]
    assert [d["score"] for d in reply["data"]] == pytest.approx([0.25, 1.0, 0.75])
    assert reply["object"] == "list" and reply["usage"]["prompt_tokens"] == 14


# ---- over HTTP, one Serve app for the module ----------------------------------------------------
@pytest.fixture(scope="module")
def client(serve_app):
    import httpx

    args = {"candidates": [{"name": "canned-a", "kind": "canned", "answers": ["Paris."]},
                           {"name": "canned-b", "kind": "canned", "answers": ["Lyon."]}],
            "urg": {"model": URG_MODEL, "fallback_preset": "tiny", "max_new_tokens": 4,
                    "deployment": {"ray_actor_options": {"num_cpus": 0.2}}},
            "limits": {"max_candidates": MAX_DOCUMENTS, "max_text_chars": 1_000},
            "ingress": {"ray_actor_options": {"num_cpus": 0.1,
                                              "runtime_env": {"env_vars": {"URG_SERVE_API_KEY": KEY}}}}}
    with httpx.Client(base_url=serve_app(args, "rerank"), timeout=120, headers=AUTH) as c:
        yield c


@pytest.fixture(scope="module")
def local_urg(client):
    """The model the app serves, loaded here: the expected scores are its own `URG.rank`."""
    from urg_ray import URG
    from urg_ray.presets import resolve_urg_source

    return URG.from_pretrained(resolve_urg_source(URG_MODEL, "tiny")).eval()


def expected_shares(urg, query: str, documents: list[str]) -> tuple[list[int], list[float]]:
    ranked = urg.rank([query], [documents])
    scores = ranked.scores[0, : len(documents)].tolist()
    return ranked.ranks[0], [s / sum(scores) for s in scores]


@pytest.mark.slow
@pytest.mark.parametrize("path, body", [("/v1/rerank", VLLM_RERANK), ("/v2/rerank", COHERE_RERANK)])
def test_rerank_as_documented_is_urgs_ranking(client, local_urg, path, body):
    reply = client.post(path, json=body)
    assert reply.status_code == 200, reply.text
    data = reply.json()
    order, shares = expected_shares(local_urg, body["query"], body["documents"])
    top = body.get("top_n") or len(body["documents"])
    assert [r["index"] for r in data["results"]] == order[:top]
    assert [r["relevance_score"] for r in data["results"]] == pytest.approx([shares[i] for i in order[:top]], rel=1e-4)
    assert [r["document"]["text"] for r in data["results"]] == [body["documents"][i] for i in order[:top]]
    pairs = local_urg.collator.encode_pairs([body["query"]], [body["documents"]]).attention_mask.sum().item()
    assert data["model"] == MODEL and data["usage"]["total_tokens"] == pairs and data["id"].startswith("rerank-")


@pytest.mark.slow
def test_score_as_documented(client, local_urg):
    one = client.post("/v1/score", json=VLLM_SCORE_1_1).json()
    assert one["data"] == [{"index": 0, "object": "score", "score": pytest.approx(1.0)}]  # one text: all the share
    many = client.post("/v1/score", json=VLLM_SCORE_1_N).json()
    _, shares = expected_shares(local_urg, VLLM_SCORE_1_N["text_1"], VLLM_SCORE_1_N["text_2"])
    assert [d["score"] for d in many["data"]] == pytest.approx(shares, rel=1e-4)
    zipped = client.post("/v1/score", json=VLLM_SCORE_N_N).json()  # two different queries: one text each
    assert [(d["index"], d["score"]) for d in zipped["data"]] == [(0, pytest.approx(1.0)), (1, pytest.approx(1.0))]


@pytest.mark.slow
def test_concurrent_reranks_are_batched_and_each_gets_its_own_ranking(client, local_urg):
    bodies = [{**VLLM_RERANK, "query": f"Question {i}: what is the capital of France?",
               "documents": VLLM_RERANK["documents"][i % 3:] + VLLM_RERANK["documents"][: i % 3]} for i in range(6)]
    with concurrent.futures.ThreadPoolExecutor(len(bodies)) as pool:
        replies = list(pool.map(lambda body: client.post("/v1/rerank", json=body), bodies))
    for body, reply in zip(bodies, replies):
        assert reply.status_code == 200, reply.text
        order, _ = expected_shares(local_urg, body["query"], body["documents"])
        assert [r["index"] for r in reply.json()["results"]] == order


@pytest.mark.slow
def test_ranking_endpoints_share_auth_limits_and_errors(client):
    def error(reply, status, param):
        assert reply.status_code == status, reply.text
        assert reply.json()["error"]["param"] == param, reply.text
        return reply.json()["error"]

    assert client.post("/v1/rerank", json=VLLM_RERANK, headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.post("/v1/score", json=VLLM_SCORE_1_1, headers={"Authorization": ""}).status_code == 401
    error(client.post("/v1/rerank", json={**VLLM_RERANK, "documents": []}), 400, "documents")
    error(client.post("/v1/rerank", json={**VLLM_RERANK, "documents": [1, 2]}), 400, "documents.0")
    too_many = error(client.post("/v1/rerank", json={**VLLM_RERANK, "documents": ["d"] * (MAX_DOCUMENTS + 1)}),
                     400, "documents")
    assert too_many["code"] == "too_many_candidates"
    error(client.post("/v1/score", json={**VLLM_SCORE_1_N, "text_2": ["x"] * (MAX_DOCUMENTS + 1)}), 400, "text_2")
    error(client.post("/v1/score", json={**VLLM_SCORE_N_N, "text_2": ["one"]}), 400, "text_2")
    error(client.post("/v1/rerank", json={**VLLM_RERANK, "documents": ["ok", "x" * 1_001]}), 413, "documents.1")
    error(client.post("/v1/rerank", json={**VLLM_RERANK, "model": "BAAI/bge-reranker-base"}), 404, "model")
    surrogate = json.dumps({**VLLM_RERANK, "query": "bad \ud800"}).encode()  # valid JSON: the escape stays ASCII
    error(client.post("/v1/rerank", content=surrogate, headers={"content-type": "application/json"}), 400, "query")
    schema = client.get("/openapi.json").json()
    for path, model in [("/v1/rerank", "RerankRequest"), ("/v2/rerank", "RerankRequest"),
                        ("/v1/score", "ScoreRequest")]:
        assert schema["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith(
            model)
