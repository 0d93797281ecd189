"""The candidate-LLM layer (urg_ray/llms): the engines' contract, retries and token counts, the
shared spec, and one engine registered here used by both the generate job and the Serve app.

Fast tests build no Ray; the two marked slow start Ray (and Ray Serve) in this process.
"""

from __future__ import annotations

import asyncio
import json
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Sequence

import httpx
import pytest

from urg_ray.config import ConfigError, load_config
from urg_ray.generate_config import GenerateConfig
from urg_ray.llms import LLM, Answer, Sampling, build, register
from urg_ray.llms.base import per_item
from urg_ray.llms.spec import LLMSpec



# ---- the one place a new engine is registered ---------------------------------------------
@register("echo")
class EchoLLM(LLM):
    """Answers "echo: <last message>", its words cut at max_tokens."""

    max_model_len = 100

    def generate(self, conversations: Sequence[list[dict]], sampling) -> list[Answer]:
        answers = []
        for conversation, s in zip(conversations, per_item(sampling, len(conversations))):
            words = f"echo: {conversation[-1]['content']}".split()[: s.max_tokens]
            answers.append(Answer(" ".join(words), prompt_tokens=self.count_prompt_tokens(conversation),
                                  completion_tokens=len(words)))
        return answers

    def count_prompt_tokens(self, conversation: list[dict]) -> int:
        return sum(len(m["content"].split()) for m in conversation)


def echo(text: str, max_tokens: int) -> str:
    return " ".join(f"echo: {text}".split()[:max_tokens])


# ---- registry and spec ---------------------------------------------------------------------
def test_an_unknown_engine_is_a_config_error_naming_the_field_and_the_known_engines():
    with pytest.raises(ConfigError, match=r"models\.0\.engine.*unknown engine 'vlm'.*canned, echo, openai"):
        load_config(None, ["models=[{name: a, engine: vlm}]"], schema=GenerateConfig)
    cfg = load_config(None, ["models=[{name: a, engine: echo}]"], schema=GenerateConfig)
    assert type(build(cfg.models[0])) is EchoLLM


def test_the_spec_reads_the_serve_and_the_job_field_names_alike():
    serve_style = LLMSpec.model_validate({"name": "r", "kind": "openai", "remote_model": "m", "base_url": "http://x"})
    job_style = LLMSpec.model_validate({"name": "r", "engine": "openai", "source": "m", "base_url": "http://x"})
    assert serve_style == job_style and serve_style.model_source == "m" and serve_style.kind == "openai"
    assert LLMSpec(name="tiny-gpt2", engine="transformers").model_source == "tiny-gpt2"
    with pytest.raises(ValueError, match="engine canned needs answers"):
        LLMSpec(name="c", engine="canned")


# ---- canned ---------------------------------------------------------------------------------
def test_canned_answers_in_turn_cut_at_max_tokens_and_errors_are_per_answer():
    llm = build(LLMSpec(name="c", engine="canned", answers=["one two three", "four"]))
    conversations = [[{"role": "user", "content": "a b"}]] * 3
    answers = llm.generate(conversations, [Sampling(max_tokens=2), Sampling(), Sampling()])
    assert [a.text for a in answers] == ["one two", "four", "one two three"]
    assert [a.completion_tokens for a in answers] == [2, 1, 3] and answers[0].prompt_tokens == 2
    broken = build(LLMSpec(name="b", engine="canned", error="engine crashed"))
    [answer] = asyncio.run(broken.agenerate(conversations[:1], Sampling()))
    assert answer.text == "" and answer.error == "engine crashed" and not answer.ok


# ---- transformers ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def gpt2_chat() -> LLM:
    return build(LLMSpec(name="g", engine="transformers", source="tiny-gpt2", chat=True, max_model_len=64))


def test_transformers_chat_uses_the_plain_template_and_counts_its_tokens(gpt2_chat):
    from urg_ray.llms.chat import PLAIN_CHAT_TEMPLATE

    conversation = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a fruit."}]
    tok = gpt2_chat.tokenizer
    expected = tok(tok.apply_chat_template(conversation, chat_template=PLAIN_CHAT_TEMPLATE, tokenize=False,
                                           add_generation_prompt=True))["input_ids"]
    assert gpt2_chat.count_prompt_tokens(conversation) == len(expected)
    [answer] = gpt2_chat.generate([conversation], Sampling(max_tokens=4))
    assert answer.ok and answer.prompt_tokens == len(expected) and 0 < answer.completion_tokens <= 4


def test_transformers_answers_each_conversation_within_its_own_limits(gpt2_chat):
    short = [{"role": "user", "content": "Hi."}]
    too_long = [{"role": "user", "content": "word " * 80}]  # over max_model_len 64
    answers = gpt2_chat.generate([short, too_long, short], [Sampling(max_tokens=2), Sampling(), Sampling(max_tokens=6)])
    assert answers[0].ok and answers[2].ok
    assert answers[0].completion_tokens <= 2 and answers[2].completion_tokens <= 6
    assert answers[1].text == "" and "max_model_len is 64" in answers[1].error
    # greedy: the longer answer starts with the shorter one (same prompt, same decoding)
    assert answers[2].text.startswith(answers[0].text)
    assert gpt2_chat.max_model_len == 64


def test_transformers_seeds_each_conversation_by_its_own_seed(gpt2_chat):
    conversation = [{"role": "user", "content": "Say something."}]
    seeded = [Sampling(max_tokens=8, temperature=1.0, seed=seed) for seed in (1, 2)]
    together = [a.text for a in gpt2_chat.generate([conversation, conversation], seeded)]
    apart = [gpt2_chat.generate([conversation], s)[0].text for s in seeded]
    assert together == apart and apart[0] != apart[1]


