"""Which models the Serve app serves: a trained folder when it exists, else its fallback
(serve.candidates.served_source, serve.config.served_urg), the note `build_app` logs when one falls
back, and serve/app.yaml's own choices."""

import logging
from pathlib import Path

import pytest
import yaml

from serve.candidates import CandidateArgs, served_source
from serve.config import AppArgs, URGArgs, served_urg
from urg_ray.presets import resolve_urg_source
from urg_ray.tiny_llms import TINY_MODELS

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def serve_log(caplog):
    caplog.set_level(logging.INFO, logger="ray.serve")
    logger = logging.getLogger("ray.serve")
    logger.addHandler(caplog.handler)  # Ray may stop ray.serve from propagating to the root logger
    yield caplog
    logger.removeHandler(caplog.handler)


def candidate(source: str) -> CandidateArgs:
    return CandidateArgs(name="c", kind="transformers", model_source=source, fallback_source="tiny-gpt2",
                         max_tokens=96, temperature=1.0)


def test_a_candidate_whose_folder_is_missing_serves_its_fallback(tmp_path, monkeypatch, serve_log):
    monkeypatch.chdir(tmp_path)
    served, fell_back = served_source(candidate("outputs/pipeline/llms/c"))
    assert fell_back
    assert served.source == "tiny-gpt2"
    assert (served.max_tokens, served.temperature, served.engine) == (96, 1.0, "transformers")
    assert "candidate c: outputs/pipeline/llms/c not found; serving its fallback tiny-gpt2" in serve_log.text


def test_a_candidate_whose_folder_exists_serves_it_by_its_absolute_path(tmp_path, monkeypatch, serve_log):
    (tmp_path / "llms" / "c").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    served, fell_back = served_source(candidate("llms/c"))
    assert not fell_back
    assert served.source == str(tmp_path / "llms" / "c")  # replicas may start elsewhere
    assert f"candidate c: serving {tmp_path / 'llms' / 'c'}" in serve_log.text


def test_a_candidate_without_fallback_keeps_its_source(tmp_path, monkeypatch):
    for name in ("org/hub-model", "gpt-4o-mini", "echo"):
        (tmp_path / name).mkdir(parents=True)  # a folder of the same name here changes nothing
    monkeypatch.chdir(tmp_path)
    for args in (CandidateArgs(name="c", kind="transformers", model_source="org/hub-model"),
                 CandidateArgs(name="remote", kind="openai", base_url="http://127.0.0.1:9/v1",
                               remote_model="gpt-4o-mini"),
                 CandidateArgs(name="echo", kind="canned", answers=["hi"])):
        assert served_source(args) == (args, False)


@pytest.mark.parametrize("present, served, fell_back", [
    (("pipeline", "train"), "pipeline", False),
    (("train",), "train", True),
    ((), "tiny", True),
])
def test_urg_serves_model_then_fallback_model_then_the_preset(tmp_path, monkeypatch, serve_log, present, served,
                                                              fell_back):
    for name in present:
        (tmp_path / name / "model").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    urg, did_fall_back = served_urg(URGArgs(model="pipeline/model", fallback_model="train/model",
                                            fallback_preset="tiny"))
    assert did_fall_back == fell_back
    # what the ranker-fuser replica then loads (serve.ranker.URGRankerFuser)
    loaded = resolve_urg_source(urg.model, urg.fallback_preset)
    assert loaded == ("tiny" if served == "tiny" else str(tmp_path / served / "model"))
    if served == "tiny":
        assert "neither pipeline/model nor train/model found; serving the 'tiny' preset" in serve_log.text


def test_urg_without_any_fallback_fails_naming_the_checkpoint(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    urg, _ = served_urg(URGArgs(model="missing/model", fallback_preset=None))
    with pytest.raises(FileNotFoundError, match="missing/model"):
        resolve_urg_source(urg.model, urg.fallback_preset)


def app_yaml() -> dict:
    return yaml.safe_load((ROOT / "serve" / "app.yaml").read_text())["applications"][0]


def test_serve_app_yaml_serves_the_pipelines_llms_sampled_as_it_measured_them():
    from urg_ray.train_llms import PIPELINE_LLMS

    app = app_yaml()
    args = AppArgs.model_validate(app["args"])
    pipeline = yaml.safe_load((ROOT / "jobs" / "configs" / "pipeline.yaml").read_text())
    generate = yaml.safe_load((ROOT / "jobs" / "configs" / "pipeline-generate.yaml").read_text())
    assert [c.name for c in args.candidates] == pipeline["llms"]
    for c in args.candidates:
        assert c.source == f"outputs/pipeline/llms/{c.name}"
        trained_on = TINY_MODELS[PIPELINE_LLMS[c.name].architecture].architecture
        assert TINY_MODELS[c.fallback_source].architecture == trained_on, c.name
        assert (c.max_tokens, c.temperature) == (generate["sampling"]["max_new_tokens"],
                                                 generate["sampling"]["temperature"]), c.name
        assert c.uses_chat
    assert (args.urg.model, args.urg.fallback_model) == ("outputs/pipeline/train/model", "outputs/train/model")
    # every per-deployment option names a deployment the app has
    names = {"Ingress", "URGRankerFuser"} | {f"Candidate-{c.name}" for c in args.candidates}
    assert {d["name"] for d in app["deployments"]} <= names


def test_serve_app_yaml_on_a_fresh_clone_logs_each_fallback_and_how_to_build_the_trained_ones(
        tmp_path, monkeypatch, serve_log):
    monkeypatch.chdir(tmp_path)  # no outputs/ here
    args = AppArgs.model_validate(app_yaml()["args"])
    served = [served_source(c) for c in args.candidates]
    assert [(c.source, fell_back) for c, fell_back in served] == [
        ("tiny-llama-a", True), ("tiny-gpt2", True), ("tiny-llama-b", True)]
    assert served_urg(args.urg)[0].model == "tiny"  # passed on by name: the replica loads just the preset
    for name in ("tiny-oasst", "tiny-koala", "tiny-alpaca"):
        assert f"candidate {name}: outputs/pipeline/llms/{name} not found" in serve_log.text
    assert "make demo" in args.fallback_note


NOTE = "run `make demo` to build the trained models"


@pytest.mark.parametrize("urg_built, candidate_built, note", [
    (False, True, NOTE),  # URG falls back
    (True, False, NOTE),  # a candidate falls back
    (False, False, NOTE),  # both: still one line
    (True, True, NOTE),  # nothing falls back
    (False, False, None),  # no note to log
])
def test_build_app_logs_the_fallback_note_once_when_something_falls_back(tmp_path, monkeypatch, serve_log,
                                                                          urg_built, candidate_built, note):
    import ray

    from serve.app import build_app

    if urg_built:
        (tmp_path / "urg" / "model").mkdir(parents=True)
    if candidate_built:
        (tmp_path / "llms" / "c").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    args = AppArgs(candidates=[candidate("llms/c"), CandidateArgs(name="echo", kind="canned", answers=["hi"])],
                   urg=URGArgs(model="urg/model", fallback_preset="tiny"), auth="none", fallback_note=note)
    build_app(args)  # binds the deployments: no Ray, nothing loaded
    assert not ray.is_initialized()
    logged = [(r.levelno, r.getMessage()) for r in serve_log.records if r.getMessage().startswith("fallbacks served")]
    fell_back = not (urg_built and candidate_built)
    assert logged == ([(logging.WARNING, f"fallbacks served: {note}")] if note and fell_back else []), serve_log.text
