import re
from collections import defaultdict
from pathlib import Path
from statistics import mean

import pytest
import yaml

from urg_ray import synthetic, synthetic_facts, synthetic_world
from urg_ray.data import Record
from urg_ray.metrics import bleu

N_CANDIDATES = 8


@pytest.fixture(scope="module")
def examples() -> list[synthetic.SyntheticExample]:
    return synthetic.make_examples(300, N_CANDIDATES, seed=0)


def test_records_are_mixinstruct(examples):
    records = [ex.record for ex in examples]
    for rec in records:
        assert set(rec) == {"id", "instruction", "input", "output", "candidates", "cmp_results"}
        assert rec["cmp_results"] == "null" and rec["output"] and rec["instruction"]
        assert [c["model"] for c in rec["candidates"]] == list(synthetic.MODELS[:N_CANDIDATES])
        for cand in rec["candidates"]:
            assert set(cand) == {"decoding_method", "model", "text", "scores"}
            assert set(cand["scores"]) == {"bleu", "rouge1", "rouge2", "rougeL", "rougeLsum"}
            assert 0 <= cand["scores"]["bleu"] <= 100 + 1e-9 and 0 <= cand["scores"]["rougeL"] <= 1
            assert len(cand["text"].split()) <= 60
        Record.model_validate(rec)  # what urg_ray.data reads
    assert len({rec["id"] for rec in records}) == len(records)
    assert records[7]["id"] == "synthetic/0/7"


def test_scores_are_the_metric_of_text_against_output(examples):
    rec = examples[3].record
    texts = [c["text"] for c in rec["candidates"]]
    assert bleu(texts, [rec["output"]] * len(texts)) == [c["scores"]["bleu"] for c in rec["candidates"]]


def test_candidate_lengths_are_short_but_not_trivial(examples):
    words = [len(c["text"].split()) for ex in examples for c, k in zip(ex.record["candidates"], ex.kinds)
             if k == "normal"]
    assert 15 <= mean(words) <= 45


def test_deterministic_per_seed_and_different_across_seeds():
    a = synthetic.make_dataset(15, seed=3, id_prefix="synthetic/train")
    assert a == synthetic.make_dataset(15, seed=3, id_prefix="synthetic/train")
    assert a[0]["id"] == "synthetic/train/0"
    b = synthetic.make_dataset(15, seed=4, id_prefix="synthetic/train")
    assert [r["output"] for r in a] != [r["output"] for r in b]


def test_config_object_and_knobs():
    config = synthetic.SyntheticConfig(max_facts=3, style_strength=0.0)
    records = synthetic.make_dataset(10, 4, seed=1, config=config, degenerate_rate=0.0, off_topic_rate=0.0)
    for rec in records:
        assert len(rec["candidates"]) == 4
        for cand in rec["candidates"]:  # no style: plain sentences, no openings or bullets
            assert not cand["text"].startswith(("Sure!", "Well,", "As an AI", "Of course.", "-", "*"))
            assert cand["text"].endswith(".")
    with pytest.raises(ValueError, match="unknown SyntheticConfig knobs.*'noise'"):
        synthetic.make_dataset(2, noise=0.1)
    with pytest.raises(ValueError, match="off_topic_rate must be in"):
        synthetic.SyntheticConfig(off_topic_rate=1.5)


def test_a_knobs_file_sets_the_optional_question_topics_or_leaves_it_null(tmp_path):
    knobs = tmp_path / "world.yaml"
    knobs.write_text("question_topics: [2, 6]\npool_size: 12\n")
    config = synthetic.SyntheticConfig(**synthetic.knobs_file(knobs))
    assert config.question_topics == (2, 6) and config.pool_size == 12
    knobs.write_text("question_topics: null\n")
    assert synthetic.SyntheticConfig(**synthetic.knobs_file(knobs)) == synthetic.SyntheticConfig()
    for bad in ("3", "[2, a]", "[2, 6.5]", "[2, 4, 6]"):
        knobs.write_text(f"question_topics: {bad}\n")
        with pytest.raises(ValueError, match=f"{knobs}: question_topics: question_topics needs a list of two ints"):
            synthetic.knobs_file(knobs)


