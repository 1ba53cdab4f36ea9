"""The push server's workers: an answer from a worker means this very file is stored, nothing less."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest

from backend.archive.push import read_wal
from backend.archive.pushahead import PushAhead
from backend.archive.pushd import serve
from backend.archive.walfile import find_archived
from backend.config import load_config
from backend.repository import Repository, open_repository

SEGMENT_SIZE = 1 << 20
HEADER = struct.Struct("<HHIQI4xQII")  # the long page header a segment starts with


def segment_bytes(fill: int, number: int | None = None) -> bytes:
    """Segment ``number`` (default: ``fill``) of a made-up cluster, its pages filled with ``fill``."""
    start = (fill if number is None else number) * SEGMENT_SIZE
    header = HEADER.pack(0xD110, 0x0002, 1, start, 0, 7_000_000_000_000_000_123, SEGMENT_SIZE, 8192)
    return header + bytes([fill]) * (SEGMENT_SIZE - len(header))


def ready_backlog(tmp_path: Path, archive: str = "") -> tuple[Path, Path]:
    """pg_wal with six segments marked ready, and a config pushing 3 ahead: (pg_wal, config)."""
    pg_wal = tmp_path / "data" / "pg_wal"
    (pg_wal / "archive_status").mkdir(parents=True)
    for n in range(1, 7):
        name = f"{n:024X}"
        (pg_wal / name).write_bytes(segment_bytes(n))
        (pg_wal / "archive_status" / f"{name}.ready").touch()
    config = tmp_path / "pgdr.toml"
    config.write_text(
        f'[cluster]\nname = "main"\n[postgres]\ndata_dir = "{tmp_path / "data"}"\n'
        f'[local]\npath = "{tmp_path / "repo"}"\n[archive]\npush_ahead = 3\n{archive}'
    )
    config.chmod(0o600)
    return pg_wal, config


@pytest.fixture
def setup(tmp_path: Path) -> tuple[PushAhead, Path, Repository]:
    pg_wal, config = ready_backlog(tmp_path)
    cfg = load_config(config)
    return PushAhead(cfg, {}), pg_wal, open_repository(cfg, "local")


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
    replacement.write_bytes(segment_bytes(0xEE, 3))
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


def test_a_server_started_by_a_push_stores_the_ready_segments_behind_it_unasked(tmp_path: Path) -> None:
    """A cold wal-push starts the server with the segment it pushes itself: the server's workers take
    the backlog behind it at once instead of after the archiver's next request."""
    pg_wal, config = ready_backlog(tmp_path, "server_idle = 1\n")
    answered = serve(str(config), after=str(pg_wal / f"{1:024X}"))
    repo = open_repository(load_config(config), "local")
    assert answered == 0
    assert [n for n in range(1, 7) if find_archived(repo, f"{n:024X}")] == [2, 3, 4], "push_ahead behind the first"


def test_each_read_holds_exactly_its_file_though_the_buffer_is_reused(tmp_path: Path) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    first.write_bytes(b"a" * 5000)
    second.write_bytes(b"b" * 3000)
    assert bytes(read_wal(first)) == b"a" * 5000
    assert bytes(read_wal(second)) == b"b" * 3000, "nothing of the longer file before it shows"
