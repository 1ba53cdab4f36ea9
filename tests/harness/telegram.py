"""A local fake of the Telegram Bot API's sendMessage, so tests see exactly what pgdr sends.

Real HTTP on 127.0.0.1 (stdlib ``ThreadingHTTPServer``, a free port chosen once): ``stop()`` closes
the socket (connections are refused, like Telegram being unreachable) and ``start()`` serves again
on the same port. Behaviour is switchable: ``ok``, ``429`` (Too Many Requests with
``parameters.retry_after``), ``500``; ``fail_next(n, ...)`` fails only the next n requests.
Every request is recorded; ``messages`` holds the ones answered ok: what reached the chat.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.harness.s3 import free_port


@dataclass(frozen=True)
class Message:
    chat_id: str
    text: str


@dataclass(frozen=True)
class Request:
    path: str
    status: int
    body: dict[str, Any]


class FakeTelegram:
    def __init__(self, token: str = "123456:TEST-secret-token", port: int | None = None) -> None:
        self.token = token
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.mode = "ok"
        self.retry_after = 1
        self._failures_left: int | None = None
        self._lock = threading.Lock()
        self.requests: list[Request] = []
        self.messages: list[Message] = []
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- control --

    def start(self) -> None:
        if self._server is not None:
            return
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                status, answer = fake._answer(self.path, raw)
                body = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                """Quiet."""

        server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        server.daemon_threads = True
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> FakeTelegram:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def set_mode(self, mode: str, *, retry_after: int = 1) -> None:
        """ "ok", "429" or "500" for every request from now on."""
        assert mode in ("ok", "429", "500"), mode
        with self._lock:
            self.mode, self.retry_after, self._failures_left = mode, retry_after, None

    def fail_next(self, count: int, mode: str, *, retry_after: int = 1) -> None:
        """Answer the next ``count`` requests with ``mode`` ("429" or "500"), then ok again."""
        with self._lock:
            self.mode, self.retry_after, self._failures_left = mode, retry_after, count

    def reset(self) -> None:
        with self._lock:
            self.requests.clear()
            self.messages.clear()
            self.mode, self._failures_left = "ok", None

    def texts(self) -> list[str]:
        with self._lock:
            return [m.text for m in self.messages]

    def wait_for(self, condition: Callable[[list[str]], bool], timeout: float, what: str) -> list[str]:
        """Poll the delivered texts until ``condition`` holds; fail naming ``what`` at the deadline."""
        deadline = time.monotonic() + timeout
        while True:
            texts = self.texts()
            if condition(texts):
                return texts
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}; got {texts}")
            time.sleep(0.05)

    # -- the API --

    def _answer(self, path: str, raw: bytes) -> tuple[int, dict[str, Any]]:
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            body = {}
        with self._lock:
            status, answer = self._decide(path, body)
            self.requests.append(Request(path, status, body))
            if status == 200:
                self.messages.append(Message(str(body.get("chat_id")), str(body.get("text"))))
        return status, answer

    def _decide(self, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        if path != f"/bot{self.token}/sendMessage":
            return 401, {"ok": False, "error_code": 401, "description": "Unauthorized"}
        if not body.get("chat_id") or not body.get("text"):
            return 400, {"ok": False, "error_code": 400, "description": "Bad Request: message text is empty"}
        mode = self.mode
        if self._failures_left is not None:
            if self._failures_left <= 0:
                mode = "ok"
            else:
                self._failures_left -= 1
        if mode == "429":
            return 429, {
                "ok": False,
                "error_code": 429,
                "description": f"Too Many Requests: retry after {self.retry_after}",
                "parameters": {"retry_after": self.retry_after},
            }
        if mode == "500":
            return 500, {"ok": False, "error_code": 500, "description": "Internal Server Error"}
        return 200, {"ok": True, "result": {"message_id": len(self.messages) + 1, "text": body["text"]}}
