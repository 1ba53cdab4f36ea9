"""The console follows the server, the daemon and a running restore without a full reload per look,
and never shows two statements that contradict each other."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from textual.message import Message

from backend.config import load_config
from backend.recovery import load_view
from pgdr_tui import app as app_module
from pgdr_tui.app import PgdrApp
from pgdr_tui.glyphs import UNICODE
from pgdr_tui.live import SERVER_SECONDS, LiveWatch
from pgdr_tui.messages import ModelLoaded
from pgdr_tui.model import Cell, TimelineModel
from pgdr_tui.request import RestoreRequest
from pgdr_tui.restorejob import RestoreJob
from pgdr_tui.source import ServerState, Source
from pgdr_tui.widgets.details import details_text
from tests.tui.conftest import ZONE, run_async, screen_lines
from tests.tui.fixture_repo import NOW, Story, write_fixture
from tests.tui.scenes import daemon_running, pinned, restore_running, settle, state_dir

MakeApp = Callable[..., PgdrApp]


@dataclass
class Server:
    """What the console's server probe answers, as the test says; and how often it was asked."""

    state: ServerState = field(
        default_factory=lambda: ServerState(True, "up, PG 18.1, primary, TL 2", "primary, TL 2", 2, False, "A")
    )
    asked: int = 0


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[Server]:
    probe = Server()

    def server_state(self: Source) -> ServerState:
        probe.asked += 1
        return probe.state

    monkeypatch.setattr(Source, "server_state", server_state)
    # A reload asked for by a live look waits for the cursor to rest: in these tests the test says when.
    monkeypatch.setattr(app_module, "SCRUB_QUIET_S", 3600.0)
    yield probe


def loads(messages: list[Message]) -> int:
    return sum(isinstance(m, ModelLoaded) for m in messages)


def header(app: PgdrApp) -> str:
    return " ".join(screen_lines(app)[:2])


async def look(pilot: Any) -> None:
    pilot.app.live._server_at = None  # this look asks the server too
    pilot.app.look()
    await settle(pilot)


def rested(app: PgdrApp) -> None:
    """The operator stopped scrubbing long ago, and the last load was long ago: a reload may run now."""
    app.last_scrub = time.monotonic() - 7200
    app._next_reload_at = 0.0
    app._maybe_reload()


@run_async
async def test_a_running_restore_is_in_the_header_and_its_end_is_seen_at_once(
    make_app: MakeApp, story: Story, server: Server
) -> None:
    messages: list[Message] = []
    with pinned(story), restore_running(story):
        app = make_app()
        async with app.run_test(size=(100, 30), message_hook=messages.append) as pilot:
            await settle(pilot)
            assert app.facts.restore == "replay 3 of 9"
            assert "server RESTORE: replay 3 of 9" in header(app), header(app)  # not "primary, TL 2"
            asked, loaded = server.asked, loads(messages)
            # The restore ends (its result is written last) and the promoted server is on timeline 3.
            job = RestoreJob.active(state_dir(story), "main")
            assert job is not None
            (job.folder / "result.json").write_text(json.dumps({"ok": True, "text": "Restore finished"}))
            server.state = ServerState(True, "up, PG 18.1, primary, TL 3", "primary, TL 3", 3, False, "B")
            app.look()  # a look, not a probe of its own: the end of the restore asks the server at once
            await settle(pilot)
            assert app.facts.restore is None
            assert server.asked > asked and "primary, TL 3" in header(app), header(app)
            assert "RESTORE" not in header(app)
            assert loads(messages) > loaded  # the timeline is read again: the new timeline is drawn


