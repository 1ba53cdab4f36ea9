"""Archived segments pg_waldump cannot index (a damaged copy, a file that is not WAL): read once,
remembered with the stored copies that were tried, counted, and still part of the archive.

A made-up repository of a backup and a few segments, read the way ``pgdr timeline`` reads it (the
catalog, then the WAL index within the view's budget), with every WAL object read counted.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pytest import MonkeyPatch

from backend.archive import index, segmentreader
from backend.archive.index import SegmentIndexes, ensure_indexes, index_archive, index_key
from backend.archive.walfile import WalObject
from backend.catalog import read_catalog, recovery_timeline
from backend.config import ClusterConfig, Config, LocalConfig, PostgresConfig
from backend.errors import RepositoryError
from backend.manifest import BackupManifest
from backend.recovery import VIEW_INDEX_BUDGET_S
from backend.repository import ClusterIdentity, ensure_identity, open_repositories
from backend.repository.local import LocalRepository
from backend.timeline import RecoveryTimeline
from backend.walindex import SegmentIndex, WalIndexError
from backend.walnames import SegmentName, format_lsn
from tests.harness.cluster import PG_BIN

SIZE = 16 << 20
FIRST = 0x10
START = datetime(2026, 3, 1, tzinfo=UTC)


def segment(i: int) -> str:
    return SegmentName(1, FIRST + i, SIZE).name


def archive(repo: LocalRepository, i: int, data: bytes = b"not WAL", *, stored: bytes | None = None) -> str:
    """Archive segment ``i`` (``stored``: bytes other than the ones its sha256 is of, a damaged copy),
    archived ``i`` minutes after START; returns its key."""
    key = WalObject(segment(i), hashlib.sha256(data).hexdigest(), "none").key
    repo.put(key, data if stored is None else stored)
    when = (START + timedelta(minutes=i)).timestamp()
    os.utime(repo.root / key, (when, when))
    return key


@pytest.fixture
def repo(tmp_path: Path) -> LocalRepository:
    """A repository holding one backup, taken at START in the first segment."""
    repo = LocalRepository(tmp_path / "repo", "main")
    ensure_identity(repo, ClusterIdentity(1, SIZE), "main")
    lsn = SegmentName(1, FIRST, SIZE).start_lsn + 0x28
    manifest = BackupManifest(
        name="20260301T000000Z",
        kind="physical",
        cluster="main",
        system_identifier=1,
        pg_version="15.0",
        start_time=START - timedelta(seconds=5),
        stop_time=START,
        objects=[],
        timeline=1,
        start_lsn=format_lsn(lsn),
        stop_lsn=format_lsn(lsn + 0x138),
        wal_start=segment(0),
        wal_stop=segment(0),
        wal_segment_size=SIZE,
    )
    repo.put(manifest.key, manifest.to_json())
    return repo


def config(tmp_path: Path, bin_dir: Path = PG_BIN) -> Config:
    return Config(
        cluster=ClusterConfig(name="main"),
        local=LocalConfig(path=str(tmp_path / "repo")),
        postgres=PostgresConfig(bin_dir=str(bin_dir)),
    )


@pytest.fixture
def wal_reads(monkeypatch: MonkeyPatch) -> Iterator[list[str]]:
    """The keys of the WAL objects read from local repositories, in order."""
    reads: list[str] = []
    get = LocalRepository.get

    def counted(self: LocalRepository, key: str) -> bytes:
        if key.startswith("wal/"):
            reads.append(key)
        return get(self, key)

    monkeypatch.setattr(LocalRepository, "get", counted)
    yield reads


def timeline(cfg: Config) -> tuple[SegmentIndexes, RecoveryTimeline]:
    """What ``pgdr timeline`` computes: the catalog, the WAL index within its budget, the windows."""
    repos = open_repositories(cfg)
    catalog = read_catalog(repos)
    indexes = ensure_indexes(cfg, repos, catalog.columns, catalog.segment_size, budget_s=VIEW_INDEX_BUDGET_S)
    return indexes, recovery_timeline(catalog, indexes.commit_columns)


def fake_waldump(unreadable: set[str], tail_complete: bool, ran: list[str]) -> Callable[[Path, str], SegmentIndex]:
    """A stand-in for ``index_segment``: a commit per segment, refusing the ``unreadable`` ones."""

    def index_segment(path: Path, pg_waldump: str) -> SegmentIndex:
        ran.append(path.name)
        if path.name in unreadable:
            raise WalIndexError(f"{path} is not a PostgreSQL WAL segment")
        when = START + timedelta(minutes=int(path.name[16:], 16) - FIRST)
        return SegmentIndex(
            segment=path.name, first_commit=when, last_commit=when, commits=1, tail_complete=tail_complete
        )

    return index_segment


def test_a_segment_that_cannot_be_indexed_is_read_once_and_stays_in_the_archive(
    tmp_path: Path, repo: LocalRepository, wal_reads: list[str]
) -> None:
    keys = [archive(repo, i) for i in range(5)]  # intact copies, but not WAL: pg_waldump's reader refuses them
    keys.append(archive(repo, 5, b"WAL bytes", stored=b"WAL bytez"))  # a damaged copy: fails its sha256
    cfg = config(tmp_path)

    indexes, first = timeline(cfg)
    assert (indexes.unreadable, indexes.pending, indexes.indexed) == (6, 0, 0)
    assert sorted(wal_reads) == sorted(keys)
    # Present, so replay runs through them: one window to the last segment, no gap; its end is the
    # last segment's archive time, since no commit time is known.
    (window,) = first.windows
    assert not first.gaps
    assert window.last_segment.name == segment(5)
    assert window.end == START + timedelta(minutes=5)

    wal_reads.clear()
    indexes, again = timeline(cfg)
    assert wal_reads == []  # the next command does not fetch them again
    assert (indexes.unreadable, indexes.pending) == (6, 0)
    assert again.windows == first.windows

    # The damaged copy replaced by a good one (same key and size, written now): read again, and only it.
    repo.put(keys[5], b"WAL bytes")
    wal_reads.clear()
    indexes, _ = timeline(cfg)
    assert wal_reads == [keys[5]]
    assert indexes.unreadable == 6  # intact now, but still not WAL
    wal_reads.clear()
    timeline(cfg)
    assert wal_reads == []


def test_a_segment_out_of_reach_waits_and_is_tried_again_later(
    tmp_path: Path, repo: LocalRepository, wal_reads: list[str], monkeypatch: MonkeyPatch
) -> None:
    keys = [archive(repo, i) for i in range(3)]
    cfg = config(tmp_path)
    get = LocalRepository.get

    def unreachable(self: LocalRepository, key: str) -> bytes:
        data = get(self, key)  # counted
        if key.startswith("wal/"):
            raise RepositoryError(f"cannot read {key}: Input/output error")
        return data

    monkeypatch.setattr(LocalRepository, "get", unreachable)
    indexes, _ = timeline(cfg)
    assert (indexes.pending, indexes.unreadable) == (3, 0)  # not their fault: not marked unreadable
    wal_reads.clear()
    indexes, _ = timeline(cfg)
    assert wal_reads == [] and indexes.pending == 3  # not on every command

    later = time.time() + index.RETRY_AFTER_S + 1
    monkeypatch.setattr(time, "time", lambda: later)
    indexes, _ = timeline(cfg)
    assert sorted(wal_reads) == sorted(keys) and indexes.pending == 3


def test_an_entry_another_host_stored_wins_over_a_failure_here(
    tmp_path: Path, repo: LocalRepository, wal_reads: list[str]
) -> None:
    for i in range(3):
        archive(repo, i)
    cfg = config(tmp_path)
    assert timeline(cfg)[0].unreadable == 3

    when = START + timedelta(minutes=1, seconds=30)
    entry = SegmentIndex(segment=segment(1), first_commit=when, last_commit=when, commits=1, tail_complete=True)
    repo.put(index_key(segment(1)), json.dumps(entry.to_json()).encode())
    wal_reads.clear()
    indexes, _ = timeline(cfg)
    assert wal_reads == []
    assert (indexes.unreadable, indexes[segment(1)].last_commit) == (2, when)
    assert indexes.commit_columns([segment(i) for i in range(3)])[0] == [False, True, False]
    assert timeline(cfg)[0].unreadable == 2  # the failure is forgotten, the entry kept


def test_without_pg_waldump_no_segment_is_blamed(tmp_path: Path, repo: LocalRepository) -> None:
    for i in range(3):
        archive(repo, i)
    no_programs = tmp_path / "bin"
    no_programs.mkdir()
    indexes, _ = timeline(config(tmp_path, no_programs))
    assert (indexes.pending, indexes.unreadable) == (3, 0)
    indexes, _ = timeline(config(tmp_path))  # PostgreSQL's programs installed: tried at once
    assert (indexes.pending, indexes.unreadable) == (0, 3)


def test_the_daemon_indexes_what_nothing_indexed_yet(
    tmp_path: Path, repo: LocalRepository, monkeypatch: MonkeyPatch
) -> None:
    """``index_archive``: the daemon's job for an archive no background indexer serves (S3 only)."""
    for i in range(4):
        archive(repo, i, segment(i).encode())
    archive(repo, 4, b"WAL bytes", stored=b"WAL bytez")
    monkeypatch.setattr(index, "index_segment", fake_waldump(set(), True, []))
    done = index_archive(config(tmp_path))
    assert (done.indexed, done.unreadable, done.pending) == (4, 1, 0)
    assert [repo.exists(index_key(segment(i))) for i in range(5)] == [True] * 4 + [False]
    again = index_archive(config(tmp_path))
    assert (again.indexed, again.unreadable, len(again)) == (0, 1, 4)


