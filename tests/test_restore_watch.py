"""Watching a restored server: pgdr's own commands for it work from any directory, and a server pgdr
cannot connect to is not waited on for ten minutes once pg_control says recovery is over."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from backend import server
from backend.config import load_config
from backend.manifest import BackupManifest
from backend.restore import run
from backend.restore.plan import RestorePlan
from tests.harness.plans import immediate_plan


def test_restore_command_names_the_config_by_its_absolute_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The server runs restore_command in its data directory, not where the operator typed --config."""
    (tmp_path / "pgdr.toml").write_text(f'[cluster]\nname = "main"\n\n[local]\npath = "{tmp_path / "repo"}"\n')
    monkeypatch.chdir(tmp_path)
    cfg = load_config(Path("pgdr.toml"))
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    command = run.recovery_command(cfg, data_dir)
    assert f" --config {tmp_path / 'pgdr.toml'} wal-fetch %f %p" in command, command


def plan(data_dir: Path) -> RestorePlan:
    now = datetime(2026, 12, 6, tzinfo=UTC)
    backup = BackupManifest("b1", "physical", "main", 1, "15", now, now, [], wal_segment_size=16 << 20)
    return immediate_plan(backup, data_dir, port=5499)


def follow_unreachable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, postgres: str, log_text: str
) -> run.RestoreReport:
    """Follow a recovery whose server pg_control says has promoted, and which pgdr cannot connect to."""
    (tmp_path / "pgdr.toml").write_text(
        f'[cluster]\nname = "main"\n\n[postgres]\n{postgres}\n\n[local]\npath = "{tmp_path / "repo"}"\n'
    )
    log = tmp_path / "restore.log"
    log.write_text("LOG:  recovery stopping after reaching consistency\nLOG:  selected new timeline ID: 2\n" + log_text)
    monkeypatch.setattr(server, "postmaster_running", lambda data_dir: True)
    monkeypatch.setattr(server, "in_production", lambda data_dir: True)
    monkeypatch.setattr(run, "UNREACHABLE_GRACE", 0.2)
    return run.follow_recovery(load_config(tmp_path / "pgdr.toml"), plan(tmp_path / "data"), log, timeout=30)


def test_a_promoted_server_pgdr_cannot_reach_is_reported_not_waited_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    report = follow_unreachable(tmp_path, monkeypatch, 'host = "/nowhere"', "")
    assert report.reached_target, report
    assert report.server_state == "running (promoted, by pg_control; pgdr cannot connect to it)"
    assert report.new_timeline == 2
    (problem,) = report.problems
    assert problem.startswith("pgdr cannot connect to the restored server at /nowhere, port 5499 (")
    assert problem.endswith("differ from the config's [postgres] host")


def test_peer_authentication_is_diagnosed_once_with_the_user_to_run_as(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pgdr run as root against a server that only lets the OS user postgres in as postgres."""
    refused = 'FATAL:  Peer authentication failed for user "postgres"'
    monkeypatch.setattr(run, "_probe", lambda cfg, plan: refused.removeprefix("FATAL:  "))
    report = follow_unreachable(
        tmp_path,
        monkeypatch,
        'user = "postgres"',
        f"{refused}\nDETAIL:  Connection matched pg_hba.conf line 90\n" * 21,
    )
    (problem,) = report.problems
    assert "Peer authentication failed" in problem and "runuser -u postgres -- pgdr" in problem
    assert "unix_socket_directories" not in problem
    assert report.render().count("problem:") == 1


def test_restore_command_reads_the_config_the_restore_was_given(tmp_path: Path) -> None:
    """Not the one the backup's archive_command named: that file may be gone, or another cluster's."""
    given = tmp_path / "restore config.toml"
    given.write_text(f'[cluster]\nname = "main"\n\n[local]\npath = "{tmp_path / "repo"}"\n')
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "postgresql.auto.conf").write_text(
        "archive_command = '/opt/pgdr/bin/pgdr --config /etc/pgdr/old.toml wal-push %p'\n"
    )
    command = run.recovery_command(load_config(given), data_dir)
    assert command == f"/opt/pgdr/bin/pgdr --config '{given}' wal-fetch %f %p"
