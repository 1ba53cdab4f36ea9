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
from backend.walnames import SegmentName
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
    command = [str(pgdr_executable()), "--config", str(cluster.config_path), "wal-prefetch", str(folder)]
    running = subprocess.Popen([*command, "--after", names[0]], env=clean_env())
    try:
        wait_until((folder / names[1]).exists, "a prefetched segment")
        assert not (folder / names[2]).exists(), "one segment deep until recovery takes it"

        # restore_command takes the prefetched segment by rename, and refuses the corrupt one.
        assert pgdr(cluster, "wal-fetch", names[1], str(tmp_path / "RECOVERYXLOG")).returncode == 0
        assert not (folder / names[1]).exists() and (tmp_path / "RECOVERYXLOG").stat().st_size == 16 << 20
        refused = pgdr(cluster, "wal-fetch", names[2], str(tmp_path / "RECOVERYXLOG2"))
        assert refused.returncode == 2 and not (tmp_path / "RECOVERYXLOG2").exists()
        assert "no intact copy" in refused.stderr
        assert names[2] not in os.listdir(folder), "only verified segments are placed"
    finally:
        assert running.wait(timeout=60) == 0  # it leaves after LINGER
    assert not folder.exists(), "and takes its folder, with what it still held, along"


def test_restore_uses_prefetch_and_cleans_it_up(cluster: Cluster) -> None:
    cluster.pgdr("backup")
    make_segments(cluster, 6)
    result = cluster.pgdr("restore", "--latest", "--yes", timeout=600)
    assert "Restore finished" in result.stdout, result.stdout
    assert cluster.sql("SELECT count(*) FROM t")[0][0] == 6000
    assert not (cluster.data_dir / "pg_wal" / "pgdr-prefetch").exists()
    # The restore's own prefetcher answered through the quick restore_command of that one start; the
    # configuration keeps the plain one.
    assert "prefetch import main" not in (cluster.data_dir / "postgresql.auto.conf").read_text()
    if cluster.pgdr_for_server == pgdr_executable():  # the server's user can run this interpreter
        assert "prefetch import main" in (cluster.data_dir / "postmaster.opts").read_text()


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
    names = make_segments(cluster, 7)
    monkeypatch.setattr(prefetch, "LINGER", 1.0)
    pg_wal = tmp_path / "pg_wal"
    folder = pg_wal / prefetch.FOLDER
    folder.mkdir(parents=True)
    thread, placed = prefetcher(cluster, folder, names[0])
    wait_until((folder / names[1]).exists, "the segment after the first")
    assert not (folder / names[2]).exists(), "one segment deep until recovery takes it"

    destination = pg_wal / "RECOVERYXLOG"
    config = prefetch.identity(load_config(cluster.config_path))
    assert prefetch.obtain(names[1], destination, config) == prefetch.TAKEN
    assert intact(cluster, names[1], destination)
    wait_until((folder / names[3]).exists, "the window to deepen as recovery goes on")
    assert (folder / names[2]).exists() and not (folder / names[4]).exists(), "no further ahead than restore.prefetch"

    # Recovery skips ahead: the request moves the window, the waiting fetch gets the segment.
    assert prefetch.obtain(names[5], destination, config) == prefetch.TAKEN, "the running prefetcher answers"
    assert intact(cluster, names[5], destination)
    wait_until((folder / names[6]).exists, "the window to follow the request")
    assert not (folder / names[2]).exists() and not (folder / names[3]).exists(), "passed segments are dropped"

    thread.join(timeout=30)  # nothing more is asked for: it leaves after LINGER, and takes its folder along
    assert not thread.is_alive()
    assert not folder.exists()
    assert {names[1], names[2], names[3], names[5], names[6]} <= set(placed)
    assert names[4] not in placed


def answering(folder: Path, verdict: str, *, nonce: str | None = None) -> threading.Thread:
    """A stand-in prefetcher's answer to the next request: ``verdict`` for its nonce (or ``nonce``)."""

    def answer() -> None:
        wait_until(lambda: len(prefetch._read_note(folder / prefetch.WANTED).split()) == 2, "a request")
        name, asked = prefetch._read_note(folder / prefetch.WANTED).split()
        (folder / prefetch.FAILED).write_text(f"{name} {nonce or asked} {verdict}")

    thread = threading.Thread(target=answer)
    thread.start()
    return thread


