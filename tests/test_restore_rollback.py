"""A restore that fails after the server was stopped puts everything back, and says so in one line."""

from __future__ import annotations

import json
import os
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from backend.config import ClusterConfig, Config, PostgresConfig
from backend.errors import PgdrError
from backend.manifest import BackupManifest
from backend.restore import run
from backend.restore.marker import marker_path, unfinished_restore, write_marker
from tests.harness.cluster import give_to_server_user, make_shared_dir, server_user
from tests.harness.plans import immediate_plan


def plan_in_place(tmp_path: Path) -> tuple[Config, Any]:
    data = tmp_path / "data"
    data.mkdir()
    (data / "base").mkdir()
    (data / "base" / "16384").write_text("the old cluster's rows")
    now = datetime.now(UTC)
    backup = BackupManifest("20261207T000000Z", "physical", "main", 1, "15", now, now, [], wal_segment_size=16 << 20)
    safety = tmp_path / "data.pgdr-safety-20261207T010000Z"
    plan = immediate_plan(backup, data, in_place=True, safety_copy=safety, space_free=1 << 30)
    return Config(cluster=ClusterConfig(name="main"), postgres=PostgresConfig(data_dir=str(data))), plan


@pytest.mark.parametrize(
    "failure",
    [
        PgdrError("cannot write base/1/1259: Too many open files; check the target directory, then restore again"),
        PermissionError(13, "Permission denied"),
    ],
)
def test_a_failure_while_laying_down_the_backup_puts_the_old_directory_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failure: Exception
) -> None:
    cfg, plan = plan_in_place(tmp_path)

    def half_written(_cfg: object, _chain: object, _repos: object, target: Path, **_: object) -> str:
        (target / "global").mkdir()
        (target / "global" / "pg_control").write_bytes(b"half")  # what a partial unpack leaves
        raise failure

    monkeypatch.setattr(run, "restore_chain", half_written)
    with pytest.raises(PgdrError) as raised:
        run.execute(cfg, plan, [])

    message = str(raised.value)
    assert "nothing was changed" in message and "back in place" in message and "\n" not in message
    assert (plan.data_dir / "base" / "16384").read_text() == "the old cluster's rows"
    assert not (plan.data_dir / "global").exists() and not plan.safety_copy.exists()
    assert not marker_path(plan.data_dir).exists()


def test_the_unfinished_restore_note_goes_once_the_operator_put_things_back(tmp_path: Path) -> None:
    data = tmp_path / "data"
    safety = tmp_path / "data.pgdr-safety-20261207T010000Z"
    safety.mkdir()
    data.mkdir()
    marker = marker_path(data)
    marker.write_text(json.dumps({"started": "2026-12-07T01:00:00+00:00", "backup": "b", "safety_copy": str(safety)}))
    unfinished = unfinished_restore(data)
    assert unfinished is not None and "did not finish" in unfinished.describe()

    # The printed roll-back: the half-restored directory aside, the safety copy back in its place.
    data.rename(tmp_path / "data.failed")
    safety.rename(data)
    (data / "PG_VERSION").write_text("15\n")
    assert unfinished_restore(data) is None
    assert not marker.exists()  # seen once, gone


def test_the_console_header_says_a_restore_did_not_finish(tmp_path: Path) -> None:
    from pgdr_tui.source import Source

    cfg, plan = plan_in_place(tmp_path)
    source = Source(cfg, probe_server=False)
    assert "UNFINISHED" not in source.server_state().text
    marker_path(plan.data_dir).write_text(json.dumps({"backup": "b", "started": "s", "safety_copy": str(tmp_path)}))
    state = source.server_state()
    assert state.text.startswith("UNFINISHED RESTORE") and not state.reachable


@pytest.mark.skipif(os.geteuid() != 0, reason="needs two users: root's restore and the owner's")
def test_the_owners_forced_restore_replaces_the_note_a_root_restore_left() -> None:
    """A restore run as root died half-way; the cluster's owner forces the next one. The note is root's,
    in a folder the owner may write: it is replaced (renamed over), still naming the first safety copy,
    the real data."""
    folder = make_shared_dir("pgdr-marker-")
    try:
        give_to_server_user(folder)
        data = folder / "data"
        data.mkdir()
        give_to_server_user(data)
        first_copy = folder / "data.pgdr-safety-20261207T010000Z"
        first_copy.mkdir()
        note = {"started": "2026-12-07T01:00:00+00:00", "backup": "b", "safety_copy": str(first_copy)}
        marker_path(data).write_text(json.dumps(note))  # root's, 0644
        pid = os.fork()
        if pid == 0:  # the owner's restore, in a child that drops to the owner's uid
            code = 1
            try:
                os.setgid(server_user().pw_gid)
                os.setuid(server_user().pw_uid)
                real = write_marker(data, "c", folder / "data.pgdr-safety-20261207T020000Z")
                code = 0 if real == first_copy else 2
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0, "the owner could not replace root's note"
        assert marker_path(data).stat().st_uid == server_user().pw_uid
        unfinished = unfinished_restore(data)
        assert unfinished is not None and unfinished.backup == "c" and unfinished.safety_copy == first_copy
    finally:
        shutil.rmtree(folder)
