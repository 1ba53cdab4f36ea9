"""One job lock per repository: with S3 alone it is an object in the bucket, seen by every user and host.

Against moto over HTTP and the real ``pgdr``: root's backup and the cluster owner's (each with its
own state dir, as the daemon and an operator have) exclude each other; a lock whose holder is gone
is taken over; a held lock is renewed, so a long job keeps it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from typing import Any

import pytest

from backend import locks
from backend.config import load_config
from backend.errors import PgdrError
from backend.repository.s3 import S3Repository
from tests.conftest import s3_settings
from tests.faults.test_killed_jobs import start_frozen
from tests.harness.cluster import Cluster
from tests.harness.s3 import MotoEndpoint, free_port

LOCK = "locks/repository.lock"


@pytest.fixture
def s3_only(cluster_s3: Cluster, moto: MotoEndpoint, bucket: str) -> Cluster:
    cluster_s3.write_config(cluster_s3.base_config(local=False, s3=s3_settings(moto, bucket)))
    return cluster_s3


def lock_repo(cluster: Cluster) -> S3Repository:
    return S3Repository.from_config(load_config(cluster.config_path))


def plant(repo: S3Repository, **record: Any) -> None:
    holder = {"token": "theirs", "job": "base backup", "user": "alice", "host": "db2", "pid": 4242, "started": 1}
    holder["since"] = "2030-01-01T00:00:00+00:00"
    repo.put(LOCK, json.dumps(holder | record).encode())


def test_a_backup_by_another_user_is_refused_while_one_holds_the_s3_lock(s3_only: Cluster) -> None:
    first = start_frozen(s3_only, "backup-before-manifest", "backup")  # root, holding the lock
    try:
        second = s3_only.pgdr_as_owner("backup", check=False)  # the cluster's owner, its own state dir
        assert second.returncode == 2, second.stdout + second.stderr
        (line,) = second.stderr.strip().splitlines()
        assert line.startswith(f"pgdr: error: cannot start base backup: base backup (pid {first.pid} on ")
        assert f"holds the main repository lock in {lock_repo(s3_only).location()}; wait for it" in line
    finally:
        os.kill(first.pid, signal.SIGCONT)
    _, err = first.communicate(timeout=180)
    assert first.returncode == 0, err
    assert lock_repo(s3_only).read_tagged(LOCK) is None, "the lock outlived its job"
    assert len(json.loads(s3_only.pgdr("list", "--json").stdout)["backups"]) == 1


def test_a_live_lock_of_another_host_is_honoured_and_a_stale_one_taken_over(s3_only: Cluster) -> None:
    repo = lock_repo(s3_only)
    plant(repo, machine="another machine", expires=time.time() + 60)
    refused = s3_only.pgdr("backup", check=False)
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines() == [
        "pgdr: error: cannot start base backup: base backup (pid 4242 on db2 as alice, since "
        f"2030-01-01T00:00:00+00:00) holds the main repository lock in {repo.location()}; wait for it to finish "
        "(pgdr status) and retry"
    ]
    plant(repo, machine="another machine", expires=time.time() - locks.SKEW - 1)  # its lease ran out
    s3_only.pgdr("backup")
    assert repo.read_tagged(LOCK) is None


def test_a_lock_left_by_a_killed_process_on_this_machine_is_taken_over_at_once(s3_only: Cluster) -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    repo = lock_repo(s3_only)
    plant(repo, machine=locks.machine(), pid=dead.pid, started=12345, expires=time.time() + 3600)
    s3_only.pgdr("backup")
    assert repo.read_tagged(LOCK) is None


def test_a_held_lock_is_renewed_and_not_taken(s3_only: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(locks, "LEASE", 2.0)
    monkeypatch.setattr(locks, "RENEW", 0.3)
    monkeypatch.setattr(locks, "SKEW", 0.0)
    cfg = load_config(s3_only.config_path)
    repo = S3Repository.from_config(cfg)
    with locks.job_lock(cfg, "expire"):
        time.sleep(3 * locks.LEASE)
        found = repo.read_tagged(LOCK)
        assert found is not None
        held = locks.parse(found[0])
        assert held["job"] == "expire" and held["expires"] > time.time(), "the lease was not renewed"
        monkeypatch.setattr(locks, "machine", lambda: "another machine")  # judged by its lease alone
        refused = r"^cannot start base backup: expire \(pid \d+ on .+ holds the main repository lock in s3://"
        with pytest.raises(PgdrError, match=refused), locks.job_lock(cfg, "base backup"):
            pass
    assert repo.read_tagged(LOCK) is None


def test_s3_out_of_reach_does_not_stop_a_backup_into_the_local_repository(
    cluster_s3: Cluster, moto: MotoEndpoint, bucket: str
) -> None:
    unreachable = s3_settings(moto, bucket) | {"endpoint_url": f"http://127.0.0.1:{free_port()}"}
    cluster_s3.write_config(cluster_s3.base_config(s3=unreachable))
    result = cluster_s3.pgdr("backup", "--repo", "local")
    assert "base backup goes on without the lock in the S3 repository (it holds the local one): cannot reach" in (
        result.stderr
    )
    (backup,) = json.loads(cluster_s3.pgdr("list", "--json", "--repo", "local").stdout)["backups"]
    assert backup["repositories"] == ["local"]
