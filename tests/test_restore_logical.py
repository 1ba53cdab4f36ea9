"""Logical restore, the postgres-restore service's forms: --list, --list-s3, --latest, a path, --from-s3."""

from __future__ import annotations

import json
import subprocess
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

    # The same dump by path and from its s3:// URL, as the postgres-restore service takes them.
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
    plan = cluster_s3.pgdr("restore", url, "--dry-run").stdout  # positional, as postgres-restore takes it
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


# A database of its own, as a DBA has it: its own owner, and an encoding and locale other than the
# cluster's (UTF8, libc C), so that "as dumped" cannot pass by accident.
LENDING = (
    "CREATE DATABASE lending OWNER lender TEMPLATE template0 ENCODING 'LATIN1' "
    "LOCALE_PROVIDER icu ICU_LOCALE 'de-DE' LOCALE 'C'"
)
DATABASE_ROW = (
    "SELECT pg_get_userbyid(datdba), pg_encoding_to_char(encoding), datlocprovider, daticulocale, datcollate,"
    " datctype, shobj_description(oid, 'pg_database'),"
    " (SELECT setconfig FROM pg_db_role_setting WHERE setdatabase = d.oid AND setrole = 0)"
    " FROM pg_database d WHERE datname = %s"
)


def _lending(cluster: Cluster, *, extra: str = "") -> dict[str, int]:
    """Make database lending (pgdr's [postgres] dbname from now on), its tables owned by lender; its row counts."""
    cluster.write_config(cluster.base_config().replace('dbname = "postgres"', 'dbname = "lending"'))
    cluster.sql("CREATE ROLE lender LOGIN")
    cluster.sql(LENDING)
    cluster.sql("COMMENT ON DATABASE lending IS 'the loan book'")
    cluster.sql("ALTER DATABASE lending SET work_mem = '8MB'")
    with cluster.connect("lending") as conn:
        conn.execute("SET ROLE lender")
        conn.execute("CREATE TABLE loans (id int PRIMARY KEY, borrower text, amount numeric)")
        conn.execute("INSERT INTO loans SELECT g, 'Müller ' || g, g * 10 FROM generate_series(1, 1234) g")
        conn.execute("CREATE TABLE payments (loan int REFERENCES loans, paid numeric)")
        conn.execute("INSERT INTO payments SELECT g % 1234 + 1, g FROM generate_series(1, 4321) g")
        if extra:
            conn.execute(extra)
    return _counts(cluster)


def _counts(cluster: Cluster) -> dict[str, int]:
    with cluster.connect("lending") as conn:
        counts = {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone() for t in ("loans", "payments")}
        assert conn.execute("SELECT borrower FROM loans WHERE id = 7").fetchone() == ("Müller 7",)
    return {t: int(row[0]) for t, row in counts.items() if row is not None}


def _database(cluster: Cluster) -> tuple[object, ...] | None:
    rows = cluster.sql(DATABASE_ROW, "lending")
    return rows[0] if rows else None


def _table_owner(cluster: Cluster) -> str:
    with cluster.connect("lending") as conn:
        row = conn.execute("SELECT tableowner FROM pg_tables WHERE tablename = 'loans'").fetchone()
    assert row is not None
    return str(row[0])


