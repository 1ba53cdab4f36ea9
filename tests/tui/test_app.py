"""The console driven by keys (Textual's Pilot) on a repository the backend wrote, with a frozen clock."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any, cast

import pytest
from textual.pilot import Pilot
from textual.screen import Screen
from textual.widgets import Input
from textual.widgets._footer import FooterKey  # the footer's key widget has no public name

from backend.audit import audit_path
from backend.config import load_config
from pgdr_tui import configfile
from pgdr_tui.app import PgdrApp
from pgdr_tui.request import RestoreRequest
from pgdr_tui.restorejob import MODULE, RestoreJob, write_json
from pgdr_tui.screens.dialogs import ConfirmRestoreModal, GotoModal, HelpScreen
from pgdr_tui.screens.restore import RestorePlanScreen, RestoreProgressScreen
from pgdr_tui.screens.timeline import TimelineScreen
from pgdr_tui.source import Source
from pgdr_tui.widgets.keys import KeysFooter
from pgdr_tui.widgets.timeline import TimelineView
from tests.tui.conftest import ZONE, fixture_app, run_async
from tests.tui.fixture_repo import NOW, Story

MakeApp = Callable[..., PgdrApp]


async def settle(pilot: Pilot[Any]) -> None:
    await pilot.app.workers.wait_for_complete()
    await pilot.pause()


def timeline(app: PgdrApp) -> tuple[TimelineScreen, TimelineView]:
    screen = app.screen
    assert isinstance(screen, TimelineScreen)
    return screen, screen.query_one(TimelineView)


@run_async
async def test_opens_on_the_latest_recoverable_instant(make_app: MakeApp) -> None:
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        screen, view = timeline(app)
        assert app.model is not None and view.model is app.model
        assert view.at_latest
        assert screen.details is not None and screen.details.recoverable and screen.details.latest
        assert screen.current_request() == RestoreRequest("latest", backup=screen.details.backup.manifest.name)  # type: ignore[union-attr]


@run_async
async def test_scrubbing_moves_the_cursor_and_the_details_follow(make_app: MakeApp, story: Story) -> None:
    app = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        screen, view = timeline(app)
        start = view.cursor
        await pilot.press("left")
        assert view.cursor == pytest.approx(start - view.viewport.spc)
        await pilot.press("shift+left")
        assert view.cursor == pytest.approx(start - 11 * view.viewport.spc)
        level = view.viewport.level
        await pilot.press("plus")
        assert view.viewport.level == level - 1
        await pilot.press("minus")
        assert view.viewport.level == level
        # [ lands on the previous mark (a backup or an event); the details name that backup and its WAL.
        await pilot.press("end", "left_square_bracket", "left_square_bracket", "left_square_bracket")
        await pilot.pause()
        d = screen.details
        assert d is not None and d.recoverable and not d.latest
        backup = app.model.backup_at(view.cursor) if app.model else None
        assert backup is not None and backup.manifest.kind == "physical"
        assert d.backup is not None and d.backup.manifest.name == backup.manifest.name
        assert d.first_segment == backup.manifest.wal_start and d.segments == 1
        # Going to a time one hour later: the same backup, more WAL.
        await pilot.press("g")
        assert isinstance(app.screen, GotoModal)
        later = backup.manifest.stop_time + timedelta(hours=1)
        await pilot.press(*later.astimezone(ZONE).strftime("%Y-%m-%d %H:%M:%S"), "enter")
        await pilot.pause()
        assert view.cursor == later.timestamp()
        d = screen.details
        assert d is not None and d.backup is not None and d.backup.manifest.name == backup.manifest.name
        assert d.segments == 7  # one 10-minute segment per 10 minutes, and the one holding the target
        await pilot.press("home")
        assert app.model is not None and app.model.earliest_recoverable is not None
        assert view.cursor == app.model.earliest_recoverable.timestamp()


@run_async
async def test_a_gap_shows_as_unrecoverable(make_app: MakeApp, story: Story) -> None:
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        screen, view = timeline(app)
        inside = story.gap_start + timedelta(minutes=45)
        await pilot.press("g")
        await pilot.pause()
        await pilot.press(*inside.strftime("%Y-%m-%d %H:%M UTC"), "enter")
        await pilot.pause()
        d = screen.details
        assert d is not None and not d.recoverable and "gap" in d.reason
        assert "NOT RECOVERABLE" in str(screen.query_one("#details").render())
        # The cursor column of the timeline-1 row is drawn as a gap.
        column = view.viewport.column_of(view.cursor)
        assert view._columns is not None
        assert view._columns.rows[0][column].name == "GAP"
        line = view.render_line(2)
        assert line.text[7 + column] == app.glyphs.cursor
        cell = line.crop(7 + column, 8 + column)
        style = next(iter(cell)).style
        assert (
            style is not None and style.bgcolor == view._style("timeline--gap").color
        )  # the bar over the gap's colour
        assert screen.check_action("restore", ()) is None


@run_async
async def test_restore_stays_greyed_until_a_dry_run_and_the_modal_needs_the_name(
    make_app: MakeApp, story: Story, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    started: list[RestoreRequest] = []
    monkeypatch.setattr(PgdrApp, "start_restore", lambda self, request: started.append(request))
    app = make_app()
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot)
        screen, _view = timeline(app)
        before_drop = story.drop
        await pilot.press("g")
        await pilot.pause()
        await pilot.press(*before_drop.strftime("%Y-%m-%d %H:%M:%S UTC"), "enter")
        await pilot.pause()
        request = screen.current_request()
        assert request is not None and request.kind == "xid" and request.exclusive  # just before the DROP
        assert screen.check_action("restore", ()) is None
        await pilot.press("r")
        assert app.screen is screen  # greyed: nothing happens
        await pilot.press("d")
        await settle(pilot)
        plan_screen = app.screen
        assert isinstance(plan_screen, RestorePlanScreen)
        # No postgres.data_dir on disk: in place is planned against the configured path; go beside instead.
        await pilot.press("b")
        plan_screen.query_one("#beside-dir", Input).value = str(tmp_path / "beside")
        await pilot.pause()
        assert plan_screen.check_action("restore", ()) is None  # changed: needs a new dry run
        await pilot.press("enter")  # the directory field has the focus: enter plans again
        await settle(pilot)
        assert plan_screen.plan is not None, plan_screen.error
        assert "Restore plan for cluster main" in str(plan_screen.query_one("#plan-text").render())
        assert plan_screen.check_action("restore", ()) is True
        await pilot.press("r")
        await pilot.pause()
        modal = app.screen
        assert isinstance(modal, ConfirmRestoreModal)
        await pilot.press("enter")
        await pilot.press(*"mian", "enter")
        await pilot.pause()
        assert app.screen is modal and not started  # nothing until the exact name
        await pilot.press("escape")
        await pilot.pause()
        assert app.screen is cast(Screen[Any], plan_screen) and not started  # escape cancels
        await pilot.press("r")
        await pilot.pause()
        await pilot.press(*"main", "enter")
        await pilot.pause()
        assert started == [plan_screen.request]
        assert started[0].target_dir == str(tmp_path / "beside") and started[0].kind == "xid"


@run_async
async def test_reopening_during_a_restore_reattaches(make_app: MakeApp, tmp_path: Path) -> None:
    app = make_app()
    state = app.source.state_dir()
    folder = state / "restore" / "20261124T150000000000Z"
    folder.mkdir(parents=True)
    request = RestoreRequest("latest", target_dir=str(tmp_path / "x"), port=6543)
    (folder / "restore.log").write_text("Restore plan for cluster main\n")
    (folder / "progress.jsonl").write_text(
        '{"step": "base backup", "done": 50, "total": 100, "message": "unpacking"}\n'
    )
    # A stand-in for the detached restore: a process whose command line names the module and the folder.
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", MODULE, str(folder)])
    try:
        write_json(
            folder / "job.json",
            {
                "pid": proc.pid,
                "argv": [],
                "log": str(folder / "restore.log"),
                "started": NOW.isoformat(),
                "cluster": "main",
                "config": None,
                "request": request.to_json(),
            },
        )
        assert RestoreJob.active(state, "main") is not None
        async with app.run_test(size=(80, 24)) as pilot:
            await settle(pilot)
            await pilot.pause(0.6)
            await settle(pilot)
            screen = app.screen
            assert isinstance(screen, RestoreProgressScreen) and screen.reattached
            assert screen.job.pid == proc.pid
            bar = screen.query_one("#restore-bar")
            assert bar.progress == 50  # type: ignore[attr-defined]
            write_json(folder / "result.json", {"ok": True, "text": "Restore finished", "error": None})
            await pilot.pause(0.7)
            await settle(pilot)
            assert screen.finished
    finally:
        proc.kill()
        proc.wait()
    assert RestoreJob.active(state, "main") is None


@run_async
async def test_a_slow_wal_index_shows_the_timeline_from_archive_times_first(
    story: Story, monkeypatch: pytest.MonkeyPatch
) -> None:
    import backend.recovery
    from pgdr_tui import app as app_module
    from pgdr_tui.messages import ModelLoaded

    slow = backend.recovery.ensure_indexes
    release = threading.Event()

    def ensure_indexes(*args: Any, **kwargs: Any) -> Any:
        release.wait(60)  # a WAL index cache nobody filled yet: read until the early timeline was seen
        return slow(*args, **kwargs)

    monkeypatch.setattr(backend.recovery, "ensure_indexes", ensure_indexes)
    monkeypatch.setattr(app_module, "EARLY_TIMELINE_S", 0.1)
    shown: list[tuple[bool, int]] = []
    handle = PgdrApp.on_model_loaded

    def on_model_loaded(self: PgdrApp, message: ModelLoaded) -> None:
        shown.append((message.final, len(message.model.events)))
        handle(self, message)

    monkeypatch.setattr(PgdrApp, "on_model_loaded", on_model_loaded)
    app = PgdrApp(Source(load_config(story.config), zone=ZONE, probe_server=False))  # live: no frozen clock
    async with app.run_test(size=(120, 40)) as pilot:
        while app.model is None:
            await pilot.pause(0.02)
        screen, view = timeline(app)

        def early_timeline_shown() -> bool:
            title = str(screen.query_one("#timeline-title").render())
            return view.model is app.model and app_module.EARLY_STATUS in title

        # The app hands a model to its screens through a signal, and the title follows the view's
        # cursor: both a message or two later.
        for _ in range(250):
            if early_timeline_shown():
                break
            await pilot.pause(0.02)
        assert early_timeline_shown()
        assert app.model is not None and app.model.view.unindexed == len(app.model.catalog.segments)
        release.set()
        await settle(pilot)
        assert shown[0] == (False, 0) and shown[-1][0] and shown[-1][1] > 0  # then the full one, with events
        assert view.model is app.model and not app.model.view.unindexed
        assert app_module.EARLY_STATUS not in str(screen.query_one("#timeline-title").render())


@run_async
async def test_help_palette_and_ascii(make_app: MakeApp) -> None:
    app = make_app(ascii_only=True)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        _, view = timeline(app)
        text = "".join(view.render_line(y).text for y in range(view._height()))
        assert "#" in text and "^" in text and not any(ord(ch) > 127 for ch in text)
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)
        await pilot.press("escape")
        from pgdr_tui.commands import PgdrCommands

        provider = PgdrCommands(app.screen)
        names = [text for text, _, _ in provider._items()]
        assert any(n.startswith("Restore: dry run to the timeline cursor") for n in names)
        assert any(n.startswith("Jump to event: drop xid 48123") for n in names)
        assert sum(n.startswith("Jump to backup") for n in names) == len(app.model.catalog.backups)  # type: ignore[union-attr]
        for mode, key in (("backups", "b"), ("backup", "n"), ("verify", "v"), ("status", "s"), ("settings", "c")):
            await pilot.press(key)
            await settle(pilot)
            assert app.current_mode == mode


def test_settings_write_never_writes_a_masked_secret(tmp_path: Path) -> None:
    path = tmp_path / "pgdr.toml"
    path.write_text(
        f'[cluster]\nname = "main"\n[postgres]\npassword = "s3cret"\nport = 5432\n[local]\npath = "{tmp_path}"\n'
    )
    cfg, kept = configfile.write_config(
        path, {("postgres", "port"): 5433, ("postgres", "password"): "********", ("local", "retention_days"): 9}
    )
    assert kept is not None and kept.exists()
    assert cfg.postgres.port == 5433 and cfg.postgres.password == "s3cret" and cfg.local.retention_days == 9
    assert "s3cret" in path.read_text() and "********" not in path.read_text()
    assert load_config(path).postgres.password == "s3cret"
    with pytest.raises(Exception, match="must be an integer"):
        configfile.coerce("postgres", "port", "many")
    entry = json.loads(audit_path().read_text().splitlines()[-1])
    assert entry["action"] in {"config change", "config first seen"} and entry["written_by"] == "the console"
    assert entry["kept"] == str(kept) and "s3cret" not in audit_path().read_text()
    assert configfile.coerce("audit", "copy_to_repositories", "True") is True
    with pytest.raises(Exception, match="true or false"):
        configfile.coerce("audit", "copy_to_repositories", "yes")


@run_async
async def test_the_footer_is_rebuilt_only_when_its_keys_change(
    make_app: MakeApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        screen, _ = timeline(app)
        footer = screen.query_one(KeysFooter)
        keys = list(footer.query(FooterKey))
        restore = next(k for k in keys if k.action == "restore")
        assert restore.has_class("-disabled"), "greyed until a dry run"
        screen.refresh_bindings()  # what a focus change sends: the same keys
        await settle(pilot)
        assert list(footer.query(FooterKey)) == keys, "the same widgets: not rebuilt"
        monkeypatch.setattr(app, "restore_allowed", lambda request: True)
        screen.refresh_bindings()
        await settle(pilot)
        restore = next(k for k in footer.query(FooterKey) if k.action == "restore")
        assert not restore.has_class("-disabled"), "a key that changed is shown as it now is"


@run_async
async def test_a_dry_run_asked_for_while_the_catalog_is_read_says_so(
    story: Story, monkeypatch: pytest.MonkeyPatch
) -> None:
    release = threading.Event()
    load_view = Source.load_view

    def slow_load_view(self: Source, *args: Any, **kwargs: Any) -> Any:
        release.wait(60)  # the catalog of a large repository, still being read
        return load_view(self, *args, **kwargs)

    monkeypatch.setattr(Source, "load_view", slow_load_view)
    app = fixture_app(story)
    said: list[str] = []
    monkeypatch.setattr(app, "notify", lambda message, **_: said.append(message))
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause()
        screen, _ = timeline(app)
        try:
            await pilot.press("d")
            await pilot.pause()
            assert app.screen is screen, "no plan without a catalog"
            assert any("still being read" in m for m in said), said
        finally:
            release.set()
        await settle(pilot)
        await pilot.press("d")
        await settle(pilot)
        assert isinstance(app.screen, RestorePlanScreen)
