"""Which training records each worker takes at each step: a pure function of the step.

Every epoch is a seeded shuffle of the record indices (seed and epoch number only), cut into
global batches of `world_size * batch_size`; worker `rank` takes its slice of the batch. A run
resumed at step s therefore consumes exactly the records an uninterrupted run consumes from
step s on, whatever order Ray happens to start or feed the workers in.
"""

from __future__ import annotations

import random
from functools import lru_cache


def steps_per_epoch(n_records: int, world_size: int, batch_size: int) -> int:
    """Full global batches in one pass over the records (the remainder is left out, as drop_last)."""
    return n_records // (world_size * batch_size)


@lru_cache(maxsize=2)  # the current epoch, and the previous one around an epoch boundary
def epoch_order(n_records: int, seed: int, epoch: int) -> tuple[int, ...]:
    """The record indices of `epoch`, shuffled by (seed, epoch) alone."""
    order = list(range(n_records))
    random.Random(f"urg_ray.epoch:{seed}:{epoch}").shuffle(order)  # str seeds are stable across processes
    return tuple(order)


def batch_indices(step: int, n_records: int, world_size: int, rank: int, batch_size: int, seed: int) -> list[int]:
    """Indices of the records worker `rank` trains on at global `step` (0-based)."""
    per_epoch = steps_per_epoch(n_records, world_size, batch_size)
    if per_epoch == 0:
        raise ValueError(f"{n_records} training records < one batch of {batch_size} on each of {world_size} workers")
    epoch, i = divmod(step, per_epoch)
    start = (i * world_size + rank) * batch_size
    return list(epoch_order(n_records, seed, epoch)[start:start + batch_size])