def _one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_a_dropped_database_is_created_as_dumped_and_restored(cluster: Cluster) -> None:
    """`dropdb lending`, then `pgdr restore --logical --latest`: the database comes back as it was dumped."""
    counts = _lending(cluster)
    before = _database(cluster)
    assert before is not None and before[:4] == ("lender", "LATIN1", "i", "de-DE")
    name = json.loads(cluster.pgdr("backup", "--logical", "--json").stdout)["name"]
    cluster.sql("DROP DATABASE lending")

    plan = cluster.pgdr("restore", "--logical", "--latest", "--dry-run").stdout
    assert f"{name}/lending.dump" in plan and "Dry run: nothing was changed" in plan
    assert "database lending does not exist: it will be created" in plan, plan
    assert "owner lender, encoding LATIN1, locale C, ICU locale de-DE, as dumped" in plan, plan
    assert "safety dump:     skipped: database lending does not exist, so there is nothing to keep" in plan, plan
    as_json = json.loads(cluster.pgdr("restore", "--logical", "--latest", "--dry-run", "--json").stdout)
    assert as_json["database_exists"] is False and as_json["safety_dump"] is None
    assert as_json["create"]["owner"] == "lender"
    assert _database(cluster) is None  # the dry run changed nothing

    out = cluster.pgdr("restore", "--logical", "--latest", "--yes").stdout
    assert f"restored {name}/lending.dump from the local repository into lending" in out, out
    assert "safety dump: none (database lending did not exist: it was created for the restore)" in out, out
    assert _database(cluster) == before  # owner, encoding, locale, comment, settings
    assert _counts(cluster) == counts
    assert _table_owner(cluster) == "lender"

    # Now that it exists, the same restore goes the usual way: a safety dump, then the dump over it.
    with cluster.connect("lending") as conn:
        conn.execute("DELETE FROM payments")
    out = cluster.pgdr("restore", "--logical", "--latest", "--yes").stdout
    safety = Path(out.rsplit("safety dump: ", 1)[1].strip())
    assert safety.is_file() and _counts(cluster) == counts


def test_a_plain_sql_gz_dump_recreates_a_dropped_database(cluster: Cluster, tmp_path: Path) -> None:
    """The .sql.gz of the same backup restores too, but only where nothing would be overwritten."""
    counts = _lending(cluster)
    name = json.loads(cluster.pgdr("backup", "--logical", "--json").stdout)["name"]
    repo = open_repository(load_config(cluster.config_path), "local")
    dump = tmp_path / "lending.sql.gz"
    dump.write_bytes(repo.get(f"backups/{name}/lending.sql.gz"))

    refused = _one_line_error(cluster.pgdr("restore", str(dump), "--yes", check=False))
    assert "plain SQL dump" in refused and "database lending exists" in refused and ".dump" in refused, refused
    assert _counts(cluster) == counts

    cluster.sql("DROP DATABASE lending")
    plan = cluster.pgdr("restore", str(dump), "--dry-run").stdout
    assert "database lending does not exist: it will be created" in plan, plan
    assert "owner postgres (the dump does not record the database's owner), encoding LATIN1 as dumped" in plan
    assert "skipped: database lending does not exist" in plan and _database(cluster) is None

    cluster.pgdr("restore", str(dump), "--yes")
    after = _database(cluster)
    assert after is not None and after[:2] == ("postgres", "LATIN1")
    assert _counts(cluster) == counts
    assert _table_owner(cluster) == "lender"  # the objects keep the owners the dump gives them


def test_a_missing_owner_role_is_refused_before_anything_is_created(cluster: Cluster) -> None:
    _lending(cluster)
    cluster.pgdr("backup", "--logical")
    cluster.sql("DROP DATABASE lending")
    cluster.sql("DROP ROLE lender")
    for args in (["--dry-run"], ["--yes"]):
        line = _one_line_error(cluster.pgdr("restore", "--logical", "--latest", *args, check=False))
        assert "role lender does not exist (owner of database lending in the dump)" in line, line
        assert 'CREATE ROLE "lender"' in line and "nothing was changed" in line, line
        assert _database(cluster) is None


def test_a_failed_restore_drops_the_database_it_created(cluster: Cluster) -> None:
    """A role only a policy names (pg_restore finds it missing half-way): nothing is left half-made."""
    cluster.sql("CREATE ROLE auditor")
    counts = _lending(cluster, extra="CREATE POLICY audit ON loans TO auditor USING (true)")
    cluster.pgdr("backup", "--logical")
    cluster.sql("DROP DATABASE lending")
    cluster.sql("DROP ROLE auditor")

    line = _one_line_error(cluster.pgdr("restore", "--logical", "--latest", "--yes", check=False))
    assert 'role "auditor" does not exist' in line, line
    assert "database lending was dropped again: it does not exist, as before" in line, line
    assert _database(cluster) is None

    cluster.sql("CREATE ROLE auditor")
    cluster.pgdr("restore", "--logical", "--latest", "--yes")
    assert _counts(cluster) == counts
