"""The URG ranker-fuser deployment: one model per replica, requests batched with `@serve.batch`.

Every answer comes from `URG.rank_and_fuse`; this module only loads the model, groups the
batched requests that share generation settings, and runs the model off the event loop so the
next batch forms while this one computes.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from ray import serve

log = logging.getLogger("ray.serve")


@dataclass(frozen=True)
class FuseItem:
    question: str
    candidates: tuple[str, ...]
    top_k: int
    max_new_tokens: int


@serve.deployment(ray_actor_options={"num_cpus": 0.5}, max_ongoing_requests=64, health_check_period_s=5)
class URGRankerFuser:
    def __init__(self, model: str, fallback_preset: str | None = "tiny", dtype: str = "float32",
                 max_batch_size: int = 8, batch_wait_timeout_s: float = 0.01, num_threads: int | None = None):
        import torch

        from urg_ray import URG
        from urg_ray.model import describe
        from urg_ray.serving import resolve_urg_source

        if num_threads:
            torch.set_num_threads(num_threads)
        self.source = resolve_urg_source(model, fallback_preset)
        self.urg = URG.from_pretrained(self.source, dtype=getattr(torch, dtype))
        if torch.cuda.is_available():
            self.urg = self.urg.cuda()
        self.default_top_k = self.urg.config.top_k
        self._fuse_batch.set_max_batch_size(max_batch_size)
        self._fuse_batch.set_batch_wait_timeout_s(batch_wait_timeout_s)
        self.description = f"{self.source} ({describe(self.urg)})"
        log.info("URG ranker-fuser ready: %s", self.description)

    def info(self) -> dict[str, Any]:
        return {"source": self.source, "description": self.description, "top_k": self.default_top_k}

    async def rank_and_fuse(self, question: str, candidates: list[str], top_k: int | None = None,
                            max_new_tokens: int = 64) -> dict[str, Any]:
        """One question: {text, ranks, scores, selected, note}, batched with concurrent calls."""
        item = FuseItem(question, tuple(candidates), top_k or self.default_top_k, max_new_tokens)
        return await self._fuse_batch(item)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
    async def _fuse_batch(self, items: list[FuseItem]) -> list[dict[str, Any]]:
        results: list[dict[str, Any] | None] = [None] * len(items)
        groups: dict[tuple[int, int], list[int]] = {}
        for i, item in enumerate(items):  # one generate() call per (top_k, max_new_tokens)
            groups.setdefault((item.top_k, item.max_new_tokens), []).append(i)
        for (top_k, max_new_tokens), members in groups.items():
            fused = await asyncio.to_thread(
                self.urg.rank_and_fuse, [items[i].question for i in members],
                [list(items[i].candidates) for i in members], top_k=top_k, max_new_tokens=max_new_tokens,
                empty_fallback=True)
            for i, result in zip(members, fused):
                results[i] = {"text": result.text, "ranks": result.ranks, "scores": result.scores,
                              "selected": result.selected, "note": result.note}
        return results  # type: ignore[return-value]

    def check_health(self) -> None:
        if getattr(self, "urg", None) is None:
            raise RuntimeError("URG model not loaded")
