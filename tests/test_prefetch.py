"""WAL prefetch for recovery: segments fetched ahead are verified, used, and cleaned up."""

from __future__ import annotations

import fcntl
import hashlib
import os
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from backend.archive import prefetch
from backend.archive.walfile import find_archived
from backend.config import load_config
from backend.repository import open_repository
from tests.harness.cluster import Cluster, clean_env, pgdr_executable


def make_segments(cluster: Cluster, count: int) -> list[str]:
    cluster.sql("CREATE TABLE t (x int)")
    names = []
    for _ in range(count):
        cluster.sql("INSERT INTO t SELECT generate_series(1, 1000)")
        names.append(cluster.switch_wal())
    cluster.wait_archived(names[-1])
    return names


def pgdr(cluster: Cluster, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(pgdr_executable()), "--config", str(cluster.config_path), *args],
        capture_output=True,
        text=True,
        env=clean_env(),
        check=False,
    )


def test_prefetch_stops_at_a_corrupt_segment_and_fetch_refuses_it(cluster: Cluster, tmp_path: Path) -> None:
    names = make_segments(cluster, 4)
    repo = open_repository(load_config(cluster.config_path), "local")
    (obj,) = find_archived(repo, names[2])
    stored = cluster.local_repo / "main" / obj.key
    stored.write_bytes(stored.read_bytes()[:-100] + bytes(100))

    folder = tmp_path / "pgdr-prefetch"
    folder.mkdir()
    assert pgdr(cluster, "wal-prefetch", str(folder), "--after", names[0]).returncode == 0
    prefetched = {p.name for p in folder.iterdir() if not p.name.startswith(".")}
    assert names[1] in prefetched and names[2] not in prefetched, "only verified segments are placed"

    # restore_command takes the prefetched segment by rename, and refuses the corrupt one.
    assert pgdr(cluster, "wal-fetch", names[1], str(tmp_path / "RECOVERYXLOG")).returncode == 0
    assert not (folder / names[1]).exists() and (tmp_path / "RECOVERYXLOG").stat().st_size == 16 << 20
    refused = pgdr(cluster, "wal-fetch", names[2], str(tmp_path / "RECOVERYXLOG2"))
    assert refused.returncode == 2 and not (tmp_path / "RECOVERYXLOG2").exists()


def test_restore_uses_prefetch_and_cleans_it_up(cluster: Cluster) -> None:
    cluster.pgdr("backup")
    make_segments(cluster, 6)
    result = cluster.pgdr("restore", "--latest", "--yes", timeout=600)
    assert "Restore finished" in result.stdout, result.stdout
    assert cluster.sql("SELECT count(*) FROM t")[0][0] == 6000
    assert not (cluster.data_dir / "pg_wal" / "pgdr-prefetch").exists()


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def prefetcher(cluster: Cluster, folder: Path, after: str) -> tuple[threading.Thread, list[str]]:
    """run_prefetch in a thread, two segments ahead, as ``wal-prefetch`` runs it."""
    cfg = load_config(cluster.config_path)
    cfg = replace(cfg, restore=replace(cfg.restore, prefetch=2, prefetch_workers=1))
    placed: list[str] = []
    thread = threading.Thread(target=lambda: placed.extend(prefetch.run_prefetch(cfg, folder, after)))
    thread.start()
    return thread, placed


def intact(cluster: Cluster, name: str, path: Path) -> bool:
    repo = open_repository(load_config(cluster.config_path), "local")
    (obj,) = find_archived(repo, name)
    return hashlib.sha256(path.read_bytes()).hexdigest() == obj.checksum


def test_one_prefetcher_follows_recovery_and_a_waiting_fetch_gets_its_segment(
    cluster: Cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    names = make_segments(cluster, 6)
    monkeypatch.setattr(prefetch, "LINGER", 1.0)
    pg_wal = tmp_path / "pg_wal"
    folder = pg_wal / prefetch.FOLDER
    folder.mkdir(parents=True)
    thread, placed = prefetcher(cluster, folder, names[0])
    wait_until((folder / names[2]).exists, "the first window")
    assert not (folder / names[3]).exists(), "no further ahead than restore.prefetch"

    # Recovery skips ahead: the request moves the window, the waiting fetch gets the segment.
    destination = pg_wal / "RECOVERYXLOG"
    cfg = load_config(cluster.config_path)
    assert prefetch.request(cfg, names[3], destination), "the running prefetcher is found, none is started"
    assert prefetch.take(names[3], destination, wait=True)
    assert intact(cluster, names[3], destination)
    wait_until((folder / names[4]).exists, "the window to follow the request")
    assert not (folder / names[1]).exists() and not (folder / names[2]).exists(), "passed segments are dropped"

    thread.join(timeout=30)  # nothing more is asked for: it leaves after LINGER
    assert not thread.is_alive()
    assert {names[1], names[2], names[3], names[4]} <= set(placed)


def test_a_fetch_waits_only_for_what_a_running_prefetcher_can_still_bring(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(prefetch, "WAIT_LIMIT", 0.5)
    destination = tmp_path / "RECOVERYXLOG"
    folder = prefetch.prefetch_dir(destination)
    folder.mkdir()
    first, later = "000000010000000000000005", "000000010000000000000007"
    started = time.monotonic()
    assert not prefetch.take(first, destination, wait=True), "no prefetcher runs: nothing to wait for"
    fd = os.open(folder / prefetch.LOCK, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # a prefetcher is running
        (folder / prefetch.FAILED).write_text("000000010000000000000006")
        assert not prefetch.take(later, destination, wait=True), "it gave up at an earlier segment"
        assert time.monotonic() - started < 0.4, "without waiting"
        assert not prefetch.take(first, destination, wait=True), "WAIT_LIMIT bounds the wait"
    finally:
        os.close(fd)
    assert not destination.exists()


def test_clean_stops_a_running_prefetcher_and_leaves_nothing(cluster: Cluster, tmp_path: Path) -> None:
    names = make_segments(cluster, 3)
    folder = tmp_path / "pg_wal" / prefetch.FOLDER
    folder.mkdir(parents=True)
    thread, _ = prefetcher(cluster, folder, names[0])
    wait_until((folder / names[1]).exists, "a prefetched segment")
    prefetch.clean(tmp_path)
    thread.join(timeout=5)  # clean returned when it let go of the lock; the thread is just returning
    assert not thread.is_alive()
    assert os.listdir(tmp_path / "pg_wal") == []
