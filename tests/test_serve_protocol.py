"""The Serve ingress's parts that need no running Serve: body checks, OpenAI parameters, the
multi-turn question, batch isolation in the ranker and auth that fails closed (serve/)."""

import asyncio
import json
from types import SimpleNamespace

import pytest

pytest.importorskip("ray")
from serve import protocol  # noqa: E402
from serve.errors import APIError, check_json_text, validation_error  # noqa: E402
from serve.ranker import FusionFailed, fuse_each  # noqa: E402

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def parse_chat(**fields) -> protocol.ChatRequest:
    try:
        return protocol.ChatRequest.model_validate({**CHAT, **fields})
    except Exception as err:  # noqa: BLE001
        raise validation_error(err) from None


def test_a_lone_surrogate_is_a_400_naming_its_field():
    body = json.loads(json.dumps({"inputs": ["ok", "bad \ud800"], "candidates": [["a"], ["b"]]}))
    with pytest.raises(APIError) as err:
        check_json_text(body)
    assert (err.value.status, err.value.param, err.value.code) == (400, "inputs.1", "invalid_unicode")
    check_json_text({"inputs": ["caf\u00e9 \U0001f600"]})  # real non-ASCII text passes


def test_nesting_beyond_the_limit_is_a_400():
    deep: list = []
    for _ in range(40):
        deep = [deep]
    with pytest.raises(APIError) as err:
        check_json_text({"messages": deep}, max_depth=32)
    assert err.value.status == 400 and err.value.code == "nesting_too_deep"
    check_json_text({"messages": [[[[]]]]}, max_depth=32)


