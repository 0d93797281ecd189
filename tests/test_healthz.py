"""serve/healthz.py: waiting for an app's /healthz, against a stub HTTP server (no Serve)."""

import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `serve/` is a top-level folder

from serve.healthz import wait_ready  # noqa: E402


@pytest.fixture
def warming_app():
    """/healthz answers 503 (waiting for `a` and `b`), then 503 (waiting for `b`), then 200 for good."""
    replies = [(503, ["a", "b"]), (503, ["b"])]
    asked = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            asked.append(self.path)
            status, waiting = replies.pop(0) if replies else (200, [])
            body = json.dumps({"waiting_for": waiting}).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", asked
    server.shutdown()


def test_waits_through_503s_until_healthz_answers_200(warming_app):
    url, asked = warming_app
    wait_ready(url, deadline_s=60)
    assert asked == ["/healthz"] * 3


def test_a_custom_ready_sees_the_health_body(warming_app):
    url, asked = warming_app
    wait_ready(url, deadline_s=60, ready=lambda reply: reply.json()["waiting_for"] == ["b"])
    assert asked == ["/healthz"] * 2


def test_an_app_that_never_answers_is_a_timeout_naming_the_url():
    with pytest.raises(TimeoutError, match=r"http://127.0.0.1:9/healthz was not ready within 0.5 s"):
        wait_ready("http://127.0.0.1:9", deadline_s=0.5)
