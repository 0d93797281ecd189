"""The timing harness of jobs/benchmark.py: inputs, timed calls on a shared machine, fits.

`timed` runs each function round-robin, re-runs calls that other processes disturbed (measured
from /proc on Linux) and reports min and median; `slope` fits log(time) on log(N).
"""

from __future__ import annotations

import math
import os
import statistics
import time
from pathlib import Path
from typing import Callable


# ---- inputs -------------------------------------------------------------------------------
def make_inputs(batch_size: int, n: int, seed: int) -> tuple[list[str], list[list[str]]]:
    """B synthetic MixInstruct questions with N candidates each. The generator has 12 models, so
    for N > 12 a question also gets candidates of other questions (real-looking text all the same)."""
    from urg_ray.data import join_question
    from urg_ray.synthetic import make_dataset

    records = make_dataset(batch_size, n_candidates=12, seed=seed)
    extra = [c["text"] for r in make_dataset(max(1, math.ceil(batch_size * max(0, n - 12) / 12)), 12, seed=seed + 1)
             for c in r["candidates"]]
    questions = [join_question(r["instruction"], r["input"]) for r in records]
    candidates = []
    for b, r in enumerate(records):
        own = [c["text"] for c in r["candidates"]]
        candidates.append((own + [extra[(b * max(0, n - 12) + i) % len(extra)] for i in range(max(0, n - 12))])[:n])
    return questions, candidates


# ---- timing -------------------------------------------------------------------------------
class OtherLoad:
    """CPU that other processes used while we ran, as a share of the machine (Linux /proc; None
    elsewhere). On a shared machine a timing taken while others ran is not a timing of ours."""

    def __init__(self):
        self.ncpu = os.cpu_count() or 1
        self.tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self.available = Path("/proc/stat").is_file() and Path("/proc/self/stat").is_file()

    def _read(self) -> tuple[int, int]:
        busy = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        own = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        return sum(busy) - busy[3] - busy[4], int(own[11]) + int(own[12])  # non-idle; our utime + stime

    def start(self) -> None:
        self.begin = self._read() if self.available else None

    def share(self, seconds: float) -> float | None:
        if self.begin is None or seconds < 0.2:  # ticks are 10 ms: too coarse for short calls
            return None
        busy, own = self._read()
        return max(0.0, (busy - self.begin[0]) - (own - self.begin[1])) / (seconds * self.tick * self.ncpu)


def timed(fns: dict[str, Callable[[], object]], repeats: int, budget_s: float, warmup: dict[str, bool],
          sync: Callable[[], None], max_other_load: float = 0.15, retries: int = 3) -> dict[str, dict]:
    """Time each of `fns` under no_grad: optional warm-up calls, then up to `repeats` rounds in
    which every function runs once (round-robin, so load from other processes hits all alike); a
    function stops repeating once its calls pass `budget_s` (it always gets one). A call during
    which other processes used more than `max_other_load` of the machine is disturbed: it is
    re-run up to `retries` times per function (kept, and counted, if it stays disturbed).
    Reports every wall time, the min (the headline: the least disturbed) and the median."""
    import torch

    monitor = OtherLoad()
    times: dict[str, list[float]] = {name: [] for name in fns}
    loads: dict[str, list[float | None]] = {name: [] for name in fns}
    disturbed = dict.fromkeys(fns, 0)
    with torch.no_grad():
        for name, fn in fns.items():
            if warmup[name]:
                fn()
                sync()
        for _ in range(repeats + retries):
            for name, fn in fns.items():
                done = times[name]
                clean = [t for t, load in zip(done, loads[name]) if load is None or load <= max_other_load]
                if len(clean) >= repeats or (clean and sum(done) + done[-1] > budget_s) or \
                        (done and not clean and disturbed[name] > retries):
                    continue
                monitor.start()
                start = time.perf_counter()
                fn()
                sync()
                done.append(time.perf_counter() - start)
                loads[name].append(monitor.share(done[-1]))
                if loads[name][-1] is not None and loads[name][-1] > max_other_load:
                    disturbed[name] += 1
                    time.sleep(min(5.0, done[-1]))  # let the other process get on with it
    report = {}
    for name in fns:
        runs = list(zip(times[name], loads[name]))
        kept = [r for r in runs if r[1] is None or r[1] <= max_other_load] or runs
        best = min(kept)
        report[name] = {"times_s": [round(t, 5) for t in times[name]], "min_s": best[0],
                        "median_s": statistics.median(t for t, _ in kept),
                        "other_load_at_min": None if best[1] is None else round(best[1], 3),
                        "disturbed_runs": disturbed[name], "warmup": warmup[name]}
    return report


def slope(ns: list[int], seconds: list[float]) -> float:
    """Least-squares slope of log(time) on log(N)."""
    xs, ys = [math.log(n) for n in ns], [math.log(s) for s in seconds]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)


def matmul_tflops(device, dtype, sync) -> float:
    """This machine's dense peak for reference: a 2048x2048 matmul, best of 3 rounds of 5."""
    import torch

    a = torch.randn(2048, 2048, device=device, dtype=dtype)
    a @ a
    sync()
    best, reps = float("inf"), 5
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(reps):
            a @ a
        sync()
        best = min(best, time.perf_counter() - start)
    return 2 * 2048 ** 3 * reps / best / 1e12


# ---- achieved FLOP/s ----------------------------------------------------------------------
def t5_rank_flops(config, pair_lengths: list[list[int]]) -> float:
    """FLOPs (2 per multiply-add) of URG.rank on a T5: every pair through the encoder at its own
    length, then one decoder step per question whose cross-attention reads all its pairs' states.
    `pair_lengths[b]` holds question b's pair lengths in tokens (padding not counted: it is waste,
    not work). Norms, softmax and the ranking head's averages are left out (a few % at most)."""
    d, inner, d_ff = config.d_model, config.num_heads * config.d_kv, config.d_ff
    ffn = (3 if config.is_gated_act else 2) * d * d_ff  # multiply-adds per token: wi(_0, _1), wo
    encoder = sum(config.num_layers * (length * (4 * d * inner + ffn) + 2 * length ** 2 * inner)
                  for lengths in pair_lengths for length in lengths)
    decoder = 0
    for lengths in pair_lengths:
        states = sum(lengths)  # one query token; k, v of every pair's states
        decoder += config.num_decoder_layers * (4 * d * inner + 2 * d * inner + 2 * states * d * inner
                                                + 2 * states * inner + ffn)
    return 2.0 * (encoder + decoder)


def profile_table(fn: Callable[[], object], top: int = 15) -> list[dict]:
    """One call of `fn` under torch.profiler: the ops taking the most self CPU time."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    with torch.no_grad(), profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events) or 1
    return [{"op": e.key, "calls": e.count, "self_s": round(e.self_cpu_time_total / 1e6, 3),
             "share": round(e.self_cpu_time_total / total, 4)} for e in events[:top]]
