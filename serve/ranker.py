"""The URG ranker-fuser deployment: one model per replica, requests batched with `@serve.batch`.

Every answer comes from `URG.rank_and_fuse` (`URG.rank` for the ranking endpoints; `URG.stream_fuse`,
unbatched, for streamed chat answers); this module only loads the model, groups the batched
requests that share generation settings, and runs the model off the event loop so the next batch
forms while this one computes. A batch that fails is retried item by item, so one bad request
fails alone (`fuse_each`). A request that finds the model idle starts at once; the batch wait
applies only while a batch runs (`BusyBatchWait`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable, Hashable, Iterator, Sequence, TypeVar

from ray import serve

log = logging.getLogger("ray.serve")
Item = TypeVar("Item")


class FusionFailed(RuntimeError):
    """This request alone failed in the ranker-fuser (its batch-mates were answered)."""


@dataclass(frozen=True)
class FuseItem:
    question: str
    candidates: tuple[str, ...]
    top_k: int
    max_new_tokens: int
    stop: tuple[str, ...] = ()

    def group(self) -> tuple[int, int]:
        """Items answered by one `rank_and_fuse` call share these generation settings."""
        return self.top_k, self.max_new_tokens


async def fuse_each(run: Callable[[list[Item]], Awaitable[list[Any]]], items: Sequence[Item],
                    group: Callable[[Item], Hashable]) -> list[Any]:
    """`run` once per group of items with the same settings; a group that raises is run again
    item by item, so only the item that fails gets its exception (returned in its place)."""
    results: list[Any] = [None] * len(items)
    groups: dict[Hashable, list[int]] = {}
    for i, item in enumerate(items):
        groups.setdefault(group(item), []).append(i)
    for members in groups.values():
        try:
            for i, result in zip(members, await run([items[i] for i in members]), strict=True):
                results[i] = result
            continue
        except Exception:  # noqa: BLE001 - isolated below
            if len(members) == 1:
                log.exception("ranker-fuser failed on one request")
                results[members[0]] = FusionFailed("the ranker-fuser failed on this request")
                continue
            log.warning("a batch of %d failed; retrying its requests one by one", len(members))
        for i in members:
            try:
                (results[i],) = await run([items[i]])
            except Exception:  # noqa: BLE001 - this item alone
                log.exception("ranker-fuser failed on one request")
                results[i] = FusionFailed("the ranker-fuser failed on this request")
    return results


class BusyBatchWait:
    """`@serve.batch`'s `batch_wait_timeout_s`, in force only while a batch runs.

    Serve waits that long after a batch's first request for others to join. On an idle model the
    wait is pure latency for a lone request; while a batch runs, the next one cannot start before
    it ends anyway, so waiting fills it for free, as long as the wait is shorter than a batch (Serve
    reads the wait once, when a batch's first request arrives). `running()` wraps each batch; `batchers` are the
    `@serve.batch` methods sharing the model (anything with `set_batch_wait_timeout_s`).
    """

    def __init__(self, wait_s: float, batchers: Sequence[Any]):
        self.wait_s, self.batchers, self.running_batches = wait_s, tuple(batchers), 0
        self._set(0.0)

    def _set(self, wait_s: float) -> None:
        for batcher in self.batchers:
            batcher.set_batch_wait_timeout_s(wait_s)

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        self.running_batches += 1
        self._set(self.wait_s)
        try:
            yield
        finally:
            self.running_batches -= 1
            if not self.running_batches:
                self._set(0.0)


@serve.deployment(ray_actor_options={"num_cpus": 0.5}, max_ongoing_requests=64, health_check_period_s=5)
class URGRankerFuser:
    def __init__(self, model: str, fallback_preset: str | None = "tiny", dtype: str = "float32",
                 max_batch_size: int = 8, batch_wait_timeout_s: float = 0.01, num_threads: int | None = None):
        import torch

        from urg_ray import URG
        from urg_ray.model import describe
        from urg_ray.presets import resolve_urg_source

        if num_threads:
            torch.set_num_threads(num_threads)
        source = resolve_urg_source(model, fallback_preset)
        self.urg = URG.from_pretrained(source, dtype=getattr(torch, dtype))
        if torch.cuda.is_available():
            self.urg = self.urg.cuda()
        self.trained = Path(source).is_dir()  # a save_pretrained folder; a preset name is untrained weights
        self.default_top_k = self.urg.config.top_k
        self._fuse_batch.set_max_batch_size(max_batch_size)
        self._rank_batch.set_max_batch_size(max_batch_size)
        self.batch_wait = BusyBatchWait(batch_wait_timeout_s, (self._fuse_batch, self._rank_batch))
        self.streamed_tokens, self._streamed_tokens_lock = 0, threading.Lock()
        log.info("URG ranker-fuser ready: %s (%s)%s", source, describe(self.urg),
                 "" if self.trained else "; UNTRAINED weights (a preset, not a checkpoint)")

    def info(self) -> dict[str, Any]:
        """What the ingress reports in /healthz: no paths."""
        return {"trained": self.trained, "top_k": self.default_top_k}

    def generation(self) -> dict[str, int]:
        """Streamed answers on this replica: generation threads `running` now (named
        urg_ray.streaming.STREAM_THREAD) and the tokens all of them `generated`, cancelled ones
        included. How a test sees that a client going away stops its answer's generation."""
        from urg_ray.streaming import STREAM_THREAD  # torch: not in the ingress

        running = sum(thread.name == STREAM_THREAD for thread in threading.enumerate())
        return {"running": running, "generated": self.streamed_tokens}

    def _count_token(self, input_ids: Any, scores: Any, **kwargs: Any) -> bool:
        """A stopping criterion of streamed generation that never stops it: called once per token."""
        with self._streamed_tokens_lock:
            self.streamed_tokens += 1
        return False

    async def rank_and_fuse(self, question: str, candidates: list[str], top_k: int | None = None,
                            max_new_tokens: int = 64, stop: list[str] | None = None) -> dict[str, Any]:
        """One question: {text, ranks, scores, selected, note, prompt_tokens, completion_tokens},
        batched with concurrent calls. Raises FusionFailed when this request alone failed."""
        item = FuseItem(question, tuple(candidates), top_k or self.default_top_k, max_new_tokens, tuple(stop or ()))
        result = await self._fuse_batch(item)
        if isinstance(result, Exception):
            raise result
        return result

    async def stream_fuse(self, question: str, candidates: list[str], top_k: int | None = None,
                          max_new_tokens: int = 64, stop: list[str] | None = None) -> AsyncIterator[dict[str, Any]]:
        """One question's fused answer as URG decodes it (call through `handle.options(stream=True)`),
        not batched: {"type": "ranked"} once ranked, {"type": "piece", "text"} per piece, then
        {"type": "done", ...rank_and_fuse's answer, tokens_at_first_piece}. The pieces join to the
        text rank_and_fuse answers; a failure raises FusionFailed."""
        try:
            stream = await asyncio.to_thread(self.urg.stream_fuse, question, candidates, top_k or self.default_top_k,
                                             max_new_tokens, stop or (), empty_fallback=True,
                                             stopping_criteria=[self._count_token])
        except Exception:  # noqa: BLE001 - this request alone
            log.exception("ranker-fuser failed to rank one streamed request")
            raise FusionFailed("the ranker-fuser failed on this request") from None
        pieces = iter(stream)
        try:
            yield {"type": "ranked"}
            while (piece := await asyncio.to_thread(next, pieces, None)) is not None:
                yield {"type": "piece", "text": piece}
        except Exception:  # noqa: BLE001
            log.exception("ranker-fuser failed while streaming one request")
            raise FusionFailed("the ranker-fuser failed on this request") from None
        finally:
            stream.close()  # a cancelled request (client gone) stops generating
        result = stream.result
        [prompt] = self._prompt_tokens([question], [candidates])
        yield {"type": "done", "text": result.text, "ranks": result.ranks, "scores": result.scores,
               "selected": result.selected, "note": result.note, "prompt_tokens": prompt,
               "completion_tokens": len(self.urg.tokenizer(result.text, add_special_tokens=False).input_ids),
               "generated_tokens": stream.generated_tokens, "tokens_at_first_piece": stream.tokens_at_first_piece}

    async def rank(self, question: str, candidates: list[str]) -> dict[str, Any]:
        """One question's ranking, batched with concurrent calls (no generation):
        {scores (eq. 6, candidate order), ranks (best first), prompt_tokens}."""
        result = await self._rank_batch((question, tuple(candidates)))
        if isinstance(result, Exception):
            raise result
        return result

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
    async def _rank_batch(self, items: list[tuple[str, tuple[str, ...]]]) -> list[dict[str, Any] | Exception]:
        with self.batch_wait.running():
            return await fuse_each(lambda batch: asyncio.to_thread(self._rank, batch), items, lambda item: None)

    def _rank(self, items: list[tuple[str, tuple[str, ...]]]) -> list[dict[str, Any]]:
        questions, candidates = [q for q, _ in items], [list(c) for _, c in items]
        ranked = self.urg.rank(questions, candidates)
        prompt_tokens = self._prompt_tokens(questions, candidates)
        return [{"scores": ranked.scores[b, : len(c)].tolist(), "ranks": ranked.ranks[b], "prompt_tokens": p}
                for b, (c, p) in enumerate(zip(candidates, prompt_tokens))]

    def _prompt_tokens(self, questions: list[str], candidates: list[list[str]]) -> list[int]:
        """Per question, the tokens URG's encoder reads (all its question-candidate pairs)."""
        mask = self.urg.collator.encode_pairs(questions, candidates).attention_mask  # B x N x L
        return [int(n) for n in mask.sum(dim=(1, 2)).tolist()]

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
    async def _fuse_batch(self, items: list[FuseItem]) -> list[dict[str, Any] | Exception]:
        with self.batch_wait.running():
            return await fuse_each(self._run, items, FuseItem.group)

    async def _run(self, items: list[FuseItem]) -> list[dict[str, Any]]:
        return await asyncio.to_thread(self._rank_and_fuse, items)

    def _rank_and_fuse(self, items: list[FuseItem]) -> list[dict[str, Any]]:
        from urg_ray.streaming import FALLBACK_NOTE, stop_then_fallback  # torch: not in the ingress

        top_k, max_new_tokens = items[0].group()
        questions, candidates = [i.question for i in items], [list(i.candidates) for i in items]
        fused = self.urg.rank_and_fuse(questions, candidates, top_k=top_k, max_new_tokens=max_new_tokens)
        results = []
        for item, result, prompt in zip(items, fused, self._prompt_tokens(questions, candidates)):
            # the stop first, then the blank answer's fallback, as the streamed answer does
            text, fell_back = stop_then_fallback(result.text, item.stop, item.candidates[result.ranks[0]])
            note = "; ".join(n for n in (result.note, FALLBACK_NOTE if fell_back else None) if n) or None
            results.append({"text": text, "ranks": result.ranks, "scores": result.scores,
                            "selected": result.selected, "note": note, "prompt_tokens": prompt,
                            "completion_tokens": len(self.urg.tokenizer(text, add_special_tokens=False).input_ids)})
        return results

    def check_health(self) -> None:
        if getattr(self, "urg", None) is None:
            raise RuntimeError("URG model not loaded")
