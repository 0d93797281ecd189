"""A saved model evaluated on several devices: one copy per Ray actor, each call split across them.

    model = ShardedModel("outputs/train/model", shards=8, device="cuda", dtype="bfloat16")
    model.rank(questions, candidates)           # as the model's own, questions split in contiguous parts

`rank`, `rank_and_fuse` and `fuse` return what the model's own methods return, in input order, so
evaluation code takes a `ShardedModel` where it takes a model (jobs/evaluate.py `--shards`).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch


class _Shard:
    """One model copy (a Ray actor): loads the folder, answers method calls on its part."""

    def __init__(self, path: str, device: str, dtype: str):
        from urg_ray.protocol import load_model

        self.model = load_model(path).to(device=device, dtype=getattr(torch, dtype)).eval()

    def describe(self) -> dict[str, Any]:
        return {"config": self.model.config, "can_rank": self.model.can_rank, "can_fuse": self.model.can_fuse}

    def call(self, method: str, questions: list[str], candidates: list[list[str]], kwargs: dict) -> Any:
        out = getattr(self.model, method)(questions, candidates, **kwargs)
        if method == "rank":  # scores back on the CPU in float32, whatever the shard ran in
            out.scores = out.scores.float().cpu()
        return out


class ShardedModel:
    """`shards` Ray actors holding the model at `path`; each asks Ray for `gpus_per_shard` GPUs
    (default: 1 on cuda, 0 on cpu)."""

    def __init__(self, path: str, shards: int, device: str = "cpu", dtype: str = "float32",
                 gpus_per_shard: float | None = None, cpus_per_shard: float = 1):
        import ray

        if shards < 1:
            raise ValueError(f"shards must be >= 1, got {shards}")
        gpus = (1 if device.startswith("cuda") else 0) if gpus_per_shard is None else gpus_per_shard
        actor = ray.remote(num_gpus=gpus, num_cpus=cpus_per_shard)(_Shard)
        self.actors = [actor.remote(path, device, dtype) for _ in range(shards)]
        info = ray.get(self.actors[0].describe.remote())
        self.config, self.can_rank, self.can_fuse = info["config"], info["can_rank"], info["can_fuse"]

    def _map(self, method: str, questions: Sequence[str], candidates: Sequence[Sequence[str]], **kwargs) -> list:
        """The per-shard results of `method` on contiguous parts of the batch (empty parts skipped)."""
        import ray

        n, k = len(questions), len(self.actors)
        bounds = [(i * n // k, (i + 1) * n // k) for i in range(k)]
        calls = [actor.call.remote(method, list(questions[a:b]), [list(c) for c in candidates[a:b]], kwargs)
                 for actor, (a, b) in zip(self.actors, bounds) if b > a]
        return ray.get(calls)

    def rank(self, questions: Sequence[str], candidates: Sequence[Sequence[str]]):
        from urg_ray.model import RankResult

        parts = self._map("rank", questions, candidates)
        width = max(p.scores.shape[1] for p in parts)  # each part is padded to its own longest list
        scores = torch.cat([torch.nn.functional.pad(p.scores, (0, width - p.scores.shape[1]), value=float("-inf"))
                            for p in parts])
        return RankResult(scores, [r for p in parts for r in p.ranks])

    def rank_and_fuse(self, questions: Sequence[str], candidates: Sequence[Sequence[str]], **kwargs) -> list:
        return [r for part in self._map("rank_and_fuse", questions, candidates, **kwargs) for r in part]

    def fuse(self, questions: Sequence[str], candidates: Sequence[Sequence[str]], **kwargs) -> list[str]:
        return [t for part in self._map("fuse", questions, candidates, **kwargs) for t in part]