@run_async
async def test_news_from_the_server_reloads_the_timeline_once_the_cursor_rests(
    make_app: MakeApp, server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    messages: list[Message] = []
    app = make_app()
    async with app.run_test(size=(100, 30), message_hook=messages.append) as pilot:
        await settle(pilot)
        loaded = loads(messages)
        await look(pilot)
        assert loads(messages) == loaded, "nothing new: no reload"

        # A segment archived since: something new to show, but the operator is scrubbing.
        server.state = ServerState(True, "up, PG 18.1, primary, TL 2", "primary, TL 2", 2, False, "B")
        await pilot.press("left")
        await look(pilot)
        assert loads(messages) == loaded and app._reload_wanted, "no reload while the cursor moves"
        rested(app)
        await settle(pilot)
        assert loads(messages) == loaded + 1 and not app._reload_wanted

        # Not again before the last load's cost allows, even with news.
        assert app._next_reload_at >= time.monotonic() + app_module.MIN_RELOAD_GAP_S - 1
        server.state = ServerState(True, "up, PG 18.1, primary, TL 3", "primary, TL 3", 3, False, "B")
        app.last_scrub = 0.0
        await look(pilot)
        assert loads(messages) == loaded + 1 and app._reload_wanted
        assert "primary, TL 3" in header(app)  # the header follows at once: it costs nothing
        rested(app)
        await settle(pilot)
        assert loads(messages) == loaded + 2


@run_async
async def test_the_daemon_running_a_backup_shows_and_its_end_reloads(
    make_app: MakeApp, story: Story, server: Server
) -> None:
    messages: list[Message] = []
    with pinned(story), daemon_running(story):
        app = make_app()
        path = app.source.daemon_status_path()
        assert path is not None
        async with app.run_test(size=(100, 30), message_hook=messages.append) as pilot:
            await settle(pilot)
            assert app.facts.daemon_running == ()
            loaded = loads(messages)

            status = json.loads(path.read_text())
            status["jobs"]["base_backup"]["running_since"] = status["updated"]
            write(path, status)
            await look(pilot)
            assert app.facts.daemon_running == ("base_backup",)
            assert "backup running" in header(app), header(app)
            await look(pilot)  # the file did not change: not read again
            assert loads(messages) == loaded

            del status["jobs"]["base_backup"]["running_since"]
            status["backups"]["physical"]["name"] = "20261124T160200Z"
            write(path, status)
            await look(pilot)
            assert app.facts.daemon_running == () and app._reload_wanted
            rested(app)
            await settle(pilot)
            assert loads(messages) == loaded + 1


def write(path: Path, status: dict[str, Any]) -> None:
    path.write_text(json.dumps(status))
    later = path.stat().st_mtime + 1
    os.utime(path, (later, later))  # a new mtime even within the file system's time granularity


def test_a_look_asks_the_server_only_every_few_seconds(story: Story, server: Server) -> None:
    source = Source(load_config(story.config), clock=lambda: NOW, zone=ZONE, probe_server=False)
    watch = LiveWatch()
    assert watch.tick(source, 100.0).server is not None
    assert watch.tick(source, 100.0 + SERVER_SECONDS / 2).server is None
    assert watch.tick(source, 100.0 + SERVER_SECONDS).server is not None
    assert server.asked == 2


# --- one rule for the row and the panel --------------------------------------------------------


@pytest.fixture(scope="module")
def promoted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Story, TimelineModel]:
    """Timeline 2 whose .history was archived an hour after its first segment, as after a restore: the
    segment holds the parent's records up to the switch and is archived first."""
    story = write_fixture(tmp_path_factory.mktemp("promoted"), days=4, history_delay=timedelta(hours=1))
    return story, TimelineModel(load_view(load_config(story.config)))


def test_a_row_is_drawn_by_the_rule_the_panel_answers_with(promoted: tuple[Story, TimelineModel]) -> None:
    story, model = promoted
    extent = model.extent()
    assert extent is not None
    rows = {row.timeline: row for row in model.rows}
    t = extent[0]
    while t < extent[1]:
        instant = datetime.fromtimestamp(t, UTC)
        d = model.details(instant)
        for tli, row in rows.items():
            held = any(w.contains(instant) for w in model.timeline.windows_on(tli))
            assert row.recoverable.contains(t) == held, (tli, instant)
        if d.recoverable:
            assert rows[d.timeline].cell(t, t + 60) in (Cell.FULL, Cell.PARTIAL), instant
        t += 600
    # Before its .history was archived, timeline 2's first segments hold what the parent wrote: its row
    # starts at its birth, not with "WAL without a base backup" before it.
    birth = story.promotion + timedelta(hours=1)
    middle = (story.promotion + timedelta(minutes=30)).timestamp()
    assert rows[2].cell(middle, middle + 60) is Cell.NONE
    assert rows[2].cell(birth.timestamp() + 60, birth.timestamp() + 120) is Cell.FULL
    # The latest instant, which the panel calls "RECOVERABLE: latest", is drawn recoverable too.
    latest = model.latest_recoverable
    assert latest is not None and model.details(latest, latest=True).recoverable
    assert rows[model.latest_tli].cell(latest.timestamp(), latest.timestamp() + 60) is not Cell.WAL_ONLY
    assert rows[model.latest_tli].recoverable.contains(latest.timestamp())


def test_on_a_drop_the_panel_says_what_the_dry_run_plans(story: Story) -> None:
    model = TimelineModel(load_view(load_config(story.config)))
    d = model.details(story.drop)
    assert d.at is not None and d.at.kind == "drop" and d.at.xid == story.drop_xid
    assert d.before is not None and d.before.kind == "restore_point", "the drop is not 'before' a restore to it"
    text = details_text(d, zone=ZONE, now=NOW, glyphs=UNICODE, zoom="1 h", width=118).plain
    assert "a restore here stops just before it" in text
    before = next(line for line in text.splitlines() if line.startswith("Event before"))
    assert "drop" not in before and "restore point" in before


def test_a_time_target_keeps_the_fraction_of_a_second_the_cursor_stands_at() -> None:
    finished = datetime(2026, 12, 7, 17, 35, 48, 215314, tzinfo=UTC)  # a backup's stop, where its mark is
    request = RestoreRequest.at(finished)
    assert request.target().time == finished, "the second before the backup finished is not recoverable"
    assert RestoreRequest.at(finished.replace(microsecond=0)).value == "2026-12-07 17:35:48+00:00"


def test_a_live_tick_before_the_header_is_composed_draws_nothing_and_fails_nothing() -> None:
    """The server's live look can land while a screen (a restore's progress, just pushed) is mounted but
    not composed yet: the tick is skipped, and the screen's on_mount draws the header."""
    from pgdr_tui.screens.base import BaseScreen

    BaseScreen().show_header()