@pytest.mark.parametrize("fields, param, code", [
    ({"n": 2}, "n", "invalid_value"),
    ({"logprobs": True}, "logprobs", "invalid_value"),
    ({"top_logprobs": 3}, "top_logprobs", "invalid_value"),
    ({"functions": []}, "functions", "unsupported_parameter"),
    ({"messages": [{"role": "tool", "content": "x", "tool_call_id": "1"}]}, "messages.0.role", "invalid_value"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop", "invalid_value"),
])
def test_unsupported_parameters_are_400s_naming_them(fields, param, code):
    with pytest.raises(APIError) as err:
        parse_chat(**fields)
    assert (err.value.status, err.value.param, err.value.code) == (400, param, code)


def test_every_unknown_parameter_is_named():
    with pytest.raises(APIError) as err:
        parse_chat(tools=[], response_format={"type": "json_object"})
    assert "tools" in err.value.message and "response_format" in err.value.message


def test_sampling_parameters_are_accepted():
    body = parse_chat(top_p=0.9, seed=3, stop="\n", presence_penalty=0.5, frequency_penalty=-0.5, n=1,
                      logprobs=False, stream_options={"include_usage": True})
    assert body.stops == ["\n"] and body.top_p == 0.9 and body.seed == 3


def test_a_20_turn_chat_keeps_its_last_user_turn_through_urgs_truncation():
    from urg_ray.collate import Collator
    from urg_ray.presets import tiny_tokenizer

    turns = [{"role": "user" if i % 2 == 0 else "assistant", "content": f"turn {i} " + "filler words " * 20}
             for i in range(19)]
    turns.append({"role": "user", "content": "What is the capital of France?"})
    messages = [protocol.ChatMessage.model_validate(t) for t in turns]
    collator = Collator(tiny_tokenizer(), source_max_length=128)

    def kept(question: str) -> str:
        ids = collator.encode_pairs([question], [["Paris."]]).input_ids[0, 0]
        return collator.tokenizer.decode(ids, skip_special_tokens=True)

    question = protocol.urg_question(messages, max_chars=2_000)
    assert "capital of France" in kept(question).replace("  ", " ")
    assert "turn 18" in question and "turn 0 " not in question  # the newest earlier turns, not the oldest
    joined = "\n".join(f"{m.role}: {m.text}" for m in messages)  # what first-turns-first loses
    assert "capital of France" not in kept(joined)
    assert protocol.urg_question(messages[-1:], 2_000) == "What is the capital of France?"


def test_a_failing_batch_is_retried_item_by_item():
    calls = []

    async def run(items):
        calls.append(list(items))
        if "bad" in items:
            raise ValueError("tokenizer error")
        return [item.upper() for item in items]

    items = ["a", "bad", "b", "c"]
    results = asyncio.run(fuse_each(run, items, group=lambda item: 0))
    assert results[0] == "A" and results[2:] == ["B", "C"]
    assert isinstance(results[1], FusionFailed)
    assert calls[0] == items and sorted(map(tuple, calls[1:])) == [("a",), ("b",), ("bad",), ("c",)]


def test_batched_items_are_grouped_by_their_settings():
    calls = []

    async def run(items):
        calls.append([name for name, _ in items])
        return [name for name, _ in items]

    items = [("a", 0.0), ("b", 0.7), ("c", 0.0)]
    assert asyncio.run(fuse_each(run, items, group=lambda item: item[1])) == ["a", "b", "c"]
    assert sorted(calls) == [["a", "c"], ["b"]]


def test_a_stop_string_at_the_start_of_the_fused_answer_still_gets_the_fallback(tiny):
    from serve.ranker import FuseItem, URGRankerFuser
    from urg_ray.streaming import FALLBACK_NOTE

    question, candidates = "What is the capital of France?", ("Paris, on the Seine.", "It is Paris.", "Berlin.")
    full = tiny.rank_and_fuse([question], [list(candidates)], max_new_tokens=16)[0]
    assert full.text.strip()  # the case under test: a fused answer that the stop cuts to nothing
    stop = full.text[:3]
    ranker = SimpleNamespace(urg=tiny)
    ranker._prompt_tokens = lambda q, c: URGRankerFuser.func_or_class._prompt_tokens(ranker, q, c)
    [served] = URGRankerFuser.func_or_class._rank_and_fuse(ranker, [FuseItem(question, candidates, 3, 16, (stop,))])
    top = candidates[full.ranks[0]]
    assert served["text"] == (top[: top.index(stop)] if stop in top else top).strip()
    assert FALLBACK_NOTE in served["note"]
    streamed = tiny.stream_fuse(question, list(candidates), 3, 16, stop=[stop], empty_fallback=True)
    assert "".join(streamed) == served["text"] and streamed.result.note == served["note"]


def test_a_replica_without_its_key_refuses_to_start(monkeypatch):
    from serve.app import AppArgs, Ingress

    monkeypatch.delenv("URG_TEST_ABSENT_KEY", raising=False)
    args = AppArgs.model_validate({"candidates": [{"name": "c", "kind": "canned", "answers": ["a"]}],
                                   "auth_token_env": "URG_TEST_ABSENT_KEY"})
    read_key = Ingress.func_or_class._read_key  # what the constructor calls first
    with pytest.raises(RuntimeError, match=r"URG_TEST_ABSENT_KEY is not set.*auth: none"):
        read_key(SimpleNamespace(args=args))
    monkeypatch.setenv("URG_TEST_ABSENT_KEY", "k")
    assert read_key(SimpleNamespace(args=args)) == "k"
    assert read_key(SimpleNamespace(args=args.model_copy(update={"auth": "none"}))) is None
    with pytest.raises(ValueError, match="auth"):
        AppArgs.model_validate({"candidates": args.model_dump()["candidates"], "auth": "off"})


def test_a_streamed_answer_gives_its_slot_back_when_the_client_disconnects():
    from starlette.requests import ClientDisconnect

    from serve.app import AppArgs, Ingress

    class Events:  # the ranker's stream: ranked, then pieces until cancelled
        cancelled = False

        async def __anext__(self):
            return {"type": "piece", "text": "x"}

        def cancel(self):
            self.cancelled = True

    events = Events()
    cls = Ingress.func_or_class
    ingress = SimpleNamespace(  # the parts of an ingress the stream uses, without Serve
        args=AppArgs.model_validate({"candidates": [{"name": "c", "kind": "canned", "answers": ["a"]}],
                                     "auth": "none"}),
        ranker=SimpleNamespace(options=lambda stream: SimpleNamespace(
            stream_fuse=SimpleNamespace(remote=lambda *args: events))),
        in_flight=0)
    ingress._call_ranker = lambda call: cls._call_ranker(ingress, call)
    body = protocol.ChatRequest.model_validate({**CHAT, "stream": True})

    async def send(message):
        if message["type"] == "http.response.body":
            raise OSError("connection reset by peer")  # Starlette turns this into ClientDisconnect

    async def receive():
        return {"type": "http.disconnect"}

    async def disconnect():
        response = await cls._stream_chat(ingress, body, "hi", [], ["a"], [], 8)
        assert ingress.in_flight == 1  # the stream holds a slot
        with pytest.raises(ClientDisconnect):
            await response({"type": "http", "asgi": {"spec_version": "2.4"}}, receive, send)

    asyncio.run(disconnect())
    assert ingress.in_flight == 0 and events.cancelled


def test_the_schema_declares_every_body_and_error():
    from serve.app import app

    schema = app.openapi()
    for path, model in [("/v1/chat/completions", "ChatRequest"), ("/v1/rank_and_fuse", "RankAndFuseRequest")]:
        post = schema["paths"][path]["post"]
        assert post["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith(f"/{model}")
        assert model in schema["components"]["schemas"]
        for status in ("400", "401", "413", "429", "503"):
            assert post["responses"][status]["content"]["application/json"]["schema"]["$ref"].endswith(
                "/ErrorResponse")
    assert "/docs" not in schema["paths"] and "/openapi.json" not in schema["paths"]
