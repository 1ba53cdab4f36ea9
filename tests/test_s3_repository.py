"""S3Repository against moto's real HTTP server: every call goes over the wire, nothing is mocked."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from datetime import UTC
from pathlib import Path
from typing import Any

import pytest

import backend.repository.s3 as s3_module
from backend.config import ClusterConfig, Config, S3Config
from backend.errors import ConfigError, ObjectNotFound, RepositoryError
from backend.repository import open_repository
from backend.repository.local import LocalRepository
from backend.repository.s3 import S3Repository
from tests.harness.s3 import ACCESS_KEY, REGION, SECRET_KEY, MotoEndpoint, free_port

MiB = 1 << 20


@pytest.fixture(scope="module")
def endpoint() -> Iterator[MotoEndpoint]:
    with MotoEndpoint() as moto:
        yield moto


@pytest.fixture
def bucket(endpoint: MotoEndpoint) -> str:
    name = f"pgdr-{uuid.uuid4().hex[:12]}"
    endpoint.create_bucket(name)
    return name


def make_config(endpoint_url: str, bucket: str, *, cluster: str = "main", **s3: str) -> Config:
    values: dict[str, Any] = {
        "bucket": bucket,
        "region": REGION,
        "endpoint_url": endpoint_url,
        "storage_class": "",
        "access_key_id": ACCESS_KEY,
        "secret_access_key": SECRET_KEY,
    }
    values.update(s3)
    return Config(cluster=ClusterConfig(name=cluster), s3=S3Config(**values), source=Path("/etc/pgdr/pgdr.toml"))


@pytest.fixture
def repo(endpoint: MotoEndpoint, bucket: str) -> S3Repository:
    return S3Repository.from_config(make_config(endpoint.url, bucket, prefix="pg"))


def assert_operator_line(exc: pytest.ExceptionInfo[RepositoryError], *secrets: str) -> str:
    message = str(exc.value)
    assert "\n" not in message
    for secret in secrets:
        assert secret not in message
    return message


def test_open_repository_builds_s3(endpoint: MotoEndpoint, bucket: str) -> None:
    repo = open_repository(make_config(endpoint.url, bucket, prefix="/backups//pg/"), "s3")
    assert isinstance(repo, S3Repository)
    assert repo.location() == f"s3://{bucket}/backups/pg/main"
    repo.put("repo.json", b"{}")
    keys = [o["Key"] for o in endpoint.client().list_objects_v2(Bucket=bucket)["Contents"]]
    assert keys == ["backups/pg/main/repo.json"]


def test_empty_prefix_has_no_leading_slash(endpoint: MotoEndpoint, bucket: str) -> None:
    repo = S3Repository.from_config(make_config(endpoint.url, bucket))
    assert repo.location() == f"s3://{bucket}/main"
    repo.put("a", b"1")
    assert endpoint.client().head_object(Bucket=bucket, Key="main/a")["ContentLength"] == 1


def test_put_get_round_trip(repo: S3Repository) -> None:
    repo.put("wal/000000010000000000000001", b"segment")
    assert repo.get("wal/000000010000000000000001") == b"segment"
    assert repo.exists("wal/000000010000000000000001")
    repo.put("wal/000000010000000000000001", b"replaced")
    with repo.open("wal/000000010000000000000001") as fh:
        assert fh.read(3) == b"rep"
        assert fh.read() == b"laced"


def test_missing_object(repo: S3Repository) -> None:
    assert not repo.exists("nope")
    with pytest.raises(ObjectNotFound) as exc:
        repo.get("nope")
    assert exc.value.exit_code == 1
    assert "nope is not in the S3 repository s3://" in str(exc.value)
    with pytest.raises(ObjectNotFound), repo.open("nope"):
        pass


def test_large_streamed_write_goes_multipart(endpoint: MotoEndpoint, repo: S3Repository) -> None:
    data = os.urandom(40 * MiB)
    with repo.writer("base/big.tar.zst") as out:
        for start in range(0, len(data), 3 * MiB):
            out.write(data[start : start + 3 * MiB])
    head = endpoint.client().head_object(Bucket=repo.bucket, Key="pg/main/base/big.tar.zst")
    assert head["ETag"].strip('"').endswith("-3")  # a multipart ETag: 16 + 16 + 8 MiB
    assert head["ContentLength"] == len(data)
    assert repo.get("base/big.tar.zst") == data
    with repo.open("base/big.tar.zst") as fh:
        chunks = iter(lambda: fh.read(5 * MiB), b"")
        assert b"".join(chunks) == data


def test_small_write_is_one_put(endpoint: MotoEndpoint, repo: S3Repository) -> None:
    with repo.writer("small") as out:
        out.write(b"a" * 1000)
        out.write(b"b")
    head = endpoint.client().head_object(Bucket=repo.bucket, Key="pg/main/small")
    assert "-" not in head["ETag"]
    assert repo.get("small") == b"a" * 1000 + b"b"
    with repo.writer("empty"):
        pass
    assert repo.get("empty") == b""


def test_failed_writer_leaves_nothing(endpoint: MotoEndpoint, repo: S3Repository) -> None:
    client = endpoint.client()
    with pytest.raises(RuntimeError, match="compressor died"), repo.writer("base/broken") as out:
        out.write(os.urandom(20 * MiB))
        assert len(client.list_multipart_uploads(Bucket=repo.bucket).get("Uploads", [])) == 1
        raise RuntimeError("compressor died")
    assert not repo.exists("base/broken")
    assert list(repo.list("base/")) == []
    assert client.list_multipart_uploads(Bucket=repo.bucket).get("Uploads", []) == []


def test_list_relative_keys_in_order(endpoint: MotoEndpoint, repo: S3Repository) -> None:
    for key in ["wal/0002", "wal/0001", "base/20260101/manifest.json", "walrus", "repo.json"]:
        repo.put(key, key.encode())
    other = S3Repository.from_config(make_config(endpoint.url, repo.bucket, cluster="other", prefix="pg"))
    other.put("wal/0003", b"x")

    everything = list(repo.list())
    assert [o.key for o in everything] == [
        "base/20260101/manifest.json",
        "repo.json",
        "wal/0001",
        "wal/0002",
        "walrus",
    ]
    assert [o.size for o in everything] == [len(o.key) for o in everything]
    assert all(o.modified.tzinfo is not None and o.modified.utcoffset() == UTC.utcoffset(None) for o in everything)
    assert [o.key for o in repo.list("wal/")] == ["wal/0001", "wal/0002"]
    assert [o.key for o in repo.list("wal")] == ["wal/0001", "wal/0002", "walrus"]
    assert list(repo.list("missing/")) == []
    assert [o.key for o in other.list()] == ["wal/0003"]


def test_delete_in_batches(monkeypatch: pytest.MonkeyPatch, repo: S3Repository) -> None:
    monkeypatch.setattr(s3_module, "DELETE_BATCH", 2)
    keys = [f"wal/{i:04d}" for i in range(5)]
    for key in keys:
        repo.put(key, b"x")
    repo.put("keep", b"x")
    repo.delete([*keys, "wal/never-existed"])
    assert [o.key for o in repo.list()] == ["keep"]
    repo.delete([])


def test_storage_class_and_sse_applied(endpoint: MotoEndpoint, bucket: str) -> None:
    cfg = make_config(endpoint.url, bucket, storage_class="STANDARD_IA", sse="AES256")
    repo = S3Repository.from_config(cfg)
    repo.part_size = 5 * MiB  # S3's minimum part size: keeps the multipart case small
    repo.put("single", b"x")
    with repo.writer("multi") as out:
        out.write(os.urandom(11 * MiB))
    client = endpoint.client()
    for key in ("main/single", "main/multi"):
        head = client.head_object(Bucket=bucket, Key=key)
        assert head["StorageClass"] == "STANDARD_IA", key
        assert head["ServerSideEncryption"] == "AES256", key
    assert client.head_object(Bucket=bucket, Key="main/multi")["ETag"].strip('"').endswith("-3")


def test_missing_bucket(endpoint: MotoEndpoint) -> None:
    repo = S3Repository.from_config(make_config(endpoint.url, "no-such-bucket-here"))
    expected = (
        "S3 bucket 'no-such-bucket-here' does not exist: create it (aws s3 mb s3://no-such-bucket-here) "
        "or fix [s3] bucket in /etc/pgdr/pgdr.toml"
    )
    for action in (
        lambda: repo.put("k", b"x"),
        lambda: repo.get("k"),
        lambda: list(repo.list()),
    ):
        with pytest.raises(RepositoryError) as exc:
            action()
        assert not isinstance(exc.value, ObjectNotFound)  # "not there" would end a recovery early
        assert assert_operator_line(exc, SECRET_KEY) == expected


def test_wrong_credentials(endpoint: MotoEndpoint, bucket: str) -> None:
    access, secret = "AKIAPGDRWRONGKEY0001", "wR0ngSecretKeyThatMustNeverLeak/xyz"
    repo = S3Repository.from_config(make_config(endpoint.url, bucket, access_key_id=access, secret_access_key=secret))
    with endpoint.require_auth():
        with pytest.raises(RepositoryError) as exc:
            repo.put("k", b"x")
        with pytest.raises(RepositoryError) as listed:
            list(repo.list())
    for info in (exc, listed):
        message = assert_operator_line(info, access, secret)
        assert message == (
            f"S3 rejected the credentials for bucket '{bucket}' (InvalidAccessKeyId): check AWS_ACCESS_KEY_ID / "
            "AWS_SECRET_ACCESS_KEY or [s3] access_key_id / secret_access_key"
        )
    repo_ok = S3Repository.from_config(make_config(endpoint.url, bucket))
    repo_ok.put("k", b"auth is off again")


def test_unreachable_endpoint() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    repo = S3Repository.from_config(make_config(url, "bucket"))
    with pytest.raises(RepositoryError) as exc:
        repo.get("k")
    assert not isinstance(exc.value, ObjectNotFound)
    message = assert_operator_line(exc, SECRET_KEY)
    assert message == f"cannot reach S3 endpoint {url}: Connection refused; check [s3] endpoint_url and the network"


def test_s3_down_then_back(endpoint: MotoEndpoint, repo: S3Repository) -> None:
    repo.put("before", b"kept")
    endpoint.stop()
    try:
        with pytest.raises(RepositoryError, match="cannot reach S3 endpoint"):
            repo.put("during", b"x")
    finally:
        endpoint.start()
    repo.put("after", b"y")
    assert repo.get("before") == b"kept"  # moto's state lives in the process, not in the server
    assert [o.key for o in repo.list()] == ["after", "before"]


def test_no_credentials(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, endpoint: MotoEndpoint) -> None:
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "config"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    repo = S3Repository.from_config(make_config(endpoint.url, "bucket", access_key_id="", secret_access_key=""))
    with pytest.raises(RepositoryError) as exc:
        repo.put("k", b"x")
    message = assert_operator_line(exc)
    assert message.startswith("no S3 credentials for bucket 'bucket': set AWS_ACCESS_KEY_ID")


def test_half_configured_credentials_are_a_config_error(endpoint: MotoEndpoint) -> None:
    with pytest.raises(ConfigError) as exc:
        S3Repository.from_config(
            make_config(endpoint.url, "bucket", access_key_id="AKIAHALFCONFIGURED", secret_access_key="")
        )
    assert "only one of s3.access_key_id / s3.secret_access_key is set in /etc/pgdr/pgdr.toml" in str(exc.value)
    assert "AKIAHALFCONFIGURED" not in str(exc.value)


def test_invalid_key_is_refused(repo: S3Repository) -> None:
    for key in ("", "/abs", "a/../b"):
        with pytest.raises(RepositoryError, match="invalid object key"):
            repo.put(key, b"x")


def test_resumed_listings_and_folders_agree_with_the_local_repository(repo: S3Repository, tmp_path: Path) -> None:
    """``list(start_after=...)`` and ``folders`` in S3's key order, the same on both stores."""
    local = LocalRepository(tmp_path, "main")
    keys = ["a", "w/1-x/a", "w/1/a", "w/1/b", "w/10/a", "w/2/a", "w/2/b/c", "w/3"]
    for key in keys:
        repo.put(key, b"1")
        local.put(key, b"1")
    for store in (repo, local):
        assert store.folders("w/") == ("1-x", "1", "10", "2")
        assert [i.key for i in store.list("w/")] == keys[1:]
        for after in ("w/1/", "w/1/a", "w/10", "w/2/b", "w/3", "x"):
            assert [i.key for i in store.list("w/", start_after=after)] == [k for k in keys[1:] if k > after]
