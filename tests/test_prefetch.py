"""WAL prefetch for recovery: segments fetched ahead are verified, used, and cleaned up."""

from __future__ import annotations

import subprocess
from pathlib import Path

from backend.archive.walfile import find_archived
from backend.config import load_config
from backend.repository import open_repository
from tests.harness.cluster import Cluster, clean_env, pgdr_executable


def make_segments(cluster: Cluster, count: int) -> list[str]:
    cluster.sql("CREATE TABLE t (x int)")
    names = []
    for _ in range(count):
        cluster.sql("INSERT INTO t SELECT generate_series(1, 1000)")
        names.append(cluster.switch_wal())
    cluster.wait_archived(names[-1])
    return names


def pgdr(cluster: Cluster, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(pgdr_executable()), "--config", str(cluster.config_path), *args],
        capture_output=True,
        text=True,
        env=clean_env(),
        check=False,
    )


def test_prefetch_stops_at_a_corrupt_segment_and_fetch_refuses_it(cluster: Cluster, tmp_path: Path) -> None:
    names = make_segments(cluster, 4)
    repo = open_repository(load_config(cluster.config_path), "local")
    (obj,) = find_archived(repo, names[2])
    stored = cluster.local_repo / "main" / obj.key
    stored.write_bytes(stored.read_bytes()[:-100] + bytes(100))

    folder = tmp_path / "pgdr-prefetch"
    folder.mkdir()
    assert pgdr(cluster, "wal-prefetch", str(folder), "--after", names[0]).returncode == 0
    prefetched = {p.name for p in folder.iterdir() if not p.name.startswith(".")}
    assert names[1] in prefetched and names[2] not in prefetched, "only verified segments are placed"

    # restore_command takes the prefetched segment by rename, and refuses the corrupt one.
    assert pgdr(cluster, "wal-fetch", names[1], str(tmp_path / "RECOVERYXLOG")).returncode == 0
    assert not (folder / names[1]).exists() and (tmp_path / "RECOVERYXLOG").stat().st_size == 16 << 20
    refused = pgdr(cluster, "wal-fetch", names[2], str(tmp_path / "RECOVERYXLOG2"))
    assert refused.returncode == 2 and not (tmp_path / "RECOVERYXLOG2").exists()


def test_restore_uses_prefetch_and_cleans_it_up(cluster: Cluster) -> None:
    cluster.pgdr("backup")
    make_segments(cluster, 6)
    result = cluster.pgdr("restore", "--latest", "--yes", timeout=600)
    assert "Restore finished" in result.stdout, result.stdout
    assert cluster.sql("SELECT count(*) FROM t")[0][0] == 6000
    assert not (cluster.data_dir / "pg_wal" / "pgdr-prefetch").exists()
