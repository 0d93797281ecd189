"""jobs/pipeline.py: stage-by-stage resume with stub stage commands (no Ray, no models)."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
import yaml

import pipeline
from pipeline import PipelineConfig, Stage, StageFailed, run_stages


def config(**changes) -> PipelineConfig:
    """jobs/configs/pipeline-smoke.yaml with `changes`."""
    return pipeline.load_pipeline_config("jobs/configs/pipeline-smoke.yaml").model_copy(update=changes)


def stub(tmp_path: Path, name: str, fail_flag: Path | None = None) -> Stage:
    """A stage that appends its name to runs.log and writes NAME.out (fails while `fail_flag` exists)."""
    out, log = tmp_path / f"{name}.out", tmp_path / "runs.log"
    code = (f"import pathlib, sys; p = pathlib.Path({str(fail_flag)!r}); "
            f"sys.exit(3) if {fail_flag is not None} and p.exists() else None; "
            f"open({str(log)!r}, 'a').write({name!r} + '\\n'); pathlib.Path({str(out)!r}).write_text('x')")
    return Stage(name, [sys.executable, "-c", code], [], [str(out)])


def runs(tmp_path: Path) -> list[str]:
    log = tmp_path / "runs.log"
    return log.read_text().split() if log.exists() else []


def test_rerun_skips_finished_stages_and_resumes_after_a_failure(tmp_path, capsys):
    flag = tmp_path / "fail-b"
    flag.write_text("")
    stages = [stub(tmp_path, "a"), stub(tmp_path, "b", flag), stub(tmp_path, "c")]
    with pytest.raises(StageFailed, match=r"stage b failed \(exit 3\)"):
        run_stages(stages, tmp_path / "stamps")
    assert runs(tmp_path) == ["a"]
    flag.unlink()
    assert run_stages(stages, tmp_path / "stamps") == ["b", "c"]  # a is not run again
    assert runs(tmp_path) == ["a", "b", "c"]
    assert run_stages(stages, tmp_path / "stamps") == []  # everything done
    assert runs(tmp_path) == ["a", "b", "c"]


def test_a_stage_rerun_for_new_inputs_starts_without_its_checkpoints(tmp_path):
    flag = tmp_path / "fail"
    first, second = stub(tmp_path, "first"), stub(tmp_path, "second", fail_flag=flag)
    second.inputs = [first.outputs[0]]
    checkpoints = tmp_path / "ckpt"
    second.fresh = [str(checkpoints)]
    (checkpoints / "step_5").mkdir(parents=True)  # an older run's
    flag.touch()
    with pytest.raises(StageFailed):
        run_stages([first, second], tmp_path / "stamps")
    assert not checkpoints.exists()  # first made second's input anew: the checkpoints were another run's
    (checkpoints / "step_5").mkdir(parents=True)  # what the failed run of second left
    flag.unlink()
    assert run_stages([first, second], tmp_path / "stamps") == ["second"]
    assert (checkpoints / "step_5").is_dir()  # the same input: it resumes from them
    flag.touch()
    (checkpoints / "step_9").mkdir()
    Path(first.outputs[0]).write_text("yy")  # made anew outside this invocation (a run stopped before second)
    (tmp_path / "stamps" / "second.json").unlink()
    with pytest.raises(StageFailed):
        run_stages([first, second], tmp_path / "stamps")
    assert not checkpoints.exists()
    flag.unlink()
    (checkpoints / "step_5").mkdir(parents=True)
    assert run_stages([first, second], tmp_path / "stamps", redo_from="second") == ["second"]
    assert not checkpoints.exists()  # --from asked for a fresh start


def test_a_missing_output_or_changed_command_reruns_that_stage_and_all_after_it(tmp_path):
    stages = [stub(tmp_path, "a"), stub(tmp_path, "b"), stub(tmp_path, "c")]
    run_stages(stages, tmp_path / "stamps")
    (tmp_path / "b.out").unlink()
    assert run_stages(stages, tmp_path / "stamps") == ["b", "c"]
    stages[0].command = [*stages[0].command[:-1], stages[0].command[-1] + " # changed"]
    assert run_stages(stages, tmp_path / "stamps") == ["a", "b", "c"]
    assert run_stages(stages, tmp_path / "stamps", redo_from="c") == ["c"]


def test_a_failed_stage_names_its_missing_input(tmp_path):
    stage = Stage("score", [sys.executable, "-c", "pass"], [str(tmp_path / "gen" / "candidates.jsonl")], [])
    with pytest.raises(StageFailed, match=r"stage score: input .*gen/candidates.jsonl does not exist"):
        run_stages([stage], tmp_path / "stamps")


def test_the_cli_exits_1_naming_the_stage(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(pipeline, "stages", lambda cfg, d, c, r: [stub(tmp_path, "a", tmp_path)])  # flag = dir: fails
    assert pipeline.main(["--config", "jobs/configs/pipeline-smoke.yaml", "--dir", str(tmp_path)]) == 1
    assert "error: stage a failed (exit 3)" in capsys.readouterr().err


def test_the_real_stages_chain_outputs_to_inputs(tmp_path):
    cfg = pipeline.load_pipeline_config("jobs/configs/pipeline.yaml")
    plan = pipeline.stages(cfg, tmp_path, "jobs/configs/pipeline.yaml", tmp_path / "results")
    assert [s.name for s in plan] == ["llms", "data", "generate", "score", "split", "train", "evaluate", "report",
                                      "serve-config"]
    made: set[str] = set()
    for s in plan:  # every input is the output of an earlier stage (or a folder holding one)
        assert all(any(p == o or o.startswith(p + "/") for o in made) for p in s.inputs), s.name
        made |= set(s.outputs)
    (train,) = [s for s in plan if s.name == "train"]  # its checkpoints are the folder start_fresh removes
    assert [f"train.storage_path={f}" for f in train.fresh] == [a for a in train.command
                                                                 if a.startswith("train.storage_path=")]


def test_data_step_writes_prompts_and_a_generate_config_per_llm(tmp_path):
    cfg = config(n=pipeline.SplitSizes(train=3, dev=2, test=2), llms=["tiny-oasst", "tiny-koala"])
    pipeline.make_data(cfg, tmp_path)
    prompts = [json.loads(line) for line in (tmp_path / "data" / "prompts.jsonl").read_text().splitlines()]
    assert [p["id"] for p in prompts] == ["train/0", "train/1", "train/2", "dev/0", "dev/1", "test/0", "test/1"]
    gen = yaml.safe_load((tmp_path / "generate.yaml").read_text())
    assert [(m["name"], m["source"], m["chat"]) for m in gen["models"]] == [
        ("tiny-oasst", str(tmp_path / "llms" / "tiny-oasst"), True),
        ("tiny-koala", str(tmp_path / "llms" / "tiny-koala"), True)]
    from urg_ray.generate_config import GenerateConfig

    GenerateConfig.model_validate(gen)  # what jobs/generate.py will load


def test_evaluate_reads_the_facts_in_the_world_the_config_made(tmp_path):
    from evaluate import load_world

    from urg_ray.config import ConfigError
    from urg_ray.data import read_records
    from urg_ray.synthetic import knobs_file

    world = {"n_topics": 12, "pool_size": 14, "world_seed": 3}
    cfg = config(n=pipeline.SplitSizes(train=1, dev=1, test=3), synthetic={"question_names_facts": True, **world})
    (evaluate,) = [s for s in pipeline.stages(cfg, tmp_path, "p.yaml", tmp_path / "results") if s.name == "evaluate"]
    pipeline.make_data(cfg, tmp_path)
    pipeline.write_world(cfg, tmp_path)
    world_file = evaluate.command[evaluate.command.index("--synthetic") + 1]
    assert knobs_file(world_file) == world  # the world knobs, nothing else (written by the runner, not a stage)
    test, facts = str(tmp_path / "data" / "test.jsonl"), str(tmp_path / "data" / "test.facts.jsonl")
    records = read_records(test)
    assert len(load_world(facts, world_file, test, records)[0]) == 3
    with pytest.raises(ConfigError, match="is no fact of the synthetic world"):  # the default world: refused
        load_world(facts, None, test, records)


def test_each_split_asks_about_its_own_topics(tmp_path):
    from urg_ray.synthetic_world import TOPICS
    from urg_ray.synthetic_facts import read_facts

    heldout = pipeline.load_pipeline_config("jobs/configs/pipeline-heldout-topics.yaml")
    cfg = config(n=pipeline.SplitSizes(train=60, dev=20, test=40), split_synthetic=heldout.split_synthetic)
    pipeline.make_data(cfg, tmp_path)
    for split in ("train", "dev", "test"):
        start, stop = cfg.split_synthetic[split]["question_topics"]
        topics = {t for fact in read_facts(tmp_path / "data" / f"{split}.facts.jsonl").values() for t in fact["topics"]}
        assert topics <= set(TOPICS[start:stop]), split
    train_topics = set(TOPICS[slice(*cfg.split_synthetic["train"]["question_topics"])])
    assert not train_topics & set(TOPICS[slice(*cfg.split_synthetic["test"]["question_topics"])])


def test_serve_config_points_at_these_llms_and_this_urg(tmp_path):
    from serve.config import AppArgs

    pipeline.serve_config(config(llms=["tiny-oasst", "tiny-alpaca"]), tmp_path)
    app = yaml.safe_load((tmp_path / "serve.yaml").read_text())["applications"][0]
    args = AppArgs.model_validate(app["args"])
    assert args.urg.model == str((tmp_path / "train" / "model").resolve())
    assert args.urg.fallback_model is None and args.fallback_note is None  # never another run's URG or hint
    assert [(c.name, c.source, c.engine) for c in args.candidates] == [
        (n, str((tmp_path / "llms" / n).resolve()), "transformers") for n in ("tiny-oasst", "tiny-alpaca")]
    assert sorted(d["name"] for d in app["deployments"] if d["name"].startswith("Candidate-")) == [
        "Candidate-tiny-alpaca", "Candidate-tiny-oasst"]


def test_wrap_prefixes_heavy_stages_only(tmp_path):
    log = tmp_path / "wrapped.log"
    wrap = [sys.executable, "-c", f"import subprocess, sys; open({str(log)!r}, 'a').write(sys.argv[3] + '\\n'); "
            "sys.exit(subprocess.call(sys.argv[1:]))"]
    light = stub(tmp_path, "light")
    light.heavy = False
    run_stages([stub(tmp_path, "heavy"), light], tmp_path / "stamps", wrap=wrap)
    assert runs(tmp_path) == ["heavy", "light"]
    assert len(log.read_text().splitlines()) == 1 and "'heavy'" in log.read_text()


def test_report_compares_urg_with_its_best_member_by_a_paired_bootstrap(tmp_path):
    (tmp_path / "eval").mkdir()
    (tmp_path / "llms").mkdir()
    per = {"a": [10.0, 20.0, 30.0, 40.0], "b": [0.0, 0.0, 0.0, 0.0], "URG": [12.0, 22.0, 32.0, 42.0]}
    rows = [{"name": n, "kind": "fusion" if n == "URG" else "model", "scores": {"bleu": sum(v) / 4}, "correlation": {}}
            for n, v in per.items()]
    (tmp_path / "eval" / "eval.json").write_text(json.dumps({"n_records": 4, "metrics": ["bleu"], "rows": rows}))
    (tmp_path / "eval" / "eval_records.json").write_text(json.dumps({"ids": list("wxyz"),
                                                                     "rows": {n: {"bleu": v} for n, v in per.items()}}))
    (tmp_path / "eval" / "eval.md").write_text("table")
    (tmp_path / "llms" / "llms.md").write_text("| LLM |\n")
    (tmp_path / "llms" / "llms_summary.json").write_text("{}")
    pipeline.write_report(PipelineConfig.model_construct(**{**dict(config()), "llms": ["a", "b"]}), tmp_path,
                          tmp_path / "results")
    text = (tmp_path / "results" / "README.md").read_text()
    assert "best member (a, by test BLEU)" in text
    assert "| URG | bleu | +2 | [+2, +2] |" in text  # every record 2 better: the interval is a point
    assert "URG fusion minus a: +2.00 BLEU, 95% interval [+2.00, +2.00] (yes)." in text


@pytest.mark.parametrize("edit, message", [
    (lambda c: c.pop("llm_steps"), r"llm_steps: Field required"),
    (lambda c: c.update(llm_step=5), r"llm_step: unknown key"),
    (lambda c: c["n"].update(test=0), r"n.test: Input should be greater than or equal to 1"),
    (lambda c: c.update(llms=["tiny-oasst", "gpt-9"]), r"llms: .*unknown or repeated LLMs \['gpt-9'\]"),
    (lambda c: c.update(synthetic={"coverage": 2}), r"synthetic: .*coverage must be in \[0, 1\]"),
    (lambda c: c.update(synthetic={"colour": 1}), r"synthetic: .*unknown SyntheticConfig knobs \['colour'\]"),
    (lambda c: c["train"].pop("config"), r"train.config: Field required"),
    (lambda c: c.update(split_synthetic={"test": {"question_topics": [39, 40]}}),
     r"split_synthetic: .*test: .*question_topics must be"),
    (lambda c: c.update(split_synthetic={"valid": {}}), r"split_synthetic.valid"),
    (lambda c: c.update(split_synthetic={"test": {"pool_size": 12}}),
     r"split_synthetic: .*test: pool_size changes the world"),
])
def test_a_bad_config_key_is_a_named_error_before_any_stage(tmp_path, capsys, edit, message):
    tree = yaml.safe_load(Path("jobs/configs/pipeline-smoke.yaml").read_text())
    edit(tree)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(tree))
    assert pipeline.main(["--config", str(path), "--dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert re.search(rf"error: {re.escape(str(path))}: .*{message}", err), err
    assert not (tmp_path / "run").exists()


def test_every_pipeline_config_validates_and_names_the_facts_of_its_questions():
    for path in sorted(Path("jobs/configs").glob("pipeline*.yaml")):
        if path.name != "pipeline-generate.yaml":
            assert pipeline.load_pipeline_config(str(path)).synthetic == {"question_names_facts": True}, path


def test_the_report_tables_where_fused_facts_come_from_as_eval_md_does(tmp_path):
    from dataclasses import astuple

    from urg_ray.evaluation_report import fact_sources_markdown
    from urg_ray.synthetic import SyntheticConfig, world_from_knobs
    from urg_ray.synthetic_facts import fact_sources, read_facts
    from urg_ray.synthetic_world import TOPICS, render_reference, topic_pool

    a = topic_pool(TOPICS[0], SyntheticConfig(question_names_facts=True))
    rows = lambda *fs: [list(astuple(f)) for f in fs]  # noqa: E731
    (tmp_path / "scored").mkdir()
    (tmp_path / "scored" / "test.facts.jsonl").write_text(json.dumps(
        {"id": "q1", "task": "define", "topics": [TOPICS[0]], "reference_facts": rows(a[0], a[1]),
         "candidate_facts": [rows(a[0]), rows(a[1])], "candidate_topics": [[TOPICS[0]]] * 2,
         "kinds": ["normal"] * 2}) + "\n")
    (tmp_path / "eval").mkdir()
    scores = {"bleu": 1.0}
    (tmp_path / "eval" / "eval.json").write_text(json.dumps({"n_records": 1, "metrics": ["bleu"], "rows": [
        {"name": n, "kind": k, "scores": scores, "correlation": {}}
        for n, k in (("tiny-oasst", "model"), ("tiny-koala", "model"), ("URG", "fusion"))]}))
    (tmp_path / "eval" / "eval.md").write_text("")
    (tmp_path / "llms").mkdir()
    (tmp_path / "llms" / "llms.md").write_text("")
    (tmp_path / "llms" / "llms_summary.json").write_text("{}")
    records = {"ids": ["q1"], "rows": {n: {"bleu": [1.0]} for n in ("tiny-oasst", "tiny-koala", "URG")},
               "texts": {"URG": [render_reference("define", (TOPICS[0],), (a[0], a[1]))]}}
    # URG states a0 and a1, both reference facts; candidate 0 holds a0, candidate 1 holds a1
    for shown, line in (([[1]], "| URG | 1.000 | 0.500 | 0.500 | 0.500 | 0.000 |"),  # shown candidate 1 only
                        (None, "| URG | 1.000 |  |  |  | 0.000 |")):  # no shown indices: their cells empty
        kept = {"shown": {"URG": shown}} if shown else {}
        (tmp_path / "eval" / "eval_records.json").write_text(json.dumps(records | kept))
        pipeline.write_report(config(), tmp_path, tmp_path / "results")
        readme = (tmp_path / "results" / "README.md").read_text().splitlines()
        table = fact_sources_markdown(fact_sources(records["texts"], records["ids"],
                                                   read_facts(tmp_path / "scored" / "test.facts.jsonl"),
                                                   world_from_knobs(config().synthetic), shown=kept.get("shown")))
        start = readme.index("## Where the fused answers' facts come from")
        assert readme[start:start + len(table) + 1] == [*table, ""] and line in table, readme


def test_the_report_with_no_member_row_names_the_file(tmp_path, capsys):
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "eval.json").write_text(json.dumps({"n_records": 1, "metrics": ["bleu"], "rows": [
        {"name": "Random", "kind": "selection", "scores": {"bleu": 1.0}, "correlation": {}}]}))
    (tmp_path / "eval" / "eval_records.json").write_text(
        json.dumps({"ids": ["x"], "rows": {"Random": {"bleu": [1.0]}}}))
    with pytest.raises(pipeline.ReportError, match=r"eval.json: none of the LLMs \['tiny-oasst', 'tiny-koala'\]"):
        pipeline.write_report(config(), tmp_path, tmp_path / "results")


def test_split_writes_the_facts_each_generated_answer_states(tmp_path):
    from urg_ray.data import write_records
    from urg_ray.synthetic_facts import attach_facts, read_facts

    cfg = config(n=pipeline.SplitSizes(train=2, dev=2, test=3))
    pipeline.make_data(cfg, tmp_path)
    records = [json.loads(line) for split in ("train", "dev", "test")
               for line in (tmp_path / "data" / f"{split}.jsonl").read_text().splitlines()]
    fact = records[-1]["output"].split(". ")[0]  # its reference's first sentence, as one "LLM" answer
    for r in records:
        r["candidates"] = [{"model": "tiny-oasst", "text": "gibberish", "scores": {"bleu": 1.0}},
                           {"model": "tiny-koala", "text": fact, "scores": {"bleu": 2.0}}]
    write_records(tmp_path / "score" / "candidates.jsonl", records)
    pipeline.split_scored(cfg, tmp_path)
    facts = read_facts(tmp_path / "scored" / "test.facts.jsonl")
    test = [json.loads(line) for line in (tmp_path / "scored" / "test.jsonl").read_text().splitlines()]
    assert [r["id"] for r in test] == ["test/0", "test/1", "test/2"] and list(facts) == ["test/0", "test/1", "test/2"]
    last = attach_facts(test[-1], facts["test/2"])  # evaluate --bounds accepts it
    assert last.candidate_facts == ((), last.reference_facts[:1])


def test_a_changed_config_value_reruns_the_stage_that_reads_it(tmp_path):
    path = tmp_path / "p.yaml"
    tree = yaml.safe_load(Path("jobs/configs/pipeline-smoke.yaml").read_text())
    path.write_text(yaml.safe_dump(tree))
    d = tmp_path / "run"
    data = [s for s in pipeline.stages(pipeline.load_pipeline_config(str(path)), d, str(path), tmp_path / "results")
            if s.name == "data"]
    assert run_stages(data, d / "stamps") == ["data"]
    assert run_stages(data, d / "stamps") == []
    tree["n"]["test"] += 1  # same command line, other questions
    path.write_text(yaml.safe_dump(tree))
    data = [s for s in pipeline.stages(pipeline.load_pipeline_config(str(path)), d, str(path), tmp_path / "results")
            if s.name == "data"]
    assert run_stages(data, d / "stamps") == ["data"]
    assert len((d / "data" / "test.jsonl").read_text().splitlines()) == tree["n"]["test"]
