"""urg_ray.evaluation and jobs/evaluate.py: rows, columns, correlations and robustness deltas."""

import json
import subprocess
import sys
from pathlib import Path
from statistics import mean

import pytest

from urg_ray.data import Record, write_records
from urg_ray.evaluation import Evaluator, delta_percent, gpt_rank, rank_correlation
from urg_ray.evaluation_report import write_markdown

ROOT = Path(__file__).resolve().parents[1]
REF = "the cat sat on the red mat"


def _records() -> list[Record]:
    texts = [REF, "the cat sat on a mat", "dogs bark loudly at night"]
    return [Record(id=f"r{i}", instruction=f"q{i}: where did the cat sit?", output=REF,
                   candidates=[{"model": f"m{j}", "text": t, "scores": {"bleu": float(10 - j)}}
                               for j, t in enumerate(texts)])
            for i in range(3)]


def test_rank_correlation_against_hand_computed_values():
    corr = rank_correlation([[3.0, 1.0, 2.0], [1.0, 2.0, 10.0, 4.0]], [[1.0, 2.0, 3.0], [1.0, 2.0, 3.0, 4.0]])
    # record 1: deviations (1, -1, 0) vs (-1, 0, 1): pearson = spearman = -1/2; ranks 1 3 2 vs 3 2 1: footrule 4.
    # record 2: pearson 8.5 / sqrt(48.75 * 5); spearman of ranks 1 2 4 3 vs 1 2 3 4: 4 / 5; ranks
    # (best = 1) 4 3 1 2 vs 4 3 2 1: footrule 2. Each column is the mean of the two records.
    assert corr == {"pearson": pytest.approx((-0.5 + 8.5 / (48.75 * 5) ** 0.5) / 2),
                    "spearman": pytest.approx((-0.5 + 0.8) / 2), "footrule": pytest.approx(3.0)}
    ties = rank_correlation([[1.0, 1.0, 1.0]], [[1.0, 2.0, 3.0]])  # constant scores: no correlation
    assert ties["pearson"] != ties["pearson"]  # nan


def test_delta_percent():
    assert delta_percent(50.0, 45.0) == pytest.approx(-10.0)
    assert delta_percent(-2.0, -3.0) == pytest.approx(-50.0)


def test_reference_rows_random_and_oracle_by_hand():
    ev = Evaluator(_records(), score_keys=["bleu"], metric_names=("bleu", "rouge1"))
    ev.add_reference_rows()
    rows = {r.name: r for r in ev.rows}
    assert set(rows) == {"m0", "m1", "m2", "Random", "Oracle (bleu)", "Oracle (rouge1)"}
    assert rows["m0"].scores["bleu"] == pytest.approx(100.0)
    # rouge1 F1 of "the cat sat on a mat" vs REF: 5 shared unigrams (the, cat, sat, on, mat), P=5/6, R=5/7
    r1 = 2 * (5 / 6) * (5 / 7) / (5 / 6 + 5 / 7)
    assert rows["m1"].scores["rouge1"] == pytest.approx(r1)
    assert rows["Random"].scores["rouge1"] == pytest.approx((1.0 + r1 + 0.0) / 3)
    assert rows["Oracle (rouge1)"].scores["rouge1"] == pytest.approx(1.0)


def test_ranker_row_uses_the_top1_and_reports_correlation():
    class Reverse:  # ranks the worst candidate first
        def rank(self, questions, candidates):
            import torch

            from urg_ray.model import RankResult
            scores = torch.tensor([[float(i) for i in range(len(c))] for c in candidates])
            return RankResult(scores, [list(range(len(c)))[::-1] for c in candidates])

    ev = Evaluator(_records(), score_keys=["bleu"], metric_names=("bleu",))
    row = ev.add_ranker("reverse", Reverse())
    assert row.scores["bleu"] < 5 and row.correlation["spearman"] == pytest.approx(-1.0)
    assert row.correlation["footrule"] == pytest.approx(4.0)


