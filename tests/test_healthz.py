"""serve/healthz.py: waiting for an app's /healthz, against scripted replies (no Serve)."""

import httpx
import pytest

import serve.healthz as healthz


@pytest.fixture
def warming_app(monkeypatch):
    """/healthz refuses the connection, answers 503 waiting for `a` and `b`, 503 waiting for `b`,
    then 200 for good; returns the URLs asked."""
    asked = []
    replies = [None, (503, ["a", "b"]), (503, ["b"])]

    def get(url, timeout):
        asked.append(url)
        reply = replies.pop(0) if replies else (200, [])
        if reply is None:
            raise httpx.ConnectError("connection refused")
        return httpx.Response(reply[0], json={"waiting_for": reply[1]})

    monkeypatch.setattr(httpx, "get", get)
    monkeypatch.setattr(healthz.time, "sleep", lambda s: None)
    return asked


def test_waits_through_a_refused_connection_and_503s_until_200(warming_app):
    healthz.wait_ready("http://app", deadline_s=60)
    assert warming_app == ["http://app/healthz"] * 4


def test_a_custom_ready_sees_the_health_body(warming_app):
    healthz.wait_ready("http://app", deadline_s=60, ready=lambda reply: reply.json()["waiting_for"] == ["b"])
    assert warming_app == ["http://app/healthz"] * 3


def test_an_app_that_never_answers_is_a_timeout_naming_the_url():
    with pytest.raises(TimeoutError, match=r"http://127.0.0.1:9/healthz was not ready within 0.5 s"):
        healthz.wait_ready("http://127.0.0.1:9", deadline_s=0.5)
