"""The judged ranking study's rows (urg_ray/judged_study.py) and its job (jobs/real_study.py), on
hand-made judged records whose win rates, intervals and correlations are worked out by hand."""

import json
import math
import statistics

import pytest

from urg_ray.data import DataError, Record, write_records
from urg_ray.judged_study import JudgedStudy, best_model_on, bootstrap_interval, rows_from_json

import real_study


def judged(i: int, wins, lengths=(1, 1, 1), bleus=(0.0, 0.0, 0.0), models=("a", "b", "c")) -> Record:
    return Record.model_validate({
        "id": f"q/{i}", "instruction": f"question {i}", "output": "the reference",
        "candidates": [{"model": m, "text": "x" * n, "scores": {"judge_win": w, "bleu": b, "bertscore": b / 100}}
                       for m, w, n, b in zip(models, wins, lengths, bleus)]})


# judge_win per record for models a, b, c; the longest answer is the best in records 0 and 1 only
TEST = [judged(0, (0.0, 0.5, 1.0), lengths=(1, 2, 3), bleus=(10, 20, 30)),
        judged(1, (1.0, 0.5, 0.0), lengths=(9, 5, 1), bleus=(40, 20, 0)),
        judged(2, (0.0, 1.0, 0.5), lengths=(3, 1, 2), bleus=(0, 0, 60)),
        judged(3, (0.0, 0.5, 0.0), lengths=(1, 1, 9), bleus=(10, 10, 10))]
TRAIN = [judged(10, (0.2, 0.1, 0.9)), judged(11, (0.2, 0.1, 0.0))]  # c is best on train (0.45 vs a 0.2)


@pytest.fixture()
def study() -> JudgedStudy:
    study = JudgedStudy(TEST, n_resamples=2000)
    study.add_baselines(TRAIN)
    return study


def summaries(study: JudgedStudy) -> dict:
    return {row["name"]: row for row in study.to_json()["rows"]}


def test_baseline_rows_by_hand(study):
    rows = summaries(study)
    assert study.models == ["a", "b", "c"]
    expected = {"a": 25.0, "b": 62.5, "c": 37.5,  # means of each model's judge_win column, in %
                "Random (expected)": 100 * (0.5 + 0.5 + 0.5 + 0.5 / 3) / 4,
                "Always the longest": 100 * (1.0 + 1.0 + 0.0 + 0.0) / 4,  # picks c, a, a, c
                "Best single model on train (c)": 37.5,
                "Oracle (best judge_win)": 100 * (1.0 + 1.0 + 1.0 + 0.5) / 4}
    assert {name: pytest.approx(rows[name]["judge_win_pct"]) for name in expected} == expected
    assert rows["Always the longest"]["bleu"] == pytest.approx((30 + 40 + 0 + 10) / 4)
    assert rows["Always the longest"]["bertscore"] == pytest.approx((0.30 + 0.40 + 0.0 + 0.10) / 4)
    assert rows["Random (expected)"]["bleu"] == pytest.approx((20 + 20 + 20 + 10) / 4)
    # lengths order the candidates as judge_win does in records 0 and 1 (+1), reversed in record 2 (-1);
    # record 3's judge_win ties a and c: ranks (1.5, 3, 1.5) vs lengths' (1.5, 1.5, 3) give Spearman -0.5
    assert rows["Always the longest"]["spearman"] == pytest.approx((1 + 1 - 1 - 0.5) / 4)
    assert rows["Oracle (best judge_win)"]["spearman"] == pytest.approx(1.0)
    assert "spearman" not in rows["a"]  # a fixed model has no scores to correlate


def test_interval_of_two_records_spans_both_values():
    # two records, values 0 and 1: a resampled mean is 0, 0.5 or 1 with probabilities 1/4, 1/2, 1/4,
    # so the 2.5% and 97.5% quantiles are 0 and 1
    found = bootstrap_interval([0.0, 1.0], n_resamples=4000)
    assert (found["mean"], found["low"], found["high"]) == (0.5, 0.0, 1.0)
    constant = bootstrap_interval([0.25] * 5, n_resamples=100)
    assert (constant["low"], constant["high"]) == pytest.approx((0.25, 0.25))


def test_ranker_row_and_paired_difference(study):
    scores = [[0, 1, 2], [2, 1, 0], [0, 2, 1], [0, 1, 0]]  # the judge's own order: picks the oracle's answers
    study.add_ranking("Perfect", scores)
    rows = summaries(study)
    assert rows["Perfect"]["judge_win_pct"] == pytest.approx(rows["Oracle (best judge_win)"]["judge_win_pct"])
    assert rows["Perfect"]["spearman"] == pytest.approx(1.0)
    assert study.row("Perfect").picks == [2, 0, 1, 1]
    paired = study.paired("Perfect", "b")  # per record 1-0.5, 1-0.5, 1-1, 0.5-0.5: mean 0.25
    assert paired["mean_pct"] == pytest.approx(25.0) and paired["low_pct"] >= 0.0 and paired["high_pct"] <= 50.0


