"""The ranker-fuser deployment's batching, without a running Serve (serve/ranker.py)."""

import asyncio
import contextlib
import threading

import pytest

pytest.importorskip("ray")
from serve.ranker import BusyBatchWait, URGRankerFuser  # noqa: E402


class Batcher:
    def __init__(self):
        self.wait_s = None

    def set_batch_wait_timeout_s(self, wait_s: float) -> None:
        self.wait_s = wait_s


def test_the_batch_wait_applies_only_while_a_batch_runs():
    batchers = [Batcher(), Batcher()]
    wait = BusyBatchWait(0.01, batchers)
    assert [b.wait_s for b in batchers] == [0.0, 0.0]  # idle: a request starts at once
    with wait.running():
        assert [b.wait_s for b in batchers] == [0.01, 0.01]
        with wait.running():  # the rank and fuse batchers share the model
            pass
        assert [b.wait_s for b in batchers] == [0.01, 0.01]  # one batch still runs
    assert [b.wait_s for b in batchers] == [0.0, 0.0]
    with pytest.raises(RuntimeError), wait.running():
        raise RuntimeError("a failed batch")
    assert [b.wait_s for b in batchers] == [0.0, 0.0]


@contextlib.contextmanager
def batch_state_restored(cls):
    """`@serve.batch` keeps its queue and settings on the class's methods, shared by every instance: a
    queue made in this process would leave the class unpicklable (a weakref) for the Serve tests that
    run after this module, so the methods get their settings back and lose the queue afterwards."""
    wrappers = [method.set_batch_wait_timeout_s.__self__ for method in (cls._fuse_batch, cls._rank_batch)]
    saved = [(w.max_batch_size, w.batch_wait_timeout_s) for w in wrappers]
    try:
        yield
    finally:
        for wrapper, (size, wait_s) in zip(wrappers, saved):
            wrapper._queue, wrapper.max_batch_size, wrapper.batch_wait_timeout_s = None, size, wait_s


@pytest.fixture
def ranker_class():
    with batch_state_restored(URGRankerFuser.func_or_class):
        yield URGRankerFuser.func_or_class


def test_a_lone_request_does_not_wait_for_batch_mates_and_a_busy_model_batches(monkeypatch, tmp_path, ranker_class):
    """Through Serve's own @serve.batch: the first request (idle model) runs alone with no wait
    in force; the requests sent while it runs share the next batch."""
    from ray.serve import batching

    # its one check that needs a replica (a warning about max_ongoing_requests)
    monkeypatch.setattr(batching._BatchQueue, "_warn_if_max_batch_size_exceeds_max_ongoing_requests", lambda self: None)
    ranker = ranker_class(str(tmp_path / "no-checkpoint"), "tiny", batch_wait_timeout_s=5.0)
    wait_in_force = ranker._fuse_batch._get_batch_wait_timeout_s  # Serve's getter (no public one)
    assert wait_in_force() == 0.0  # the configured 5 s: only while a batch runs
    batches, release = [], threading.Event()

    def rank_and_fuse(items):
        batches.append(len(items))
        if len(batches) == 1:
            release.wait(10)  # the first batch runs until the others were sent
        return [{"text": i.question} for i in items]

    ranker._rank_and_fuse = rank_and_fuse

    async def main():
        first = asyncio.create_task(ranker.rank_and_fuse("q0", ["a", "b"], max_new_tokens=4))
        while not batches:
            await asyncio.sleep(0.001)
        busy_wait = wait_in_force()
        rest = [asyncio.create_task(ranker.rank_and_fuse(f"q{i}", ["a", "b"], max_new_tokens=4)) for i in range(1, 4)]
        await asyncio.sleep(0.05)
        release.set()
        answers = await asyncio.gather(first, *rest)
        return [a["text"] for a in answers], busy_wait

    texts, busy_wait = asyncio.run(asyncio.wait_for(main(), 30))
    assert texts == ["q0", "q1", "q2", "q3"]
    assert busy_wait == 5.0
    assert batches == [1, 3]  # the lone first request, then the three sent while it ran
    assert wait_in_force() == 0.0


def test_the_deployment_stays_picklable_after_a_batch_queue_was_made_in_this_process(monkeypatch):
    """Ray pickles the class at every `serve.run`: a batch run in-process (the test above) must not
    leave its queue on the class."""
    from ray import cloudpickle
    from ray.serve import batching

    monkeypatch.setattr(batching._BatchQueue, "_warn_if_max_batch_size_exceeds_max_ongoing_requests", lambda self: None)

    cls = URGRankerFuser.func_or_class

    async def make_queues():
        for method in (cls._fuse_batch, cls._rank_batch):
            method.set_batch_wait_timeout_s.__self__.queue  # what a first call does

    with batch_state_restored(cls):
        asyncio.run(make_queues())
    assert cloudpickle.loads(cloudpickle.dumps(cls)).__name__ == "URGRankerFuser"
