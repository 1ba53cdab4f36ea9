"""A fault-injecting HTTP proxy in front of moto: S3 that answers 500/503 SlowDown, or dies mid-upload.

pgdr talks to the proxy's URL as its endpoint; the proxy forwards to the real moto server unless a
fault is armed. Faults are counted, so "503 for the next 2 requests" is deterministic.
"""

from __future__ import annotations

import http.client
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

ERROR_BODY = (
    '<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code><Message>injected by the test proxy'
    "</Message></Error>"
)


class S3FaultProxy:
    def __init__(self, upstream: str) -> None:
        self.upstream = urlsplit(upstream)
        self.lock = threading.Lock()
        self.fail_next = 0
        self.status = 503
        self.code = "SlowDown"
        self.fail_after_parts: int | None = None  # start failing everything after this many UploadPart calls
        self.parts_seen = 0
        self.requests = 0
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                return

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                if proxy._should_fail(self.command, self.path):
                    payload = ERROR_BODY.format(code=proxy.code).encode()
                    self.send_response(proxy.status)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                conn = http.client.HTTPConnection(proxy.upstream.hostname, proxy.upstream.port, timeout=60)
                headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
                headers["Host"] = proxy.upstream.netloc
                conn.request(self.command, self.path, body=body, headers=headers)
                answer = conn.getresponse()
                data = answer.read()
                self.send_response(answer.status)
                for key, value in answer.getheaders():
                    if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                conn.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle  # noqa: N815 - http.server's names

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def _should_fail(self, method: str, path: str) -> bool:
        with self.lock:
            self.requests += 1
            if method == "PUT" and "partNumber=" in path:
                self.parts_seen += 1
            if self.fail_after_parts is not None and self.parts_seen > self.fail_after_parts:
                return True
            if self.fail_next > 0:
                self.fail_next -= 1
                return True
            return False

    def arm(self, count: int, status: int = 503, code: str = "SlowDown") -> None:
        with self.lock:
            self.fail_next, self.status, self.code = count, status, code

    def heal(self) -> None:
        with self.lock:
            self.fail_next, self.fail_after_parts, self.parts_seen = 0, None, 0

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
