"""The ensemble's Prometheus metrics, through `ray.serve.metrics` (Ray exports them with a `ray_`
prefix, each tagged with the deployment, replica and application). README: a query for each."""

from __future__ import annotations

from typing import Any

from ray.serve import metrics

LATENCY_BUCKETS_S = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60]
FALLBACK_NOTE = "the top-ranked candidate is returned"  # URG.rank_and_fuse(empty_fallback=True)'s note


class EnsembleMetrics:
    def __init__(self):
        self.latency = metrics.Histogram("urg_candidate_latency_s", "Seconds a candidate took to answer (or fail).",
                                         boundaries=LATENCY_BUCKETS_S, tag_keys=("model",))
        self.drops = metrics.Counter("urg_candidate_drops", "Candidates dropped from an answer, by reason "
                                     "(timeout, error, empty).", tag_keys=("model", "reason"))
        self.rank1 = metrics.Counter("urg_rank1_selections", "Answers whose top-ranked candidate was this model.",
                                     tag_keys=("model",))
        self.fallbacks = metrics.Counter("urg_fallbacks", "Answers where the fused text was blank and the "
                                         "top-ranked candidate was returned instead.")
        self.fused_tokens = metrics.Counter("urg_fused_tokens", "Tokens of fused answers (rate: fused tokens/s).")
        self.rejections = metrics.Counter("urg_rejections", "Requests answered 429, by reason.", tag_keys=("reason",))

    def candidate(self, model: str, latency_s: float, drop_reason: str | None) -> None:
        self.latency.observe(latency_s, tags={"model": model})
        if drop_reason:
            self.drops.inc(tags={"model": model, "reason": drop_reason})

    def fused(self, fused: dict[str, Any], models: list[str]) -> None:
        self.rank1.inc(tags={"model": models[fused["ranks"][0]]})
        if fused["note"] and FALLBACK_NOTE in fused["note"]:
            self.fallbacks.inc()
        if fused["completion_tokens"]:
            self.fused_tokens.inc(fused["completion_tokens"])

    def rejected(self, reason: str) -> None:
        self.rejections.inc(tags={"reason": reason})
