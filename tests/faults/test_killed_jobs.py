"""kill -9 at the worst moments: nothing half-listed, the next run recovers by itself."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

from backend.config import load_config
from backend.repository import open_repository
from tests.harness.cluster import Cluster, clean_env, pgdr_executable, wait_for


def start_frozen(cluster: Cluster, point: str, *args: str) -> subprocess.Popen[str]:
    """Start ``pgdr <args>`` that stops itself at the named fault point; wait until it has."""
    proc = subprocess.Popen(
        [str(pgdr_executable()), "--config", str(cluster.config_path), *args],
        env=clean_env(PGDR_FAULT_STOP=point),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for(lambda: stopped(proc.pid) or proc.poll() is not None, 60, f"pgdr {args[0]} to reach {point}")
    assert proc.poll() is None, proc.communicate()
    return proc


def stopped(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "T"
    except FileNotFoundError:
        return False


def debris(cluster: Cluster) -> list[str]:
    """Anything under backups/ that is not part of a listed backup, in every repository."""
    cfg = load_config(cluster.config_path)
    found = []
    for name in cfg.repository_names:
        repo = open_repository(cfg, name)
        keys = [info.key for info in repo.list("backups/")]
        listed = {k.split("/")[1] for k in keys if k.endswith("/manifest.json")}
        found += [f"{name}:{k}" for k in keys if k.split("/")[1] not in listed]
        if name == "s3":
            client = repo.client  # type: ignore[attr-defined]
            uploads = client.list_multipart_uploads(Bucket=cfg.s3.bucket).get("Uploads", [])
            found += [f"s3 upload:{u['Key']}" for u in uploads]
    temp = [str(p) for p in (cluster.local_repo / "main").rglob(".tmp.*")]  # temp files, staging folders
    return found + temp


def basebackups_running(cluster: Cluster) -> list[str]:
    """pg_basebackup processes writing into this cluster's repository."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            argv = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        if any(arg.endswith(b"pg_basebackup") for arg in argv) and str(cluster.local_repo).encode() in b" ".join(argv):
            found.append(cmdline.parent.name)
    return found


@pytest.mark.parametrize(
    ("point", "repo"),
    [
        # PostgreSQL compresses, pg_basebackup writes into the local repository's staging folder.
        ("backup-during-pg-basebackup", []),
        ("backup-mid-upload", []),
        ("backup-before-manifest", []),
        # S3 alone: pg_basebackup's tar streamed through pgdr.
        ("backup-before-manifest", ["--repo", "s3"]),
    ],
)
def test_backup_killed_lists_nothing_and_the_next_one_cleans_up(
    cluster_s3: Cluster, point: str, repo: list[str]
) -> None:
    cluster_s3.sql("CREATE TABLE filler AS SELECT g, md5(g::text) AS h FROM generate_series(1, 200000) g")
    proc = start_frozen(cluster_s3, point, "backup", *repo)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    wait_for(lambda: not basebackups_running(cluster_s3), 10, "pg_basebackup to die with pgdr")
    assert json.loads(cluster_s3.pgdr("list", "--json").stdout)["backups"] == []
    leftovers = debris(cluster_s3)
    assert leftovers, "the kill should leave something for the next backup to clean"

    name = json.loads(cluster_s3.pgdr("backup", "--json").stdout)["name"]
    assert [b["name"] for b in json.loads(cluster_s3.pgdr("list", "--json").stdout)["backups"]] == [name]
    assert debris(cluster_s3) == []


