"""Pushing ahead: segments stored in parallel before the archiver asks; a note means "stored"."""

from __future__ import annotations

import json
import subprocess
import threading
from pathlib import Path

import pytest

from backend.archive.spool import NOTE, confirm, spool_dir, write_note
from backend.archive.walfile import find_archived
from backend.config import ClusterConfig, Config, LocalConfig, load_config
from backend.repository import open_repository
from backend.statedir import user_state_dir
from tests.harness.cluster import Cluster, as_server_user, give_to_server_user, wait_for


def bulk_load(cluster: Cluster, rows: int = 1_200_000) -> str:
    cluster.sql(f"CREATE TABLE bulk AS SELECT g, md5(g::text) AS h FROM generate_series(1, {rows}) g")
    return cluster.switch_wal()


def test_a_bulk_load_is_archived_completely_and_every_note_means_stored(cluster: Cluster) -> None:
    cfg = load_config(cluster.config_path)
    repo = open_repository(cfg, "local")
    spool = cluster.root / "spool"
    spool.mkdir()
    give_to_server_user(spool)
    # The spool is how pgdr pushes ahead when the push server is off (the server does it in threads).
    cluster.write_config(cluster.base_config() + f'\n[archive]\nspool_path = "{spool}"\nserver = false\n')
    violations: list[str] = []
    stop = threading.Event()

    def watch() -> None:  # the invariant, checked continuously while the archiver runs
        while not stop.is_set():
            for note in (spool / "main").glob(f"*{NOTE}") if (spool / "main").is_dir() else []:
                segment = note.name[: -len(NOTE)]
                if note.exists() and not find_archived(repo, segment):
                    violations.append(segment)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        with cluster.archiving_held():  # a backlog, so the first wal-push starts a pusher
            last = bulk_load(cluster)
        cluster.wait_archived(last, timeout=180)
    finally:
        stop.set()
        watcher.join()
    assert violations == []
    listing = json.loads(cluster.pgdr("list", "--json").stdout)
    (run,) = [r for r in listing["wal"] if r["timeline"] == 1]
    assert run["first_segment"] == "000000010000000000000001" and run["last_segment"] >= last
    assert run["segments"] >= 6
    assert (spool / "main" / ".pusher.lock").exists(), "a background pusher ran"


def test_a_killed_pusher_loses_nothing(cluster: Cluster) -> None:
    spool = cluster.root / "spool"
    spool.mkdir()
    give_to_server_user(spool)
    cluster.write_config(cluster.base_config() + f'\n[archive]\nspool_path = "{spool}"\n')
    with cluster.archiving_held():  # the backlog stays while the pusher works on it, on any machine
        backlog = cluster.write_wal(4)
        # The pusher freezes (SIGSTOP) after storing a segment and before writing its note: killed there.
        pusher = subprocess.Popen(
            as_server_user(
                [
                    str(cluster.pgdr_for_server),
                    "--config",
                    str(cluster.config_path),
                    "wal-spool",
                    str(cluster.data_dir / "pg_wal"),
                ]
            ),
            env=cluster.server_env(PGDR_FAULT_STOP="spool-stored"),
            cwd=cluster.root,
        )
        try:
            frozen: list[str] = []

            def a_frozen_pusher() -> bool:
                found = subprocess.run(
                    ["pgrep", "-f", f"{cluster.config_path} wal-spool"], capture_output=True, text=True, check=False
                ).stdout.split()
                frozen[:] = [pid for pid in found if _state(pid) == "T"]
                return bool(frozen)

            wait_for(a_frozen_pusher, 60, "the pusher to stop at spool-stored")
            for pid in frozen:
                subprocess.run(["kill", "-9", pid], check=False)
            # runuser stops itself when its child stops (as su does); if it had not yet when the pusher
            # was found frozen, it is stopped now, waiting for a SIGCONT that would resume nothing.
            pusher.kill()
            pusher.wait(timeout=30)
        finally:
            pusher.kill()
    cluster.wait_archived(backlog[-1], timeout=120)
    repo = open_repository(load_config(cluster.config_path), "local")
    for note in (spool / "main").glob(f"*{NOTE}"):  # a thread may finish its note as the process stops
        assert find_archived(repo, note.name[: -len(NOTE)]), f"{note.name} without the stored segment"
    listing = json.loads(cluster.pgdr("list", "--json").stdout)
    (run,) = [r for r in listing["wal"] if r["timeline"] == 1]
    assert run["first_segment"] == "000000010000000000000001" and run["last_segment"] >= backlog[-1]
    assert run["segments"] == int(run["last_segment"][-8:], 16)  # contiguous from 1: none lost


def _state(pid: str) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except (OSError, IndexError):
        return ""


@pytest.mark.parametrize(
    "env",
    [
        {"XDG_STATE_HOME": "/srv/state", "HOME": "/var/lib/postgresql"},
        {"XDG_STATE_HOME": "relative/state", "HOME": "/var/lib/postgresql"},
        {"XDG_STATE_HOME": "", "HOME": "/var/lib/postgresql/"},
        {"HOME": "/"},
        {"HOME": "relative-home"},
        {},
    ],
)
def test_the_spool_is_where_platformdirs_puts_the_state_dir(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str]
) -> None:
    import platformdirs

    for var in ("XDG_STATE_HOME", "HOME"):
        monkeypatch.delenv(var, raising=False)
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    assert user_state_dir() == platformdirs.user_state_dir("pgdr")


def test_a_note_vouches_only_for_its_own_file_and_destination(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A copy of the cluster elsewhere, or a config sending WAL to other repositories, never takes a
    note written for another file: its segment would be acknowledged without being stored."""
    monkeypatch.setenv("PGDR_STATE_DIR", str(tmp_path / "state"))
    name = "000000010000000000000005"
    header = (0xD110).to_bytes(2, "little") + bytes(22) + (7_000_000_000_000_000_123).to_bytes(8, "little")
    segments = []
    for where in ("data", "copy"):
        segment = tmp_path / where / "pg_wal" / name
        segment.parent.mkdir(parents=True)
        segment.write_bytes(header + bytes(8192 - len(header)))
        segments.append(segment)
    cfg = Config(cluster=ClusterConfig(name="main"), local=LocalConfig(path=str(tmp_path / "repo")))
    folder = spool_dir(cfg)
    folder.mkdir(parents=True)

    write_note(cfg, folder, segments[0])
    assert confirm(cfg, segments[0]) and not (folder / (name + NOTE)).exists()
    write_note(cfg, folder, segments[0])
    assert not confirm(cfg, segments[1]), "the same segment of a copy of the cluster"
    write_note(cfg, folder, segments[0])
    elsewhere = Config(cluster=ClusterConfig(name="main"), local=LocalConfig(path=str(tmp_path / "other-repo")))
    assert not confirm(elsewhere, segments[0]), "the same file, stored for another config's repository"
