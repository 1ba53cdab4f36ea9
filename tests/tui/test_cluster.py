"""The console against a real PostgreSQL cluster archiving through the real pgdr: backup, then restore beside."""

from __future__ import annotations

import dataclasses
import subprocess
import threading
import time
from datetime import UTC
from pathlib import Path
from typing import Any

from textual.message import Message
from textual.widgets import DataTable, Input, ProgressBar

from backend.config import load_config
from backend.progress import ProgressCallback
from pgdr_tui.app import PgdrApp
from pgdr_tui.messages import JobFinished, JobProgress
from pgdr_tui.screens.backup import BackupScreen
from pgdr_tui.screens.backups import BackupsScreen
from pgdr_tui.screens.dialogs import ConfirmRestoreModal
from pgdr_tui.screens.restore import RestorePlanScreen, RestoreProgressScreen
from pgdr_tui.screens.timeline import TimelineScreen
from pgdr_tui.source import Source
from tests.conftest import on_every_version
from tests.harness.cluster import Cluster, as_server_user, give_to_server_user, pg_bin, running_cluster
from tests.tui.conftest import run_async


async def wait_until(pilot: Any, condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        await pilot.pause(0.2)


@on_every_version
@run_async
async def test_backup_then_restore_beside_through_the_console(cluster: Cluster) -> None:
    cluster.sql("CREATE TABLE t (id int)")
    cluster.sql("INSERT INTO t SELECT generate_series(1, 1000)")
    cluster.pgdr("backup")
    messages: list[Message] = []
    app = PgdrApp(Source(load_config(cluster.config_path), zone=UTC), ascii_only=False)
    async with app.run_test(size=(100, 30), message_hook=messages.append) as pilot:
        await app.workers.wait_for_complete()
        await pilot.pause()
        assert app.model is not None and len(app.model.catalog.backups) == 1
        assert app.facts.server_ok, app.facts.server

        # A physical backup from the backup screen: progress advances, then it completes and is listed.
        await pilot.press("n")
        await pilot.pause()
        screen = app.screen
        assert isinstance(screen, BackupScreen)
        await pilot.press("p")
        await wait_until(pilot, lambda: any(isinstance(m, JobFinished) for m in messages), 120, "the backup")
        finished = next(m for m in messages if isinstance(m, JobFinished))
        assert finished.error is None, finished.error
        steps: dict[str, list[int]] = {}  # each step (backup, then the upload from the local copy) moves forward
        for m in messages:
            if isinstance(m, JobProgress):
                steps.setdefault(m.progress.step, []).append(m.progress.done)
        done = steps["backup"]
        assert len(done) >= 2 and all(d == sorted(d) for d in steps.values()) and done[-1] > 0
        bar = screen.query_one(ProgressBar)
        assert bar.total is not None and bar.progress == bar.total
        assert "complete" in str(screen.query_one("#backup-state").render())
        await app.workers.wait_for_complete()
        await pilot.pause()
        assert app.model is not None and len(app.model.catalog.backups) == 2

        # More work, archived; then restore beside to the latest WAL through the modal.
        cluster.sql("INSERT INTO t SELECT generate_series(1001, 2000)")
        segment = cluster.switch_wal()
        cluster.wait_archived(segment)
        await pilot.press("ctrl+r")
        await app.workers.wait_for_complete()
        await pilot.press("t")
        await pilot.pause()
        assert isinstance(app.screen, TimelineScreen)
        await pilot.press("end", "d")
        await app.workers.wait_for_complete()
        await pilot.pause()
        plan_screen = app.screen
        assert isinstance(plan_screen, RestorePlanScreen)
        beside = cluster.root / "beside"
        await pilot.press("b")
        await pilot.pause()
        plan_screen.query_one("#beside-dir", Input).value = str(beside)
        plan_screen.query_one("#beside-port", Input).value = str(cluster.port + 1)
        await pilot.press("enter")
        await app.workers.wait_for_complete()
        await pilot.pause()
        assert plan_screen.plan is not None, plan_screen.error
        assert plan_screen.plan.data_dir == beside and not plan_screen.plan.in_place
        await pilot.press("r")
        await pilot.pause()
        assert isinstance(app.screen, ConfirmRestoreModal)
        await pilot.press(*"nope", "enter")
        await pilot.pause()
        assert isinstance(app.screen, ConfirmRestoreModal) and not beside.exists()
        modal_input = app.screen.query_one(Input)
        modal_input.value = ""
        await pilot.press(*"main", "enter")
        await pilot.pause()
        progress = app.screen
        assert isinstance(progress, RestoreProgressScreen)
        try:
            await wait_until(pilot, lambda: progress.finished, 180, "the detached restore")
            result = progress.job.result()
            assert result is not None and result["ok"], (result, progress.job.log.read_text())
            assert result["report"]["reached_target"]
            assert (progress.job.folder / "job.json").exists()
            rows = subprocess.run(
                [
                    "psql" if not (cluster.pg_bin / "psql").exists() else str(cluster.pg_bin / "psql"),
                    "-h",
                    str(cluster.socket_dir),
                    "-p",
                    str(cluster.port + 1),
                    "-U",
                    "postgres",
                    "-Atc",
                    "SELECT count(*) FROM t",
                ],
                capture_output=True,
                text=True,
                check=False,
            )
            assert rows.stdout.strip() == "2000", rows
            # The console's header asks the promoted server which timeline it writes: the report's new
            # one at once, not the last checkpoint's (which lags until the next checkpoint).
            cfg = app.source.cfg
            moved = dataclasses.replace(cfg, postgres=dataclasses.replace(cfg.postgres, port=cluster.port + 1))
            state = Source(moved).server_state()
            assert state.reachable and state.in_recovery is False, state
            assert state.timeline == result["report"]["new_timeline"], (state, result["report"])
            assert f"TL {state.timeline}" in state.text and state.short == f"primary, TL {state.timeline}"
        finally:
            stop(cluster, beside)
    assert cluster.sql("SELECT count(*) FROM t")[0][0] == 2000  # the running cluster was left alone


def stop(cluster: Cluster, data: Path) -> None:
    if (data / "PG_VERSION").exists():
        give_to_server_user(data)
        subprocess.run(
            as_server_user([str(cluster.pg_bin / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"]),
            capture_output=True,
            check=False,
        )


class HeldSource(Source):
    """The real backup, whose first progress report waits until the operator cancels.

    Without the wait, a backup of a fresh cluster can finish before the key press lands; with it,
    the cancel arrives while the backend holds a started backup, which it must then remove.
    """

    def backup(
        self,
        *,
        logical: bool,
        on_progress: ProgressCallback,
        cancel: threading.Event | None,
        incremental: bool = False,
    ) -> Any:
        assert cancel is not None
        held = threading.Event()

        def report(p: Any) -> None:
            on_progress(p)
            if not held.is_set():
                held.set()
                cancel.wait(60)

        return super().backup(logical=logical, on_progress=report, cancel=cancel, incremental=incremental)


@run_async
async def test_cancelling_a_backup_leaves_nothing_listed(cluster: Cluster) -> None:
    messages: list[Message] = []
    app = PgdrApp(HeldSource(load_config(cluster.config_path), zone=UTC), ascii_only=False)
    async with app.run_test(size=(80, 24), message_hook=messages.append) as pilot:
        await app.workers.wait_for_complete()
        await pilot.press("n")
        await pilot.pause()
        screen = app.screen
        assert isinstance(screen, BackupScreen)
        await pilot.press("p")
        await wait_until(pilot, lambda: any(isinstance(m, JobProgress) for m in messages), 60, "the backup to start")
        assert screen.check_action("cancel", ()) is True
        await pilot.press("x")
        await wait_until(pilot, lambda: any(isinstance(m, JobFinished) for m in messages), 120, "the cancel")
        finished = next(m for m in messages if isinstance(m, JobFinished))
        assert finished.cancelled, finished.error
        assert "Cancelled" in str(screen.query_one("#backup-state").render())
        assert screen.check_action("start", ()) is True  # a new backup can be started
        await pilot.press("ctrl+r")
        await app.workers.wait_for_complete()
        await pilot.press("b")
        await pilot.pause()
        backups = app.screen
        assert isinstance(backups, BackupsScreen)
        assert app.model is not None and app.model.catalog.backups == []
        assert backups.query_one(DataTable).row_count == 0
    stored = cluster.local_repo / "main" / "backups"
    assert not stored.exists() or not any(stored.iterdir()), list(stored.rglob("*"))


@run_async
async def test_an_incremental_backup_from_the_console_builds_on_the_newest(
    shared_dir: Path, pgdr_for_server: Path
) -> None:
    with running_cluster(shared_dir, pgdr_for_server, pg_bin=pg_bin("18"), settings={"summarize_wal": "on"}) as c:
        c.write_config(c.base_config())
        c.start()
        c.sql("CREATE TABLE t AS SELECT generate_series(1, 1000) AS id")
        full = c.pgdr("backup", "--json").stdout
        c.sql("INSERT INTO t SELECT generate_series(1001, 1100)")
        messages: list[Message] = []
        app = PgdrApp(Source(load_config(c.config_path), zone=UTC), ascii_only=False)
        async with app.run_test(size=(80, 24), message_hook=messages.append) as pilot:
            await app.workers.wait_for_complete()
            await pilot.press("n")
            await pilot.pause()
            assert isinstance(app.screen, BackupScreen)
            await pilot.press("i")
            await wait_until(pilot, lambda: any(isinstance(m, JobFinished) for m in messages), 120, "the backup")
            finished = next(m for m in messages if isinstance(m, JobFinished))
            assert finished.error is None and finished.result is not None, finished.error
            assert finished.result.parent is not None and finished.result.parent in full
            state = str(app.screen.query_one("#backup-state").render())
            assert f"(incremental on {finished.result.parent}) complete" in state, state
