"""The study's protocol (issue 17): GenFuser's prompt, equal budgets, seeds, caps and bounds in
jobs/study.sh, and jobs/evaluate.py's --bounds / --paired / --summarize on synthetic data."""

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from urg_ray.config import load_config
from urg_ray.data import Record, write_records

ROOT = Path(__file__).resolve().parents[1]


def _records() -> list[Record]:
    cands = [{"model": f"m{j}", "text": f"answer {j} about the kiln", "scores": {"bleu": float(j)}} for j in range(4)]
    return [Record(id="with", instruction="What is a kiln?", input="", output="a kiln bakes clay", candidates=cands),
            Record(id="both", instruction="Define the following word.", input="kiln", output="a kiln bakes clay",
                   candidates=cands),
            Record(id="input-only", instruction="", input="Define kiln.", output="a kiln bakes clay", candidates=cands)]


def test_gen_fusers_training_and_evaluation_prompts_are_identical():
    from urg_ray.baselines import GenFuser, rank_and_fuse
    from urg_ray.evaluation import Evaluator
    from urg_ray.model import RankResult

    fuser = GenFuser.from_pretrained("tiny")
    records = _records()
    trained_on = fuser.collator(records).input_ids[:, 0]  # the training batch of these records

    class ByTruth:  # ranks by the ground truth, so its top-k is the one training fuses
        def rank(self, questions, candidates):
            scores = torch.tensor([[float(j) for j in range(len(c))] for c in candidates])
            return RankResult(scores, [sorted(range(len(c)), key=lambda j: -j) for c in candidates])

    seen = []

    def generate(input_ids, attention_mask, **kwargs):
        seen.append(input_ids.clone())
        return torch.zeros(len(input_ids), 1, dtype=torch.long)

    fuser.backbone.generate = generate
    ev = Evaluator(records, score_keys=["bleu"], metric_names=("bleu",))  # jobs/evaluate.py's questions
    rank_and_fuse(ByTruth(), fuser, ev.questions, ev.candidates)  # LLM-Blender's row (PairRanker-Gen)
    top3 = [[c[j] for j in (3, 2, 1)] for c in ev.candidates]
    fuser.fuse(ev.questions, top3)  # the robustness rows and dev_fused_bleu
    for evaluated_on in seen:
        assert torch.equal(evaluated_on, trained_on)
    prompts = fuser.tokenizer.batch_decode(trained_on)
    assert "What is a kiln?" in prompts[0] and "Define the following word.\nkiln" in prompts[1]
    assert "Define kiln." in prompts[2] and "answer 3 about the kiln" in prompts[0]


