"""Base backups and logical dumps against a real cluster, read back without pgdr's restore code."""

from __future__ import annotations

import gzip
import io
import json
import subprocess
import tarfile
import threading
from pathlib import Path
from typing import Any

import pytest
import zstandard

from backend.config import load_config
from backend.repository import open_repository
from backend.walnames import SegmentName
from tests.conftest import on_every_version
from tests.harness.cluster import (
    PG_BIN,
    Cluster,
    as_server_user,
    clean_env,
    give_to_server_user,
    pgdr_executable,
    run_checked,
)


class Workload:
    """Commits rows in a loop until stopped, so a backup runs against a busy server."""

    def __init__(self, cluster: Cluster) -> None:
        cluster.sql("CREATE TABLE loans (id serial PRIMARY KEY, amount numeric, at timestamptz DEFAULT now())")
        self.cluster = cluster
        self.stop = threading.Event()
        self.committed = 0
        self.thread = threading.Thread(target=self.run)

    def run(self) -> None:
        with self.cluster.connect() as conn:
            while not self.stop.is_set() and self.committed < 100_000:
                conn.execute("INSERT INTO loans (amount) SELECT g FROM generate_series(1, 50) g")
                self.committed += 50

    def __enter__(self) -> Workload:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()


def extract_backup(cluster: Cluster, repo_name: str, name: str, target: Path) -> dict[str, Any]:
    """Unpack a stored base backup by hand, as one made by ``pg_basebackup -Ft``: zstd + tar, PostgreSQL's
    backup_manifest beside it, then the WAL it needs via wal-fetch."""
    repo = open_repository(load_config(cluster.config_path), repo_name)
    manifest: dict[str, Any] = json.loads(repo.get(f"backups/{name}/manifest.json"))
    target.mkdir(mode=0o700)
    with repo.open(f"backups/{name}/base.tar.zst") as raw:
        stream = zstandard.ZstdDecompressor().stream_reader(raw)
        with tarfile.open(fileobj=stream, mode="r|") as tar:
            tar.extractall(target)
    if not (target / "backup_manifest").exists():
        (target / "backup_manifest").write_bytes(repo.get(f"backups/{name}/backup_manifest"))
    wal_dir = target / "pg_wal"
    wal_dir.mkdir(exist_ok=True)
    seg = SegmentName.parse(manifest["wal_start"], manifest["wal_segment_size"])
    while True:
        run_checked(
            [
                str(pgdr_executable()),
                "--config",
                str(cluster.config_path),
                "wal-fetch",
                seg.name,
                str(wal_dir / seg.name),
            ]
        )
        if seg.name == manifest["wal_stop"]:
            break
        seg = seg.next()
    return manifest


def chown_tree(path: Path) -> None:
    for p in [path, *path.rglob("*")]:
        give_to_server_user(p)


