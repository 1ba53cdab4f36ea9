"""The push server: wal-push answered by a resident process, and every answer still means "stored"."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
from pathlib import Path

import pytest

from backend.archive.walfile import find_archived
from backend.config import load_config
from backend.repository import open_repository
from tests.conftest import s3_settings
from tests.harness.cluster import Cluster, as_server_user, wait_for
from tests.harness.s3 import MotoEndpoint


def pushd_dir(cluster: Cluster) -> Path:
    """Where the server user's push servers listen (its state dir: see Cluster.server_env)."""
    return cluster.root / "server-state" / "pgdr" / "pushd"


def servers(cluster: Cluster, column: int = 1) -> dict[int, int]:
    """pid -> requests answered (``column`` 2: of them, stored ahead by a worker), from each server's
    lock file (stale entries of killed ones included)."""
    found = {}
    for lock in pushd_dir(cluster).glob("*.lock") if pushd_dir(cluster).is_dir() else []:
        fields = lock.read_text().split()
        if len(fields) == 3:
            found[int(fields[0])] = int(fields[column])
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def archive_until_served(cluster: Cluster, answered: int, timeout: float = 60) -> list[str]:
    """Write WAL until live servers have answered ``answered`` requests; returns the segments written."""
    names: list[str] = []

    def enough() -> bool:
        names.extend(cluster.write_wal(1))
        cluster.wait_archived(names[-1])
        return sum(n for pid, n in servers(cluster).items() if alive(pid)) >= answered

    wait_for(enough, timeout, f"a push server to answer {answered} pushes")
    return names


def all_done_are_stored(cluster: Cluster, repo_name: str = "local") -> list[str]:
    """Every segment PostgreSQL counts as archived (a .done file) is in the repository."""
    repo = open_repository(load_config(cluster.config_path), repo_name)
    done = sorted(p.name[: -len(".done")] for p in (cluster.data_dir / "pg_wal" / "archive_status").glob("*.done"))
    missing = [name for name in done if len(name) == 24 and not find_archived(repo, name)]
    assert missing == [], f"acknowledged but not stored: {missing}"
    return done


def test_a_workload_is_archived_through_the_server(cluster: Cluster) -> None:
    names = archive_until_served(cluster, 3)
    names += cluster.write_wal(3)
    cluster.wait_archived(names[-1])
    assert all_done_are_stored(cluster)[-1] >= names[-1]
    (pid,) = [pid for pid in servers(cluster) if alive(pid)]
    assert servers(cluster)[pid] >= 6, "the later pushes were answered by the one server"
    folder = pushd_dir(cluster)
    assert folder.stat().st_mode & 0o777 == 0o700
    # It goes away by itself once idle (archive.server_idle, 10 s by default).
    wait_for(lambda: not alive(pid), 30, "the idle push server to exit")
    assert not list(folder.glob("*.sock")), "an exiting server removes its socket"


def test_a_backlog_is_pushed_ahead_by_the_servers_workers(cluster: Cluster) -> None:
    cluster.write_config(cluster.base_config() + "\n[archive]\nserver_idle = 120\n")  # alive however slow the test
    archive_until_served(cluster, 1)
    (pid,) = [pid for pid in servers(cluster) if alive(pid)]
    with cluster.archiving_held():
        backlog = cluster.write_wal(5)
    cluster.wait_archived(backlog[-1])
    assert all_done_are_stored(cluster)[-1] >= backlog[-1]
    assert alive(pid), "one server drained the backlog"
    assert servers(cluster, column=2)[pid] >= 3, "requests after the first were answered from its workers"


@pytest.mark.parametrize("point", ["pushd-request", "pushd-stored"])
def test_a_server_killed_mid_request_loses_nothing(cluster: Cluster, point: str) -> None:
    """Killed before or after storing: the client gets no answer, pushes itself, and only then says 0."""
    cluster.stop()
    # Every server started by this archiver freezes at ``point`` in its first request; the test
    # kills each one frozen there, so every push after the first meets a server that dies on it.
    cluster.start(PGDR_FAULT_STOP=point)
    killed: list[int] = []
    stop = threading.Event()
    pattern = f"{cluster.config_path} wal-pushd"

    def reaper() -> None:
        while not stop.is_set():
            found = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True, check=False)
            for pid in map(int, found.stdout.split()):
                stat = Path(f"/proc/{pid}/stat")
                if stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] == "T":
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
            stop.wait(0.05)

    thread = threading.Thread(target=reaper)
    thread.start()
    try:
        names: list[str] = []

        def two_killed() -> bool:
            names.extend(cluster.write_wal(1))
            cluster.wait_archived(names[-1])
            return len(killed) >= 2

        wait_for(two_killed, 90, f"two push servers frozen at {point} and killed")
    finally:
        stop.set()
        thread.join()
    assert all_done_are_stored(cluster)[-1] >= names[-1]
    failed = cluster.sql("SELECT failed_count FROM pg_stat_archiver")[0][0]
    assert failed == 0, "a dead server made no push fail: the clients pushed themselves"


