"""Shared fixtures: a real PostgreSQL cluster archiving through the real pgdr, and a real S3 endpoint."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness.cluster import Cluster, make_shared_dir, pg_bin, running_cluster, server_pgdr
from tests.harness.s3 import ACCESS_KEY, REGION, SECRET_KEY, MotoEndpoint


@pytest.fixture(scope="session", autouse=True)
def shared_dir() -> Iterator[Path]:
    """A temp dir the server user can enter; removed at the end of the session.

    pgdr's state and user config dirs point into it, so tests never touch the developer's own.
    """
    path = make_shared_dir("pgdr-test-")
    saved = {k: os.environ.get(k) for k in ("XDG_STATE_HOME", "XDG_CONFIG_HOME")}
    os.environ["XDG_STATE_HOME"] = str(path / "xdg-state")
    os.environ["XDG_CONFIG_HOME"] = str(path / "xdg-config")
    yield path
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def pgdr_for_server(shared_dir: Path) -> Path:
    return server_pgdr(shared_dir)


@pytest.fixture(scope="session")
def moto() -> Iterator[MotoEndpoint]:
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one access-log line per request drowns failures
    with MotoEndpoint() as endpoint:
        yield endpoint


@pytest.fixture
def bucket(moto: MotoEndpoint, request: pytest.FixtureRequest) -> str:
    digest = hashlib.sha1(request.node.nodeid.encode()).hexdigest()[:10]
    readable = "".join(c if c.isalnum() else "-" for c in request.node.name.lower())[:40].strip("-")
    name = f"pgdr-{digest}-{readable}".rstrip("-")
    moto.start()
    moto.create_bucket(name)
    return name


def s3_settings(moto: MotoEndpoint, bucket: str) -> dict[str, str]:
    return {
        "bucket": bucket,
        "prefix": "pg",
        "region": REGION,
        "endpoint_url": moto.url,
        "access_key_id": ACCESS_KEY,
        "secret_access_key": SECRET_KEY,
    }


#: The PostgreSQL versions the representative tests run on (``@on_every_version``).
VERSIONS = ("15", "18")
on_every_version = pytest.mark.parametrize("pg_major", VERSIONS, ids=[f"pg{v}" for v in VERSIONS])


@pytest.fixture
def pg_major() -> str:
    """The PostgreSQL major version of ``cluster`` and ``cluster_s3``: 15, unless a test is ``@on_every_version``."""
    return "15"


@pytest.fixture
def cluster(shared_dir: Path, pgdr_for_server: Path, pg_major: str) -> Iterator[Cluster]:
    """A fresh, running cluster archiving into a local repository."""
    with running_cluster(shared_dir, pgdr_for_server, pg_bin=pg_bin(pg_major)) as c:
        c.write_config(c.base_config())
        c.start()
        yield c


@pytest.fixture
def cluster_s3(
    shared_dir: Path, pgdr_for_server: Path, moto: MotoEndpoint, bucket: str, pg_major: str
) -> Iterator[Cluster]:
    """A fresh, running cluster archiving into a local repository (synchronously) and S3 (queued)."""
    with running_cluster(shared_dir, pgdr_for_server, pg_bin=pg_bin(pg_major)) as c:
        c.write_config(c.base_config(s3=s3_settings(moto, bucket)))
        c.start()
        yield c
