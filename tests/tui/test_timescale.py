"""The pure time <-> column arithmetic behind the timeline widget."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from pgdr_tui.timescale import MARGIN, ZOOM_LEVELS, Viewport, level_for_span, level_named

T0 = datetime(2026, 11, 24, 12, 0, tzinfo=UTC).timestamp()


def test_columns_cover_half_open_spans() -> None:
    v = Viewport(level=level_named("1 min"), left=T0, width=80)
    assert v.spc == 60
    assert v.column_of(T0) == 0
    assert v.column_of(T0 + 59.9) == 0
    assert v.column_of(T0 + 60) == 1
    assert v.column_of(T0 - 1) == -1
    assert v.column_start(10) == T0 + 600
    assert v.right == T0 + 80 * 60


def test_follow_scrolls_only_past_the_margin() -> None:
    v = Viewport(level=level_named("1 min"), left=T0, width=80)
    assert v.follow(T0 + 40 * 60) is v
    moved = v.follow(T0 + 79 * 60)
    assert moved.column_of(T0 + 79 * 60) == 80 - 1 - MARGIN
    back = v.follow(T0 - 3600)
    assert back.column_of(T0 - 3600) == MARGIN
    assert back.left % back.spc == 0  # columns stay aligned to whole multiples


def test_zoom_keeps_the_cursor_near_its_screen_column() -> None:
    quarter = level_named("15 min")
    v = Viewport(level=quarter, left=T0, width=100)
    cursor = T0 + 30 * 900 + 100
    column = v.column_of(cursor)
    finer = v.zoomed(-1, cursor)
    assert finer.level == quarter - 1 and finer.spc < v.spc
    assert abs(finer.column_of(cursor) - column) <= 1
    assert finer.zoomed(+1, cursor).level == quarter
    top = Viewport(len(ZOOM_LEVELS) - 1, T0, 100)
    assert top.zoomed(+1, cursor) is top  # no level beyond two weeks
    bottom = Viewport(0, T0, 100)
    assert bottom.spc == 1 and bottom.zoomed(-1, cursor) is bottom  # down to a second per column


def test_each_level_is_at_most_two_and_a_half_times_the_one_before() -> None:
    spcs = [level.seconds_per_column for level in ZOOM_LEVELS]
    assert spcs[0] == 1
    assert all(1 < b / a <= 2.5 for a, b in itertools.pairwise(spcs))


def test_ticks_are_round_local_times_and_never_overlap() -> None:
    zone = ZoneInfo("Europe/Berlin")
    for level in range(len(ZOOM_LEVELS)):
        v = Viewport(level=level, left=T0 - 40 * ZOOM_LEVELS[level].seconds_per_column, width=80)
        ticks = [t for t in v.ticks(zone) if t[1]]
        assert ticks, ZOOM_LEVELS[level].name
        ends = [c + len(label) for c, label in ticks]
        assert all(ends[i] <= ticks[i + 1][0] for i in range(len(ticks) - 1))
        assert all(c >= 0 and c + len(label) <= 80 for c, label in ticks)
    hourly = Viewport(level=level_named("5 min"), left=T0, width=80)  # a tick every hour
    for column, label in hourly.ticks(zone):
        assert label.endswith(":00")
        assert datetime.fromtimestamp(hourly.column_start(column), zone).minute == 0


def test_opening_zoom_fits_the_span() -> None:
    assert ZOOM_LEVELS[level_for_span(60, 80)].seconds_per_column == 1  # a young demo: a second per column
    assert ZOOM_LEVELS[level_for_span(3600, 80)].name == "1 min"
    week = level_for_span(7 * 86400, 80)
    assert ZOOM_LEVELS[week].seconds_per_column * 72 >= 7 * 86400
    assert ZOOM_LEVELS[week - 1].seconds_per_column * 72 < 7 * 86400
    assert level_for_span(10 * 365 * 86400, 80) == len(ZOOM_LEVELS) - 1


def test_the_opening_view_ends_at_the_newest_instant_near_the_right_edge() -> None:
    end = T0 + 3 * 86400
    v = Viewport(level=level_named("1 h"), left=0.0, width=80).ending_at(end)
    assert v.column_of(end) == 80 - 1 - MARGIN  # history to the left of it, not empty future to the right
    assert v.left % v.spc == 0
