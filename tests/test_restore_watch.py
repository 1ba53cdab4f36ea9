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


def test_a_promoted_server_pgdr_cannot_reach_is_reported_not_waited_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "pgdr.toml").write_text(
        f'[cluster]\nname = "main"\n\n[postgres]\nhost = "/nowhere"\n\n[local]\npath = "{tmp_path / "repo"}"\n'
    )
    cfg = load_config(tmp_path / "pgdr.toml")
    log = tmp_path / "restore.log"
    log.write_text("LOG:  recovery stopping after reaching consistency\nLOG:  selected new timeline ID: 2\n")
    monkeypatch.setattr(server, "postmaster_running", lambda data_dir: True)
    monkeypatch.setattr(server, "in_production", lambda data_dir: True)
    monkeypatch.setattr(run, "UNREACHABLE_GRACE", 0.2)
    report = run.follow_recovery(cfg, plan(tmp_path / "data"), log, timeout=30)
    assert report.reached_target, report
    assert report.server_state == "running (promoted, by pg_control; pgdr cannot connect to it)"
    assert report.new_timeline == 2
    (problem,) = report.problems
    assert problem.startswith("pgdr cannot connect to the restored server at /nowhere, port 5499 (")
    assert problem.endswith("differ from the config's [postgres] host")
