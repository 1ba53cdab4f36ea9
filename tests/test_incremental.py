"""Incremental base backups on PostgreSQL 17+: taken, chained, combined at restore, refused where they cannot be."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import pg_bin, s3_settings
from tests.harness.cluster import Cluster, running_cluster
from tests.harness.s3 import MotoEndpoint


@pytest.fixture
def pg18(shared_dir: Path, pgdr_for_server: Path) -> Iterator[Cluster]:
    """A PostgreSQL 18 cluster that summarizes its WAL, archiving into a local repository."""
    with running_cluster(shared_dir, pgdr_for_server, pg_bin=pg_bin("18"), settings={"summarize_wal": "on"}) as c:
        c.write_config(c.base_config())
        c.start()
        yield c


def backup(cluster: Cluster, *args: str) -> dict[str, object]:
    return dict(json.loads(cluster.pgdr("backup", "--json", *args).stdout))


def test_an_incremental_holds_only_what_changed_and_names_its_parent(pg18: Cluster) -> None:
    pg18.sql("CREATE TABLE big (id int, pad text)")
    pg18.sql("INSERT INTO big SELECT g, repeat('x', 500) FROM generate_series(1, 40000) g")
    full = backup(pg18)
    pg18.sql("INSERT INTO big SELECT g, 'new' FROM generate_series(1, 10) g")
    incr = backup(pg18, "--incremental")
    assert incr["parent"] == full["name"] and full["parent"] is None
    assert int(str(incr["stored_bytes"])) < int(str(full["stored_bytes"])) / 4
    second = backup(pg18, "--incremental")
    assert second["parent"] == incr["name"]


def test_pitr_after_the_second_incremental_combines_the_chain(pg18: Cluster) -> None:
    pg18.sql("CREATE TABLE ledger (id int PRIMARY KEY, note text)")
    pg18.sql("INSERT INTO ledger SELECT g, 'full' FROM generate_series(1, 1000) g")
    full = backup(pg18)
    pg18.sql("INSERT INTO ledger SELECT g, 'first' FROM generate_series(1001, 1500) g")
    first = backup(pg18, "--incremental")
    pg18.sql("UPDATE ledger SET note = 'changed' WHERE id <= 100")
    second = backup(pg18, "--incremental")
    pg18.sql("INSERT INTO ledger SELECT g, 'after' FROM generate_series(1501, 1520) g")
    (target,) = pg18.sql("SELECT clock_timestamp()")[0]
    pg18.sql("DELETE FROM ledger")
    pg18.wait_archived(pg18.switch_wal())

    plan = json.loads(pg18.pgdr("restore", "--timestamp", target.isoformat(), "--dry-run", "--json").stdout)
    assert plan["chain"] == [full["name"], first["name"], second["name"]]
    text = pg18.pgdr("restore", "--timestamp", target.isoformat(), "--dry-run").stdout
    assert "combined with pg_combinebackup" in text and "to fetch" in text

    done = pg18.pgdr("restore", "--timestamp", target.isoformat(), "--yes", timeout=600)
    assert "Restore finished" in done.stdout, done.stdout + done.stderr
    assert pg18.sql("SELECT count(*), count(*) FILTER (WHERE note = 'changed') FROM ledger")[0] == (1520, 100)
    assert not (pg18.data_dir / ".pgdr-chain").exists()


def test_a_chain_in_s3_alone_restores_with_exact_rows(
    shared_dir: Path, pgdr_for_server: Path, moto: MotoEndpoint, bucket: str
) -> None:
    settings = {"summarize_wal": "on"}
    with running_cluster(shared_dir, pgdr_for_server, pg_bin=pg_bin("18"), settings=settings) as c:
        c.write_config(c.base_config(s3=s3_settings(moto, bucket), local=False))
        c.start()
        c.sql("CREATE TABLE ledger (id int PRIMARY KEY, note text)")
        c.sql("INSERT INTO ledger SELECT g, 'full' FROM generate_series(1, 1000) g")
        full = backup(c)
        c.sql("INSERT INTO ledger SELECT g, 'first' FROM generate_series(1001, 1200) g")
        backup(c, "--incremental")
        c.sql("UPDATE ledger SET note = 'second' WHERE id > 1100")
        second = backup(c, "--incremental")
        c.sql("INSERT INTO ledger SELECT g, 'after' FROM generate_series(1201, 1210) g")
        c.sql("SELECT pg_create_restore_point('before_cleanup')")
        c.sql("DELETE FROM ledger WHERE id > 500")
        c.wait_archived(c.switch_wal())

        listed = json.loads(c.pgdr("list", "--json").stdout)
        assert {b["name"]: b["repositories"] for b in listed["backups"]}[str(second["name"])] == ["s3"]
        done = c.pgdr("restore", "--name", "before_cleanup", "--yes", timeout=600)
        assert "Restore finished" in done.stdout and full["name"] in done.stdout, done.stdout + done.stderr
        assert c.sql("SELECT count(*), count(*) FILTER (WHERE note = 'second') FROM ledger")[0] == (1210, 100)
