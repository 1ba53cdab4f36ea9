"""The plain ``restore_command = 'pgdr wal-fetch %f %p'`` (issue 19): a standby fed from the archive, a
restore done by hand, two servers recovering different timelines at once. Every server here runs as the
server user with ``ulimit -n 1024``, as PostgreSQL runs it, and fetches through the real command line:
the first fetch of a recovery starts a prefetcher, the rest are answered from it without reading the
config, and it goes away when recovery is over or the server stops."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import psycopg.sql

from backend.archive import prefetch
from backend.archive.walfile import find_archived
from backend.config import load_config
from backend.repository import open_repository
from backend.walnames import SegmentName
from tests.conftest import on_every_version
from tests.harness.cluster import (
    Cluster,
    as_server_user,
    as_server_write,
    clean_env,
    give_to_server_user,
    run_checked,
    server_user,
    wait_for,
)


def base_backup(primary: Cluster) -> Path:
    """``pg_basebackup -X none``: the backup's own WAL comes from the archive, as in PostgreSQL's docs."""
    target = primary.root / "base"
    connection = ["-h", str(primary.socket_dir), "-p", str(primary.port), "-U", "postgres"]
    options = ["-D", str(target), "-X", "none", "-c", "fast", "--no-sync"]
    run_checked(as_server_user([str(primary.pg_bin / "pg_basebackup"), *connection, *options]))
    primary.wait_archived(primary.switch_wal())  # the segment the backup ends in
    return target


def replica(primary: Cluster, base: Path, name: str, signal: str, **settings: str) -> Cluster:
    """A copy of ``base`` that recovers through the plain ``pgdr wal-fetch %f %p``, with a config of its own
    (its socket and data directory, the primary's repository), as on a standby's host."""
    server = Cluster(primary.root / name, primary.pgdr_for_server, pg_bin=primary.pg_bin)
    server.root.mkdir(mode=0o755)
    shutil.copytree(base, server.data_dir, symlinks=True)
    for folder in (server.root, server.socket_dir):
        folder.mkdir(exist_ok=True)
        give_to_server_user(folder)
    for path in [server.data_dir, *server.data_dir.rglob("*")]:
        give_to_server_user(path)
    server.data_dir.chmod(0o700)
    server.write_config(server.base_config(local=False, extra=f'\n[local]\npath = "{primary.local_repo}"\n'))
    restore = f"{shlex.quote(str(server.pgdr_for_server))} --config {shlex.quote(str(server.config_path))} "
    values = {
        "unix_socket_directories": f"'{server.socket_dir}'",
        "archive_mode": "off",
        "restore_command": "'" + (restore + "wal-fetch %f %p").replace("'", "''") + "'",
        **settings,
    }
    conf = server.data_dir / "postgresql.auto.conf"
    as_server_write(conf, conf.read_text() + "".join(f"{k} = {v}\n" for k, v in values.items()))
    as_server_write(server.data_dir / signal, "")
    return server


def start_limited(server: Cluster, *, wait: bool = True) -> None:
    """``pg_ctl start`` as the server user with 1024 open files at most: its restore_command inherits it."""
    pg_ctl = [str(server.pg_bin / "pg_ctl"), "-D", str(server.data_dir), "-l", str(server.log_path)]
    pg_ctl += ["-w", "-t", "120", "start"] if wait else ["-W", "start"]
    run_checked(
        as_server_user(["/bin/sh", "-c", 'ulimit -n 1024 && exec "$@"', "sh", *pg_ctl]), env=server.server_env()
    )


def in_recovery(server: Cluster) -> bool | None:
    try:
        return bool(server.sql("SELECT pg_is_in_recovery()")[0][0])
    except Exception:
        return None  # not accepting connections yet


def prefetchers(folder: Path) -> list[int]:
    """The pids of the detached prefetchers serving ``folder``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"wal-prefetch" in cmdline and os.fsencode(folder) in cmdline:
            found.append(int(entry.name))
    return found


def open_files_limit(pid: int) -> tuple[int, int]:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            soft, hard = line.split()[3:5]
            return int(soft), int(hard)
    raise AssertionError(f"no open files limit for {pid}")


def gone(folder: Path) -> bool:
    """The prefetcher of ``folder`` left and took its folder, with whatever it still held, along."""
    return not folder.exists() and not prefetchers(folder)


def intact(cluster: Cluster, name: str, path: Path) -> bool:
    repo = open_repository(load_config(cluster.config_path), "local")
    (obj,) = find_archived(repo, name)
    return hashlib.sha256(path.read_bytes()).hexdigest() == obj.checksum


def segments(names: set[str]) -> set[str]:
    return {name for name in names if prefetch.is_segment(name)}


def restored(server: Cluster) -> set[str]:
    """The files PostgreSQL logged as restored from the archive."""
    lines = server.log_path.read_text(errors="replace").splitlines()
    return {line.split('"')[1] for line in lines if "restored log file" in line}


@on_every_version
def test_a_standby_fed_from_the_archive_replays_through_plain_wal_fetch(cluster: Cluster) -> None:
    cluster.write_wal(1)
    base = base_backup(cluster)
    names = cluster.write_wal(4)
    cluster.wait_archived(names[-1])
    standby = replica(cluster, base, "standby", "standby.signal", wal_retrieve_retry_interval="'500ms'")
    folder = standby.data_dir / "pg_wal" / prefetch.FOLDER
    start_limited(standby)
    try:

        def caught_up() -> bool:
            return standby.sql("SELECT count(*) FROM ledger") == cluster.sql("SELECT count(*) FROM ledger")

        wait_for(caught_up, 120, "the standby to replay the archive")
        assert set(names) <= restored(standby)
        (pid,) = prefetchers(folder)  # the first fetch started it; every later one was answered by it
        assert os.stat(f"/proc/{pid}").st_uid == server_user().pw_uid
        assert open_files_limit(pid) == (1024, 1024), "within the server's limits"

        # The primary goes on: the standby, looking at the archive every 500 ms, catches up through the
        # same prefetcher, which answers "not there yet" from a fresh look every time.
        more = cluster.write_wal(3)
        cluster.wait_archived(more[-1])
        wait_for(caught_up, 120, "the standby to replay what was archived since")
        assert set(more) <= restored(standby)
        assert prefetchers(folder) == [pid]
        assert "is not in any repository" in standby.log_path.read_text(), "the next segment, asked for and absent"

        report = standby.pgdr("check", "--timeout", "5", check=False).stdout
        assert "[ok  ] this server is a standby (standby.signal): restore_command = '" in report, report
        assert "wal-fetch %f %p" in report
        assert "[FAIL] archive_mode = off: once promoted, this standby archives no WAL; run ALTER SYSTEM" in report
        (command,) = standby.sql("SHOW restore_command")[0]
        standby.sql("ALTER SYSTEM SET restore_command = 'cp /mnt/archive/%f %p'")
        standby.sql("SELECT pg_reload_conf()")
        wait_for(lambda: standby.sql("SHOW restore_command")[0][0] != command, 30, "the reload")
        report = standby.pgdr("check", "--timeout", "5", check=False).stdout
        failed = "[FAIL] this server is a standby (standby.signal): restore_command = 'cp /mnt/archive/%f %p' does"
        assert failed in report, report
        assert "wal-fetch %f %p'; SELECT pg_reload_conf();" in report, "with the fix"
        standby.sql("ALTER SYSTEM SET restore_command = " + psycopg.sql.quote(command))
        standby.sql("SELECT pg_reload_conf()")
        wait_for(lambda: standby.sql("SHOW restore_command")[0][0] == command, 30, "the reload")

        # Stopped, the server needs no prefetcher: it leaves, and takes its folder along.
        standby.stop()
        wait_for(lambda: gone(folder), 30, "the prefetcher to leave with the server")
        start_limited(standby)
        more = cluster.write_wal(2)
        cluster.wait_archived(more[-1])
        wait_for(caught_up, 120, "the restarted standby to catch up")
        assert set(more) <= restored(standby)

        # Promoted, recovery is over, and so is the prefetcher.
        run_checked(as_server_user([str(standby.pg_bin / "pg_ctl"), "-D", str(standby.data_dir), "-w", "promote"]))
        wait_for(lambda: in_recovery(standby) is False, 60, "the standby to promote")
        wait_for(lambda: gone(folder), 30, "the prefetcher to leave once recovery is over")
        assert caught_up()
    finally:
        standby.stop("immediate")


def test_two_servers_recover_different_timelines_at_once(cluster: Cluster) -> None:
    """A PITR through plain wal-fetch makes timeline 2 in the repository; then two servers recover from
    it at once, one along timeline 1, one along the latest timeline: each gets its timeline's WAL, and
    neither a segment of the other's, though timeline 1 goes on past the fork in the same repository."""
    cluster.sql("CREATE TABLE marks (what text)")
    base = base_backup(cluster)
    cluster.sql("INSERT INTO marks VALUES ('before')")
    names = cluster.write_wal(2)
    cluster.wait_archived(names[-1])

    fork = replica(cluster, base, "fork", "recovery.signal", archive_mode="on")  # archives as the primary does
    start_limited(fork)
    try:
        wait_for(lambda: in_recovery(fork) is False, 120, "the PITR to reach the end of the archive and promote")
        assert set(names) <= restored(fork)
        fork.sql("INSERT INTO marks VALUES ('timeline 2')")
        fork_segments = fork.write_wal(2)
        assert fork_segments[0].startswith("00000002"), fork_segments
        fork.wait_archived(fork_segments[-1])
        wait_for(lambda: gone(fork.data_dir / "pg_wal" / prefetch.FOLDER), 30, "the PITR's prefetcher to leave")
    finally:
        fork.stop()
    cluster.sql("INSERT INTO marks VALUES ('timeline 1')")
    later = cluster.write_wal(3)  # timeline 1, past the fork: the same segment numbers as timeline 2's
    cluster.wait_archived(later[-1])

    one = replica(cluster, base, "one", "recovery.signal", recovery_target_timeline="'1'")
    latest = replica(cluster, base, "latest", "recovery.signal", recovery_target_timeline="'latest'")
    servers = (one, latest)
    for server in servers:
        start_limited(server, wait=False)
    try:
        for server in servers:
            wait_for(lambda s=server: in_recovery(s) is False, 180, f"{server.root.name} to recover and promote")
        marks = {s.root.name: {row[0] for row in s.sql("SELECT what FROM marks")} for s in servers}
        assert marks == {"one": {"before", "timeline 1"}, "latest": {"before", "timeline 2"}}
        # (at its end, "one" reads timeline 2's history file too: to choose a new timeline, 3)
        assert set(later) <= restored(one) and not any(n.startswith("00000002") for n in segments(restored(one)))
        assert set(fork_segments) <= restored(latest) and not set(later) & restored(latest)
        for server in servers:
            wait_for(lambda s=server: gone(s.data_dir / "pg_wal" / prefetch.FOLDER), 30, "the prefetchers to leave")
    finally:
        for server in servers:
            server.stop("immediate")


def run_main(config: Path, *args: str, env: dict[str, str]) -> tuple[int, set[str]]:
    """``pgdr --config C <args>`` in a fresh interpreter, as the console script runs it: its exit code
    and the modules it loaded."""
    probe = (
        "import json, sys\nfrom pgdr_tui.cli import main\n"
        f"code = main(['--config', {str(config)!r}, *{list(args)!r}])\n"
        "print(json.dumps([code, sorted(sys.modules)]))"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, check=False)
    assert result.returncode == 0, result.stderr
    code, modules = json.loads(result.stdout.strip().splitlines()[-1])
    return int(code), set(modules)


def test_wal_fetch_answers_from_its_prefetcher_without_reading_the_config(cluster: Cluster, tmp_path: Path) -> None:
    names = cluster.write_wal(4)
    cluster.wait_archived(names[-1])
    env = clean_env(PGDR_STATE_DIR=str(tmp_path / "state"))
    pg_wal = tmp_path / "pg_wal"
    pg_wal.mkdir()
    folder = pg_wal / prefetch.FOLDER
    destination = pg_wal / "RECOVERYXLOG"

    # The first fetch reads the config, fetches by itself and starts a prefetcher for what follows.
    assert run_main(cluster.config_path, "wal-fetch", names[0], str(destination), env=env)[0] == 0
    assert intact(cluster, names[0], destination)
    wait_for((folder / names[1]).exists, 60, "the prefetcher to fetch the next segment")
    (pid,) = prefetchers(folder)
    code, loaded = run_main(cluster.config_path, "wal-fetch", names[1], str(destination), env=env)
    assert code == 0 and intact(cluster, names[1], destination)
    unneeded = {"backend.config", "tomllib", "backend.repository", "backend.archive.fetch", "zstandard", "hashlib"}
    assert not loaded & unneeded, f"answered from the prefetcher, wal-fetch still loaded {loaded & unneeded}"
    code, loaded = run_main(cluster.config_path, "wal-fetch", names[2], str(destination), env=env)
    assert code == 0 and intact(cluster, names[2], destination) and not loaded & unneeded

    # What no repository has: exit 1, answered by the prefetcher (from a look it took after being asked).
    after_the_last = SegmentName.parse(names[-1]).next().next().name
    for absent in ("00000002.history", after_the_last):
        code, loaded = run_main(cluster.config_path, "wal-fetch", absent, str(pg_wal / "RECOVERYHISTORY"), env=env)
        assert code == 1 and not loaded & unneeded, absent
        assert (folder / prefetch.FAILED).read_text().split()[::2] == [absent, prefetch.ABSENT]
    assert prefetchers(folder) == [pid]

    # A changed config: the prefetcher leaves (the next fetch starts one that fetches as it says).
    cluster.config_path.write_text(cluster.config_path.read_text() + "\n# edited\n")
    wait_for(lambda: gone(folder), 30, "the prefetcher to leave when its config changed")
    # Without one, what no repository has is still exit 1, and starts nothing.
    assert run_main(cluster.config_path, "wal-fetch", after_the_last, str(destination), env=env)[0] == 1
    assert gone(folder)


def test_a_prefetcher_whose_folder_was_moved_aside_leaves_the_new_one_alone(cluster: Cluster, tmp_path: Path) -> None:
    """A data directory set aside (as ``pgdr restore`` does before it lays down the backup) takes its
    prefetcher's folder along; a new folder at the old path is another prefetcher's. The old one leaves,
    empties its own folder where it now is, and touches nothing of the new one."""
    names = cluster.write_wal(3)
    cluster.wait_archived(names[-1])
    env = clean_env(PGDR_STATE_DIR=str(tmp_path / "state"))
    data = tmp_path / "data"
    (data / "pg_wal").mkdir(parents=True)
    folder = data / "pg_wal" / prefetch.FOLDER
    assert run_main(cluster.config_path, "wal-fetch", names[0], str(data / "pg_wal" / "RECOVERYXLOG"), env=env)[0] == 0
    wait_for((folder / names[1]).exists, 60, "the prefetcher to fetch the next segment")
    (pid,) = prefetchers(folder)

    aside = tmp_path / "data.aside"
    data.rename(aside)
    folder.mkdir(parents=True)  # the new data directory's, held by another prefetcher
    fd = os.open(folder / prefetch.LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        (folder / prefetch.WANTED).write_text(f"{names[2]} 1.2")  # a request, not for the old one to answer
        (folder / names[1]).write_bytes(b"the new prefetcher's")
        wait_for(lambda: not Path(f"/proc/{pid}").exists(), 30, "the old prefetcher to leave")
        assert (folder / names[1]).read_bytes() == b"the new prefetcher's"
        assert sorted(os.listdir(folder)) == [prefetch.LOCK, prefetch.WANTED, names[1]]
    finally:
        os.close(fd)
    assert os.listdir(aside / "pg_wal" / prefetch.FOLDER) == [], "its own folder emptied where it is now"
