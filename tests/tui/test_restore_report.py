"""A restore's report is on screen once: under its log, in the colour of the outcome, and not in the log too."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from textual.pilot import Pilot

from pgdr_tui.app import PgdrApp
from pgdr_tui.restorejob import REPORT_FOLLOWS
from pgdr_tui.screens.restore import RestoreProgressScreen
from tests.tui.conftest import run_async, screen_lines
from tests.tui.fixture_repo import Story
from tests.tui.scenes import pinned, restore_finished, restore_running, settle

MakeApp = Callable[..., PgdrApp]
#: A line of the report, and one of the plan the log shows before it.
REPORT_LINE = "recovery stopped: before commit of transaction"
PLAN_LINE = "Restore plan for cluster main"


def shown(app: PgdrApp, text: str) -> int:
    return sum(text in line for line in screen_lines(app))


async def poll(pilot: Pilot[Any], screen: RestoreProgressScreen) -> None:
    screen._poll()
    await settle(pilot)


@run_async
async def test_reopened_on_a_finished_restore_the_report_is_shown_once(make_app: MakeApp, story: Story) -> None:
    with pinned(story), restore_finished(story):
        app = make_app()
        async with app.run_test(size=(120, 40)) as pilot:
            await settle(pilot)
            assert isinstance(app.screen, RestoreProgressScreen) and app.screen.finished
            assert shown(app, REPORT_LINE) == 1, "\n".join(screen_lines(app))
            assert shown(app, PLAN_LINE) == 1, "the log is shown up to the report"


@run_async
async def test_a_restore_that_ends_while_watched_shows_its_report_once(make_app: MakeApp, story: Story) -> None:
    with pinned(story), restore_running(story):
        app = make_app()
        async with app.run_test(size=(120, 40)) as pilot:
            await settle(pilot)
            screen = app.screen
            assert isinstance(screen, RestoreProgressScreen) and not screen.finished
            report = f"Restore finished\n  {REPORT_LINE} 48123"
            # As pgdr_tui.detached ends: the report into the log, a look meanwhile (Telegram is told
            # before the result is written), then the result.
            with screen.job.log.open("a") as log:
                log.write(f"{REPORT_FOLLOWS}\n{report}\n")
            await poll(pilot, screen)
            (screen.job.folder / "result.json").write_text(json.dumps({"ok": True, "text": report}))
            await poll(pilot, screen)
            assert screen.finished
            assert shown(app, REPORT_LINE) == 1, "\n".join(screen_lines(app))
