"""The `openai` engine: any OpenAI-compatible HTTP endpoint (vLLM, TGI, Ray Serve LLM, OpenAI), async with httpx.

`/chat/completions` when the spec chats (the default), else `/completions` with the messages'
text as the prompt. Timeouts, connection errors, 408/409/429 and 5xx are retried `max_retries`
times, waiting `backoff_s * 2**attempt` or the server's `Retry-After`; other 4xx fail at once
(retrying cannot help). Each answer reports the server's usage token counts and its latency.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Any, Sequence

import httpx

from urg_ray.llms.base import LLM, Answer, Conversation, Sampling, failed, per_item, register
from urg_ray.llms.spec import prompt_of

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 60.0
MAX_RETRY_AFTER_S = 60.0  # a longer Retry-After is capped: the row fails later rather than hanging
RETRIED = (408, 409, 429)


def retry_after_s(response: httpx.Response) -> float | None:
    """The Retry-After header in seconds, when it is a number (HTTP dates are ignored)."""
    try:
        return min(max(float(response.headers.get("retry-after", "")), 0.0), MAX_RETRY_AFTER_S)
    except ValueError:
        return None


def error_message(response: httpx.Response) -> str:
    try:
        return str(response.json()["error"]["message"])[:300]
    except Exception:  # noqa: BLE001 - any non-OpenAI error body
        return response.text[:300]


@register("openai")
class OpenAILLM(LLM):
    def __init__(self, spec):
        super().__init__(spec)
        key = os.environ.get(spec.api_key_env) if spec.api_key_env else None
        self.headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.timeout_s = spec.timeout_s or DEFAULT_TIMEOUT_S
        self.url = spec.base_url.rstrip("/") + ("/chat/completions" if spec.uses_chat else "/completions")
        # jobs: `concurrency` parallel requests per actor; elsewhere every conversation at once
        self.parallel = getattr(spec, "concurrency", None)
        self._client: httpx.AsyncClient | None = None  # agenerate's, bound to the caller's event loop

    def _new_client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(headers=self.headers, timeout=self.timeout_s)

    def generate(self, conversations: Sequence[Conversation],
                 sampling: Sampling | Sequence[Sampling]) -> list[Answer]:
        async def run() -> list[Answer]:
            async with self._new_client() as client:
                return await self._all(client, conversations, per_item(sampling, len(conversations)))

        return asyncio.run(run())

    async def agenerate(self, conversations: Sequence[Conversation],
                        sampling: Sampling | Sequence[Sampling]) -> list[Answer]:
        if self._client is None:
            self._client = self._new_client()
        return await self._all(self._client, conversations, per_item(sampling, len(conversations)))

    async def _all(self, client: httpx.AsyncClient, conversations: Sequence[Conversation],
                   samplings: list[Sampling]) -> list[Answer]:
        gate = asyncio.Semaphore(self.parallel or max(len(conversations), 1))

        async def one(conversation: Conversation, sampling: Sampling) -> Answer:
            async with gate:
                return await self._request(client, conversation, sampling)

        return list(await asyncio.gather(*(one(c, s) for c, s in zip(conversations, samplings))))

    def _body(self, conversation: Conversation, s: Sampling) -> dict[str, Any]:
        body: dict[str, Any] = dict(model=self.spec.model_source, max_tokens=s.max_tokens, temperature=s.temperature,
                                    top_p=s.top_p)
        for key in ("seed", "stop", "presence_penalty", "frequency_penalty"):
            if getattr(s, key):  # sent only when set: not every server knows them
                body[key] = getattr(s, key)
        if self.spec.uses_chat:
            body["messages"] = list(conversation)
        else:
            body["prompt"] = prompt_of(conversation)
        return body

    async def _request(self, client: httpx.AsyncClient, conversation: Conversation, sampling: Sampling) -> Answer:
        spec, body, start = self.spec, self._body(conversation, sampling), time.perf_counter()
        problem, wait = "", spec.backoff_s
        for attempt in range(spec.max_retries + 1):
            if attempt:
                await asyncio.sleep(wait)
                wait = spec.backoff_s * 2 ** attempt
            try:
                response = await client.post(self.url, json=body)
            except httpx.TimeoutException as err:
                problem = f"{type(err).__name__} after {self.timeout_s:g} s"
                continue
            except httpx.TransportError as err:
                problem = f"{type(err).__name__}: {err}"
                continue
            if response.status_code in RETRIED or response.status_code >= 500:
                problem = f"HTTP {response.status_code}: {error_message(response)}"
                wait = retry_after_s(response) or wait
                continue
            if response.status_code >= 400:  # the request itself is wrong: retrying cannot help
                return failed(f"HTTP {response.status_code}: {error_message(response)}", time.perf_counter() - start)
            try:
                data = response.json()
                choice = data["choices"][0]
                text = choice["message"]["content"] if spec.uses_chat else choice["text"]
            except (ValueError, KeyError, IndexError, TypeError) as err:
                return failed(f"malformed response ({type(err).__name__}: {err}): {response.text[:200]}",
                              time.perf_counter() - start)
            usage = data.get("usage") or {}
            return Answer(text or "", prompt_tokens=int(usage.get("prompt_tokens") or 0),
                          completion_tokens=int(usage.get("completion_tokens") or 0),
                          latency_s=time.perf_counter() - start)
        log.warning("%s: gave up after %d attempts: %s", spec.name, spec.max_retries + 1, problem)
        return failed(f"gave up after {spec.max_retries + 1} attempts; last: {problem}", time.perf_counter() - start)

    def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            try:
                asyncio.get_running_loop().create_task(client.aclose())
            except RuntimeError:  # no running loop: nothing is pending on it
                pass