def test_twelve_candidates_and_limits():
    rec = synthetic.make_dataset(2, 12, seed=0, metrics=("bleu",))[0]
    assert len({c["model"] for c in rec["candidates"]}) == 12
    with pytest.raises(ValueError, match="n_candidates"):
        synthetic.make_dataset(1, 13)


def test_task_type_is_visible_in_the_question(examples):
    cue = {"define": r"What is|Define|what a", "list": r"facts", "steps": r"steps|step by step",
           "compare": r"Compare|difference", "benefits": r"benefits|should I use|advantages"}
    for ex in examples:
        assert re.search(cue[ex.task], ex.record["instruction"]), (ex.task, ex.record["instruction"])
        assert all(t in ex.record["instruction"] + ex.record["input"] for t in ex.topics)
    assert {ex.task for ex in examples} == set(synthetic_world.TASKS)


def test_no_model_is_best_on_every_task(examples):
    per_task: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for ex in examples:
        for cand in ex.record["candidates"]:
            per_task[ex.task][cand["model"]].append(cand["scores"]["bleu"])
    best = {task: max(models, key=lambda m: mean(models[m])) for task, models in per_task.items()}
    assert len(set(best.values())) >= 3, best


def test_noise_rates_roughly_as_configured(examples):
    kinds = [k for ex in examples for k in ex.kinds]
    assert 0.03 <= kinds.count("off_topic") / len(kinds) <= 0.07
    assert 0.03 <= kinds.count("degenerate") / len(kinds) <= 0.07
    noisy = synthetic.make_examples(60, seed=1, off_topic_rate=0.3, degenerate_rate=0.2, score=False)
    kinds = [k for ex in noisy for k in ex.kinds]
    assert 0.24 <= kinds.count("off_topic") / len(kinds) <= 0.36
    assert 0.15 <= kinds.count("degenerate") / len(kinds) <= 0.25


def test_off_topic_and_degenerate_candidates_look_and_score_bad(examples):
    by_kind = defaultdict(list)
    for ex in examples:
        for cand, kind in zip(ex.record["candidates"], ex.kinds):
            by_kind[kind].append(cand["scores"]["bleu"])
            if kind == "off_topic":  # about other topics: the question's topics never appear
                assert not any(t in cand["text"] for t in ex.topics), cand["text"]
            if kind == "degenerate":
                sentences = [s for s in re.split(r"(?<=[.!?,])\s+", cand["text"]) if s]
                looping = len(sentences) > len(set(sentences))
                assert looping or len(cand["text"].split()) < len(ex.record["output"].split()), cand["text"]
    assert mean(by_kind["off_topic"]) < 20 < mean(by_kind["normal"])
    assert mean(by_kind["degenerate"]) < mean(by_kind["normal"]) - 15


def test_union_of_top3_beats_best_single_candidate(examples):
    refs = [ex.record["output"] for ex in examples]
    oracle = mean(max(c["scores"]["bleu"] for c in ex.record["candidates"]) for ex in examples)
    per_model = [mean(ex.record["candidates"][j]["scores"]["bleu"] for ex in examples)
                 for j in range(N_CANDIDATES)]
    fused = mean(bleu([synthetic.ideal_fusion(ex, top_k=3) for ex in examples], refs))
    assert max(per_model) + 10 < oracle < fused - 5
    # In facts, counted directly: the union of the true top-3 holds more correct facts than the
    # best candidate (measured: 0.26 more per record at the defaults, on answers of 3-5 facts).
    gains = []
    for ex in examples:
        cands = ex.record["candidates"]
        top3 = sorted(range(len(cands)), key=lambda i: -cands[i]["scores"]["bleu"])[:3]
        correct = [set(ex.candidate_facts[i]) & set(ex.reference_facts) for i in top3]
        gains.append(len(set().union(*correct)) - len(correct[0]))
    assert min(gains) >= 0 and mean(gains) > 0.15


