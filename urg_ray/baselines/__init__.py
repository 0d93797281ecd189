"""The peers URG is measured against (LLM-Blender, Jiang et al. 2023), with URG's API.

    from urg_ray.baselines import PairRanker, SummaReranker, SimCLS, GenFuser
    ranker = PairRanker.from_pretrained("tiny")          # preset or save_pretrained() folder
    r = ranker.rank(questions, candidates)               # like URG.rank: scores (B, N_max), ranks
    fuser = GenFuser.from_pretrained("tiny")
    outs = rank_and_fuse(ranker, fuser, questions, candidates, top_k=3)   # like URG.rank_and_fuse

Each follows URG's protocol (urg_ray/protocol.py), so one training loop and one evaluation
serve all: `out = model(model.collator(records), gamma=...)`, `out.loss`.
"""

from urg_ray.baselines.aggregation import bubble_pass, bubble_scores, max_logits, max_wins
from urg_ray.baselines.genfuser import GenFuser, fusion_input, rank_and_fuse
from urg_ray.baselines.presets import RANKER_PRESETS, BaselineConfig
from urg_ray.baselines.rankers import PairRanker, SimCLS, SummaReranker

BASELINES = {cls.method: cls for cls in (PairRanker, SummaReranker, SimCLS, GenFuser)}

__all__ = ["BASELINES", "build", "RANKER_PRESETS", "BaselineConfig", "GenFuser", "PairRanker", "SimCLS",
           "SummaReranker", "bubble_pass", "bubble_scores", "fusion_input", "max_logits", "max_wins", "rank_and_fuse"]



def build(method: str, preset: str, **overrides):
    """The baseline `method` (pair_ranker, summa_reranker, simcls, gen_fuser) from a preset or
    folder; `overrides` set BaselineConfig fields."""
    if method not in BASELINES:
        raise ValueError(f"unknown baseline {method!r}; known: {', '.join(BASELINES)}")
    return BASELINES[method].from_pretrained(preset, **overrides)
