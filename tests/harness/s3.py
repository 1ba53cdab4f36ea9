"""moto's real HTTP S3 server on a fixed local port, so tests talk to S3 over the wire like pgdr does.

The port is chosen once, up front, so ``stop()`` then ``start()`` brings the endpoint back at the same
URL: that is how a test simulates "S3 went down, then came back" without rebuilding its clients.

moto keeps its state in module-level backends of this process, not in the server: buckets and
objects survive a ``stop()``/``start()`` (like a real S3 outage), and ``reset()`` is what wipes them.
Authentication is off by default (any key is accepted); ``require_auth()`` turns it on for a block,
and then only IAM users created in moto are accepted, so a made-up key is rejected with
InvalidAccessKeyId as AWS would.
"""

from __future__ import annotations

import contextlib
import logging
import re
import socket
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import boto3
import requests
from moto.server import ThreadedMotoServer

if TYPE_CHECKING:
    from types_boto3_s3.client import S3Client

ACCESS_KEY = "testing"
SECRET_KEY = "testing"
REGION = "us-east-1"


def free_port() -> int:
    """A port nothing listens on right now (the OS picks it; tiny race, fine for tests)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class MotoEndpoint:
    """One moto S3 endpoint at ``url`` that can be stopped and started again on the same port."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._server: Any = None

    def start(self) -> None:
        if self._server is not None:
            return
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        server.start()
        self._server = server

    def stop(self) -> None:
        """Stop serving and release the port: moto's own stop() leaves the socket bound and listening."""
        server, self._server = self._server, None
        if server is None:
            return
        server.stop()
        # ThreadedMotoServer.stop() only shuts the serve loop down; without closing the socket the
        # kernel keeps accepting connections into the backlog and a restart on this port fails.
        server._server.server_close()

    def __enter__(self) -> MotoEndpoint:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def client(self, access_key: str = ACCESS_KEY, secret_key: str = SECRET_KEY) -> S3Client:
        return boto3.session.Session(
            aws_access_key_id=access_key, aws_secret_access_key=secret_key, region_name=REGION
        ).client("s3", endpoint_url=self.url)

    def create_bucket(self, name: str) -> None:
        self.client().create_bucket(Bucket=name)

    def reset(self) -> None:
        """Forget every bucket and object (moto's state is per process, shared by all endpoints)."""
        requests.post(f"{self.url}/moto-api/reset", timeout=10).raise_for_status()

    @contextlib.contextmanager
    def require_auth(self) -> Iterator[None]:
        """Check signatures against moto's IAM for the block; the default accepts any key at all."""
        answer = requests.post(f"{self.url}/moto-api/reset-auth", data=b"0", timeout=10)
        answer.raise_for_status()
        previous = answer.json()["PREVIOUS_INITIAL_NO_AUTH_ACTION_COUNT"]
        try:
            yield
        finally:
            requests.post(f"{self.url}/moto-api/reset-auth", data=previous.encode(), timeout=10)

    @contextlib.contextmanager
    def requests_seen(self) -> Iterator[list[str]]:
        """The request targets (path and query) the endpoint serves during the block, from its access log."""
        seen: list[str] = []
        line = re.compile(r'"[A-Z]+ (\S+) HTTP/')

        class Recorder(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                found = line.search(record.getMessage())
                if found:
                    seen.append(found.group(1))

        log = logging.getLogger("werkzeug")
        recorder, level, propagate = Recorder(), log.level, log.propagate
        log.addHandler(recorder)
        log.setLevel(logging.INFO)
        log.propagate = False  # the access lines go to the recorder only
        try:
            yield seen
        finally:
            log.removeHandler(recorder)
            log.setLevel(level)
            log.propagate = propagate