def test_ideal_fusion_is_reference_sentences_in_order(examples):
    for ex in examples[:50]:
        ref_sentences = re.split(r"(?<=\.) ", ex.record["output"])
        fused = synthetic.ideal_fusion(ex)
        if ex.task in ("list", "compare"):  # templates that do not depend on position
            fused_sentences = re.split(r"(?<=\.) ", fused) if fused else []
            positions = [ref_sentences.index(s) for s in fused_sentences]
            assert positions == sorted(positions)


def test_corpus_covers_the_data():
    texts = list(synthetic.corpus(n_records=300, seed=5))
    assert texts == list(synthetic.corpus(n_records=300, seed=5))
    vocab = {w for t in texts for w in re.findall(r"[A-Za-z]+", t.lower())}
    words = [w for rec in synthetic.make_dataset(30, seed=11, metrics=("bleu",))
             for t in (rec["instruction"], rec["output"], *(c["text"] for c in rec["candidates"]))
             for w in re.findall(r"[A-Za-z]+", t.lower())]
    assert sum(w in vocab for w in words) / len(words) > 0.995
    assert 300 <= len(vocab) <= 600  # a closed vocabulary of a few hundred words


# ---- coverage: the study's setting, where fusion must combine candidates (issue 17) ---------------
ROOT = Path(__file__).resolve().parents[1]


def _study_config() -> synthetic.SyntheticConfig:
    """The world jobs/study.sh makes its data in (jobs/configs/study-synthetic.yaml)."""
    return synthetic.SyntheticConfig(**yaml.safe_load((ROOT / "jobs/configs/study-synthetic.yaml").read_text()))


def _correct_share(ex: synthetic.SyntheticExample, i: int) -> float:
    return len(set(ex.candidate_facts[i]) & set(ex.reference_facts)) / len(ex.reference_facts)


def test_full_coverage_is_the_default_world_whatever_complementary_says():
    assert synthetic.make_dataset(20, seed=3) == synthetic.make_dataset(20, seed=3, coverage=1.0, complementary=True)
    with pytest.raises(ValueError, match="coverage must be > 0"):
        synthetic.SyntheticConfig(coverage=0.0)


def test_in_the_study_world_no_candidate_holds_most_and_combining_is_needed():
    examples = synthetic.make_examples(200, N_CANDIDATES, seed=2, config=_study_config())
    refs = [ex.record["output"] for ex in examples]
    # no single candidate states half of the reference's facts correctly, in any record
    assert max(_correct_share(ex, i) for ex in examples for i in range(N_CANDIDATES)) < 0.5
    # ... nor scores like it without its style: the best style-stripped candidate per record
    stripped = [max(bleu([synthetic_world.render_reference(ex.task, ex.topics_of(i), ex.candidate_facts[i])
                          for i in range(N_CANDIDATES)], [ex.record["output"]] * N_CANDIDATES)) for ex in examples]
    top1 = mean(bleu([synthetic.ideal_fusion(ex, top_k=1) for ex in examples], refs))
    top3 = mean(bleu([synthetic.ideal_fusion(ex, top_k=3) for ex in examples], refs))
    assert top3 > 2 * top1 and top3 > mean(stripped) + 25, (top1, top3, mean(stripped))
    # the default world is the opposite: the true top-1 alone, style-stripped, is near the top-3's union
    default = synthetic.make_examples(200, N_CANDIDATES, seed=2)
    default_refs = [ex.record["output"] for ex in default]
    assert mean(bleu([synthetic.ideal_fusion(ex, top_k=1) for ex in default], default_refs)) > 85


def test_complementary_coverage_leaves_fewer_facts_to_nobody():
    def complete(complementary: bool) -> float:  # records whose 8 candidates together state every fact
        examples = synthetic.make_examples(300, N_CANDIDATES, seed=4, config=_study_config(),
                                           complementary=complementary, score=False)
        return mean(set(ex.reference_facts) <= set().union(*ex.candidate_facts) for ex in examples)

    assert complete(True) > complete(False) + 0.1


