"""What training and evaluation call on a model, the same for URG and every baseline.

    model = model_class(method).from_pretrained(preset, **overrides)   # or load_model(folder)
    out = model(model.collator(records), gamma=...)                    # out.loss, out.<log_terms>
    model.rank(questions, candidates)          # if model.can_rank: RankResult (scores, ranks)
    model.fuse(questions, candidates)          # if model.can_fuse: the given candidates, fused
    model.dev_metrics(records, score_keys)     # dev_spearman, dev_top1_quality, dev_fused_bleu
    model.save_pretrained(folder)

A model declares what it can do (`can_rank`, `can_fuse`), the dev metric that picks its best
checkpoint (`checkpoint_metric`) and the loss terms the training log shows (`log_terms`);
`rank` / `fuse` of a model that cannot raise.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Sequence

import torch
from torch import nn

from urg_ray import metrics
from urg_ray.collate import Collator
from urg_ray.data import Record, quality
from urg_ray.saving import Pretrained

if TYPE_CHECKING:
    from urg_ray.config import LossConfig
    from urg_ray.model import RankResult


class RankerFuser(Pretrained, nn.Module):
    """The protocol. Subclasses: urg_ray.model.URG and urg_ray.baselines' PairRanker,
    SummaReranker, SimCLS (rankers) and GenFuser (a fuser)."""

    method: ClassVar[str]  # JobConfig.method
    can_rank: ClassVar[bool] = False
    can_fuse: ClassVar[bool] = False
    checkpoint_metric: ClassVar[str]  # the default of train.checkpoint_metric
    log_terms: ClassVar[tuple[str, ...]] = ()  # forward-output fields logged beside `loss`
    uses_gamma: ClassVar[bool] = False  # forward's gamma weighs a ranking loss (URG's eq. 11)
    collator: Collator

    def forward(self, batch, gamma: float | None = None):
        """Training losses of a collated batch: an output with `.loss` and the `log_terms`."""
        raise NotImplementedError

    def configure_loss(self, loss: LossConfig) -> None:
        """Take the job's loss section (URG's eq. 7-11); the baselines' losses have no knobs there."""

    def rank(self, questions: Sequence[str], candidates: Sequence[Sequence[str]]) -> RankResult:
        raise NotImplementedError(f"{type(self).__name__} does not rank")

    def fuse(self, questions: Sequence[str], candidates: Sequence[Sequence[str]], max_new_tokens: int = 128,
             **generate_kwargs) -> list[str]:
        raise NotImplementedError(f"{type(self).__name__} does not fuse")

    @classmethod
    def dev_metric_names(cls) -> tuple[str, ...]:
        return (("dev_spearman", "dev_top1_quality") if cls.can_rank else ()) + (
            ("dev_fused_bleu",) if cls.can_fuse else ())

    def dev_fuse(self, questions: list[str], candidates: list[list[str]], truths: list[list[float]],
                 max_new_tokens: int) -> list[str]:
        """Fused answers scored on dev. Here: of the true top-k (a fuser without a ranker, as
        LLM-Blender trains GenFuser); URG fuses its own top-k."""
        best = [sorted(range(len(t)), key=lambda i: -t[i])[: self.config.top_k] for t in truths]
        return self.fuse(questions, [[c[i] for i in b] for c, b in zip(candidates, best)],
                         max_new_tokens=max_new_tokens)

    @torch.no_grad()
    def dev_metrics(self, records: Sequence[Record], score_keys: Sequence[str], batch_size: int = 32,
                    fuse_records: int = 0) -> dict[str, float]:
        """Rank correlation with the ground truth and quality of the top-1 pick (if it ranks),
        BLEU of the fused answers of the first `fuse_records` records (if it fuses)."""
        was_training = self.training
        self.eval()
        spearman, top1, oracle, fused, refs = [], [], [], [], []
        for start in range(0, len(records), batch_size):
            chunk = records[start:start + batch_size]
            questions, candidates = [r.question for r in chunk], [[c.text for c in r.candidates] for r in chunk]
            truths = [quality(r, score_keys)[1] for r in chunk]
            oracle += [max(t) for t in truths]
            if self.can_rank:
                ranked = self.rank(questions, candidates)
                for truth, ranks, scores in zip(truths, ranked.ranks, ranked.scores):
                    if len(truth) > 1:
                        spearman.append(metrics.spearman(scores[: len(truth)].tolist(), truth))
                    top1.append(truth[ranks[0]])
            n = max(0, min(len(chunk), fuse_records - start))
            if n and self.can_fuse:
                fused += self.dev_fuse(questions[:n], candidates[:n], truths[:n], self.config.target_max_length)
                refs += [r.output for r in chunk[:n]]
        self.train(was_training)
        out = {"dev_spearman": mean(spearman), "dev_top1_quality": mean(top1), "dev_oracle_quality": mean(oracle)}
        if fused:
            out["dev_fused_bleu"] = mean(metrics.bleu(fused, refs))
        return out

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def mean(values: Sequence[float]) -> float:
    """Mean of the values that are not NaN (NaN when none is)."""
    values = [v for v in values if not math.isnan(v)]
    return sum(values) / len(values) if values else float("nan")


def model_classes() -> dict[str, type[RankerFuser]]:
    """JobConfig.method -> class."""
    from urg_ray.baselines import BASELINES
    from urg_ray.model import URG

    return {URG.method: URG, **BASELINES}


def model_class(method: str) -> type[RankerFuser]:
    classes = model_classes()
    if method not in classes:
        raise ValueError(f"unknown method {method!r}; known: {', '.join(classes)}")
    return classes[method]


def load_model(path: str | Path) -> RankerFuser:
    """URG or a baseline from a `save_pretrained` folder, by the config file it holds."""
    from urg_ray.baselines.presets import BASELINE_CONFIG_FILE

    baseline_config = Path(path) / BASELINE_CONFIG_FILE
    method = json.loads(baseline_config.read_text())["method"] if baseline_config.is_file() else "urg"
    return model_class(method).from_pretrained(path)
