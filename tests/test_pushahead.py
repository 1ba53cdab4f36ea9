"""The push server's workers: an answer from a worker means this very file is stored, nothing less."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest

from backend.archive.pushahead import PushAhead
from backend.archive.walfile import find_archived
from backend.config import load_config
from backend.repository import Repository, open_repository

SEGMENT_SIZE = 1 << 20
HEADER = struct.Struct("<HHIQI4xQII")  # the long page header a segment starts with


def segment_bytes(fill: int) -> bytes:
    header = HEADER.pack(0xD110, 0x0002, 1, 0, 0, 7_000_000_000_000_000_123, SEGMENT_SIZE, 8192)
    return header + bytes([fill]) * (SEGMENT_SIZE - len(header))


@pytest.fixture
def setup(tmp_path: Path) -> tuple[PushAhead, Path, Repository]:
    pg_wal = tmp_path / "data" / "pg_wal"
    (pg_wal / "archive_status").mkdir(parents=True)
    for n in range(1, 7):
        name = f"{n:024X}"
        (pg_wal / name).write_bytes(segment_bytes(n))
        (pg_wal / "archive_status" / f"{name}.ready").touch()
    config = tmp_path / "pgdr.toml"
    config.write_text(
        f'[cluster]\nname = "main"\n[postgres]\ndata_dir = "{tmp_path / "data"}"\n'
        f'[local]\npath = "{tmp_path / "repo"}"\n[archive]\npush_ahead = 3\n'
    )
    config.chmod(0o600)
    cfg = load_config(config)
    repositories = {"local": open_repository(cfg, "local")}
    return PushAhead(cfg, repositories), pg_wal, repositories["local"]


def test_workers_store_the_next_ready_segments_and_the_request_takes_them(
    setup: tuple[PushAhead, Path, Repository],
) -> None:
    ahead, pg_wal, repo = setup
    ahead.schedule(str(pg_wal / f"{1:024X}"))
    assert sorted(Path(k).name for k in ahead.pending) == [f"{n:024X}" for n in (2, 3, 4)], "push_ahead at most"
    assert ahead.take(str(pg_wal / f"{2:024X}"))
    assert find_archived(repo, f"{2:024X}"), "taken means stored"
    assert not ahead.take(str(pg_wal / f"{5:024X}")), "never scheduled: the request pushes it itself"
    ahead.close()


def test_a_file_changed_after_its_push_is_not_taken(setup: tuple[PushAhead, Path, Repository]) -> None:
    ahead, pg_wal, _ = setup
    ahead.schedule(str(pg_wal / f"{1:024X}"))
    third = pg_wal / f"{3:024X}"
    ahead.pending[str(third)].result()  # stored; now another file takes its place
    replacement = third.with_name("new")
    replacement.write_bytes(segment_bytes(0xEE))
    os.replace(replacement, third)
    assert not ahead.take(str(third))
    ahead.close()


def test_a_segment_the_worker_cannot_store_is_not_taken(setup: tuple[PushAhead, Path, Repository]) -> None:
    ahead, pg_wal, repo = setup
    fourth = pg_wal / f"{4:024X}"
    fourth.write_bytes(b"not a WAL segment")
    ahead.schedule(str(pg_wal / f"{3:024X}"))
    assert not ahead.take(str(fourth))
    assert not find_archived(repo, fourth.name)
    assert ahead.take(str(pg_wal / f"{5:024X}")), "the others are still taken"
    ahead.close()