def test_strip_style_is_the_candidate_without_its_style():
    # with style_strength=0 a candidate is its sentences alone, so stripping must give back its text
    examples = synthetic.make_examples(40, N_CANDIDATES, seed=6, style_strength=0.0, score=False)
    checked = 0
    for ex in examples:
        for i, (cand, kind) in enumerate(zip(ex.record["candidates"], ex.kinds)):
            if kind != "normal" or len(cand["text"].split()) >= 60:
                continue
            assert synthetic.strip_style(ex, i) == cand["text"].replace("\n", " ")  # two models join with newlines
            checked += 1
    assert checked > 200
    # off-topic candidates keep their own topics
    off = [(ex, i) for ex in examples for i, k in enumerate(ex.kinds) if k == "off_topic" and ex.task == "define"]
    assert off and all(ex.topics_of(i)[0] in synthetic.strip_style(ex, i) for ex, i in off)


def test_facts_file_round_trip_and_mismatch(tmp_path):
    examples = synthetic.make_examples(5, 4, seed=1, config=_study_config(), id_prefix="synthetic/test")
    path = tmp_path / "test.facts.jsonl"
    assert synthetic_facts.facts_path(tmp_path / "test.jsonl") == str(path)
    assert synthetic_facts.write_facts(path, examples) == 5
    facts = synthetic_facts.read_facts(path)
    assert [synthetic_facts.attach_facts(ex.record, facts[ex.record["id"]]) for ex in examples] == examples
    with pytest.raises(ValueError, match="belongs to another data set"):
        synthetic_facts.attach_facts(examples[0].record, facts[examples[1].record["id"]])
    lines = path.read_text().splitlines()
    path.write_text(lines[0] + "\n" + lines[1].replace('"task": "', '"task": "x') + "\n")
    with pytest.raises(ValueError, match=r"test.facts.jsonl:2: field 'task'"):
        synthetic_facts.read_facts(path)


def _facts_line(topic: str, reference: list, candidates: list[list]) -> dict:
    rows = lambda facts: [[f.subject, f.verb, f.rest] for f in facts]  # noqa: E731
    return {"topics": [topic], "reference_facts": rows(reference), "candidate_facts": [rows(c) for c in candidates]}


def test_fact_sources_split_right_facts_into_shown_other_and_no_candidate():
    world = synthetic.SyntheticConfig()
    t0, t1 = synthetic_world.TOPICS[:2]
    a, b = (synthetic_world.topic_pool(t, world) for t in (t0, t1))
    facts = {"r1": _facts_line(t0, [a[0], a[1], a[2], a[3]], [[a[0], a[5]], [a[1]], [a[2]]]),  # a[5]: a wrong fact
             "r2": _facts_line(t1, [b[0], b[1]], [[b[0]], [], []]),
             "r3": _facts_line(t1, [b[2], b[3], b[4]], [[b[2], b[3]], [b[4]], []])}
    fused = [synthetic_world.render_reference("list", (t0,), (a[0], a[1], a[2], a[4])),  # 3 right, a[4] not asked
             synthetic_world.render_reference("define", (t1,), (b[0], b[1])),
             synthetic_world.render_reference("define", (t1,), (b[2],))]
    shown = [[0, 1], [1, 2], [0]]
    found = synthetic_facts.fact_sources({"URG": fused, "Other": fused}, ["r1", "r2", "r3"], facts, world,
                                         shown={"URG": shown})
    # right facts: r1 a0, a1 (shown), a2 (candidate 2, not shown); r2 b0 (candidate 0, not shown), b1 (none);
    # r3 b2 (shown): 6 in all, 3 from shown candidates, 2 from others, 1 from none
    assert found["URG"] == {"stated": round((3 / 4 + 2 / 2 + 1 / 3) / 3, 4),
                            "shown_hold": round((2 / 4 + 0 / 2 + 2 / 3) / 3, 4),  # r1 a0, a1; r2 none; r3 b2, b3
                            "from_shown": 0.5, "from_other_candidates": round(2 / 6, 4),
                            "in_no_candidate": round(1 / 6, 4)}
    # no shown: no guess
    assert found["Other"] == {"stated": found["URG"]["stated"], "in_no_candidate": round(1 / 6, 4)}
    assert found["best candidate"] == {"stated": round((1 / 4 + 1 / 2 + 2 / 3) / 3, 4)}
    assert found["any candidate"] == {"stated": round((3 / 4 + 1 / 2 + 3 / 3) / 3, 4)}
    assert list(found) == ["best candidate", "any candidate", "URG", "Other"]
    with pytest.raises(ValueError, match=r"row 'URG', record 'r3': shown candidates \[3\] out of range"):
        synthetic_facts.fact_sources({"URG": fused}, ["r1", "r2", "r3"], facts, world, shown={"URG": [[0], [0], [3]]})
    with pytest.raises(ValueError, match="row 'URG': shown candidates for 2 records, the test set has 3"):
        synthetic_facts.fact_sources({"URG": fused}, ["r1", "r2", "r3"], facts, world, shown={"URG": shown[:2]})
    with pytest.raises(ValueError, match="row 'URG' has 2 records, the test set 3"):
        synthetic_facts.fact_sources({"URG": fused[:2]}, ["r1", "r2", "r3"], facts, world)