def test_backup_killed_early_before_pg_basebackup_starts(cluster: Cluster) -> None:
    proc = subprocess.Popen(
        [str(pgdr_executable()), "--config", str(cluster.config_path), "backup"],
        env=clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert json.loads(cluster.pgdr("list", "--json").stdout)["backups"] == []
    cluster.pgdr("backup")
    assert len(json.loads(cluster.pgdr("list", "--json").stdout)["backups"]) == 1


def test_two_backups_at_once_the_second_is_refused_clearly(cluster: Cluster) -> None:
    first = start_frozen(cluster, "backup-before-manifest", "backup")
    try:
        second = cluster.pgdr("backup", check=False)
        assert second.returncode == 2 and "holds the main repository lock" in second.stderr
        assert len(second.stderr.strip().splitlines()) == 1
    finally:
        os.kill(first.pid, signal.SIGCONT)
    _, err = first.communicate(timeout=120)
    assert first.returncode == 0, err
    assert len(json.loads(cluster.pgdr("list", "--json").stdout)["backups"]) == 1


def kill_a_restore_half_way(cluster: Cluster, *force: str) -> None:
    """A backup of 1,000 precious rows, and a restore from it killed right after its safety copy."""
    if not force:
        cluster.sql("CREATE TABLE precious (x int)")
        cluster.sql("INSERT INTO precious SELECT generate_series(1, 1000)")
        cluster.pgdr("backup")
        cluster.wait_archived(cluster.switch_wal())
    proc = start_frozen(cluster, "restore-after-safety-copy", "restore", "--latest", "--yes", *force)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def test_restore_killed_half_way_keeps_the_safety_copy_and_says_how_to_roll_back(cluster: Cluster) -> None:
    kill_a_restore_half_way(cluster)
    (safety,) = cluster.data_dir.parent.glob("data.pgdr-safety-*")
    assert (safety / "PG_VERSION").is_file() and (safety / "global" / "pg_control").is_file()

    plan = cluster.pgdr("restore", "--latest", "--dry-run").stdout
    assert "did not finish" in plan and f"mv {safety} {cluster.data_dir}" in plan
    # Every look at the cluster says so, and a second restore waits for the roll-back (or --force).
    assert "UNFINISHED RESTORE" in cluster.pgdr("list").stdout
    status = cluster.pgdr("status", check=False)
    assert status.returncode == 1 and "UNFINISHED RESTORE" in status.stdout
    checked = cluster.pgdr("check", check=False)
    assert checked.returncode != 0 and "UNFINISHED RESTORE" in checked.stdout, checked.stdout
    again = cluster.pgdr("restore", "--latest", "--yes", check=False)
    assert again.returncode == 2 and "roll back first, or restore over it with --force" in again.stderr
    # Rolling back as told brings the old cluster back, and the note goes with it.
    os.rename(cluster.data_dir, cluster.root / "data.failed")
    os.rename(safety, cluster.data_dir)
    cluster.start()
    assert cluster.sql("SELECT count(*) FROM precious")[0][0] == 1000
    assert "did not finish" not in cluster.pgdr("restore", "--latest", "--dry-run").stdout
    assert not (cluster.data_dir.parent / ".data.pgdr-restore.json").exists()
    assert "UNFINISHED" not in cluster.pgdr("list").stdout


def test_a_restore_forced_over_an_unfinished_one_keeps_pointing_at_the_real_data(cluster: Cluster) -> None:
    kill_a_restore_half_way(cluster)
    (real,) = cluster.data_dir.parent.glob("data.pgdr-safety-*")
    plan = cluster.pgdr("restore", "--latest", "--dry-run", "--force").stdout
    assert "WARNING: earlier restores: restoring over the half-restored directory" in plan, plan

    # Killed again, half-way through the forced restore: the note still names the data from before the first.
    kill_a_restore_half_way(cluster, "--force")
    assert f"mv {real} {cluster.data_dir}" in cluster.pgdr("restore", "--latest", "--dry-run").stdout

    report = cluster.pgdr("restore", "--latest", "--yes", "--force", timeout=600).stdout
    assert "Restore finished" in report and f"safety copy: {real}" in report, report
    assert (real / "PG_VERSION").is_file()
    assert cluster.sql("SELECT count(*) FROM precious")[0][0] == 1000
    assert "UNFINISHED" not in cluster.pgdr("list").stdout
