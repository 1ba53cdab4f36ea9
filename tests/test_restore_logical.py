"""Logical restore, the seed's postgres-restore forms: --list, --list-s3, --latest, a path, --from-s3."""

from __future__ import annotations

import json
from pathlib import Path

from backend.config import load_config
from backend.repository import open_repository
from tests.harness.cluster import Cluster


def test_logical_restore_brings_the_table_back_after_a_safety_dump(cluster_s3: Cluster, tmp_path: Path) -> None:
    cluster_s3.sql("CREATE TABLE loans (id int PRIMARY KEY, amount numeric)")
    cluster_s3.sql("INSERT INTO loans SELECT g, g FROM generate_series(1, 300) g")
    name = json.loads(cluster_s3.pgdr("backup", "--logical", "--json").stdout)["name"]
    cluster_s3.sql("DELETE FROM loans WHERE id > 100")
    cluster_s3.sql("CREATE TABLE scratch (x int)")

    local = cluster_s3.pgdr("restore", "--list").stdout
    remote = cluster_s3.pgdr("restore", "--list-s3", "--json").stdout
    assert name in local and name in json.loads(remote)["backups"][0]["name"]

    plan = cluster_s3.pgdr("restore", "--logical", "--latest", "--dry-run").stdout
    assert name in plan and "safety dump" in plan and "Dry run" in plan
    assert cluster_s3.sql("SELECT count(*) FROM loans")[0][0] == 100

    out = cluster_s3.pgdr("restore", "--logical", "--latest", "--yes").stdout
    assert cluster_s3.sql("SELECT count(*) FROM loans")[0][0] == 300
    safety = Path(out.rsplit("safety dump: ", 1)[1].strip())
    assert safety.is_file() and safety.stat().st_size > 0

    # The same dump by path and from its s3:// URL, as the seed's postgres-restore takes them.
    cluster_s3.sql("DELETE FROM loans")
    repo = open_repository(load_config(cluster_s3.config_path), "local")
    dump = tmp_path / "loans.dump"
    dump.write_bytes(repo.get(f"backups/{name}/postgres.dump"))
    cluster_s3.pgdr("restore", str(dump), "--yes")
    assert cluster_s3.sql("SELECT count(*) FROM loans")[0][0] == 300

    cfg = load_config(cluster_s3.config_path)
    cluster_s3.sql("DELETE FROM loans")
    url = f"s3://{cfg.s3.bucket}/{cfg.s3.prefix}/main/backups/{name}/postgres.dump"
    cluster_s3.pgdr("restore", "--from-s3", url, "--yes")
    assert cluster_s3.sql("SELECT count(*) FROM loans")[0][0] == 300


def test_from_dump_takes_an_s3_url_or_a_logical_backup_name(cluster_s3: Cluster) -> None:
    """`--from-dump` (and the positional dump) accept what the issue promises: a name or s3://bucket/key."""
    cluster_s3.sql("CREATE TABLE loans (id int PRIMARY KEY)")
    cluster_s3.sql("INSERT INTO loans SELECT generate_series(1, 50)")
    name = json.loads(cluster_s3.pgdr("backup", "--logical", "--json").stdout)["name"]
    cfg = load_config(cluster_s3.config_path)
    url = f"s3://{cfg.s3.bucket}/{cfg.s3.prefix}/main/backups/{name}/postgres.dump"

    cluster_s3.sql("DELETE FROM loans")
    plan = cluster_s3.pgdr("restore", url, "--dry-run").stdout  # positional, as the seed's postgres-restore
    assert f"dump:            {url} (" in plan and "Dry run" in plan
    assert cluster_s3.sql("SELECT count(*) FROM loans")[0][0] == 0
    out = cluster_s3.pgdr("restore", "--from-dump", url, "--yes").stdout
    assert f"restored {url} into postgres" in out
    assert cluster_s3.sql("SELECT count(*) FROM loans")[0][0] == 50

    cluster_s3.sql("DELETE FROM loans WHERE id > 10")
    out = cluster_s3.pgdr("restore", "--from-dump", name, "--yes").stdout
    assert f"restored {name}/postgres.dump from the local repository into postgres" in out
    assert cluster_s3.sql("SELECT count(*) FROM loans")[0][0] == 50

    missing = cluster_s3.pgdr("restore", "--from-dump", url + ".gone", "--yes", check=False)
    assert missing.returncode == 2 and f"{url}.gone does not exist" in missing.stderr, missing.stderr
    assert cluster_s3.sql("SELECT count(*) FROM loans")[0][0] == 50


def test_bad_dumps_change_nothing(cluster: Cluster, tmp_path: Path) -> None:
    cluster.sql("CREATE TABLE keep (x int)")
    cluster.sql("INSERT INTO keep VALUES (1)")
    junk = tmp_path / "junk.dump"
    junk.write_bytes(b"not a dump" * 100)
    for args in (
        ["restore", str(junk), "--yes"],
        ["restore", "--from-dump", "nope", "--yes"],
        ["restore", "--logical", "--latest", "--yes"],
        ["restore", "--from-s3", "http://x", "--yes"],
    ):
        result = cluster.pgdr(*args, check=False)
        assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert cluster.sql("SELECT count(*) FROM keep")[0][0] == 1
