"""The daemon's jobs at 80x24: every column on screen, the schedule included, whole."""

from __future__ import annotations

from collections.abc import Callable

from textual.widgets import DataTable

from pgdr_tui.app import PgdrApp
from pgdr_tui.screens.status import StatusScreen
from tests.tui.conftest import run_async, screen_lines
from tests.tui.fixture_repo import Story
from tests.tui.scenes import daemon_running, pinned, settle

MakeApp = Callable[..., PgdrApp]


@run_async
async def test_every_column_of_the_daemon_table_is_on_screen_at_80x24(make_app: MakeApp, story: Story) -> None:
    with pinned(story), daemon_running(story):
        app = make_app()
        async with app.run_test(size=(80, 24)) as pilot:
            await settle(pilot)
            await pilot.press("s")
            await settle(pilot)
            screen = app.screen
            assert isinstance(screen, StatusScreen)
            table = screen.query_one(DataTable)
            assert table.virtual_size.width <= table.size.width, "no column past the right edge"
            lines = screen_lines(app)
            header = next(line for line in lines if line.lstrip().startswith("Job "))
            for label in (str(column.label) for column in table.columns.values()):
                assert label in header, header
            assert "Schedule" in header
            base_backup = next(line for line in lines if line.lstrip().startswith("base_backup "))
            assert base_backup.rstrip().endswith("2 4,10,16,22 * * *"), base_backup
            # What left the table is in the highlighted job's lines: when it started, how long it took.
            detail = "base_backup: ok in 2 min 12 s, started 2026-11-24 11:02 CET"
            assert any(detail in line for line in lines), "\n".join(lines)