def test_the_segment_before_an_unreadable_one_is_not_indexed_again_on_every_command(
    tmp_path: Path, repo: LocalRepository, monkeypatch: MonkeyPatch
) -> None:
    """Its last record runs into the unreadable one, so its entry stays incomplete: waiting for that
    segment would mean pg_waldump on every command."""
    for i in range(2):
        archive(repo, i, segment(i).encode())
    ran: list[str] = []
    monkeypatch.setattr(index, "index_segment", fake_waldump({segment(1)}, False, ran))
    indexes, _ = timeline(config(tmp_path))
    assert ran == [segment(1), segment(0)] and (indexes.indexed, indexes.unreadable) == (1, 1)
    ran.clear()
    indexes, _ = timeline(config(tmp_path))
    assert ran == [] and segment(0) in indexes and not indexes[segment(0)].tail_complete


class RemoteRepository(LocalRepository):
    """A local directory answering like a remote store (no folder times, no local files)."""

    def local_root(self) -> None:  # type: ignore[override]
        return None


@pytest.mark.parametrize("store", [LocalRepository, RemoteRepository])
def test_segments_read_ahead_in_batches_come_to_pg_waldump_in_order(
    tmp_path: Path, repo: LocalRepository, monkeypatch: MonkeyPatch, store: type[LocalRepository]
) -> None:
    monkeypatch.setattr(segmentreader, "BATCH_SEGMENTS", 3)  # a batch per 3 small segments: several batches
    for i in range(10):
        archive(repo, i, segment(i).encode())
    archive(repo, 10, b"WAL bytes", stored=b"WAL bytez")
    archived = store(tmp_path / "repo", "main")
    catalog = read_catalog([archived])
    ran: list[str] = []
    monkeypatch.setattr(index, "index_segment", fake_waldump(set(), True, ran))
    cfg = config(tmp_path)

    nothing = ensure_indexes(cfg, [archived], catalog.columns, SIZE, budget_s=0.0)
    assert (nothing.pending, ran) == (11, [])
    done = ensure_indexes(cfg, [archived], catalog.columns, SIZE, budget_s=60.0)
    assert ran == [segment(i) for i in reversed(range(10))]  # newest first
    assert (done.indexed, done.unreadable, done.pending) == (10, 1, 0)


def test_pgdr_timeline_tells_the_operator_how_many_segments_cannot_be_indexed(
    tmp_path: Path, repo: LocalRepository, capsys: pytest.CaptureFixture[str], monkeypatch: MonkeyPatch
) -> None:
    from pgdr_tui.cli import main

    monkeypatch.setenv("PGDR_STATE_DIR", str(tmp_path / "state"))
    for i in range(4):
        archive(repo, i)
    path = tmp_path / "pgdr.toml"
    path.write_text(f'[cluster]\nname = "main"\n[local]\npath = "{repo.root.parent}"\n')
    path.chmod(0o600)
    assert main(["--config", str(path), "timeline", "--json"]) == 0
    body = json.loads(capsys.readouterr().out)
    assert (body["unreadable_segments"], body["unindexed_segments"]) == (4, 0)
    assert [w["base_backup"] for w in body["windows"]] == ["20260301T000000Z"]  # no gap for them
    assert main(["--config", str(path), "timeline"]) == 0
    assert "4 archived segments cannot be indexed (damaged copies, or not WAL)" in capsys.readouterr().out
