"""``pgdr restore --xid N`` for any committed transaction, located through the WAL index on a real cluster.

An ordinary transaction is no event: the WAL index lists, per segment, the transactions that ended in
it, so the plan picks the backup and the WAL without ``--backup``, and a transaction that never
committed is refused in one line before anything is touched.
"""

from __future__ import annotations

import json
from typing import Any

import psycopg

from backend.archive.index import index_archive
from backend.archive.indexcache import IndexCache
from backend.config import load_config
from backend.repository import open_repositories
from tests.conftest import on_every_version
from tests.harness.cluster import Cluster
from tests.test_restore import restore, safety_copies, stop_copy


def committed(cluster: Cluster, statement: str) -> int:
    """Run ``statement`` in a transaction of its own; returns its xid."""
    with cluster.connect() as conn, conn.transaction():
        row = conn.execute("SELECT txid_current()").fetchone()
        assert row is not None
        conn.execute(statement)
    return int(row[0])


def dry_run(cluster: Cluster, *args: str) -> dict[str, Any]:
    return dict(json.loads(restore(cluster, *args, "--dry-run", "--json").stdout))


def refused(cluster: Cluster, *args: str) -> str:
    result = restore(cluster, *args, "--dry-run", check=False)
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def rows_beside(cluster: Cluster, port: int, *target: str) -> list[int]:
    """Restore beside (the running cluster left alone) to ``target``; the ids the copy holds."""
    beside = cluster.root / f"beside-{port}"
    result = restore(cluster, *target, "--target-dir", str(beside), "--port", str(port))
    assert "Restore finished" in result.stdout, result.stdout + result.stderr
    try:
        with psycopg.connect(host=str(cluster.socket_dir), port=port, user="postgres", dbname="postgres") as conn:
            return [int(r[0]) for r in conn.execute("SELECT id FROM orders ORDER BY id").fetchall()]
    finally:
        stop_copy(beside)


@on_every_version
def test_any_committed_xid_is_a_target_without_naming_a_backup(cluster: Cluster) -> None:
    cluster.sql("CREATE TABLE orders (id int PRIMARY KEY)")
    committed(cluster, "INSERT INTO orders VALUES (1)")
    first = json.loads(cluster.pgdr("backup", "--json").stdout)["name"]
    xids = [committed(cluster, f"INSERT INTO orders VALUES ({i})") for i in (2, 3, 4)]
    cluster.wait_archived(cluster.switch_wal())
    second = json.loads(cluster.pgdr("backup", "--json").stdout)["name"]
    committed(cluster, "INSERT INTO orders VALUES (5)")
    cluster.wait_archived(cluster.switch_wal())
    target = xids[1]  # the insert of 3: an ordinary transaction, no event

    plan = dry_run(cluster, "--xid", str(target))
    assert plan["base_backup"] == first  # the second backup finished after it committed
    settings = plan["target"]["settings"]
    assert (settings["recovery_target_xid"], settings["recovery_target_inclusive"]) == (str(target), "on")
    # The WAL is counted up to the segment holding the commit, not to the end of the archive.
    assert plan["wal_last"] < dry_run(cluster, "--latest")["wal_last"]
    text = restore(cluster, "--xid", str(target), "--dry-run").stdout
    assert "at least" not in text and first in text

    # After the second backup: it is chosen, the newest that stopped before the commit.
    later = committed(cluster, "INSERT INTO orders VALUES (6)")
    cluster.wait_archived(cluster.switch_wal())
    assert dry_run(cluster, "--xid", str(later))["base_backup"] == second
    # txid_current() counts epochs above 32 bits: the same transaction for PostgreSQL and the plan.
    assert dry_run(cluster, "--xid", str(target + (1 << 32)))["base_backup"] == first

    assert rows_beside(cluster, 5451, "--xid", str(target)) == [1, 2, 3]
    assert rows_beside(cluster, 5452, "--xid", str(target), "--exclusive") == [1, 2]
    assert cluster.sql("SELECT count(*) FROM orders")[0][0] == 6  # the running cluster untouched
    assert not safety_copies(cluster)


def test_an_xid_that_never_committed_is_refused_in_one_line(cluster: Cluster) -> None:
    cluster.sql("CREATE TABLE orders (id int PRIMARY KEY)")
    cluster.pgdr("backup")
    with cluster.connect() as conn:
        conn.execute("BEGIN")
        aborted = int(conn.execute("SELECT txid_current()").fetchone()[0])  # type: ignore[index]
        conn.execute("INSERT INTO orders VALUES (1)")
        conn.execute("ROLLBACK")
        conn.execute("BEGIN")
        conn.execute("INSERT INTO orders VALUES (2)")
        conn.execute("SAVEPOINT inner_work")
        conn.execute("INSERT INTO orders VALUES (3)")
        sub = int(conn.execute("SELECT xmin::text FROM orders WHERE id = 3").fetchone()[0])  # type: ignore[index]
        conn.execute("RELEASE SAVEPOINT inner_work")
        conn.execute("COMMIT")
    newest = committed(cluster, "INSERT INTO orders VALUES (4)")
    cluster.wait_archived(cluster.switch_wal())

    assert "was rolled back" in refused(cluster, "--xid", str(aborted))
    assert "is a subtransaction" in refused(cluster, "--xid", str(sub))
    future = refused(cluster, "--xid", str(newest + 1000))
    assert f"transaction {newest + 1000} has not ended in the archived WAL" in future
    assert "pg_switch_wal()" in future
    assert dry_run(cluster, "--xid", str(newest))["target"]["settings"]["recovery_target_xid"] == str(newest)
    assert not safety_copies(cluster)


def test_segments_an_older_pgdr_indexed_name_the_backups_until_the_daemon_reads_them_again(cluster: Cluster) -> None:
    """Entries written before the index listed ended transactions still serve the timeline; a ``--xid``
    in them is refused naming the backups that reach them, until the daemon's indexing reads them again."""
    cluster.sql("CREATE TABLE orders (id int PRIMARY KEY)")
    backup = json.loads(cluster.pgdr("backup", "--json").stdout)["name"]
    target = committed(cluster, "INSERT INTO orders VALUES (1)")
    cluster.wait_archived(cluster.switch_wal())
    cluster.pgdr("wal-upload")  # let the background indexer finish
    entries = sorted((cluster.local_repo / "main" / "walindex").rglob("*.json"))
    assert entries
    for path in entries:  # as an older pgdr wrote them
        data = json.loads(path.read_text())
        assert data.pop("xids") is not None
        path.write_text(json.dumps(data))
    cfg = load_config(cluster.config_path)
    location = open_repositories(cfg)[0].location()
    cache = IndexCache.open()
    assert cache is not None
    cache.store(location, {}, {}, gone=cache.load(location).keys())  # this host's cache read them already
    cache.close()

    message = refused(cluster, "--xid", str(target))
    assert f"the WAL index does not show where transaction {target} committed; " in message
    assert "do not list their transactions (indexed by an older pgdr; `pgdr --daemon` reads them again)" in message
    assert f"backups that reach them: {backup}: pass --backup NAME" in message
    assert "at least" in restore(cluster, "--xid", str(target), "--backup", backup, "--dry-run").stdout
    assert "window" in cluster.pgdr("timeline").stdout  # the old entries serve the timeline meanwhile

    done = index_archive(cfg)  # the daemon's job
    assert done.indexed == len(entries)
    assert all(json.loads(path.read_text())["xids"] is not None for path in entries)
    assert dry_run(cluster, "--xid", str(target))["base_backup"] == backup
    assert index_archive(cfg).indexed == 0  # read once
