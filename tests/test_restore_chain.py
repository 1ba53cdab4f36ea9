"""Restores that stay correct the second time, run as users run them: as the cluster's owner, with the
ordinary open-file limit, on a chain of restores and backups taken after them."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

from backend.restore.settings import recovery_lines
from tests.harness.cluster import Cluster, as_server_write, running_cluster


@pytest.fixture
def quiet_cluster(shared_dir: Path, pgdr_for_server: Path) -> Iterator[Cluster]:
    """A running cluster whose only transactions are the test's: no autovacuum commits between them."""
    with running_cluster(shared_dir, pgdr_for_server, settings={"autovacuum": "off"}) as c:
        c.write_config(c.base_config())
        c.start()
        c.sql("CREATE TABLE chain (v text PRIMARY KEY)")
        yield c


def commit(cluster: Cluster, value: str) -> int:
    """Insert one row in its own transaction; returns the transaction's xid."""
    with cluster.connect() as conn, conn.transaction():
        conn.execute("INSERT INTO chain VALUES (%s)", (value,))
        row = conn.execute("SELECT txid_current()").fetchone()
    assert row is not None
    return int(row[0])


def now(cluster: Cluster) -> datetime:
    """The server's clock: an instant after every commit so far and before every later one."""
    value: datetime = cluster.sql("SELECT clock_timestamp()")[0][0]
    return value


def rows(cluster: Cluster) -> list[str]:
    return [str(r[0]) for r in cluster.sql("SELECT v FROM chain ORDER BY v")]


def archive_all(cluster: Cluster) -> None:
    cluster.wait_archived(cluster.switch_wal())


def backup(cluster: Cluster) -> str:
    return str(json.loads(cluster.pgdr_as_owner("backup", "--json").stdout)["name"])


def restore(cluster: Cluster, *args: str) -> dict[str, object]:
    result = cluster.pgdr_as_owner("restore", *args, "--yes", "--json", timeout=600)
    report: dict[str, object] = json.loads(result.stdout[result.stdout.index("\n{") :])
    assert report["reached_target"], result.stdout + result.stderr
    assert recovery_lines(cluster.data_dir) == []  # nothing of this recovery is left for the next backup
    return report


def test_restores_and_backups_after_a_pitr_each_land_exactly(quiet_cluster: Cluster) -> None:
    c = quiet_cluster
    commit(c, "a")
    backup(c)
    before_b = now(c)
    xid_b = commit(c, "b")
    t1 = now(c)
    xid_c = commit(c, "c")
    archive_all(c)

    # A PITR in place onto timeline 2; the report names the last commit replayed, not the one after.
    report = restore(c, "--timestamp", t1.isoformat())
    assert rows(c) == ["a", "b"]
    assert report["new_timeline"] == 2
    last = datetime.fromisoformat(str(report["last_commit_time"]))
    assert before_b < last <= t1, (before_b, last, t1)
    assert report["last_commit_xid"] == xid_b
    assert f"transaction {xid_c}" in str(report["stopped_before"])

    # On timeline 2: a backup taken after the PITR, and commits around an instant.
    commit(c, "d")
    b2 = backup(c)
    commit(c, "e")
    t2 = now(c)
    commit(c, "f")
    archive_all(c)

    assert restore(c, "--latest")["reached_target"]
    assert rows(c) == ["a", "b", "d", "e", "f"]
    plan = c.pgdr_as_owner("restore", "--immediate", "--backup", b2, "--dry-run").stdout
    assert "timeline 3 has no archived WAL yet" in plan, plan  # right after the restore that began it
    restore(c, "--immediate", "--backup", b2)
    assert rows(c) == ["a", "b", "d"]
    restore(c, "--timestamp", t2.isoformat(), "--backup", b2)
    assert rows(c) == ["a", "b", "d", "e"]
    # ... and back onto timeline 2 from the later timelines.
    restore(c, "--timestamp", t2.isoformat(), "--target-timeline", "2")
    assert rows(c) == ["a", "b", "d", "e"]

    deep = c.pgdr_as_owner("verify", b2, "--deep", check=False, timeout=600)
    assert deep.returncode == 0, deep.stdout + deep.stderr


def test_a_backup_carrying_an_old_recovery_block_restores_to_its_own_target(quiet_cluster: Cluster) -> None:
    c = quiet_cluster
    commit(c, "a")
    stale = now(c)
    commit(c, "b")
    # What restores wrote before they cleaned up after themselves, and a backup taken with it: made by a
    # config without data_dir, so the backup cannot remove the block first.
    auto = c.data_dir / "postgresql.auto.conf"
    block = (
        f"\n# added by pgdr restore 2026-12-01 10:00:00 UTC, backup 20261201T080000Z\n"
        f"restore_command = 'pgdr wal-fetch %f %p'\nrecovery_target_time = '{stale.isoformat()}'\n"
        "recovery_target_inclusive = 'false'\nrecovery_target_timeline = 'latest'\n"
    )
    as_server_write(auto, auto.read_text() + block)
    c.write_config(c.base_config().replace(f'data_dir = "{c.data_dir}"\n', ""))
    poisoned = backup(c)
    c.write_config(c.base_config())
    commit(c, "c")
    archive_all(c)

    restore(c, "--latest")
    assert rows(c) == ["a", "b", "c"]  # not stopped at the old target
    restore(c, "--immediate", "--backup", poisoned)
    assert rows(c) == ["a", "b"]  # no "multiple recovery targets specified"
    deep = c.pgdr_as_owner("verify", poisoned, "--deep", check=False, timeout=600)
    assert deep.returncode == 0, deep.stdout + deep.stderr

    # A backup of a data directory that still carries the block (a restore paused at its target and
    # promoted by hand) removes it first.
    as_server_write(auto, auto.read_text() + block)
    backup(c)
    assert recovery_lines(c.data_dir) == []


def test_a_restore_that_could_not_move_the_data_directory_aside_stops_nothing(quiet_cluster: Cluster) -> None:
    c = quiet_cluster
    commit(c, "a")
    backup(c)
    archive_all(c)
    c.root.chmod(0o555)  # the data directory's parent, as /opt or /srv often are for postgres
    try:
        plan = c.pgdr_as_owner("restore", "--latest", "--dry-run").stdout
        assert "FAILS: data directory" in plan and f"{c.root} is not writable" in plan, plan
        result = c.pgdr_as_owner("restore", "--latest", "--yes", check=False)
    finally:
        c.root.chmod(0o755)
    assert result.returncode != 0
    (line,) = result.stderr.strip().splitlines()
    assert "cannot restore: data directory:" in line and "nothing was changed and the server keeps running" in line
    assert "Traceback" not in result.stderr
    assert rows(c) == ["a"]  # the server never stopped
    assert not list(c.root.glob("data.pgdr-safety-*"))
    assert subprocess.run(["pg_isready", "-h", str(c.socket_dir), "-p", str(c.port)], check=False).returncode == 0