def test_robustness_deltas_follow_the_fusers_output():
    ev = Evaluator(_records(), score_keys=["bleu"], metric_names=("bleu",))
    # a "fuser" that returns its last input: top-2 -> the second best; + worst -> the worst
    result = ev.add_robustness("last", lambda q, c: [cands[-1] for cands in c])
    second_best = ev.candidate_scores[0][1]["bleu"]
    assert result["scores"]["bleu"] == pytest.approx(second_best)
    assert result["delta% top2+worst1"]["bleu"] == pytest.approx(delta_percent(second_best, 0.0))


def test_robustness_with_three_candidates_never_repeats_a_top2_candidate():
    ev = Evaluator(_records(), score_keys=["bleu"], metric_names=("bleu",))  # N = 3
    seen: list[list[str]] = []

    def last(questions, candidate_lists):
        seen.extend(candidate_lists)
        return [cands[-1] for cands in candidate_lists]

    ev.add_robustness("last", last)
    texts = [c.text for c in ev.records[0].candidates]  # truth order: m0, m1, m2
    assert seen == [texts[:2]] * 3 + [texts] * 3 + [texts] * 3  # top2, +worst1, +worst2 (only one left)


@pytest.mark.slow
def test_evaluate_job_writes_every_row_and_column(tmp_path):
    from urg_ray import URG
    from urg_ray.baselines import GenFuser, PairRanker

    texts = [REF, "the cat sat on a mat", "dogs bark loudly at night", "a red mat by the door"]
    # four candidates, in another order per record: a top-3 is a choice, not always all but the last
    records = [Record(id=f"r{i}", instruction=f"q{i}: where did the cat sit?", output=REF,
                      candidates=[{"model": f"m{j}", "text": texts[(i + j) % 4], "scores": {"bleu": float(10 - j)}}
                                  for j in range(4)])
               for i in range(3)]
    test_file = tmp_path / "test.jsonl"
    write_records(test_file, records)
    URG.from_pretrained("tiny").save_pretrained(tmp_path / "urg")
    PairRanker.from_pretrained("tiny").save_pretrained(tmp_path / "pair")
    GenFuser.from_pretrained("tiny").save_pretrained(tmp_path / "fuser")
    out = tmp_path / "eval"
    proc = subprocess.run([sys.executable, "jobs/evaluate.py", "--test-file", str(test_file),
                           "--set", "data.score_keys=[bleu]",
                           "--urg", f"URG={tmp_path / 'urg'}", "--ranker", f"PairRanker={tmp_path / 'pair'}",
                           "--fuser", f"GenFuser={tmp_path / 'fuser'}", "--robustness", "--max-new-tokens", "8",
                           "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads((out / "eval.json").read_text())
    names = [r["name"] for r in data["rows"]]
    metric_names = ["bleu", "rouge1", "rouge2", "rougeL", "rougeLsum", "bertscore"]
    expected = ["m0", "m1", "m2", "m3", "Random", *(f"Oracle ({m})" for m in metric_names), "URG-rank", "URG",
                "PairRanker", "PairRanker-Gen"]
    assert names == expected
    assert all(set(r["scores"]) == set(metric_names) for r in data["rows"])
    assert set(data["rows"][names.index("URG-rank")]["correlation"]) == {"pearson", "spearman", "footrule"}
    assert set(data["robustness"]) == {"URG", "GenFuser"}
    shown = json.loads((out / "eval_records.json").read_text())["shown"]  # each fusion's top-3 of 4 candidates
    assert set(shown) == {"URG", "PairRanker-Gen"} and all(len(s) == 3 for per in shown.values() for s in per)
    ranks = URG.from_pretrained(tmp_path / "urg").rank([r.question for r in records],
                                                       [[c.text for c in r.candidates] for r in records]).ranks
    assert [sorted(s) for s in shown["URG"]] == [sorted(r[:3]) for r in ranks]
    markdown = (out / "eval.md").read_text()
    for header in ("BLEU", "ROUGE-1", "ROUGE-2", "ROUGE-L", "ROUGE-Lsum", "BERTScore", "Pearson", "Spearman",
                   "Footrule"):
        assert header in markdown
    assert (out / "eval.png").stat().st_size > 0 and (out / "robustness.png").stat().st_size > 0


def test_a_malformed_or_missing_model_flag_is_named_before_any_model_or_ray(tmp_path, capsys):
    import ray

    from evaluate import main

    assert main(["--urg", "URG"]) == 2
    assert "error: --urg: expected NAME=FOLDER, got 'URG'" in capsys.readouterr().err
    assert main(["--ranker", f"Pair={tmp_path / 'nope'}"]) == 2
    assert f"error: --ranker Pair={tmp_path / 'nope'}: no such folder" in capsys.readouterr().err
    assert main(["--summarize", str(tmp_path), "--paired", "URG-rank"]) == 2  # rows, not folders
    assert "error: --paired: expected A=B, got 'URG-rank'" in capsys.readouterr().err
    world = "jobs/configs/study-synthetic.yaml"
    for argv in (["--synthetic", world], ["--summarize", str(tmp_path), "--bounds", "--synthetic", world]):
        assert main(argv) == 2  # the world of the facts: read with --bounds only, never silently dropped
        assert "error: --synthetic needs --bounds" in capsys.readouterr().err
    assert not ray.is_initialized()


CMP = [{"m0,m1": "A is better", "m0,m2": "A is better", "m1,m2": "Same good"},  # wins 2 0 0: ranks 1 2 2
       {"m0,m1": "B is better", "m0,m2": "Same bad", "m1,m2": "A is better"},  # wins 0 2 0: ranks 2 1 2
       {"m0,m1": "B is better", "m0,m2": "B is better", "m1,m2": "B is better"}]  # wins 0 1 2: ranks 3 2 1


def _judged_records() -> list[Record]:
    return [r.model_copy(update={"cmp_results": json.dumps(c)}) for r, c in zip(_records(), CMP)]


def test_gpt_rank_counts_wins_and_ties_share_the_best_place():
    assert [gpt_rank(r) for r in _judged_records()] == [[1.0, 2.0, 2.0], [2.0, 1.0, 2.0], [3.0, 2.0, 1.0]]
    assert gpt_rank(_records()[0]) is None  # cmp_results "null"
    bad = _records()[0].model_copy(update={"cmp_results": json.dumps({"m0,m9": "A is better"})})
    with pytest.raises(ValueError, match="'m0,m9' names a model with no candidate"):
        gpt_rank(bad)


def _bart_loglik(source: str, target: str) -> float:
    """BARTScore by hand: HF's own mean token cross-entropy of the reference given the text, negated."""
    import torch
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    from urg_ray.tiny_llms import resolve_model_source

    path = resolve_model_source("tiny-bart")
    tok, model = AutoTokenizer.from_pretrained(path), AutoModelForSeq2SeqLM.from_pretrained(path).eval()

    def ids(text):
        x = tok(text)["input_ids"]
        return x if x[-1] == tok.eos_token_id else x + [tok.eos_token_id]
    with torch.no_grad():
        return -model(input_ids=torch.tensor([ids(source)]), labels=torch.tensor([ids(target)])).loss.item()


def test_paper_columns_gpt_rank_bartscore_and_gen_rows_by_hand():
    ev = Evaluator(_judged_records(), score_keys=["bleu"], metric_names=("bleu", "bartscore"), batch_size=2)
    assert ev.metric_names == ("bleu", "bartscore", "gpt_rank")
    ev.add_reference_rows()
    ev.add_selection("first", [0, 0, 0])
    ev.add_fusion("Ranker-Gen", [REF, "dogs bark loudly at night", "the cat sat on a mat"])
    rows = {r.name: r.scores for r in ev.rows}
    # GPT-Rank of a row: the mean rank of its picks; m0's candidate ranks 1, 2, 3
    assert rows["m0"]["gpt_rank"] == pytest.approx(2.0) and rows["first"]["gpt_rank"] == pytest.approx(2.0)
    assert rows["m2"]["gpt_rank"] == pytest.approx(5 / 3)
    assert rows["Oracle (gpt_rank)"]["gpt_rank"] == pytest.approx(1.0)  # lower is better: the oracle takes the min
    assert rows["Random"]["gpt_rank"] == pytest.approx((5 / 3 + 5 / 3 + 2) / 3)
    assert rows["Ranker-Gen"]["gpt_rank"] != rows["Ranker-Gen"]["gpt_rank"]  # a fused text was never judged: NaN
    texts = [c.text for c in _records()[0].candidates]
    assert rows["m1"]["bartscore"] == pytest.approx(_bart_loglik(texts[1], REF), abs=1e-4)
    fused = [_bart_loglik(t, REF) for t in (REF, "dogs bark loudly at night", "the cat sat on a mat")]
    assert rows["Ranker-Gen"]["bartscore"] == pytest.approx(sum(fused) / 3, abs=1e-4)
    assert rows["Oracle (bartscore)"]["bartscore"] == pytest.approx(max(_bart_loglik(t, REF) for t in texts), abs=1e-4)
    markdown = write_markdown(ev.to_json())
    assert "| BARTScore | GPT-Rank ↓ |" in markdown
    gen = rows["Ranker-Gen"]
    assert markdown.splitlines()[-1].startswith(
        f"| Fusion | Ranker-Gen | {gen['bleu']:.2f} | {gen['bartscore']:.4f} | – |")


def test_without_cmp_results_there_is_no_gpt_rank_column():
    assert Evaluator(_records(), score_keys=["bleu"], metric_names=("bleu",)).metric_names == ("bleu",)


# ---- bounds from the synthetic world's latent facts, paired bootstrap, seeds (issue 17) -----------
def _world(n: int = 10, n_candidates: int = 4):
    from urg_ray import synthetic

    config = synthetic.SyntheticConfig(min_facts=5, max_facts=7, pool_size=12, coverage=0.4, complementary=True)
    examples = synthetic.make_examples(n, n_candidates, seed=5, config=config, id_prefix="synthetic/test",
                                       metrics=("bleu", "rouge1"))
    return examples, [Record.model_validate(ex.record) for ex in examples]


class _Fixed:
    """A ranker whose order is fixed per record: candidate (b + j) % N at place j of the b-th record."""

    def rank(self, questions, candidates):
        import torch

        from urg_ray.model import RankResult
        n = len(candidates[0])
        orders = [[(b + j) % n for j in range(n)] for b in range(len(questions))]
        scores = torch.tensor([[float(-o.index(i)) for i in range(n)] for o in orders])
        return RankResult(scores, orders)


def test_bound_rows_equal_an_independent_computation():
    from urg_ray.metrics import bleu
    from urg_ray.synthetic import ideal_fusion
    from urg_ray.synthetic_world import render_reference

    examples, records = _world()
    ev = Evaluator(records, score_keys=["bleu"], metric_names=("bleu", "rouge1"))
    ev.add_ranker("R", _Fixed())
    ev.add_bounds({ex.record["id"]: ex for ex in examples}, top_k=2, rankers=["R"])
    rows = {r.name: r for r in ev.rows}
    assert {r.name for r in ev.rows if r.kind == "bound"} == {
        "Oracle, style-stripped (bleu)", "R, style-stripped", "Ideal fusion, true top-1", "Ideal fusion, true top-2",
        "Ideal fusion of R's top-2"}
    refs = [ex.record["output"] for ex in examples]
    order = ev.rankings["R"]

    def stripped(ex, i):  # the candidate's facts, right and wrong, in the reference's template
        return render_reference(ex.task, ex.topics_of(i), ex.candidate_facts[i])

    def correct_of(ex, chosen):  # the reference's facts some chosen candidate states, in reference order
        return render_reference(ex.task, ex.topics, tuple(
            f for f in ex.reference_facts if any(f in ex.candidate_facts[i] for i in chosen)))

    oracle = mean(max(bleu([stripped(ex, i) for i in range(4)], [ex.record["output"]] * 4)) for ex in examples)
    assert rows["Oracle, style-stripped (bleu)"].scores["bleu"] == pytest.approx(oracle)
    assert rows["R, style-stripped"].scores["bleu"] == pytest.approx(
        mean(bleu([stripped(ex, o[0]) for ex, o in zip(examples, order)], refs)))
    for k in (1, 2):
        assert rows[f"Ideal fusion, true top-{k}"].scores["bleu"] == pytest.approx(
            mean(bleu([ideal_fusion(ex, top_k=k) for ex in examples], refs)))
    assert rows["Ideal fusion of R's top-2"].scores["bleu"] == pytest.approx(
        mean(bleu([correct_of(ex, o[:2]) for ex, o in zip(examples, order)], refs)))
    assert len(set(map(tuple, order))) > 1  # the fixed ranker's orders differ between records
    with pytest.raises(ValueError, match="no rank rows named"):
        ev.add_bounds({ex.record["id"]: ex for ex in examples}, rankers=["nope"])
    with pytest.raises(ValueError, match="have no latent facts"):
        ev.add_bounds({})


def test_paired_bootstrap_properties_and_a_hand_computed_case():
    from urg_ray.evaluation import paired_bootstrap

    a = [3.0, 7.5, 1.0, 9.0, 4.0, 0.5]
    same = paired_bootstrap(a, a)
    assert (same["mean"], same["low"], same["high"]) == (0.0, 0.0, 0.0)
    shifted = paired_bootstrap([x + 2.5 for x in a], a)
    assert shifted["low"] == pytest.approx(2.5) and shifted["high"] == pytest.approx(2.5)
    # differences (0, 1): a resample of two records has mean 0, 1/2 or 1 with chance 1/4, 1/2, 1/4,
    # so the 95% interval is [0, 1] and the 40% one (quantiles 0.3 and 0.7) is [1/2, 1/2]
    wide = paired_bootstrap([5.0, 6.0], [5.0, 5.0])
    assert (wide["mean"], wide["low"], wide["high"]) == (0.5, 0.0, 1.0)
    narrow = paired_bootstrap([5.0, 6.0], [5.0, 5.0], confidence=0.4)
    assert (narrow["low"], narrow["high"]) == (0.5, 0.5)
    noisy = paired_bootstrap([x + 1.0 for x in a], a[::-1])  # unpaired noise: an interval around the mean
    assert noisy["low"] < noisy["mean"] < noisy["high"]
    with pytest.raises(ValueError, match="equally long"):
        paired_bootstrap([1.0, 2.0], [1.0])


def test_paired_rows_and_per_record_scores_in_the_output(tmp_path):
    ev = Evaluator(_records(), score_keys=["bleu"], metric_names=("bleu",))
    ev.add_reference_rows()
    ev.add_fusion("F", [REF, "the cat sat on a mat", REF])
    (interval,) = ev.add_paired("F", "m1")
    per_record = [x["bleu"] - y["bleu"] for x, y in zip(ev.per_record["F"], ev.per_record["m1"])]
    assert interval["mean"] == pytest.approx(sum(per_record) / 3) and interval["low"] <= interval["high"]
    ev.write(tmp_path)
    saved = json.loads((tmp_path / "eval_records.json").read_text())
    assert saved["ids"] == ["r0", "r1", "r2"]
    assert saved["rows"]["F"]["bleu"] == [x["bleu"] for x in ev.per_record["F"]]
    assert saved["texts"] == {"F": [REF, "the cat sat on a mat", REF]}  # the fused answers themselves
    assert "| F − m1 | BLEU |" in (tmp_path / "eval.md").read_text()
    with pytest.raises(ValueError, match="already in the table"):
        ev.add_fusion("F", [REF] * 3)
    with pytest.raises(ValueError, match="no rows named"):
        ev.add_paired("F", "missing")


def test_summary_over_seeds_by_hand():
    from urg_ray.evaluation import summarize_runs
    from urg_ray.evaluation_report import write_summary_markdown

    def run(urg: list[float], blender: list[float]):
        rows = [{"name": n, "kind": "fusion", "scores": {"bleu": sum(v) / len(v)}, "correlation": {}}
                for n, v in (("URG", urg), ("Blender", blender))]
        return ({"metrics": ["bleu"], "rows": rows, "robustness": {}},
                {"ids": ["a", "b", "c"], "rows": {"URG": {"bleu": urg}, "Blender": {"bleu": blender}}})

    runs = [run([10.0, 20.0, 30.0], [9.0, 19.0, 29.0]), run([30.0, 40.0, 50.0], [27.0, 37.0, 47.0])]
    summary = summarize_runs([r for r, _ in runs], [p for _, p in runs], paired=[("URG", "Blender")])
    urg = summary["rows"][0]
    assert urg["n_runs"] == 2 and urg["scores"]["bleu"]["mean"] == pytest.approx(30.0)
    assert urg["scores"]["bleu"]["std"] == pytest.approx(2 ** 0.5 * 10.0)  # runs at 20 and 40: sample std
    (pair,) = summary["paired"]
    assert [(r["low"], r["high"]) for r in pair["per_run"]] == [pytest.approx((1.0, 1.0)), pytest.approx((3.0, 3.0))]
    assert (pair["pooled"]["low"], pair["pooled"]["high"]) == pytest.approx((2.0, 2.0))  # shifts 1 and 3, averaged
    assert "| URG − Blender | BLEU | 2 | 2.00 | [2.00, 2.00] |" in write_summary_markdown(summary)
    assert urg["per_run"] == {"bleu": [pytest.approx(20.0), pytest.approx(40.0)]}  # each run's value, for the chart
    other = run([1.0, 2.0, 3.0], [1.0, 2.0, 3.0])
    other[1]["ids"] = ["a", "b", "x"]
    with pytest.raises(ValueError, match="other test records"):
        summarize_runs([runs[0][0], other[0]], [runs[0][1], other[1]])


def _write_run(folder: Path, rows: dict[str, list[float]], kinds: dict[str, str]) -> None:
    """An evaluation folder as `evaluate` writes it: per row its per-record BLEU (three records) and, as
    ROUGE-L, the BLEU / 100."""
    folder.mkdir(parents=True)
    per_record = {n: {"bleu": v, "rougeL": [x / 100 for x in v]} for n, v in rows.items()}
    table = [{"name": n, "kind": kinds[n], "correlation": {}, "scores": {m: mean(s) for m, s in v.items()}}
             for n, v in per_record.items()]
    (folder / "eval.json").write_text(json.dumps({"metrics": ["bleu", "rougeL"], "rows": table, "robustness": {}}))
    (folder / "eval_records.json").write_text(json.dumps({"ids": ["a", "b", "c"], "rows": per_record}))


def test_summarize_job_writes_a_chart_of_each_runs_row_values_and_the_paired_bleu_intervals(tmp_path):
    from statistics import stdev

    import matplotlib.image

    from evaluate import main
    from urg_ray.evaluation_report import summary_bars, summary_intervals

    kinds = {"m0": "model", "URG": "fusion", "Blender": "fusion", "Ideal": "bound"}
    runs = [{"m0": [5.0, 5.0, 5.0], "URG": [10.0, 20.0, 30.0], "Blender": [9.0, 19.0, 29.0], "Ideal": [50.0] * 3},
            {"m0": [5.0, 5.0, 5.0], "URG": [30.0, 40.0, 50.0], "Blender": [27.0, 37.0, 47.0]},  # no Ideal row
            {"m0": [5.0, 5.0, 5.0], "URG": [20.0, 20.0, 20.0], "Blender": [20.0, 20.0, 20.0]}]
    for i, rows in enumerate(runs):
        _write_run(tmp_path / f"seed{i}", rows, kinds)
    out = tmp_path / "summary"
    assert main(["--summarize", *(str(tmp_path / f"seed{i}") for i in range(3)), "--paired", "URG=Blender",
                 "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    # per row, in the table's order: each run's mean BLEU (runs that have the row), their mean and sample std
    expected = {"m0": [5.0, 5.0, 5.0], "URG": [20.0, 40.0, 20.0], "Blender": [19.0, 37.0, 20.0], "Ideal": [50.0]}
    bars = summary_bars(summary)
    assert [(b.name, b.kind) for b in bars] == [(n, kinds[n]) for n in expected]
    for bar, values in zip(bars, expected.values()):
        assert bar.runs == pytest.approx(values) and bar.mean == pytest.approx(mean(values))
        assert bar.std == pytest.approx(stdev(values) if len(values) > 1 else float("nan"), nan_ok=True)
    # the BLEU pair only (the ROUGE-L one is in the table): URG - Blender shifts 1, 3, 0 per record in the
    # three runs, so each run's interval is that shift alone and the pooled one their mean, 4/3
    assert [p["metric"] for p in summary["paired"]] == ["bleu", "rougeL"]
    ((label, pooled, per_run),) = summary_intervals(summary)
    assert label == "URG − Blender" and pooled == pytest.approx((4 / 3, 4 / 3, 4 / 3))
    assert per_run == [pytest.approx((d, d, d)) for d in (1.0, 3.0, 0.0)]
    image = matplotlib.image.imread(out / "summary.png")  # a PNG that opens, both panels side by side
    assert image.shape[0] >= 300 and image.shape[1] >= 1200


def test_fusion_rows_keep_the_candidates_they_were_shown_and_where_their_facts_come_from(tmp_path):
    from urg_ray.synthetic import SyntheticConfig
    from urg_ray.synthetic_world import TOPICS, render_reference, topic_pool

    topic = TOPICS[0]
    a = topic_pool(topic, SyntheticConfig())
    row = lambda *facts: [[f.subject, f.verb, f.rest] for f in facts]  # noqa: E731
    facts = {f"r{i}": {"topics": [topic], "reference_facts": row(a[0], a[1]),
                       "candidate_facts": [row(a[0]), row(a[1]), []]}
             for i in range(3)}
    ev = Evaluator(_records(), score_keys=["bleu"], metric_names=("bleu",))
    both = render_reference("define", (topic,), (a[0], a[1]))
    ev.add_fusion("F", [both] * 3, shown=[[0]] * 3)  # shown candidate 0 (a0); states a1 too, candidate 1's
    ev.add_fusion("G", ["nothing said"] * 3)
    with pytest.raises(ValueError, match="row 'H': shown candidates for 2 records, the table has 3"):
        ev.add_fusion("H", [both] * 3, shown=[[0]] * 2)
    ev.add_fact_sources(facts)
    ev.write(tmp_path)
    saved = json.loads((tmp_path / "eval_records.json").read_text())
    assert saved["shown"] == {"F": [[0], [0], [0]]} and set(saved["texts"]) == {"F", "G"}
    sources = json.loads((tmp_path / "eval.json").read_text())["fact_sources"]
    assert sources["F"] == {"stated": 1.0, "shown_hold": 0.5, "from_shown": 0.5, "from_other_candidates": 0.5,
                            "in_no_candidate": 0.0}
    assert sources["G"] == {"stated": 0.0, "in_no_candidate": 0.0}
    markdown = (tmp_path / "eval.md").read_text()
    assert "## Where the fused answers' facts come from" in markdown and "memory of the world" in markdown
    assert "| F | 1.000 | 0.500 | 0.500 | 0.500 | 0.000 |" in markdown
    assert "| G | 0.000 |  |  |  | 0.000 |" in markdown and "| any candidate | 1.000 |  |  |  |  |" in markdown


def test_summary_averages_where_the_facts_come_from_when_every_run_has_it():
    from urg_ray.evaluation import summarize_runs
    from urg_ray.evaluation_report import write_summary_markdown

    def run(stated: float, from_shown: float | None):
        urg = {"stated": stated, "in_no_candidate": 0.1}
        urg |= {"from_shown": from_shown} if from_shown is not None else {}
        return ({"metrics": ["bleu"], "robustness": {}, "fact_sources": {"any candidate": {"stated": 0.8}, "URG": urg},
                 "rows": [{"name": "URG", "kind": "fusion", "scores": {"bleu": 1.0}, "correlation": {}}]},
                {"ids": ["a"], "rows": {"URG": {"bleu": [1.0]}}})

    runs = [run(0.5, 0.9), run(0.7, 0.7), run(0.6, None)]  # the last run has no shown indices for URG
    summary = summarize_runs([r for r, _ in runs], [p for _, p in runs])
    urg = summary["fact_sources"]["URG"]
    assert urg["n_runs"] == 3 and urg["stated"]["mean"] == pytest.approx(0.6)
    assert urg["stated"]["std"] == pytest.approx(0.1)  # 0.5, 0.7, 0.6: sample std
    assert set(urg) == {"n_runs", "stated", "in_no_candidate"}  # from_shown: not in every run, not averaged
    assert summary["fact_sources"]["any candidate"]["stated"] == {"mean": pytest.approx(0.8), "std": pytest.approx(0.0)}
    assert "| URG | 3 | 0.600 ± 0.100 |  |  |  | 0.100 ± 0.000 |" in write_summary_markdown(summary)
    runs[2][0].pop("fact_sources")  # a run evaluated without the facts: no table
    assert "fact_sources" not in summarize_runs([r for r, _ in runs], [p for _, p in runs])
