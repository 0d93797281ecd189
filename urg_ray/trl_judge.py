"""URG as a TRL judge (`pip install urg_ray[trl]`): rank or pick completions for RLHF/DPO data.

    from urg_ray import URG
    from urg_ray.trl_judge import URGRankJudge, URGPairwiseJudge
    judge = URGRankJudge(URG.from_pretrained("my-urg"))
    judge.judge(["The capital of France is"], [[" Paris", " Marseille", " Lyon"]])  # [[0, 2, 1]]

`URGRankJudge` is TRL's `BaseRankJudge`: per prompt, the rank of each completion (0 = best),
as TRL's example and LLM-Blender's `rank` (1-based there) give them. `URGPairwiseJudge` is
`BasePairwiseJudge` (what online DPO takes): per prompt, the index of the better of two.
`shuffle_order` permutes the completions before ranking and maps the answer back, as TRL's
judges do; URG encodes every completion on its own, so its scores do not depend on the order.
"""

from __future__ import annotations

import random
from typing import Sequence

try:  # TRL >= 1.0 keeps judges in trl.experimental
    from trl.experimental.judges import BasePairwiseJudge, BaseRankJudge
except ImportError:
    try:
        from trl import BasePairwiseJudge, BaseRankJudge
    except ImportError as err:
        raise ImportError("urg_ray.trl_judge needs TRL: pip install 'urg_ray[trl]'") from err

from urg_ray.model import URG


def completion_ranks(urg: URG, prompts: Sequence[str], completions: Sequence[Sequence[str]],
                     shuffle_order: bool = True, rng: random.Random | None = None) -> list[list[int]]:
    """Per prompt, the rank of each completion by URG's eq. 6 score (0 = best), in the given order."""
    if len(prompts) != len(completions):
        raise ValueError(f"{len(prompts)} prompts but {len(completions)} lists of completions")
    rng = rng or random.Random()
    orders = [rng.sample(range(len(c)), len(c)) if shuffle_order else list(range(len(c))) for c in completions]
    shown = [[c[i] for i in order] for c, order in zip(completions, orders)]
    ranks = []
    for order, best_first in zip(orders, urg.rank(list(prompts), shown).ranks):
        rank = [0] * len(order)
        for position, shown_index in enumerate(best_first):
            rank[order[shown_index]] = position
        ranks.append(rank)
    return ranks


class URGRankJudge(BaseRankJudge):
    def __init__(self, urg: URG):
        self.urg = urg.eval()

    def judge(self, prompts: list[str], completions: list[list[str]], shuffle_order: bool = True) -> list[list[int]]:
        return completion_ranks(self.urg, prompts, completions, shuffle_order)


class URGPairwiseJudge(BasePairwiseJudge):
    def __init__(self, urg: URG):
        self.urg = urg.eval()

    def judge(self, prompts: list[str], completions: list[list[str]], shuffle_order: bool = True) -> list[int]:
        if any(len(pair) != 2 for pair in completions):
            raise ValueError("a pairwise judge takes exactly 2 completions per prompt")
        return [rank.index(0) for rank in completion_ranks(self.urg, prompts, completions, shuffle_order)]
