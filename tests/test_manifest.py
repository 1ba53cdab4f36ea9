"""Backup manifests: a faithful JSON round trip, and one clear error for anything damaged."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from backend.errors import PgdrError
from backend.manifest import BackupManifest, StoredObject

WHERE = "local:backups/20240501T120000Z/manifest.json"


def physical() -> BackupManifest:
    return BackupManifest(
        name="20240501T120000Z",
        kind="physical",
        cluster="main",
        system_identifier=7_364_010_531_296_587_123,  # above 2**53: must not go through a float
        pg_version="16.3",
        start_time=datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=UTC),
        stop_time=datetime(2024, 5, 1, 12, 3, 7, tzinfo=UTC),
        objects=[
            StoredObject("base.tar.zst", 1000, "a" * 64, 5000, "b" * 64, "zstd"),
            StoredObject("backup_manifest", 300, "c" * 64, 300, "c" * 64, "none"),
        ],
        timeline=1,
        start_lsn="0/2000028",
        stop_lsn="0/2000100",
        wal_start="000000010000000000000002",
        wal_stop="000000010000000000000002",
        wal_segment_size=16 * 1024 * 1024,
        file_count=987,
        pgdr_version="0.1.0",
        extra={"label": "nightly", "tablespaces": []},
    )


def logical() -> BackupManifest:
    return BackupManifest(
        name="20240501T130000Z-logical",
        kind="logical",
        cluster="main",
        system_identifier=1,
        pg_version="17.0",
        start_time=datetime(2024, 5, 1, 13, 0, tzinfo=timezone(timedelta(hours=3))),
        stop_time=datetime(2024, 5, 1, 13, 1, tzinfo=timezone(timedelta(hours=3))),
        objects=[StoredObject("app.dump", 10, "d" * 64, 10, "d" * 64, "none")],
        database="app",
    )


@pytest.mark.parametrize("manifest", [physical(), logical()], ids=["physical", "logical"])
def test_round_trip(manifest: BackupManifest) -> None:
    raw = manifest.to_json()
    assert raw.endswith(b"\n")
    back = BackupManifest.from_json(raw, WHERE)
    assert back == manifest
    assert back.to_json() == raw
    assert back.start_time.tzinfo is not None
    assert back.start_time.utcoffset() == manifest.start_time.utcoffset()


def test_json_shape() -> None:
    manifest = physical()
    data = json.loads(manifest.to_json())
    assert data["format"] == 1
    assert data["system_identifier"] == "7364010531296587123"
    assert data["size_bytes"] == 5300 == manifest.size_bytes
    assert data["stored_bytes"] == 1300 == manifest.stored_bytes
    assert data["start_time"] == "2024-05-01T12:00:00.123456+00:00"
    assert manifest.key == "backups/20240501T120000Z/manifest.json"
    assert manifest.object_key(manifest.objects[0]) == "backups/20240501T120000Z/base.tar.zst"


def valid() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(physical().to_json())
    return data


def damaged(change: Any) -> bytes:
    data = valid()
    change(data)
    return json.dumps(data).encode()


def expect_damaged(raw: bytes) -> str:
    with pytest.raises(PgdrError) as info:
        BackupManifest.from_json(raw, WHERE)
    message = str(info.value)
    assert WHERE in message
    assert "\n" not in message
    assert type(info.value) is PgdrError
    return message


def _set(*path: Any, value: Any) -> Any:
    def change(data: Any) -> None:
        for step in path[:-1]:
            data = data[step]
        data[path[-1]] = value

    return change


def _drop(*path: Any) -> Any:
    def change(data: Any) -> None:
        for step in path[:-1]:
            data = data[step]
        del data[path[-1]]

    return change


@pytest.mark.parametrize(
    "key", ["name", "kind", "cluster", "system_identifier", "pg_version", "start_time", "stop_time", "objects"]
)
def test_missing_key(key: str) -> None:
    expect_damaged(damaged(_drop(key)))


@pytest.mark.parametrize("key", ["key", "size", "sha256", "raw_size", "raw_sha256", "compression"])
def test_missing_object_key(key: str) -> None:
    expect_damaged(damaged(_drop("objects", 0, key)))


@pytest.mark.parametrize("kind", ["incremental", "", None, 1, "PHYSICAL"])
def test_bad_kind(kind: Any) -> None:
    message = expect_damaged(damaged(_set("kind", value=kind)))
    assert "kind" in message


@pytest.mark.parametrize("fmt", [None, 0, 2, "1"])
def test_unknown_format(fmt: Any) -> None:
    message = expect_damaged(damaged(_set("format", value=fmt)))
    assert "format" in message


@pytest.mark.parametrize(
    "change",
    [
        _set("name", value=None),
        _set("name", value=["x"]),
        _set("cluster", value=None),
        _set("pg_version", value=16),
        _set("system_identifier", value="not a number"),
        _set("system_identifier", value=None),
        _set("start_time", value=5),
        _set("start_time", value="yesterday"),
        _set("stop_time", value=None),
        _set("objects", value=None),
        _set("objects", value="base.tar"),
        _set("objects", value={"key": "x"}),
        _set("objects", value=[1]),
        _set("objects", 0, "size", value="1000"),
        _set("objects", 0, "size", value=None),
        _set("objects", 0, "sha256", value=5),
        _set("objects", 0, "key", value=None),
        _set("objects", 0, "raw_size", value="5000"),
        _set("objects", 0, "raw_size", value=None),
        _set("objects", 0, "raw_sha256", value=5),
        _set("objects", 0, "compression", value=None),
        _set("objects", 0, "unexpected", value=1),
        _set("timeline", value="1"),
        _set("wal_segment_size", value="16MB"),
        _set("file_count", value=1.5),
        _set("start_lsn", value=5),
        _set("wal_start", value=["x"]),
        _set("database", value=7),
        _set("extra", value="notadict"),
        _set("extra", value=[1, 2]),
    ],
    ids=[
        "name-null",
        "name-list",
        "cluster-null",
        "pg_version-int",
        "sysid-text",
        "sysid-null",
        "start_time-int",
        "start_time-text",
        "stop_time-null",
        "objects-null",
        "objects-string",
        "objects-dict",
        "objects-int-item",
        "size-string",
        "size-null",
        "sha256-int",
        "key-null",
        "raw_size-string",
        "raw_size-null",
        "raw_sha256-int",
        "compression-null",
        "object-extra-key",
        "timeline-string",
        "segsize-string",
        "file_count-float",
        "start_lsn-int",
        "wal_start-list",
        "database-int",
        "extra-string",
        "extra-list",
    ],
)
def test_wrong_types(change: Any) -> None:
    expect_damaged(damaged(change))


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"\x00\x01\x02\xff\xfe",
        bytes(range(256)),
        b"{",
        b"not json",
        b"[]",
        b"null",
        b'"manifest"',
        b"42",
        b'{"format": 1}',
        b"{}",
        b"\xef\xbb\xbf{}",
    ],
    ids=[
        "empty",
        "binary",
        "all-bytes",
        "truncated",
        "text",
        "list",
        "null",
        "string",
        "number",
        "format-only",
        "empty-object",
        "bom",
    ],
)
def test_garbage(raw: bytes) -> None:
    expect_damaged(raw)


def test_truncated_manifest() -> None:
    raw = physical().to_json()
    for cut in (1, len(raw) // 3, len(raw) // 2, len(raw) - 3):
        expect_damaged(raw[:cut])


def test_damaged_manifest_loads_nothing_partial() -> None:
    """A damaged manifest never yields a manifest whose properties fail later."""
    raw = damaged(_set("objects", 0, "raw_size", value="5000"))
    try:
        manifest = BackupManifest.from_json(raw, WHERE)
    except PgdrError:
        return
    manifest.size_bytes  # noqa: B018 - would raise TypeError on the damaged value