def test_a_changed_config_is_picked_up(cluster: Cluster) -> None:
    archive_until_served(cluster, 1)
    (old,) = [pid for pid in servers(cluster) if alive(pid)]
    cluster.write_config(cluster.base_config() + '\n[archive]\ncompression = "none"\n')
    (segment,) = cluster.write_wal(1)
    cluster.wait_archived(segment)
    wait_for(lambda: not alive(old), 30, "the server with the old config to exit")
    (obj,) = find_archived(open_repository(load_config(cluster.config_path), "local"), segment)
    assert obj.compression == "none", "the push after the change used the new config"
    names = archive_until_served(cluster, 1)
    (new,) = [pid for pid in servers(cluster) if alive(pid)]
    assert new != old
    (obj,) = find_archived(open_repository(load_config(cluster.config_path), "local"), names[-1])
    assert obj.compression == "none"


def test_the_server_can_be_turned_off(cluster: Cluster) -> None:
    cluster.write_config(cluster.base_config() + "\n[archive]\nserver = false\n")
    names = cluster.write_wal(3)
    cluster.wait_archived(names[-1])
    assert servers(cluster) == {}
    assert all_done_are_stored(cluster)[-1] >= names[-1]


def request(address: Path, message: bytes) -> bytes:
    """Send raw bytes as the server user (its 0700 directory admits no one else); returns the reply."""
    probe = (
        "import socket, sys\n"
        "s = socket.socket(socket.AF_UNIX)\n"
        "s.connect(sys.argv[1])\n"
        "s.sendall(sys.stdin.buffer.read())\n"
        "s.shutdown(socket.SHUT_WR)\n"
        "sys.stdout.buffer.write(b''.join(iter(lambda: s.recv(4096), b'')))\n"
    )
    return subprocess.run(
        as_server_user(["/usr/bin/python3", "-c", probe, str(address)]),
        input=message,
        capture_output=True,
        check=True,
    ).stdout


def test_a_foreign_request_is_refused(cluster: Cluster) -> None:
    names = archive_until_served(cluster, 1)
    (pid,) = [pid for pid in servers(cluster) if alive(pid)]
    (address,) = pushd_dir(cluster).glob("*.sock")
    before = servers(cluster)[pid]
    segment = str(cluster.data_dir / "pg_wal" / names[-1])
    cwd = str(cluster.data_dir).encode()
    for message in (
        b"",  # a connection dropped before its request
        b"GET / HTTP/1.1\r\n\r\n",  # not our protocol at all
        b"\0".join([b"pgdr-pushd/0", address.stem.encode(), cwd, segment.encode()]),  # another version
        b"\0".join([b"pgdr-pushd/1", b"0123456789abcdef", cwd, segment.encode()]),  # another config or environment
    ):
        assert request(address, message).startswith(b"refused\0")
    assert servers(cluster)[pid] == before, "nothing was pushed for them"
    more = cluster.write_wal(1)
    cluster.wait_archived(more[-1])
    assert alive(pid) and servers(cluster)[pid] > before, "and the server went on serving"


def test_s3_as_the_sync_repository_goes_through_the_server(cluster: Cluster, moto: MotoEndpoint, bucket: str) -> None:
    cluster.write_config(cluster.base_config(local=False, s3=s3_settings(moto, bucket)))
    names = archive_until_served(cluster, 2)
    names += cluster.write_wal(2)
    cluster.wait_archived(names[-1])
    assert all_done_are_stored(cluster, "s3")[-1] >= names[-1]
    (pid,) = [pid for pid in servers(cluster) if alive(pid)]
    assert servers(cluster)[pid] >= 4