@pytest.mark.parametrize(
    "repos",
    [
        ["local", "s3"],  # PostgreSQL compresses into the local repository; S3 gets its copy from there
        ["s3"],  # S3 alone: pg_basebackup's tar streamed through pgdr
    ],
)
@on_every_version
def test_backup_during_workload_restores_by_hand(cluster_s3: Cluster, repos: list[str]) -> None:
    only = ["--repo", "s3"] if repos == ["s3"] else []
    with Workload(cluster_s3) as load:
        result = cluster_s3.pgdr("backup", "--json", *only)
    assert load.committed > 0
    backup = json.loads(result.stdout)
    listing = json.loads(cluster_s3.pgdr("list", "--json").stdout)
    (entry,) = [b for b in listing["backups"] if b["name"] == backup["name"]]
    assert entry["kind"] == "physical" and entry["repositories"] == repos
    assert entry["timeline"] == 1 and entry["start_lsn"] and entry["stop_lsn"] and entry["size_bytes"] > 10_000_000
    assert not list((cluster_s3.local_repo / "main" / "backups").glob(".*")), "a staging folder was left"

    for repo_name in repos:
        restored = cluster_s3.root / f"restored-{repo_name}"
        manifest = extract_backup(cluster_s3, repo_name, backup["name"], restored)
        assert manifest["file_count"] > 100
        verify = subprocess.run(
            [str(cluster_s3.pg_bin / "pg_verifybackup"), str(restored)], capture_output=True, text=True, check=False
        )
        assert verify.returncode == 0, verify.stderr
        assert "successfully verified" in verify.stdout

    # And a copy starts as a server that answers a query with the rows committed before the backup.
    restored = cluster_s3.root / f"restored-{repos[0]}"
    (restored / "recovery.signal").touch()
    sock = cluster_s3.root / "sock2"
    sock.mkdir()
    (restored / "postgresql.auto.conf").write_text(
        f"port = 5433\nlisten_addresses = ''\nunix_socket_directories = '{sock}'\narchive_mode = off\n"
        f"restore_command = '{cluster_s3.pgdr_for_server} --config {cluster_s3.config_path} wal-fetch %f %p'\n"
        "recovery_target = 'immediate'\nrecovery_target_action = 'promote'\n"
    )
    chown_tree(restored)
    chown_tree(sock)
    log = cluster_s3.root / "restored.log"
    run_checked(
        as_server_user(
            [str(cluster_s3.pg_bin / "pg_ctl"), "-D", str(restored), "-l", str(log), "-w", "-t", "60", "start"]
        )
    )
    try:
        import psycopg

        with psycopg.connect(host=str(sock), port=5433, user="postgres", dbname="postgres") as conn:
            row = conn.execute("SELECT count(*) FROM loans").fetchone()
        assert row is not None and 0 < row[0] <= load.committed
    finally:
        subprocess.run(
            as_server_user([str(cluster_s3.pg_bin / "pg_ctl"), "-D", str(restored), "-m", "immediate", "stop"]),
            capture_output=True,
            check=False,
        )


def test_logical_backup_writes_dump_and_sql_gz(cluster_s3: Cluster, tmp_path: Path) -> None:
    cluster_s3.sql("CREATE TABLE borrowers (id int PRIMARY KEY, wallet text)")
    cluster_s3.sql("INSERT INTO borrowers SELECT g, 'w' || g FROM generate_series(1, 500) g")
    backup = json.loads(cluster_s3.pgdr("backup", "--logical", "--json").stdout)
    assert backup["kind"] == "logical" and backup["name"].endswith("-logical")
    listing = json.loads(cluster_s3.pgdr("list", "--json").stdout)
    (entry,) = [b for b in listing["backups"] if b["name"] == backup["name"]]
    assert entry["repositories"] == ["local", "s3"] and entry["database"] == "postgres"

    repo = open_repository(load_config(cluster_s3.config_path), "s3")
    dump = tmp_path / "postgres.dump"
    dump.write_bytes(repo.get(f"backups/{backup['name']}/postgres.dump"))
    toc = subprocess.run([str(PG_BIN / "pg_restore"), "--list", str(dump)], capture_output=True, text=True, check=True)
    assert "TABLE public borrowers" in toc.stdout
    sql = gzip.GzipFile(fileobj=io.BytesIO(repo.get(f"backups/{backup['name']}/postgres.sql.gz"))).read().decode()
    assert "CREATE TABLE public.borrowers" in sql and "w500" in sql


def test_failed_backup_lists_nothing(cluster: Cluster, tmp_path: Path) -> None:
    cluster.sql("CREATE TABLE t (x int)")
    bad = tmp_path / "bad.toml"
    bad.write_text(cluster.base_config().replace(f"port = {cluster.port}", "port = 1"))
    result = subprocess.run(
        [str(pgdr_executable()), "--config", str(bad), "backup"], capture_output=True, text=True, check=False
    )
    assert result.returncode != 0 and "cannot connect" in result.stderr
    assert json.loads(cluster.pgdr("list", "--json").stdout)["backups"] == []


def test_a_backup_started_before_the_server_accepts_connections_waits_for_it(cluster: Cluster) -> None:
    """``postgres-backup-now`` right after ``up``: the database is still starting when the backup begins."""
    cluster.stop()
    backup = subprocess.Popen(
        [str(pgdr_executable()), "--config", str(cluster.config_path), "backup", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=clean_env(),
    )
    try:
        # It is waiting, not failed: the server is down and the backup has not given up.
        with pytest.raises(subprocess.TimeoutExpired):
            backup.wait(2)
        cluster.start()
        out, err = backup.communicate(timeout=120)
    finally:
        backup.kill()
    assert backup.returncode == 0, err
    assert json.loads(out)["kind"] == "physical"
