"""``pgdr check`` against real running clusters: each misconfiguration is one FAIL line naming the setting.

Everything runs through the real command line, as an operator would run it, against a PostgreSQL 15
cluster that archives through the real ``pgdr wal-push`` (and, for ``cluster_s3``, a moto S3 server).
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

from tests.harness.cluster import Cluster, clean_env, pgdr_executable, wait_for
from tests.harness.s3 import free_port


def alter_system(cluster: Cluster, name: str, value: str, expected: str) -> None:
    """ALTER SYSTEM and reload, then wait until a new connection sees it (reload is asynchronous)."""
    cluster.sql(f"ALTER SYSTEM SET {name} = {value}")
    cluster.sql("SELECT pg_reload_conf()")
    wait_for(
        lambda: cluster.sql("SELECT setting FROM pg_settings WHERE name = %s", name)[0][0] == expected,
        10,
        f"{name} = {expected} after reload",
    )


def check(cluster: Cluster, *args: str) -> tuple[int, list[str]]:
    result = cluster.pgdr("check", "--timeout", "20", *args, check=False)
    assert result.stderr == "", result.stderr
    return result.returncode, result.stdout.splitlines()


def failures(lines: list[str]) -> list[str]:
    return [line for line in lines if line.startswith("[FAIL]")]


def archived_segments(cluster: Cluster, repo: str) -> str:
    return json.dumps(json.loads(cluster.pgdr("list", "--json", "--repo", repo).stdout))


def test_well_configured_cluster_passes(cluster: Cluster) -> None:
    alter_system(cluster, "archive_timeout", "60", "60")
    code, lines = check(cluster)
    assert code == 0, "\n".join(lines)
    assert all(line.startswith("[ok  ] ") for line in lines), lines
    for setting in ("wal_level = replica", "archive_mode = on", "archive_command = ", "archive_timeout = 60 s"):
        assert any(setting in line for line in lines), (setting, lines)
    assert "reached every repository (local)" in lines[-1]
    segment = lines[-1].split("segment ")[1].split()[0]
    assert segment in archived_segments(cluster, "local")


def test_segment_reaches_local_and_queued_s3(cluster_s3: Cluster) -> None:
    alter_system(cluster_s3, "archive_timeout", "60", "60")
    code, lines = check(cluster_s3)
    assert code == 0, "\n".join(lines)
    assert not failures(lines)
    assert any(line.startswith("[ok  ] s3 repository s3://") for line in lines), lines
    assert "reached every repository (local, s3)" in lines[-1]
    segment = lines[-1].split("segment ")[1].split()[0]
    assert segment in archived_segments(cluster_s3, "s3")


def test_a_second_check_switches_a_new_segment(cluster: Cluster) -> None:
    """Nothing is written between two checks: the check itself must write, or pg_switch_wal is a no-op."""
    alter_system(cluster, "archive_timeout", "60", "60")
    first = check(cluster)[1][-1].split("segment ")[1].split()[0]
    code, lines = check(cluster)
    assert code == 0, "\n".join(lines)
    second = lines[-1].split("segment ")[1].split()[0]
    assert second > first


def test_archive_timeout_off_is_one_fail_line(cluster: Cluster) -> None:
    code, lines = check(cluster)
    assert code == 1
    (fail,) = failures(lines)
    assert "archive_timeout = 0" in fail and "ALTER SYSTEM SET archive_timeout = 60" in fail
    assert "reached every repository" in lines[-1], "a missing archive_timeout must not stop the end-to-end test"


def test_archive_command_not_calling_pgdr(cluster: Cluster) -> None:
    alter_system(cluster, "archive_timeout", "60", "60")
    alter_system(cluster, "archive_command", "'/bin/true'", "/bin/true")
    started = time.monotonic()
    code, lines = check(cluster)
    assert code == 1
    fail = failures(lines)[0]
    assert "archive_command = '/bin/true'" in fail
    assert (
        f"ALTER SYSTEM SET archive_command = '{pgdr_executable()} --config {cluster.config_path} wal-push %p'" in fail
    )
    assert "end-to-end test skipped" in lines[-1]
    assert not any("forced a WAL switch" in line for line in lines)
    assert time.monotonic() - started < 10, "no point waiting for a segment that cannot arrive"


def test_failing_archive_command_is_reported_without_waiting_for_the_timeout(cluster: Cluster) -> None:
    alter_system(cluster, "archive_timeout", "60", "60")
    alter_system(cluster, "archive_command", "'/bin/false pgdr wal-push %p'", "/bin/false pgdr wal-push %p")
    started = time.monotonic()
    code, lines = check(cluster)
    assert code == 1
    assert "did not reach the local repository" in lines[-1], lines
    assert "archive_command is failing" in lines[-1] and "server log" in lines[-1]
    assert time.monotonic() - started < 15, "three failed attempts are enough to know"


def test_repository_of_another_cluster(cluster: Cluster) -> None:
    alter_system(cluster, "archive_timeout", "60", "60")
    root = cluster.local_repo / "main"
    root.mkdir()
    (root / "repo.json").write_text(
        json.dumps({"format": 1, "cluster": "main", "system_identifier": "42", "wal_segment_size": 16 << 20})
    )
    code, lines = check(cluster)
    assert code == 1
    fail = failures(lines)[0]
    assert fail.startswith("[FAIL] local repository") and "system identifier 42" in fail and "[cluster] name" in fail
    assert "end-to-end test skipped" in lines[-1]


def test_no_server_listening(tmp_path: Path) -> None:
    config = tmp_path / "pgdr.toml"
    config.write_text(
        f'[cluster]\nname = "main"\n[postgres]\nhost = "127.0.0.1"\nport = {free_port()}\nuser = "postgres"\n'
        f'[local]\npath = "{tmp_path}"\n'
    )
    result = subprocess.run(
        [str(pgdr_executable()), "--config", str(config), "check"],
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=60,
        check=False,
    )
    assert result.returncode != 0
    (line,) = result.stdout.splitlines()
    assert line.startswith("[FAIL] cannot connect to PostgreSQL at 127.0.0.1 port"), line
    assert "[postgres] host/port/user" in line
