"""The `canned` engine: fixed answers in turn, optionally late (`delay_s`) or always failing (`error`).

For demos, tests and load tests of the ensemble path without LLM cost. An answer's tokens are
its words: `max_tokens` keeps the first ones.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from typing import Sequence

from urg_ray.llms.base import LLM, Answer, Conversation, Sampling, failed, per_item, register
from urg_ray.llms.spec import prompt_of


@register("canned")
class CannedLLM(LLM):
    def __init__(self, spec):
        super().__init__(spec)
        self._answers, self._lock = itertools.cycle(spec.answers or [""]), threading.Lock()

    def count_prompt_tokens(self, conversation: Conversation) -> int | None:
        return len(prompt_of(conversation).split())

    def _answer(self, sampling: Sampling, conversation: Conversation) -> Answer:
        if self.spec.error:
            return failed(self.spec.error, self.spec.delay_s)
        with self._lock:
            words = next(self._answers).split()[: sampling.max_tokens]
        return Answer(" ".join(words), prompt_tokens=self.count_prompt_tokens(conversation) or 0,
                      completion_tokens=len(words), latency_s=self.spec.delay_s)

    def generate(self, conversations: Sequence[Conversation],
                 sampling: Sampling | Sequence[Sampling]) -> list[Answer]:
        if self.spec.delay_s:
            time.sleep(self.spec.delay_s)
        return [self._answer(s, c) for c, s in zip(conversations, per_item(sampling, len(conversations)))]

    async def agenerate(self, conversations: Sequence[Conversation],
                        sampling: Sampling | Sequence[Sampling]) -> list[Answer]:
        if self.spec.delay_s:
            await asyncio.sleep(self.spec.delay_s)
        return [self._answer(s, c) for c, s in zip(conversations, per_item(sampling, len(conversations)))]
