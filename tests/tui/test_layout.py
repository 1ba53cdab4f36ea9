"""The timeline's layout: the history across the width, zoom down to a second, shared columns counted."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest

from pgdr_tui.app import PgdrApp
from pgdr_tui.screens.timeline import TimelineScreen
from pgdr_tui.timescale import MARGIN, ZOOM_LEVELS
from pgdr_tui.widgets.timeline import GUTTER, TimelineView
from tests.tui.conftest import run_async, screen_lines
from tests.tui.fixture_repo import Story
from tests.tui.scenes import settle

MakeApp = Callable[..., PgdrApp]


def timeline(app: PgdrApp) -> tuple[TimelineScreen, TimelineView]:
    screen = app.screen
    assert isinstance(screen, TimelineScreen)
    return screen, screen.query_one(TimelineView)


async def goto(pilot: Any, when: Any) -> None:
    await pilot.press("g")
    await settle(pilot)
    await pilot.press(*when.strftime("%Y-%m-%d %H:%M:%S UTC"), "enter")
    await settle(pilot)


@pytest.mark.parametrize("size", [(80, 24), (120, 40)], ids=["80x24", "120x40"])
@run_async
async def test_the_opening_view_is_the_history_with_the_newest_near_the_right_edge(
    make_app: MakeApp, size: tuple[int, int]
) -> None:
    app = make_app()
    async with app.run_test(size=size) as pilot:
        await settle(pilot)
        _, view = timeline(app)
        assert app.model is not None
        extent = app.model.extent()
        assert extent is not None
        v = view.viewport
        assert v.width == size[0] - GUTTER
        assert v.column_of(extent[1]) == v.width - 1 - MARGIN, "the newest instant near the right edge"
        assert v.column_of(extent[0]) >= 0, "all of the history in view"
        used = (extent[1] - extent[0]) / v.spc
        assert used >= 0.6 * v.width, f"the history takes {used:.0f} of {v.width} columns"
        assert view.viewport.visible(view.cursor)


@run_async
async def test_zoom_goes_down_to_a_second_per_column(make_app: MakeApp) -> None:
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        screen, view = timeline(app)
        await pilot.press(*["plus"] * len(ZOOM_LEVELS))
        await settle(pilot)
        assert view.zoom_name == "1 s" and view.viewport.spc == 1
        assert "1 s/col" in str(screen.query_one("#timeline-title").render())


@run_async
async def test_events_sharing_a_column_show_their_count_and_come_apart_on_zoom(make_app: MakeApp, story: Story) -> None:
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        _, view = timeline(app)
        await goto(pilot, story.drop)
        v = view.viewport
        column = v.column_of(story.drop.timestamp())
        assert v.column_of(story.restore_point.timestamp()) == column, "the fixture's two events share a column"
        assert view._columns is not None and view._columns.event_counts[column] == 2
        events_row = view.render_line(0).text
        assert events_row[GUTTER + column] == "2"
        # The cursor on that column: the panel lists both, what a restore does with the one under it first.
        panel = re.sub(r"\s+", " ", " ".join(screen_lines(app)))  # wrapped lines read as one
        assert "2 in column" in panel and "restore point 'before_migration'" in panel and "drop xid 48123" in panel
        assert "a restore here stops just before it" in panel
        # Zoomed in until each has a column: their own marks, no count.
        while view.viewport.column_of(story.restore_point.timestamp()) == view.viewport.column_of(
            story.drop.timestamp()
        ):
            await pilot.press("plus")
            await settle(pilot)
        v = view.viewport
        row = view.render_line(0).text
        assert row[GUTTER + v.column_of(story.restore_point.timestamp())] == app.glyphs.restore_point
        assert row[GUTTER + v.column_of(story.drop.timestamp())] == app.glyphs.destructive
        assert not any(ch.isdigit() for ch in row)
        assert "in column" not in "\n".join(screen_lines(app))
