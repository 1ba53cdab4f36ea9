"""Time <-> column arithmetic for the timeline widget: zoom levels, the viewport, ticks.

Pure and Textual-free so it can be unit-tested with plain numbers, and so the widget's hot path
(a scrub step) is a handful of float operations. Times are POSIX seconds (UTC) as floats: the widget
converts to ``datetime`` only for what it prints. Column ``c`` covers ``[left + c*spc, left + (c+1)*spc)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from datetime import UTC, datetime, tzinfo

MINUTE = 60.0
HOUR = 3600.0
DAY = 86400.0


@dataclass(frozen=True)
class ZoomLevel:
    """One zoom step: seconds per column, the tick spacing and how tick labels are written."""

    name: str
    seconds_per_column: float
    tick_seconds: float
    label_format: str

    @property
    def columns_per_tick(self) -> int:
        return max(1, round(self.tick_seconds / self.seconds_per_column))


#: From a second to two weeks per column, each step at most 2.5 times the one before (closer where
#: weeks of history are usual), so the opening zoom (the finest that holds the history) leaves little
#: of the width empty. Tick spacing keeps
#: labels apart at every level (at least two columns more than a label's length).
ZOOM_LEVELS: tuple[ZoomLevel, ...] = (
    ZoomLevel("1 s", 1, 15, "%H:%M:%S"),
    ZoomLevel("2 s", 2, 30, "%H:%M:%S"),
    ZoomLevel("5 s", 5, MINUTE, "%H:%M"),
    ZoomLevel("10 s", 10, 2 * MINUTE, "%H:%M"),
    ZoomLevel("20 s", 20, 4 * MINUTE, "%H:%M"),
    ZoomLevel("30 s", 30, 5 * MINUTE, "%H:%M"),
    ZoomLevel("1 min", MINUTE, 15 * MINUTE, "%H:%M"),
    ZoomLevel("2 min", 2 * MINUTE, 30 * MINUTE, "%H:%M"),
    ZoomLevel("5 min", 5 * MINUTE, HOUR, "%H:%M"),
    ZoomLevel("10 min", 10 * MINUTE, 2 * HOUR, "%H:%M"),
    ZoomLevel("15 min", 15 * MINUTE, 3 * HOUR, "%d %H:%M"),
    ZoomLevel("30 min", 30 * MINUTE, 6 * HOUR, "%d %H:%M"),
    ZoomLevel("1 h", HOUR, 12 * HOUR, "%m-%d %H"),
    ZoomLevel("2 h", 2 * HOUR, DAY, "%m-%d"),
    ZoomLevel("3 h", 3 * HOUR, DAY, "%m-%d"),
    ZoomLevel("4 h", 4 * HOUR, 2 * DAY, "%m-%d"),
    ZoomLevel("6 h", 6 * HOUR, 2 * DAY, "%m-%d"),
    ZoomLevel("8 h", 8 * HOUR, 4 * DAY, "%m-%d"),
    ZoomLevel("12 h", 12 * HOUR, 4 * DAY, "%m-%d"),
    ZoomLevel("1 day", DAY, 7 * DAY, "%m-%d"),
    ZoomLevel("2 days", 2 * DAY, 14 * DAY, "%m-%d"),
    ZoomLevel("3 days", 3 * DAY, 21 * DAY, "%m-%d"),
    ZoomLevel("1 week", 7 * DAY, 56 * DAY, "%y-%m-%d"),
    ZoomLevel("2 weeks", 14 * DAY, 112 * DAY, "%y-%m-%d"),
)


def level_named(name: str) -> int:
    """The index of the zoom level called ``name`` ("1 h")."""
    return next(i for i, level in enumerate(ZOOM_LEVELS) if level.name == name)


#: Columns moved by shift+arrow: one "big step".
BIG_STEP_COLUMNS = 10
#: Keep the cursor this many columns away from the viewport's edges when it scrolls.
MARGIN = 4


def level_for_span(span_seconds: float, width: int) -> int:
    """The finest zoom level that shows ``span_seconds`` in ``width`` columns (the opening zoom)."""
    for index, level in enumerate(ZOOM_LEVELS):
        if level.seconds_per_column * max(1, width - 2 * MARGIN) >= span_seconds:
            return index
    return len(ZOOM_LEVELS) - 1


@dataclass(frozen=True)
class Viewport:
    """What the widget shows: ``width`` columns from ``left`` at zoom ``level``."""

    level: int
    left: float
    width: int

    @property
    def zoom(self) -> ZoomLevel:
        return ZOOM_LEVELS[self.level]

    @property
    def spc(self) -> float:
        return self.zoom.seconds_per_column

    @property
    def right(self) -> float:
        """The end of the last column (exclusive)."""
        return self.left + self.width * self.spc

    def column_of(self, t: float) -> int:
        """The column holding instant ``t`` (may be outside ``0..width-1``)."""
        return math.floor((t - self.left) / self.spc)

    def column_start(self, column: int) -> float:
        return self.left + column * self.spc

    def visible(self, t: float) -> bool:
        return 0 <= self.column_of(t) < self.width

    def follow(self, cursor: float) -> Viewport:
        """Scroll (never zoom) so ``cursor`` is at least ``MARGIN`` columns inside the edges."""
        margin = min(MARGIN, max(0, (self.width - 1) // 2))
        column = self.column_of(cursor)
        if column < margin:
            return replace(self, left=self._aligned(cursor - margin * self.spc))
        if column > self.width - 1 - margin:
            return replace(self, left=self._aligned(cursor - (self.width - 1 - margin) * self.spc))
        return self

    def ending_at(self, end: float) -> Viewport:
        """Scroll (never zoom) so ``end`` is ``MARGIN`` columns inside the right edge: the opening view,
        with the history across the width and the newest instant near the right, not empty future."""
        margin = min(MARGIN, max(0, (self.width - 1) // 2))
        return replace(self, left=self._aligned(end - (self.width - 1 - margin) * self.spc))

    def centered(self, cursor: float) -> Viewport:
        return replace(self, left=self._aligned(cursor - (self.width // 2) * self.spc))

    def resized(self, width: int, cursor: float) -> Viewport:
        return replace(self, width=max(1, width)).follow(cursor)

    def zoomed(self, delta: int, cursor: float) -> Viewport:
        """Change level by ``delta`` keeping the cursor at the same screen column (as near as alignment allows)."""
        level = min(max(self.level + delta, 0), len(ZOOM_LEVELS) - 1)
        if level == self.level:
            return self
        column = min(max(self.column_of(cursor), 0), self.width - 1)
        spc = ZOOM_LEVELS[level].seconds_per_column
        out = Viewport(level, 0.0, self.width)
        return replace(out, left=out._aligned(cursor - column * spc)).follow(cursor)

    def _aligned(self, left: float) -> float:
        """Snap ``left`` to a multiple of the column width, so a column always covers the same instants."""
        return math.floor(left / self.spc) * self.spc

    def ticks(self, zone: tzinfo = UTC) -> list[tuple[int, str]]:
        """``(column, label)`` for each tick in view, aligned to round times in ``zone``; labels never overlap."""
        zoom = self.zoom
        offset = _utcoffset(zone, self.left)
        step = zoom.tick_seconds
        first = math.ceil((self.left + offset) / step) * step - offset
        out: list[tuple[int, str]] = []
        last_end = -1
        t = first
        while t < self.right:
            column = self.column_of(t + self.spc / 2)
            label = datetime.fromtimestamp(t, zone).strftime(zoom.label_format)
            if column > last_end and column + len(label) <= self.width:
                out.append((column, label))
                last_end = column + len(label)
            elif column > last_end:
                out.append((column, ""))
            t += step
        return out


def _utcoffset(zone: tzinfo, t: float) -> float:
    offset = datetime.fromtimestamp(t, zone).utcoffset()
    return offset.total_seconds() if offset else 0.0


def clamp(t: float, low: float, high: float) -> float:
    return min(max(t, low), high)


def to_datetime(t: float) -> datetime:
    return datetime.fromtimestamp(t, UTC)


def to_seconds(moment: datetime) -> float:
    return moment.timestamp()
