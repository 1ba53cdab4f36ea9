"""The local repository's filesystem fills up: wal-push fails, PostgreSQL keeps the segment, and
archiving resumes by itself when space returns."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness.cluster import Cluster, clean_env, give_to_server_user, pgdr_executable, wait_for

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root (CI runs as root)")


@pytest.fixture
def small_repo(cluster: Cluster) -> Iterator[Path]:
    path = cluster.root / "small-repo"
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(path)], check=True)
    try:
        give_to_server_user(path)
        cluster.write_config(cluster.base_config(local=False) + f'\n[local]\npath = "{path}"\n')
        yield path
    finally:
        cluster.stop("immediate")
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_full_repository_fails_the_push_and_recovers(cluster: Cluster, small_repo: Path) -> None:
    first = cluster.switch_wal()
    cluster.wait_archived(first)
    filler = small_repo / "filler"
    free = os.statvfs(small_repo).f_bavail * os.statvfs(small_repo).f_frsize
    filler.write_bytes(b"\0" * (free - 64 * 1024))

    cluster.sql("CREATE TABLE noise AS SELECT md5(random()::text) || md5(random()::text) AS v "
                "FROM generate_series(1, 60000)")
    blocked = cluster.switch_wal()
    wait_for(lambda: cluster.sql("SELECT last_failed_wal FROM pg_stat_archiver")[0][0] == blocked, 60,
             "wal-push to fail on the full disk")
    assert (cluster.data_dir / "pg_wal" / "archive_status" / f"{blocked}.ready").exists(), "PostgreSQL keeps it"
    wal_dir = small_repo / "main" / "wal" / blocked[:16]
    assert not [p for p in wal_dir.iterdir() if p.name.startswith(blocked)], "nothing half-written is visible"
    assert not [p for p in wal_dir.iterdir() if p.name.startswith(".tmp.")], "temp files are removed on failure"

    filler.unlink()
    after = cluster.switch_wal()  # a new segment wakes the archiver, which retries the blocked one first
    cluster.wait_archived(after)
    for segment in (blocked, after):
        result = subprocess.run([str(pgdr_executable()), "--config", str(cluster.config_path), "wal-fetch",
                                 segment, str(cluster.root / segment)], env=clean_env(), check=False)
        assert result.returncode == 0
