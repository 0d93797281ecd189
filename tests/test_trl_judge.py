"""URG as TRL's rank and pairwise judges (urg_ray/trl_judge.py, the `trl` extra)."""

import random

import pytest

pytest.importorskip("trl", reason="TRL is an optional extra: pip install 'urg_ray[trl]' (trl<1.1 has the judges)")
from urg_ray.trl_judge import URGPairwiseJudge, URGRankJudge, completion_ranks  # noqa: E402

PROMPTS = ["The capital of France is", "The capital of Germany is"]
COMPLETIONS = [[" Paris", " Marseille, a port in the south", " Lyon"], [" Munich", " Berlin, on the Spree"]]


def expected_ranks(urg, prompts, completions):
    """Rank of each completion (0 = best), from URG.rank's scores computed here."""
    scores = urg.rank(prompts, completions).scores
    return [[sorted(range(len(c)), key=lambda j: -scores[b, j].item()).index(i) for i in range(len(c))]
            for b, c in enumerate(completions)]


def test_rank_judge_gives_each_completions_rank_in_the_given_order(tiny):
    expected = expected_ranks(tiny, PROMPTS, COMPLETIONS)
    judge = URGRankJudge(tiny)
    assert judge.judge(PROMPTS, COMPLETIONS, shuffle_order=False) == expected
    # Shuffled before ranking and mapped back: the same answer (URG encodes each completion alone).
    for seed in range(3):
        assert completion_ranks(tiny, PROMPTS, COMPLETIONS, True, random.Random(seed)) == expected


def test_pairwise_judge_picks_the_better_of_two(tiny):
    pairs = [c[:2] for c in COMPLETIONS]
    better = [0 if a else 1 for a in tiny.compare(PROMPTS, [p[0] for p in pairs], [p[1] for p in pairs])]
    assert URGPairwiseJudge(tiny).judge(PROMPTS, pairs) == better
    with pytest.raises(ValueError, match="exactly 2"):
        URGPairwiseJudge(tiny).judge(PROMPTS[:1], [COMPLETIONS[0]])
