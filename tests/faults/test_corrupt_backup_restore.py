"""A backup object damaged in the repository: restore takes the other repository's good copy and says
so, or refuses with one line naming the object; nothing damaged is ever restored silently."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import psycopg

from backend.backup.pgbasebackup import TAR_OBJECT
from tests.harness.cluster import PG_BIN, Cluster, as_server_user


def flip_a_bit(path: Path) -> None:
    blob = bytearray(path.read_bytes())
    blob[len(blob) // 2] ^= 0x01
    path.write_bytes(bytes(blob))


def restore_beside(cluster: Cluster, target: Path, port: int) -> subprocess.CompletedProcess[str]:
    return cluster.pgdr(
        "restore", "--latest", "--target-dir", str(target), "--port", str(port), "--yes", check=False, timeout=600
    )


def stop(data: Path) -> None:
    subprocess.run(
        as_server_user([str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"]),
        capture_output=True,
        check=False,
    )


def audited_restores(cluster: Cluster, data_dir: Path) -> list[str]:
    """The audit log's results for restores into ``data_dir`` (the log is shared by the whole session)."""
    entries = [json.loads(line) for line in cluster.pgdr("audit", "--json").stdout.splitlines()]
    return [e["result"] for e in entries if e["action"] == "restore" and e.get("data_dir") == str(data_dir)]


def test_a_corrupt_local_copy_is_replaced_by_the_s3_copy_or_refused(cluster_s3: Cluster) -> None:
    cluster_s3.sql("CREATE TABLE loans AS SELECT g AS id FROM generate_series(1, 5000) g")
    name = json.loads(cluster_s3.pgdr("backup", "--json").stdout)["name"]
    cluster_s3.sql("INSERT INTO loans SELECT generate_series(5001, 5100)")  # replayed from WAL, not the backup
    cluster_s3.wait_archived(cluster_s3.switch_wal())
    key = f"backups/{name}/{TAR_OBJECT}"
    flip_a_bit(cluster_s3.local_repo / "main" / key)

    beside = cluster_s3.root / "beside"
    result = restore_beside(cluster_s3, beside, 5441)
    try:
        assert result.returncode == 0 and "Restore finished" in result.stdout, result.stdout + result.stderr
        assert "base backup: from the s3 repository" in result.stdout, result.stdout
        assert f"damaged copy not restored: local: {key} " in result.stdout, result.stdout
        with psycopg.connect(host=str(cluster_s3.socket_dir), port=5441, user="postgres", dbname="postgres") as conn:
            assert conn.execute("SELECT count(*) FROM loans").fetchone() == (5100,)
    finally:
        stop(beside)

    # The local repository alone holds only the damaged copy: refused, nothing started, nothing left.
    cluster_s3.write_config(cluster_s3.base_config())
    alone = cluster_s3.root / "local-alone"
    refused = restore_beside(cluster_s3, alone, 5442)
    assert refused.returncode == 2, refused.stdout + refused.stderr
    (line,) = refused.stderr.strip().splitlines()
    assert line.startswith(f"pgdr: error: no intact copy of backup {name} could be restored (local: {key} "), line
    assert line.endswith(f"no server was started and {alone} was removed"), line
    assert "Restore finished" not in refused.stdout
    assert not alone.exists(), "the half-unpacked directory is removed"
    assert not (cluster_s3.socket_dir / ".s.PGSQL.5442").exists(), "no server was started on the damaged copy"
    assert audited_restores(cluster_s3, alone) == ["started", "failed"]

    # In place: the cluster is stopped and moved aside first, so a refusal must put it back untouched.
    in_place = cluster_s3.pgdr("restore", "--latest", "--yes", check=False, timeout=600)
    assert in_place.returncode == 2, in_place.stdout + in_place.stderr
    (line,) = in_place.stderr.strip().splitlines()
    assert key in line and (
        f"nothing was changed: {cluster_s3.data_dir} is back in place, and its server is stopped: start it again"
        in line
    ), line
    assert not list(cluster_s3.root.glob("data.pgdr-safety-*")), "the safety copy went back where it was"
    cluster_s3.start()
    assert cluster_s3.sql("SELECT count(*) FROM loans")[0][0] == 5100
    assert "did not finish" not in cluster_s3.pgdr("restore", "--latest", "--dry-run").stdout