def _dry_run(tmp_path, **env) -> list[list[str]]:
    env = dict(os.environ, STUDY_DRY_RUN="1", PYTHON=sys.executable, STUDY_OUT=str(tmp_path / "out"),
               RESULTS=str(tmp_path / "results"), **env)
    proc = subprocess.run(["bash", "jobs/study.sh"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return [shlex.split(line) for line in proc.stdout.splitlines() if line.strip()]


def _sets(cmd: list[str]) -> list[str]:
    return [cmd[i + 1] for i, word in enumerate(cmd) if word == "--set"]


def test_study_trains_every_method_on_the_same_records_with_seeds_and_a_cap(tmp_path):
    commands = _dry_run(tmp_path)
    make_data = [c for c in commands if "jobs/make_data.py" in c]
    assert len(make_data) == 1 and (make_data[0][make_data[0].index("--synthetic") + 1]
                                    == "jobs/configs/study-synthetic.yaml")
    trainings = [c for c in commands if "jobs/train.py" in c]
    budgets, runs = set(), {}
    for cmd in trainings:
        assert cmd[:4] == ["timeout", "--kill-after=10m", "2h", sys.executable]  # each run capped; a re-run resumes
        cfg = load_config(ROOT / cmd[cmd.index("--config") + 1], _sets(cmd))
        t = cfg.train
        budgets.add((t.max_steps * t.batch_size * t.num_workers, cfg.data.train_file, cfg.model.preset,
                     t.export))  # every model evaluated as it ends, none chosen on dev
        assert t.name == f"study2-{Path(cmd[cmd.index('--out') + 1]).name}"  # the name it resumes by
        runs[t.name] = cfg
    assert len(budgets) == 1 and next(iter(budgets))[0] >= 96_000  # the same records for every method
    assert next(iter(budgets))[3] == "last"
    assert len(runs) == len(trainings)
    for method in ("urg", "pair_ranker", "gen_fuser"):  # URG and LLM-Blender's two models: 3 seeds
        assert {runs[f"study2-{method}-s{s}"].train.seed for s in range(3)} == {0, 1, 2}
        assert all(runs[f"study2-{method}-s{s}"].method == method for s in range(3))
    assert not runs["study2-urg-no-rank"].loss.rank_loss and not runs["study2-urg-no-erm"].loss.erm
    assert {cfg.method for cfg in runs.values()} == {"urg", "pair_ranker", "summa_reranker", "simcls", "gen_fuser"}
    # the issue's comparison first, seed by seed (a partial study is one whole comparison); Table 2's rankers last
    assert list(runs)[-2:] == ["study2-summa_reranker", "study2-simcls"]
    assert list(runs)[:3] == ["study2-urg-s0", "study2-pair_ranker-s0", "study2-gen_fuser-s0"]
    data = load_config(ROOT / "jobs/configs/study.yaml").data
    assert data.n_test >= 500


def test_study_without_seed_0_trains_and_evaluates_only_those_seeds(tmp_path):
    commands = _dry_run(tmp_path, STUDY_SEEDS="1")
    names = [load_config(ROOT / c[c.index("--config") + 1], _sets(c)).train.name
             for c in commands if "jobs/train.py" in c]
    assert names == ["study2-urg-s1", "study2-pair_ranker-s1", "study2-gen_fuser-s1"]  # seed 0's extras stay out
    evaluations = [c[c.index("--out") + 1] for c in commands if "jobs/evaluate.py" in c and "--summarize" not in c]
    assert evaluations == [str(tmp_path / "results/seed1")]


def test_study_evaluates_each_seed_on_one_test_set_with_bounds_and_summarises(tmp_path):
    commands = _dry_run(tmp_path)
    evaluations = [c for c in commands if "jobs/evaluate.py" in c and "--bounds" in c]
    assert [c[c.index("--out") + 1] for c in evaluations] == [str(tmp_path / f"results/seed{s}") for s in range(3)]
    for seed, cmd in enumerate(evaluations):
        assert {"--bounds", "--robustness"} <= set(cmd) and "--test-file" not in cmd and "--max-records" not in cmd
        # the world the facts were made in, as make_data was given
        assert cmd[cmd.index("--synthetic") + 1] == "jobs/configs/study-synthetic.yaml"
        assert load_config(ROOT / cmd[cmd.index("--config") + 1], _sets(cmd)).data.test_file == "data/study2/test.jsonl"
        given = [cmd[i + 1] for i, w in enumerate(cmd) if w in ("--urg", "--ranker", "--fuser")]
        assert {f"URG={tmp_path}/out/urg-s{seed}/model", f"PairRanker={tmp_path}/out/pair_ranker-s{seed}/model",
                f"GenFuser={tmp_path}/out/gen_fuser-s{seed}/model"} <= set(given)
        assert "URG=PairRanker-Gen" in cmd and "URG=URG (k=1)" in cmd
    assert any("URG w/o ERM=" in w for w in evaluations[0])  # the ablations: seed 0, as long as URG
    (summary,) = [c for c in commands if "--summarize" in c]
    assert summary[summary.index("--summarize") + 1:][:3] == [str(tmp_path / f"results/seed{s}") for s in range(3)]
    assert "URG=PairRanker-Gen" in summary


def test_study_evaluates_the_comparison_before_the_other_rankers_train_then_evaluates_them(tmp_path):
    commands = _dry_run(tmp_path)

    steps = [Path(c[c.index("--out") + 1]).name for c in commands if "jobs/train.py" in c or "jobs/evaluate.py" in c]
    # the comparison (3 seeds, then their summary into RESULTS) is complete before the two
    # extra rankers train (~2 h each); they are evaluated last, into RESULTS/rankers
    assert steps[-7:] == ["seed0", "seed1", "seed2", "results", "summa_reranker", "simcls", "rankers"]
    rankers = commands[-1]
    given = [rankers[i + 1] for i, w in enumerate(rankers) if w in ("--urg", "--ranker", "--fuser")]
    out = f"{tmp_path}/out"
    assert given == [f"PairRanker={out}/pair_ranker-s0/model", f"SummaReranker={out}/summa_reranker/model",
                     f"SimCLS={out}/simcls/model"]
    assert "SummaReranker=PairRanker" in rankers and "SimCLS=PairRanker" in rankers


@pytest.mark.slow
def test_evaluate_job_bounds_paired_and_summary_on_synthetic_data(tmp_path):
    from urg_ray import URG, synthetic, synthetic_facts
    from urg_ray.baselines import GenFuser, PairRanker
    from urg_ray.metrics import bleu

    config = synthetic.SyntheticConfig(min_facts=5, max_facts=7, pool_size=12, coverage=0.4, complementary=True)
    examples = synthetic.make_examples(6, 4, seed=2, config=config, id_prefix="synthetic/test")
    test_file = tmp_path / "test.jsonl"
    write_records(test_file, [ex.record for ex in examples])
    synthetic_facts.write_facts(synthetic_facts.facts_path(test_file), examples)
    for cls, name in ((URG, "urg"), (PairRanker, "pair"), (GenFuser, "fuser")):
        cls.from_pretrained("tiny").save_pretrained(tmp_path / name)
    base = [sys.executable, "jobs/evaluate.py", "--test-file", str(test_file), "--set", "data.score_keys=[bleu]",
            "--metrics", "bleu", "--urg", f"URG={tmp_path / 'urg'}", "--ranker", f"PairRanker={tmp_path / 'pair'}",
            "--fuser", f"GenFuser={tmp_path / 'fuser'}", "--max-new-tokens", "4", "--bounds",
            "--synthetic", "jobs/configs/study-synthetic.yaml"]
    proc = subprocess.run([*base, "--paired", "URG=PairRanker-Gen", "--out", str(tmp_path / "seed0")], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads((tmp_path / "seed0/eval.json").read_text())
    rows = {r["name"]: r for r in data["rows"]}
    assert {"URG (k=1)", "Oracle, style-stripped (bleu)", "URG-rank, style-stripped", "Ideal fusion, true top-1",
            "Ideal fusion, true top-3", "Ideal fusion of URG-rank's top-3"} <= set(rows)
    refs = [ex.record["output"] for ex in examples]
    ideal = bleu([synthetic.ideal_fusion(ex, top_k=3) for ex in examples], refs)
    assert rows["Ideal fusion, true top-3"]["scores"]["bleu"] == pytest.approx(sum(ideal) / len(ideal))
    assert [(p["a"], p["b"]) for p in data["paired"]] == [("URG", "PairRanker-Gen")]
    shown = json.loads((tmp_path / "seed0/eval_records.json").read_text())["shown"]
    assert {len(s) for s in shown["URG"]} == {3} and {len(s) for s in shown["URG (k=1)"]} == {1}
    assert {len(s) for s in shown["PairRanker-Gen"]} == {3}
    sources = data["fact_sources"]
    assert list(sources) == ["best candidate", "any candidate", "URG", "URG (k=1)", "PairRanker-Gen"]
    assert all({"stated", "shown_hold", "from_shown", "from_other_candidates", "in_no_candidate"} == set(sources[n])
               for n in ("URG", "URG (k=1)", "PairRanker-Gen"))
    assert "Where the fused answers' facts come from" in (tmp_path / "seed0/eval.md").read_text()
    summary = subprocess.run([sys.executable, "jobs/evaluate.py", "--summarize", str(tmp_path / "seed0"),
                              str(tmp_path / "seed0"), "--paired", "URG=PairRanker-Gen", "--out", str(tmp_path)],
                             cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert summary.returncode == 0, summary.stderr
    summarized = json.loads((tmp_path / "summary.json").read_text())
    assert summarized["rows"][0]["n_runs"] == 2 and summarized["fact_sources"]["URG"]["stated"]["std"] == 0.0
    # a typo in --paired, or bounds without a facts file, fail before any model is loaded
    bad = subprocess.run([*base, "--paired", "URG=PairRanker-gen", "--out", str(tmp_path / "bad")], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "no row 'PairRanker-gen'" in bad.stderr
    default_world = subprocess.run([*base[:-2], "--out", str(tmp_path / "bad")], cwd=ROOT, capture_output=True,
                                   text=True, timeout=120)  # the facts read in the default world: misread, refused
    assert default_world.returncode == 2 and "is no fact of the synthetic world" in default_world.stderr
    Path(synthetic_facts.facts_path(test_file)).unlink()
    missing = subprocess.run([*base, "--out", str(tmp_path / "bad")], cwd=ROOT, capture_output=True, text=True,
                             timeout=120)
    assert missing.returncode == 2 and "no facts file" in missing.stderr