def test_fact_sources_count_fused_facts_that_no_candidate_states():
    from dataclasses import astuple

    from urg_ray.synthetic import SyntheticConfig
    from urg_ray.synthetic_world import TOPICS, render_reference, topic_pool
    from urg_ray.synthetic_facts import fact_sources

    world = SyntheticConfig(question_names_facts=True)
    a, b = (topic_pool(t, world) for t in TOPICS[:2])
    rows = lambda *fs: [list(astuple(f)) for f in fs]  # noqa: E731
    facts = {"q1": {"topics": [TOPICS[0]], "reference_facts": rows(a[0], a[1]),
                    "candidate_facts": [rows(a[0]), rows(a[2])]},  # one right fact; one fact not asked
             "q2": {"topics": [TOPICS[1]], "reference_facts": rows(b[0]), "candidate_facts": [[], []]}}
    fused = [render_reference("define", (TOPICS[0],), (a[0], a[1])), render_reference("define", (TOPICS[1],), (b[0],))]
    found = fact_sources({"URG": fused}, ["q1", "q2"], facts, world)
    # q1: both facts right, one of them from a candidate; q2: its one fact in no candidate
    assert found["URG"] == {"stated": 1.0, "in_no_candidate": round(2 / 3, 4)}
    assert found["best candidate"] == found["any candidate"] == {"stated": 0.25}  # (1/2 + 0) / 2
    with pytest.raises(ValueError, match="no facts for test record 'q3'"):
        fact_sources({"URG": fused + ["x"]}, ["q1", "q2", "q3"], facts, world)


def test_a_facts_file_of_another_world_is_named():
    examples = synthetic.make_examples(3, 4, seed=1, config=_study_config(), id_prefix="synthetic/test")
    facts = {ex.record["id"]: _facts_line(ex.topics[0], list(ex.reference_facts), []) for ex in examples}
    assert synthetic_facts.world_mismatch(facts, _study_config()) is None
    assert "is no fact of the synthetic world (n_topics=40, pool_size=10" in synthetic_facts.world_mismatch(facts)


# ---- question_names_facts: the question determines the reference ----------------------------------
def test_default_records_are_unchanged_by_the_question_names_facts_knob():
    # sha256 of the records and candidate facts urg_ray/synthetic.py made before the knob existed
    # (computed with that version, commit 4ed4bdc): `make run`, tiny.yaml and the study keep their data
    import hashlib
    import json

    def digest(**kw) -> str:
        made = synthetic.make_examples(40, score=False, **kw)
        return hashlib.sha256(json.dumps([(e.record, repr(e.candidate_facts)) for e in made],
                                         sort_keys=True).encode()).hexdigest()

    assert digest() == "7b4f503cce39770e6d82a741a8a3317725060058029171ecc1a886ef01f102bd"
    assert digest(n_candidates=4, seed=2, coverage=0.5, complementary=True) == (
        "8031994b5622970ae3555060c1287842598696066e8be71ecb7c5df74094da32")


