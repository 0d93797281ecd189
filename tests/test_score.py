"""Scoring candidates: BARTScore against a token-by-token loop, MixInstruct names and scales, the job.

Fast tests run the metrics in-process; slow ones run `score_file` on a local Ray (one per module).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from rouge_score import rouge_scorer
from sacrebleu import sentence_bleu

from urg_ray.data import read_records, write_records
from urg_ray.generate_config import ALL_SCORES, ScoreConfig
from urg_ray.scoring import BARTScorer, bartscore, score_candidates, score_file, scorer_actors

MIXINSTRUCT_SCORES = {"bleu", "rouge1", "rouge2", "rougeL", "rougeLsum", "bertscore", "bartscore"}

PAIRS = [  # (candidate, reference) of different lengths, so one batch holds padding
    ("The cat sat on the mat.", "A cat was sitting on the mat."),
    ("Paris.", "The capital of France is Paris, a city on the Seine."),
    ("It depends on the oven and on how thick the bread is, so check it often.", "About thirty minutes."),
]


@pytest.fixture(scope="module")
def scorer() -> BARTScorer:
    return BARTScorer("tiny-bart")  # built into ~/.cache/urg_ray on first use, as the jobs do


def hand_bartscore(scorer: BARTScorer, src: str, tgt: str) -> float:
    """Mean over target tokens of log p(y_t | y_<t, src), one decoder call per token, no padding."""
    tok, model = scorer.tokenizer, scorer.model
    eos = tok.eos_token_id
    src_ids = tok(src)["input_ids"] + [eos]  # the tiny tokenizer adds no special tokens; BART ends with </s>
    tgt_ids = tok(tgt)["input_ids"] + [eos]
    total = 0.0
    with torch.no_grad():
        for t in range(len(tgt_ids)):
            prefix = [model.config.decoder_start_token_id] + tgt_ids[:t]
            logits = model(input_ids=torch.tensor([src_ids]), decoder_input_ids=torch.tensor([prefix])).logits
            total += torch.log_softmax(logits[0, -1].double(), -1)[tgt_ids[t]].item()
    return total / len(tgt_ids)


def test_bartscore_is_the_mean_target_log_likelihood_of_a_token_by_token_loop(scorer):
    srcs, tgts = [p[0] for p in PAIRS], [p[1] for p in PAIRS]
    batched = scorer.score(srcs, tgts, batch_size=3)  # padded batch
    expected = [hand_bartscore(scorer, s, t) for s, t in PAIRS]
    assert batched == pytest.approx(expected, abs=1e-4)
    assert scorer.score(srcs, tgts, batch_size=1) == pytest.approx(expected, abs=1e-4)
    # random init: close to a uniform guess over the vocabulary, which is log(1/V)
    assert all(abs(s + math.log(len(scorer.tokenizer))) < 1.0 for s in batched)


def test_bartscore_direction(scorer):
    hyps, refs = [PAIRS[1][0]], [PAIRS[1][1]]
    assert bartscore(hyps, refs) == pytest.approx([hand_bartscore(scorer, hyps[0], refs[0])], abs=1e-4)
    assert bartscore(hyps, refs, direction="candidate_given_reference") == pytest.approx(
        [hand_bartscore(scorer, refs[0], hyps[0])], abs=1e-4)
    with pytest.raises(ValueError, match="direction"):
        bartscore(hyps, refs, direction="both")


def test_scores_have_mixinstructs_names_and_scales():
    hyps = [p[0] for p in PAIRS] + ["the same sentence here"]
    refs = [p[1] for p in PAIRS] + ["the same sentence here"]
    scores = score_candidates(hyps, refs, ScoreConfig())
    from urg_ray.metrics import KNOWN_METRICS

    assert set(ALL_SCORES) == MIXINSTRUCT_SCORES == {*KNOWN_METRICS, "bartscore"}
    assert all(set(s) == MIXINSTRUCT_SCORES for s in scores)
    rouge = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    for s, h, r in zip(scores, hyps, refs):
        assert s["bleu"] == pytest.approx(sentence_bleu(h, [r]).score)  # sacrebleu, 0-100
        expected = rouge.score(r, h)
        for key in ("rouge1", "rouge2", "rougeL"):
            assert s[key] == pytest.approx(expected[key].fmeasure)  # F-measure, 0-1
        assert s["rougeLsum"] == pytest.approx(expected["rougeL"].fmeasure)  # one sentence each
        assert 0 < s["bertscore"] <= 1.0 + 1e-6 and s["bartscore"] < 0
    assert scores[-1]["bleu"] == pytest.approx(100) and scores[-1]["rouge2"] == 1.0
    assert scores[-1]["bertscore"] == pytest.approx(1.0, abs=1e-4)
    only = score_candidates(hyps[:1], refs[:1], ScoreConfig(metrics=["bleu", "bartscore"]))
    assert set(only[0]) == {"bleu", "bartscore"}


def test_yaml_configs_validate_and_the_cpu_one_is_the_default():
    from urg_ray.config import load_config

    configs = Path(__file__).resolve().parents[1] / "jobs" / "configs"
    assert load_config(configs / "score.yaml", schema=ScoreConfig) == ScoreConfig()
    assert load_config(configs / "score-gpu.yaml", schema=ScoreConfig).bartscore_model == "facebook/bart-large-cnn"


def test_scorer_actors_fill_what_ray_has_unless_set():
    cfg = ScoreConfig(batch_size=64)  # num_cpus 1
    assert scorer_actors(cfg, {"CPU": 2.0}, 1024) == 2  # a 2-core box: both cores, one actor each
    assert scorer_actors(cfg, {"CPU": 16.0}, 100) == 2  # no more actors than batches
    assert scorer_actors(cfg.model_copy(update={"num_cpus": 2}), {"CPU": 5.0}, 1024) == 2
    assert scorer_actors(cfg, {"CPU": 0.5}, 1024) == 1  # at least one (Ray says when it cannot place it)
    assert scorer_actors(cfg.model_copy(update={"num_gpus": 1}), {"CPU": 64.0, "GPU": 4.0}, 1024) == 4
    assert scorer_actors(cfg.model_copy(update={"concurrency": 3}), {"CPU": 2.0}, 1024) == 3
    assert scorer_actors(cfg, {"CPU": 64.0}, 100_000) == 8  # a model copy each: a big node gets 8 unless asked
    assert scorer_actors(cfg.model_copy(update={"concurrency": 32}), {"CPU": 64.0}, 100_000) == 32


def test_job_fails_before_ray_on_missing_input_and_unknown_metric(tmp_path, capsys):
    import ray
    from score import main

    assert main(["--set", f"input={tmp_path / 'none.jsonl'}", "--out", str(tmp_path)]) == 2
    assert "none.jsonl: no such file" in capsys.readouterr().err
    assert main(["--set", "metrics=[bleu, meteor]", "--out", str(tmp_path)]) == 2
    assert "metrics.1" in capsys.readouterr().err
    assert not ray.is_initialized()


# ---- Ray Data end to end ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def ray_session():
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False)
    yield
    ray.shutdown()


def candidates_file(path: Path) -> Path:
    ok = {"model": "a", "text": "The cat sat on the mat.", "scores": {}}
    records = [
        {"id": "r1", "instruction": "Where is the cat?", "output": "The cat sat on the mat.",
         "candidates": [ok, {"model": "b", "text": "", "scores": {}, "error": "HTTP 500"},
                        {"model": "c", "text": "On a mat.", "scores": {"bleu": 1.0}}]},
        {"id": "r2", "instruction": "No reference here.", "output": "", "candidates": [ok]},
        {"id": "r3", "instruction": "All failed.", "output": "x",
         "candidates": [{"model": "b", "text": "", "scores": {}, "error": "Timeout"}]},
    ]
    write_records(path, records)
    return path


@pytest.mark.slow
def test_score_file_fills_scores_drops_failed_and_skips_what_is_scored(ray_session, tmp_path):
    cfg = ScoreConfig(input=str(candidates_file(tmp_path / "in.jsonl")), batch_size=2)
    summary = score_file(cfg, tmp_path / "out")
    records = read_records(tmp_path / "out" / "candidates.jsonl")
    assert [r.id for r in records] == ["r1", "r2"]  # r3 had only a failed candidate
    r1, r2 = records
    assert [c.model for c in r1.candidates] == ["a", "c"]
    assert all(set(c.scores) == MIXINSTRUCT_SCORES for c in r1.candidates)
    assert r1.candidates[0].scores["bleu"] == pytest.approx(100)
    assert r1.candidates[1].scores["bleu"] == pytest.approx(
        sentence_bleu("On a mat.", ["The cat sat on the mat."]).score)
    assert r2.candidates[0].scores == {}  # nothing to score against
    assert summary["failed_candidates"] == summary["failed_dropped"] == 2
    assert summary["records_without_reference"] == 1 and summary["candidates_scored"] == 2
    assert set(summary["mean_scores"]) == {"a", "c"} and summary["candidates_per_s"] > 0
    assert json.loads((tmp_path / "out" / "score_summary.json").read_text())["records_out"] == 2
    # the scored file again: everything already has every metric
    again = score_file(cfg.model_copy(update={"input": str(tmp_path / "out" / "candidates.jsonl")}), tmp_path / "again")
    assert again["candidates_scored"] == 0
    assert read_records(tmp_path / "again" / "candidates.jsonl") == records


@pytest.mark.slow
def test_failed_candidates_can_be_kept_unscored(ray_session, tmp_path):
    cfg = ScoreConfig(input=str(candidates_file(tmp_path / "in.jsonl")), metrics=["bleu"], failed="keep")
    summary = score_file(cfg, tmp_path)
    r1, _, r3 = read_records(tmp_path / "candidates.jsonl")
    assert r1.candidates[1].scores == {} and r1.candidates[1].model_extra["error"] == "HTTP 500"
    assert r3.candidates[0].scores == {} and summary["failed_dropped"] == 0 and summary["candidates_scored"] == 1