def test_decisive_instructions_and_test_size_to_resolve():
    # instructions 0 and 2 have no answer at judge_win >= 0.05: they decide (almost) nothing
    records = [judged(0, (0.001, 0.002, 0.003)), judged(1, (0.9, 0.1, 0.0)),
               judged(2, (0.02, 0.04, 0.0)), judged(3, (0.0, 0.6, 0.3))]
    study = JudgedStudy(records, n_resamples=200)
    for model in ("a", "b"):
        study.add_selection(model, "model", [("a", "b", "c").index(model)] * 4)
    decisive = study.to_json()["decisive"]
    assert decisive["n"] == 2
    assert decisive["share"]["a"] == pytest.approx(0.9 / (0.001 + 0.9 + 0.02 + 0.0))
    assert decisive["share"]["b"] == pytest.approx((0.1 + 0.6) / (0.002 + 0.1 + 0.04 + 0.6))
    paired = study.paired("a", "b")
    sd = statistics.stdev([0.001 - 0.002, 0.9 - 0.1, 0.02 - 0.04, 0.0 - 0.6])
    assert paired["sd_pct"] == pytest.approx(100 * sd)
    assert paired["n_to_resolve"] == math.ceil((1.96 * 100 * sd / 2.0) ** 2)  # a ±2-point interval


def test_fusion_row_has_no_judge_and_rows_reload(study, tmp_path):
    study.add_fusion("Fuser", [{"bleu": 5.0, "bertscore": 0.5}] * 4)
    rows = summaries(study)
    assert "judge_win_pct" not in rows["Fuser"] and rows["Fuser"]["bleu"] == 5.0
    paths = study.write(tmp_path, study.to_json(pairs=[("a", "b")]))
    assert all(p.is_file() for p in paths)
    assert "| Fusion (new text) | Fuser | – | – |" in (tmp_path / "real.md").read_text()
    again = JudgedStudy(TEST)
    for row in rows_from_json(json.loads((tmp_path / "real_records.json").read_text()), [r.id for r in TEST]):
        again.add_row(row)
    reloaded = again.row("Fuser").per_record
    assert reloaded["bleu"] == [5.0] * 4 and all(v != v for v in reloaded["judge_win"])  # NaN: never judged
    assert again.row("Always the longest").picks == [2, 0, 0, 2]
    with pytest.raises(ValueError, match="other test records"):
        rows_from_json(json.loads((tmp_path / "real_records.json").read_text()), ["q/0"])


def test_unjudged_candidate_is_named():
    bad = judged(7, (0.1, 0.2, 0.3))
    del bad.candidates[1].scores["bertscore"]
    with pytest.raises(DataError, match=r"record 'q/7', candidate 'b'.*bertscore"):
        JudgedStudy([bad])
    assert best_model_on(TRAIN, ["a", "b"]) == "a"  # only the ensemble's models compete


def test_job_adds_urg_and_pair_ranker_rows(tiny, tmp_path):
    from urg_ray.baselines import PairRanker

    for split, records in (("train", TRAIN), ("dev", TEST), ("test", TEST)):
        write_records(tmp_path / f"{split}.jsonl", records)
    tiny.save_pretrained(tmp_path / "urg")
    PairRanker.from_pretrained("tiny").save_pretrained(tmp_path / "pair")
    data = [f"--set=data.{s}_file={tmp_path / s}.jsonl" for s in ("train", "dev", "test")]
    out = tmp_path / "out"
    assert real_study.main([*data, "--set=data.score_keys=[judge_win]", "--out", str(out), "--max-new-tokens", "4",
                            "--model", f"URG={tmp_path / 'urg'}", "--model", f"Pair={tmp_path / 'pair'}",
                            "--model", f"URG2={tmp_path / 'urg'}"]) == 0
    rows = {row["name"]: row for row in json.loads((out / "real.json").read_text())["rows"]}
    assert {"URG-rank", "URG (fused)", "Pair (MaxLogits)", "Pair (bubble)", "a", "Oracle (best judge_win)"} <= set(rows)
    pairs = [(p["a"], p["b"]) for p in json.loads((out / "real.json").read_text())["paired"]]
    assert ("URG-rank", "Best single model on train (c)") in pairs and ("URG-rank", "Pair (bubble)") in pairs
    assert ("URG2-rank", "Pair (bubble)") in pairs
    assert [p for p in pairs if set(p) == {"URG-rank", "URG2-rank"}] == [("URG-rank", "URG2-rank")]  # once
    # a second run with only the baselines keeps the models' rows (--keep)
    assert real_study.main([*data, "--out", str(out), "--keep"]) == 0
    assert "URG-rank" in {row["name"] for row in json.loads((out / "real.json").read_text())["rows"]}
    # one PairRanker aggregation again: the other one's row stays
    assert real_study.main([*data, "--out", str(out), "--keep", "--model", f"Pair={tmp_path / 'pair'}",
                            "--pair-aggregation", "bubble"]) == 0
    again = {row["name"]: row for row in json.loads((out / "real.json").read_text())["rows"]}
    assert {"Pair (MaxLogits)", "Pair (bubble)", "URG (fused)"} <= set(again)
    assert again["Pair (bubble)"]["judge_win_pct"] == rows["Pair (bubble)"]["judge_win_pct"]  # the seeded pass again
    assert real_study.main([*data, "--out", str(out), "--model", "X=/no/such/folder"]) == 2
