"""urg_ray/best_of_n.py and jobs/best_of_n.py: n samples per prompt through generate's pipeline
and journal, URG keeps one.

The grouping and the pick run without Ray on the `tiny` URG; the slow test runs the job on the
tiny GPT-2 (transformers engine, Ray Data) and resumes it from a journal cut after a crash.
"""

from __future__ import annotations

import json

import pytest

from urg_ray.best_of_n import BestOfNConfig, group_samples, pick_best, sample_prompts
from urg_ray.config import ConfigError, load_config
from urg_ray.data import ERROR_FIELD, Record, read_records
from urg_ray.generate import Prompt, question_hash

from best_of_n import main

GPT2 = "models=[{name: gpt2, engine: transformers, source: tiny-gpt2, max_model_len: 256, batch_size: 4}]"


def sample_record(pid: str, k: int, answers: dict[str, str | None]) -> Record:
    """generate's record of sample k of prompt pid: one candidate per model (None: that one failed)."""
    candidates = [{"model": m, "text": t or "", "scores": {}, **({ERROR_FIELD: "boom"} if t is None else {})}
                  for m, t in answers.items()]
    return Record(id=f"{pid}#{k}", instruction=f"question {pid}?", output="ref", candidates=candidates)


def test_greedy_n_samples_and_clashing_files_are_config_errors():
    with pytest.raises(ConfigError, match="temperature"):
        load_config(None, ["n=3", "sampling.temperature=0"], schema=BestOfNConfig)
    with pytest.raises(ConfigError, match="different files"):
        load_config(None, ["picks=samples.jsonl"], schema=BestOfNConfig)
    assert load_config(None, ["n=1", "sampling.temperature=0"], schema=BestOfNConfig).n == 1


def test_each_prompt_is_sampled_n_times_under_its_own_id():
    samples = sample_prompts([Prompt("a", "A?", output="ra"), Prompt("b#1", "B?")], 3)
    assert [s.id for s in samples] == ["a#0", "a#1", "a#2", "b#1#0", "b#1#1", "b#1#2"]
    assert {(s.instruction, s.output) for s in samples[:3]} == {("A?", "ra")}


def test_samples_become_one_record_per_prompt_and_urg_picks_its_top_answer(tiny):
    prompts = [Prompt("p", "question p?", output="ref"), Prompt("q", "question q?", output="ref")]
    samples = [sample_record("p", 0, {"m": "the cat sat", "o": "on the mat"}),
               sample_record("p", 1, {"m": None, "o": "a dog ran far away"}),
               sample_record("q", 0, {"m": None, "o": None}), sample_record("q", 1, {"m": None, "o": None})]
    records = group_samples(samples, prompts, 2)
    assert [c.model for c in records[0].candidates] == ["m#0", "m#1", "o#0", "o#1"]
    assert [c.text for c in records[0].candidates] == ["the cat sat", "", "on the mat", "a dog ran far away"]

    picks = pick_best(tiny, records, batch_size=1)
    answered = ["the cat sat", "on the mat", "a dog ran far away"]  # m#1 failed: never ranked
    scores = tiny.rank(["question p?"], [answered]).scores[0].tolist()
    best = max(range(3), key=scores.__getitem__)
    assert picks[0]["text"] == answered[best] and picks[0]["urg_score"] == pytest.approx(scores[best])
    assert picks[0]["model"] == ["m#0", "o#0", "o#1"][best] and picks[0]["ranked"] == 3
    assert picks[0]["failed"] == ["m#1"] and "urg" not in records[0].candidates[1].scores
    assert [c.scores["urg"] for c in records[0].candidates if c.text] == pytest.approx(scores)
    assert picks[1] == {"id": "q", "instruction": "question q?", "input": "", "reference": "ref", "model": None,
                        "text": None, "urg_score": None, "ranked": 0, "failed": ["m#0", "m#1", "o#0", "o#1"]}


def test_bad_config_fails_before_ray(tmp_path, capsys):
    import ray

    assert main(["--set", "n=0", "--out", str(tmp_path)]) == 2
    assert "n: Input should be greater than or equal to 1" in capsys.readouterr().err and not ray.is_initialized()


@pytest.mark.slow
def test_job_on_tiny_gpt2_and_its_resume_from_the_journal(tmp_path, capsys):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"p{i}", "instruction": f"Question {i}?", "output": f"answer {i}"})
                               + "\n" for i in range(3)))
    out = tmp_path / "out"
    run = ["--set", f"prompts={prompts}", "--set", GPT2, "--set", "sampling.max_new_tokens=6",
           "--set", "urg=tiny", "--out", str(out)]
    assert main([*run, "--set", "n=3"]) == 0

    records = read_records(out / "candidates.jsonl")
    assert [r.id for r in records] == ["p0", "p1", "p2"] and all(r.output.startswith("answer") for r in records)
    assert all([c.model for c in r.candidates] == ["gpt2#0", "gpt2#1", "gpt2#2"] for r in records)
    assert any(len({c.text for c in r.candidates}) > 1 for r in records)  # own seeds: not n copies of one answer
    picks = [json.loads(line) for line in (out / "picks.jsonl").read_text().splitlines()]
    for record, pick in zip(records, picks):
        top = max(record.candidates, key=lambda c: c.scores["urg"])
        assert (pick["id"], pick["model"], pick["text"], pick["ranked"]) == (record.id, top.model, top.text, 3)

    # A crash after 5 of the 9 samples: only their journal entries are left; the rerun makes the other 4.
    samples = read_records(out / "samples.jsonl")
    journal = [{"prompt": {"id": s.id, "instruction": s.instruction, "input": s.input, "output": s.output},
                "prompt_sha256": question_hash(s.instruction, s.input), "candidate": s.candidates[0].model_dump()}
               for s in samples[:5]]
    (out / "samples.jsonl.partial").write_text("".join(json.dumps(e) + "\n" for e in journal))
    for name in ("samples.jsonl", "candidates.jsonl", "picks.jsonl"):
        (out / name).unlink()
    assert main([*run, "--set", "n=3"]) == 0
    summary = json.loads((out / "best_of_n_summary.json").read_text())["generate"]["models"]["gpt2"]
    assert (summary["prompts"], summary["skipped"]) == (4, 5)
    kept = {s.id: s.candidates[0].text for s in read_records(out / "samples.jsonl")}
    assert all(kept[s.id] == s.candidates[0].text for s in samples[:5])
    assert len(read_records(out / "candidates.jsonl")) == 3 and len((out / "picks.jsonl").read_text().splitlines()) == 3
    assert not (out / "samples.jsonl.partial").exists()

    # One more sample per prompt: only the new ones are generated.
    assert main([*run, "--set", "n=4"]) == 0
    summary = json.loads((out / "best_of_n_summary.json").read_text())["generate"]["models"]["gpt2"]
    assert (summary["prompts"], summary["skipped"]) == (3, 9)
    assert all(len(r.candidates) == 4 for r in read_records(out / "candidates.jsonl"))