def test_a_question_naming_its_facts_determines_the_reference():
    cfg = synthetic.SyntheticConfig(question_names_facts=True)
    pools = {t: synthetic_world.topic_pool(t, cfg) for t in synthetic_world.TOPICS[: cfg.n_topics]}
    examples = synthetic.make_examples(200, 3, seed=5, config=cfg, score=False)
    for ex in examples:
        asked = re.search(r"Say (.*)\.$", ex.record["instruction"]).group(1)
        facts_by_topic = {}
        for topic, verbs in re.findall(r"what the (\w+) does to ([\w ,]+?)(?=, and what|$)", asked):
            by_verb = {f.verb: f for f in pools[topic]}  # a topic's verbs are distinct
            facts_by_topic[topic] = [by_verb[v] for v in re.split(r", | and ", verbs)]
        first, *second = [facts_by_topic[t] for t in ex.topics]
        if second:  # a compare reference alternates its topics: A, B, A, ...
            first = [f for pair in zip(first, [*second[0], None]) for f in pair if f is not None]
        # the question and the world alone rebuild the reference, in its order
        assert synthetic_world.render_reference(ex.task, ex.topics, tuple(first)) == ex.record["output"]
    assert {ex.task for ex in examples} == set(synthetic_world.TASKS)


def test_named_questions_keep_the_cards_error_rates_and_a_wrong_fact_keeps_the_asked_verb():
    examples = synthetic.make_examples(300, 8, seed=6, question_names_facts=True, score=False)
    normal = [(ex, i) for ex in examples for i, k in enumerate(ex.kinds) if k == "normal"]
    wrong = [(f, ex) for ex, i in normal for f in ex.candidate_facts[i] if f not in ex.reference_facts]
    assert wrong and all(f.verb in {r.verb for r in ex.reference_facts} for f, ex in wrong)
    # the define specialist (oasst, 0.05) is right more often on define than the list one (koala, 0.40)
    def right(model: int, task: str) -> float:
        rows = [(ex, i) for ex, i in normal if i == model and ex.task == task]
        return mean(sum(f in ex.reference_facts for f in ex.candidate_facts[i]) / len(ex.reference_facts)
                    for ex, i in rows)

    assert right(0, "define") > right(1, "define") + 0.15


def test_stated_facts_reads_back_the_facts_of_a_text():
    examples = synthetic.make_examples(100, 8, seed=7, question_names_facts=True, score=False)
    pairs = [(ex, i) for ex in examples for i, k in enumerate(ex.kinds) if k == "normal"]
    assert all(synthetic_facts.stated_facts(ex.record["candidates"][i]["text"], ex.topics) == ex.candidate_facts[i]
               for ex, i in pairs)
    fact = synthetic_world.topic_pool("kiln", synthetic.SyntheticConfig())[0]
    text = f"Unlike the kiln, the harbor {fact.third_person()}. It {fact.verb} {fact.rest}x. Then zzz."
    assert synthetic_facts.stated_facts(text, ("kiln", "harbor")) == (
        synthetic_world.Fact("harbor", fact.verb, fact.rest),)


def test_question_topics_limit_what_is_asked_not_the_world():
    asked = synthetic.make_examples(300, 3, seed=4, score=False, question_names_facts=True, question_topics=[28, 40])
    assert {t for ex in asked for t in ex.topics} == set(synthetic_world.TOPICS[28:40])
    whole = synthetic.SyntheticConfig()  # every reference fact is the default world's fact about its topic
    assert all(f in synthetic_world.topic_pool(f.subject, whole) for ex in asked for f in ex.reference_facts)
    with pytest.raises(ValueError, match=r"question_topics must be \[start, stop\]"):
        synthetic.SyntheticConfig(question_topics=(39, 40))  # a compare question needs two topics
