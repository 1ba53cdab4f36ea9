"""The small things an operator trips over: go-to, the palette, the config's origins, idle progress bars,
counts past their estimate, the demo's progress lines, and ``pgdr`` after a dropped session."""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from textual.command import CommandList, CommandPalette
from textual.widgets import DataTable, Input, ProgressBar, Static

from backend.errors import PgdrError
from backend.progress import Progress
from pgdr_tui import cli
from pgdr_tui.app import PgdrApp
from pgdr_tui.request import RestoreRequest
from pgdr_tui.restorejob import MODULE, RestoreJob, write_json
from pgdr_tui.screens.backup import BackupScreen
from pgdr_tui.screens.dialogs import GotoModal
from pgdr_tui.screens.restore import JobUpdate, RestoreProgressScreen
from pgdr_tui.screens.settings import SettingsScreen
from pgdr_tui.screens.timeline import TimelineScreen
from pgdr_tui.widgets.timeline import TimelineView
from tests.tui.conftest import ZONE, run_async
from tests.tui.fixture_repo import NOW, Story
from tests.tui.scenes import pinned, restore_running, settle

MakeApp = Callable[..., PgdrApp]


# --- go to ---------------------------------------------------------------------------------------


@run_async
async def test_go_to_offers_a_recent_example_and_never_moves_silently(
    make_app: MakeApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = make_app()
    said: list[str] = []
    monkeypatch.setattr(app, "notify", lambda message, **_: said.append(str(message)))
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press("g")
        await settle(pilot)
        modal = app.screen
        assert isinstance(modal, GotoModal)
        field = modal.query_one(Input)
        an_hour_ago = (NOW - timedelta(hours=1)).astimezone(ZONE)
        assert field.placeholder == f"e.g. {an_hour_ago:%Y-%m-%d %H:%M}"

        # A date still to come: refused, said why, the dialog stays.
        await pilot.press(*"2026-12-01 10:00", "enter")
        await settle(pilot)
        assert app.screen is modal
        assert "is in the future" in str(modal.query_one("#goto-error", Static).render())

        # "23:59" at 16:30 means last night: the cursor goes there, and says so.
        field.value = ""
        await pilot.press(*"23:59", "enter")
        await settle(pilot)
        screen = app.screen
        assert isinstance(screen, TimelineScreen)
        cursor = screen.query_one(TimelineView).cursor_time.astimezone(ZONE)
        assert (cursor.date(), cursor.hour, cursor.minute) == ((NOW - timedelta(days=1)).date(), 23, 59)
        assert any("yesterday" in message for message in said), said


@run_async
async def test_go_to_before_the_archive_says_where_the_cursor_went(
    make_app: MakeApp, monkeypatch: pytest.MonkeyPatch, story: Story
) -> None:
    app = make_app()
    said: list[str] = []
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        screen = app.screen
        assert isinstance(screen, TimelineScreen)
        monkeypatch.setattr(screen, "notify", lambda message, **_: said.append(str(message)))
        await pilot.press("g")
        await settle(pilot)
        await pilot.press(*"2020-01-01 00:00", "enter")
        await settle(pilot)
        assert said and "before the oldest archived data" in said[0], said


# --- the palette ---------------------------------------------------------------------------------


@run_async
async def test_the_palette_opens_on_pgdrs_own_commands(make_app: MakeApp) -> None:
    app = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        await pilot.press("ctrl+p")
        await settle(pilot)
        palette = app.screen
        assert isinstance(palette, CommandPalette)
        listed = palette.query_one(CommandList)
        first = [str(listed.get_option_at_index(i).prompt) for i in range(min(5, listed.option_count))]
        assert first and first[0].startswith("Timeline: "), first
        everything = [str(listed.get_option_at_index(i).prompt) for i in range(listed.option_count)]
        assert not any(p.startswith(("Keys", "Maximize")) for p in everything), everything
        assert any(p.startswith("Theme: ") for p in everything)


# --- the configuration's origins -------------------------------------------------------------------


@run_async
async def test_the_config_screen_says_where_each_value_comes_from(
    make_app: MakeApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PGPORT", "5432")
    app = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        await pilot.press("c")
        await settle(pilot)
        screen = app.screen
        assert isinstance(screen, SettingsScreen)
        table = screen.query_one(DataTable)
        origin = {key: str(table.get_row_at(i)[2]) for i, key in enumerate(screen.keys)}
        assert origin[("cluster", "name")] == "file"
        assert origin[("s3", "region")] == "default"
        assert origin[("postgres", "port")] == "$PGPORT"
        assert set(origin.values()) <= {"file", "default", "$PGPORT"}


# --- progress ------------------------------------------------------------------------------------


@run_async
async def test_no_progress_bar_moves_while_no_backup_runs(make_app: MakeApp) -> None:
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press("n")
        await settle(pilot)
        screen = app.screen
        assert isinstance(screen, BackupScreen)
        assert "No backup running" in str(screen.query_one("#backup-state", Static).render())
        assert not screen.query_one(ProgressBar).display
        await pilot.press("v")
        await settle(pilot)
        assert not app.screen.query_one(ProgressBar).display


@run_async
async def test_a_count_past_its_estimate_is_not_shown_as_more_than_all(make_app: MakeApp, story: Story) -> None:
    with pinned(story), restore_running(story):
        app = make_app()
        async with app.run_test(size=(80, 24)) as pilot:
            await settle(pilot)
            screen = app.screen
            assert isinstance(screen, RestoreProgressScreen)
            line = {"step": "base backup", "done": 25_300_000, "total": 24_800_000, "message": "unpacking x"}
            screen.on_job_update(JobUpdate([line], [], None, True))
            await pilot.pause()
            step = str(screen.query_one("#restore-step", Static).render())
            assert "25.3 MB" in step and "of" not in step.split(":", maxsplit=1)[0], step
            bar = screen.query_one(ProgressBar)
            assert bar.total is not None and bar.progress <= bar.total


@run_async
async def test_a_backup_past_its_estimate_is_not_more_than_all(make_app: MakeApp) -> None:
    from pgdr_tui.messages import JobProgress

    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press("n")
        await settle(pilot)
        screen = app.screen
        assert isinstance(screen, BackupScreen)
        screen.on_job_progress(JobProgress(Progress("backup", 12_000_000, 24_800_000, "x: streaming"), 1.0))
        assert "12.0 MB of ~24.8 MB" in str(screen.query_one("#backup-numbers", Static).render())
        screen.on_job_progress(JobProgress(Progress("backup", 25_300_000, 24_800_000, "x: streaming"), 2.0))
        numbers = str(screen.query_one("#backup-numbers", Static).render())
        assert "25.3 MB" in numbers and " of " not in numbers, numbers


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_step_past_its_estimate_rewrites_its_line_not_a_new_one(monkeypatch: pytest.MonkeyPatch) -> None:
    """``pgdr demo`` printed the same backup line twenty times: each update past the estimate ended it."""
    err = _Terminal()
    monkeypatch.setattr(sys, "stderr", err)
    show = cli._progress_printer()
    show(Progress("demo", 0, None, "starting the server"))
    for done in (0, 10_000_000, 24_800_000, 25_000_000, 25_300_000, 25_300_000):
        show(Progress("backup", done, 24_800_000, "base backup 1"))
    show(Progress("demo", 0, None, "starting the workload"))
    assert terminal(err.getvalue()) == ["starting the server", "base backup 1: 25.3 MB", "starting the workload"]


def terminal(output: str) -> list[str]:
    """What a terminal shows after ``output``: carriage returns, newlines, clear to the end of the line
    (ESC [K) and up to the previous line (ESC [F)."""
    lines = [""]
    row = column = 0
    i = 0
    while i < len(output):
        if output.startswith("\x1b[K", i):
            lines[row] = lines[row][:column]
            i += 3
        elif output.startswith("\x1b[F", i):
            row, column = max(0, row - 1), 0
            i += 3
        elif output[i] == "\r":
            column, i = 0, i + 1
        elif output[i] == "\n":
            row, column, i = row + 1, 0, i + 1
            if row == len(lines):
                lines.append("")
        else:
            line = lines[row].ljust(column)
            lines[row] = line[:column] + output[i] + line[column + 1 :]
            column, i = column + 1, i + 1
    return [line for line in lines if line]


# --- pgdr after a dropped session ------------------------------------------------------------------


@pytest.fixture
def nowhere(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No config file anywhere (not --config, not $PGDR_CONFIG, no default file); a state dir of its own."""
    import backend.config

    monkeypatch.delenv("PGDR_CONFIG", raising=False)
    monkeypatch.setattr(backend.config, "find_config", lambda explicit=None: None)
    state = tmp_path / "state"
    monkeypatch.setenv("PGDR_STATE_DIR", str(state))
    return state


@pytest.fixture
def alive() -> Iterator[Callable[[Path], int]]:
    """A stand-in for a detached restore: a process whose command line names the module and the folder."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(folder: Path) -> int:
        proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", MODULE, str(folder)])
        procs.append(proc)
        return proc.pid

    yield start
    for proc in procs:
        proc.kill()
        proc.wait()


def job(state: Path, name: str, pid: int, config: str | None, cluster: str = "demo") -> Path:
    folder = state / "restore" / name
    folder.mkdir(parents=True)
    write_json(
        folder / "job.json",
        {
            "pid": pid,
            "argv": [],
            "log": str(folder / "restore.log"),
            "started": NOW.isoformat(),
            "cluster": cluster,
            "config": config,
            "request": RestoreRequest("latest").to_json(),
        },
    )
    return folder


def args() -> argparse.Namespace:
    return argparse.Namespace(config=None, command=None)


def test_plain_pgdr_opens_on_the_restore_a_dropped_session_left(
    nowhere: Path, alive: Callable[[Path], int], story: Story, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli._restore_config(args()) is None  # nothing to re-attach to: the usual "no config file found"
    older = job(nowhere, "20261124T140000000000Z", 1, str(story.config), "main")
    (older / "result.json").write_text(json.dumps({"ok": True}))
    (older / "seen").touch()
    assert cli._restore_config(args()) is None  # finished and shown: nothing to point at

    folder = nowhere / "restore" / "20261124T150000000000Z"
    running = job(nowhere, folder.name, alive(folder), str(story.config), "main")
    again = cli._restore_config(args())
    assert again is not None and again.config == str(story.config)
    assert "opening the console on the restore of cluster main" in capsys.readouterr().out
    assert RestoreJob.to_reattach(nowhere) is not None

    # Finished while nobody watched: still the console to open, to show where recovery stopped.
    (running / "result.json").write_text(json.dumps({"ok": True}))
    assert cli._restore_config(args()) is not None


def test_plain_pgdr_names_a_restore_it_cannot_reopen(nowhere: Path, alive: Callable[[Path], int]) -> None:
    folder = nowhere / "restore" / "20261124T150000000000Z"
    pid = alive(folder)
    job(nowhere, folder.name, pid, None)  # started on a configuration from the environment only
    with pytest.raises(PgdrError, match=f"restore of cluster demo started from a console is running \\(pid {pid}"):
        cli._restore_config(args())
