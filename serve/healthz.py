"""Waiting, from outside the app, until its `/healthz` says ready (the tests, jobs/serve_benchmark.py)."""

from __future__ import annotations

import time
from typing import Callable

import httpx


def is_ready(reply: httpx.Response) -> bool:
    """Every candidate and the ranker-fuser answered a warm-up."""
    return reply.status_code == 200


def wait_ready(url: str, deadline_s: float = 600, ready: Callable[[httpx.Response], bool] = is_ready) -> None:
    """Poll ``<url>/healthz`` once a second until `ready(reply)`; TimeoutError after `deadline_s`.

    An app where a candidate never warms up passes its own `ready` (on the reply's `waiting_for`).
    """
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        try:
            if ready(httpx.get(f"{url}/healthz", timeout=10)):
                return
        except (httpx.HTTPError, ValueError):  # not up yet, or a body that is not JSON yet
            pass
        time.sleep(1)
    raise TimeoutError(f"{url}/healthz was not ready within {deadline_s:g} s")
