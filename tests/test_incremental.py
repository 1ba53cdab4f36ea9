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
        full = backup(c, "--incremental")  # nothing to build on yet: a full one
        assert full["parent"] is None
        assert "no base backup of this cluster in the s3 repository" in dict(full["extra"])["full_because"]  # type: ignore[call-overload]
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


def test_on_15_an_incremental_is_refused_in_one_line(cluster: Cluster) -> None:
    cluster.pgdr("backup")
    refused = cluster.pgdr("backup", "--incremental", check=False)
    assert refused.returncode == 2, refused.stdout + refused.stderr
    (line,) = refused.stderr.strip().splitlines()
    assert "incremental backups need PostgreSQL 17 or later (this server runs 15." in line


def test_without_summaries_it_says_what_to_change_and_takes_a_full_one_until_they_cover_one(
    shared_dir: Path, pgdr_for_server: Path
) -> None:
    with running_cluster(shared_dir, pgdr_for_server, pg_bin=pg_bin("18")) as c:
        c.write_config(c.base_config())
        c.start()
        refused = c.pgdr("backup", "--incremental", check=False)
        assert refused.returncode == 2 and "summarize_wal = on, and it is off" in refused.stderr
        assert "ALTER SYSTEM SET summarize_wal = on" in refused.stderr

        c.pgdr("backup")
        c.sql("CREATE TABLE later (x int)")
        c.switch_wal()
        c.sql("CHECKPOINT")
        c.sql("ALTER SYSTEM SET summarize_wal = on")
        c.sql("SELECT pg_reload_conf()")
        # The summaries begin at the checkpoint after the full backup began: PostgreSQL cannot build on it.
        second = c.pgdr("backup", "--incremental").stdout
        assert "taken as a full backup: PostgreSQL would not build on" in second, second
        assert ": WAL summaries are required on timeline 1 from" in second, second
        third = backup(c, "--incremental")
        names = [b["name"] for b in json.loads(c.pgdr("list", "--json").stdout)["backups"]]
        assert third["parent"] == names[1] and len(names) == 3


def test_expire_keeps_the_chain_of_a_kept_incremental_and_the_restore_still_combines_it(pg18: Cluster) -> None:
    pg18.sql("CREATE TABLE ledger (id int PRIMARY KEY, note text)")
    pg18.sql("INSERT INTO ledger SELECT g, 'full' FROM generate_series(1, 300) g")
    full = backup(pg18)
    pg18.sql("INSERT INTO ledger SELECT g, 'first' FROM generate_series(301, 400) g")
    first = backup(pg18, "--incremental")
    pg18.sql("INSERT INTO ledger SELECT g, 'second' FROM generate_series(401, 450) g")
    second = backup(pg18, "--incremental")
    pg18.wait_archived(pg18.switch_wal())
    for name in (full["name"], first["name"]):  # older than the local repository's 7 days of retention
        path = pg18.local_repo / "main" / "backups" / str(name) / "manifest.json"
        manifest = json.loads(path.read_text())
        manifest["stop_time"] = "2026-01-01T00:00:00+00:00"
        path.write_text(json.dumps(manifest))

    report = json.loads(pg18.pgdr("expire", "--json").stdout)
    listed = [b["name"] for b in json.loads(pg18.pgdr("list", "--json").stdout)["backups"]]
    assert listed == [full["name"], first["name"], second["name"]], report
    done = pg18.pgdr("restore", "--latest", "--yes", timeout=600)
    assert "Restore finished" in done.stdout, done.stdout + done.stderr
    assert pg18.sql("SELECT count(*) FROM ledger")[0] == (450,)


def test_as_the_owner_a_chain_restores_beside_and_again_in_place_after_a_restore(pg18: Cluster) -> None:
    pg18.sql("CREATE TABLE ledger (id int PRIMARY KEY, note text)")
    pg18.sql("INSERT INTO ledger SELECT g, 'full' FROM generate_series(1, 200) g")
    pg18.pgdr_as_owner("backup")
    pg18.sql("INSERT INTO ledger SELECT g, 'first' FROM generate_series(201, 300) g")
    pg18.pgdr_as_owner("backup", "--incremental")
    pg18.wait_archived(pg18.switch_wal())

    beside = pg18.root / "beside"
    done = pg18.pgdr_as_owner("restore", "--latest", "--target-dir", str(beside), "--port", "5499", "--yes")
    assert "Restore finished" in done.stdout, done.stdout + done.stderr
    assert not (beside / ".pgdr-chain").exists()
    pg18.pgdr_as_owner("restore", "--latest", "--yes")  # in place: the server now runs on timeline 2
    assert pg18.sql("SELECT count(*) FROM ledger")[0] == (300,)

    # The restored server has no WAL summaries from before the restore: a full backup starts a new chain.
    restarted = pg18.pgdr_as_owner("backup", "--incremental").stdout
    assert "taken as a full backup" in restarted, restarted
    pg18.sql("INSERT INTO ledger SELECT g, 'again' FROM generate_series(301, 333) g")
    again = json.loads(pg18.pgdr_as_owner("backup", "--incremental", "--json").stdout)
    assert again["parent"] and again["timeline"] == 2
    pg18.sql("INSERT INTO ledger SELECT g, 'last' FROM generate_series(334, 340) g")
    pg18.wait_archived(pg18.switch_wal())
    second = pg18.pgdr_as_owner("restore", "--latest", "--yes")
    assert "Restore finished" in second.stdout, second.stdout + second.stderr
    assert pg18.sql("SELECT count(*) FROM ledger")[0] == (340,)