# ---- openai ---------------------------------------------------------------------------------
class _Stub(BaseHTTPRequestHandler):
    """/chat/completions: a prompt "429 <n>" is answered 429 with Retry-After: <n> the first time,
    "401" always 401; every other prompt is answered with usage counts. Records every body."""

    bodies: list[dict] = []

    def do_POST(self):  # noqa: N802 - http.server's name
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.bodies.append(body)
        prompt = body["messages"][-1]["content"]
        seen = sum(b["messages"][-1]["content"] == prompt for b in self.bodies)
        if prompt.startswith("429") and seen == 1:
            return self._send(429, {"error": {"message": "slow down"}}, {"Retry-After": prompt.split()[1]})
        if prompt == "401":
            return self._send(401, {"error": {"message": "bad key"}})
        self._send(200, {"choices": [{"message": {"content": f"re: {prompt}"}}],
                         "usage": {"prompt_tokens": 7, "completion_tokens": 2}})

    def _send(self, status: int, payload: dict, headers: dict | None = None):
        data = json.dumps(payload).encode()
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def stub_url():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Stub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def test_openai_honours_retry_after_reports_usage_and_does_not_retry_4xx(stub_url, monkeypatch):
    import urg_ray.llms.openai_llm as openai_llm

    waits, real_sleep = [], asyncio.sleep

    async def record(seconds):
        waits.append(seconds)
        await real_sleep(0)

    monkeypatch.setattr(openai_llm.asyncio, "sleep", record)
    _Stub.bodies.clear()
    llm = build(LLMSpec(name="api", engine="openai", source="served", base_url=stub_url, api_key_env=None,
                        timeout_s=10, max_retries=2, backoff_s=30))
    sampling = Sampling(max_tokens=5, temperature=0.5, seed=3, stop=["\n"])
    answers = llm.generate([[{"role": "user", "content": "429 0.25"}], [{"role": "user", "content": "401"}]], sampling)
    assert answers[0].text == "re: 429 0.25" and (answers[0].prompt_tokens, answers[0].completion_tokens) == (7, 2)
    assert waits == [0.25]  # the server's Retry-After, not backoff_s
    assert answers[1].text == "" and answers[1].error == "HTTP 401: bad key"
    assert [b["messages"][-1]["content"] for b in _Stub.bodies].count("401") == 1
    assert {k: _Stub.bodies[-1][k] for k in ("model", "max_tokens", "temperature", "seed", "stop")} == {
        "model": "served", "max_tokens": 5, "temperature": 0.5, "seed": 3, "stop": ["\n"]}
    # the async path shares one client on the caller's loop
    [again] = asyncio.run(llm.agenerate([[{"role": "user", "content": "hi"}]], Sampling()))
    assert again.text == "re: hi" and again.latency_s > 0


def test_openai_gives_up_on_a_refused_connection_after_its_retries():
    with socket.socket() as s:  # a port nothing listens on once closed
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    llm = build(LLMSpec(name="api", engine="openai", base_url=f"http://127.0.0.1:{port}/v1", max_retries=1,
                        backoff_s=0))
    [answer] = llm.generate([[{"role": "user", "content": "hi"}]], Sampling())
    assert "gave up after 2 attempts" in answer.error and "ConnectError" in answer.error


# ---- one engine, two users: the generate job and the Serve app -----------------------------
@pytest.fixture(scope="module")
def ray_session():
    import ray

    # this module is not importable in Ray's workers: ship EchoLLM by value
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.mark.slow
def test_a_registered_engine_generates_candidates_in_the_job(ray_session, tmp_path, capsys):
    from generate import main

    from urg_ray.data import read_records
    from urg_ray.generate import synthetic_prompts

    config = tmp_path / "echo.yaml"
    config.write_text("synthetic_prompts: 3\nsampling: {max_new_tokens: 4}\n"
                      "models: [{name: echo-model, engine: echo, batch_size: 2}]\n")
    assert main(["--config", str(config), "--out", str(tmp_path)]) == 0
    records = read_records(tmp_path / "candidates.jsonl")
    prompts = synthetic_prompts(3)
    assert [r.id for r in records] == [p.id for p in prompts]
    assert [r.candidates[0].text for r in records] == [echo(p.text("{question}"), 4) for p in prompts]
    summary = json.loads((tmp_path / "generate_summary.json").read_text())
    assert summary["models"]["echo-model"]["generated_tokens"] == 3 * 4 and summary["failed_candidates"] == 0


@pytest.mark.slow
def test_a_registered_engine_is_a_candidate_of_the_serve_app(ray_session):
    from ray import serve

    from serve.app import build_app
    from serve.healthz import wait_ready

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    key = "echo-key"
    args = {"candidates": [{"name": "echo-1", "engine": "echo", "max_tokens": 6}],
            "urg": {"model": "tiny", "max_new_tokens": 4, "deployment": {"ray_actor_options": {"num_cpus": 0.2}}},
            "ingress": {"ray_actor_options": {"num_cpus": 0.1,
                                              "runtime_env": {"env_vars": {"URG_SERVE_API_KEY": key}}}}}
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        serve.run(build_app(args), name="echo", route_prefix="/", blocking=False)
        question = "Where is the echo from?"
        body = {"model": "urg-ensemble", "messages": [{"role": "user", "content": question}], "max_tokens": 4}
        wait_ready(f"http://127.0.0.1:{port}")  # every deployment answered its warm-up
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as client:
            reply = client.post("/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"})
        assert reply.status_code == 200, reply.text
        [candidate] = reply.json()["urg"]["candidates"]
        assert candidate["model"] == "echo-1" and candidate["text"] == echo(question, 6)
    finally:
        serve.shutdown()