def test_a_fetch_takes_only_a_fresh_answer_to_its_own_request(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(prefetch, "WAIT_LIMIT", 0.5)
    destination = tmp_path / "RECOVERYXLOG"
    folder = Path(prefetch.prefetch_dir(destination))
    folder.mkdir()
    name = "000000010000000000000005"
    started = time.monotonic()
    assert prefetch.obtain(name, destination, "pgdr.toml") == "", "no prefetcher runs: nothing to wait for"
    assert time.monotonic() - started < 0.4, "without waiting"
    fd = os.open(folder / prefetch.LOCK, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # a prefetcher is running
        os.write(fd, b"plain.0123456789abcdef\npgdr.toml")  # named by its fingerprint and its config file
        (folder / name).write_bytes(b"placed by a prefetcher of another config")
        assert prefetch.obtain(name, destination, "other.toml") == "", "another config's prefetcher is no help"
        (folder / name).unlink()
        for verdict in (prefetch.ABSENT, prefetch.DAMAGED):  # on DAMAGED the asker fetches by itself
            (folder / prefetch.WANTED).unlink(missing_ok=True)
            answer = answering(folder, verdict)
            assert prefetch.obtain(name, destination, "pgdr.toml") == verdict
            answer.join()
        (folder / prefetch.WANTED).unlink()
        answer = answering(folder, prefetch.ABSENT, nonce="1.2")
        started = time.monotonic()
        # an answer to another request is no answer: after WAIT_LIMIT, fetch it yourself (and ask no more)
        assert prefetch.obtain(name, destination, "pgdr.toml") == prefetch.DAMAGED
        assert time.monotonic() - started >= 0.5, "WAIT_LIMIT bounds the wait"
        answer.join()
    finally:
        os.close(fd)
    assert not destination.exists()


def test_the_restores_prefetcher_answers_any_request_freshly(cluster: Cluster, tmp_path: Path) -> None:
    """What pgdr restore's own prefetcher tells its restore_command: history files, a segment asked
    for again, the end of the archive as it is when asked, and the plain command for a damaged copy."""
    names = make_segments(cluster, 3)
    cfg = load_config(cluster.config_path)
    repos = [open_repository(cfg, "local")]
    stored = cluster.local_repo / "main" / find_archived(repos[0], names[2])[0].key
    stored.write_bytes(stored.read_bytes()[:-100] + bytes(100))
    pg_wal = tmp_path / "pg_wal"
    pg_wal.mkdir()
    thread = prefetch.serve_restore(cfg, repos, pg_wal, SegmentName.parse(names[0]), None)
    assert thread is not None
    restore_command = prefetch.restore_command(cfg, "echo plain %f; exit 3")

    def ask(name: str) -> subprocess.CompletedProcess[str]:
        """As PostgreSQL runs it: %f and %p replaced, through the shell, from the data directory."""
        destination = "pg_wal/RECOVERYHISTORY" if name.endswith(".history") else "pg_wal/RECOVERYXLOG"
        command = restore_command.replace("%f", name).replace("%p", destination)
        return subprocess.run(["/bin/sh", "-c", command], cwd=tmp_path, capture_output=True, text=True, check=False)

    try:
        for name in (names[0], names[1], names[0]):  # the first one again, as recovery asks at its end
            assert ask(name).returncode == 0, name
            assert intact(cluster, name, pg_wal / "RECOVERYXLOG")
        absent = ask("00000002.history")
        assert (absent.returncode, absent.stderr) == (1, "pgdr: 00000002.history is not in any repository\n")
        refused = ask(names[2])
        assert (refused.returncode, refused.stdout.strip()) == (3, f"plain {names[2]}"), "damaged: the plain command"
        following = SegmentName.parse(names[2]).next().name
        assert ask(following).returncode == 1, "not archived yet"
        cluster.sql("INSERT INTO t SELECT 1")
        assert cluster.switch_wal() == following
        cluster.wait_archived(following)
        assert ask(following).returncode == 0, "archived since it was last asked for: the answer is fresh"
        assert intact(cluster, following, pg_wal / "RECOVERYXLOG")
    finally:
        prefetch.clean(tmp_path)
        thread.join(timeout=30)
    assert not thread.is_alive()
    assert sorted(os.listdir(pg_wal)) == ["RECOVERYXLOG"]


def test_the_window_follows_files_taken_without_a_note(cluster: Cluster, tmp_path: Path) -> None:
    """The quick restore_command takes placed files with mv, writing no ``.wanted``: gone is taken."""
    names = make_segments(cluster, 5)
    cfg = load_config(cluster.config_path)
    cfg = replace(cfg, restore=replace(cfg.restore, prefetch=2, prefetch_workers=1))
    pg_wal = tmp_path / "pg_wal"
    pg_wal.mkdir()
    folder = pg_wal / prefetch.FOLDER
    thread = prefetch.serve_restore(cfg, [open_repository(cfg, "local")], pg_wal, SegmentName.parse(names[0]), None)
    assert thread is not None
    try:
        wait_until((folder / names[1]).exists, "the first window")
        assert not (folder / names[2]).exists(), "no further ahead than restore.prefetch"
        for name in names[:4]:  # each one taken brings the one after the next
            wait_until((folder / name).exists, name)
            os.rename(folder / name, pg_wal / "RECOVERYXLOG")
        wait_until((folder / names[4]).exists, "the window to follow")
    finally:
        prefetch.clean(tmp_path)
        thread.join(timeout=30)
    assert not thread.is_alive()


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
