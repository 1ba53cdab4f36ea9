"""The recovery timeline: a focusable Line-API widget with a keyboard-scrubbed cursor.

Rows, top to bottom: WAL events (restore points, destructive transactions), backups, one coverage
bar per PostgreSQL timeline, the axis with ticks, and the tick labels. Only the visible columns are
ever computed (``TimelineModel.columns``, once per scroll/zoom/resize); a scrub step that stays in
view refreshes just the old and the new cursor column, so it costs two one-cell regions, not a
repaint. Every segment carries its own style (Textual 6+ no longer paints blanks with the
background).
"""

from __future__ import annotations

import time
from datetime import datetime, tzinfo
from typing import ClassVar

from rich.segment import Segment
from rich.style import Style
from rich.text import Text
from textual.binding import Binding, BindingType
from textual.geometry import Region, Size
from textual.message import Message
from textual.strip import Strip
from textual.widget import Widget

from pgdr_tui.glyphs import Glyphs
from pgdr_tui.model import Cell, Columns, Mark, TimelineModel
from pgdr_tui.timescale import BIG_STEP_COLUMNS, ZOOM_LEVELS, Viewport, clamp, level_for_span, to_datetime

GUTTER = 7
#: Row styles drawn as solid blocks: under the cursor they become the background of the cursor bar.
BLOCKS = frozenset({"timeline--full", "timeline--partial", "timeline--gap", "timeline--wal-only"})
SCRUB = Binding.Group("scrub", compact=True)
MARKS = Binding.Group("marks", compact=True)
ZOOM = Binding.Group("zoom", compact=True)
#: Rows above the per-timeline bars, and below them (axis, labels).
TOP_ROWS = 2
BOTTOM_ROWS = 2


class TimelineView(Widget, can_focus=True):
    """The scrubbable time axis over the recovery windows."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("left", "step(-1)", "Back", id="timeline.back", tooltip="Cursor one column back", group=SCRUB),
        Binding("right", "step(1)", "Forward", id="timeline.forward", tooltip="Cursor one column forward", group=SCRUB),
        Binding(
            "shift+left", "step(-10)", "Back 10", show=False, id="timeline.back_big", tooltip="Cursor ten columns back"
        ),
        Binding(
            "shift+right",
            "step(10)",
            "Forward 10",
            show=False,
            id="timeline.forward_big",
            tooltip="Cursor ten columns forward",
        ),
        Binding(
            "left_square_bracket",
            "mark(-1)",
            "Previous mark",
            id="timeline.previous_mark",
            tooltip="Cursor to the previous backup or event",
            group=MARKS,
        ),
        Binding(
            "right_square_bracket",
            "mark(1)",
            "Next mark",
            id="timeline.next_mark",
            tooltip="Cursor to the next backup or event",
            group=MARKS,
        ),
        Binding(
            "plus,equals_sign",
            "zoom(-1)",
            "Zoom in",
            id="timeline.zoom_in",
            tooltip="Zoom in: fewer seconds per column",
            group=ZOOM,
        ),
        Binding(
            "minus",
            "zoom(1)",
            "Zoom out",
            id="timeline.zoom_out",
            tooltip="Zoom out: more seconds per column",
            group=ZOOM,
        ),
        Binding(
            "home",
            "edge(-1)",
            "Earliest",
            show=False,
            id="timeline.earliest",
            tooltip="Cursor to the earliest recoverable instant",
        ),
        Binding(
            "end",
            "edge(1)",
            "Latest",
            show=False,
            id="timeline.latest",
            tooltip="Cursor to the latest recoverable instant (a restore replaying all WAL)",
        ),
    ]

    COMPONENT_CLASSES: ClassVar[set[str]] = {
        "timeline--full",
        "timeline--partial",
        "timeline--wal-only",
        "timeline--gap",
        "timeline--backup",
        "timeline--incremental",
        "timeline--logical",
        "timeline--restore-point",
        "timeline--destructive",
        "timeline--axis",
        "timeline--label",
        "timeline--gutter",
        "timeline--cursor",
    }

    DEFAULT_CSS = """
    TimelineView { height: auto; }
    """

    class CursorMoved(Message):
        """The cursor moved; coalesced, so a held arrow key does not queue a details update per step."""

        def __init__(self, cursor: float, latest: bool) -> None:
            super().__init__()
            self.cursor = cursor
            self.latest = latest

        def can_replace(self, message: Message) -> bool:
            return isinstance(message, TimelineView.CursorMoved)

    def __init__(
        self,
        glyphs: Glyphs,
        zone: tzinfo,
        *,
        name: str | None = None,
        id: str | None = None,
        classes: str | None = None,
    ) -> None:
        super().__init__(name=name, id=id, classes=classes)
        self.glyphs = glyphs
        self.zone = zone
        self.model: TimelineModel | None = None
        self.cursor = 0.0
        self.at_latest = False
        self.viewport = Viewport(level=3, left=0.0, width=60)
        self._columns: Columns | None = None
        self._styles: dict[str, Style] = {}
        self._now = 0.0
        #: Seconds the last scrub step took to handle (for the benchmark and the curious).
        self.last_step_seconds = 0.0

    # --- data ------------------------------------------------------------------------------------

    def set_model(self, model: TimelineModel, now: datetime) -> None:
        """Show a (re)loaded catalog; the first load opens at the latest recoverable instant."""
        first = self.model is None
        height = self._height()
        self.model = model
        self._now = now.timestamp()
        extent = model.extent()
        width = self._bar_width()
        if first:
            latest = model.latest_recoverable
            self.cursor = latest.timestamp() if latest else (extent[1] if extent else self._now)
            self.at_latest = latest is not None
            self.viewport = self._opening(width)
        elif self.at_latest and model.latest_recoverable is not None:
            self.cursor = model.latest_recoverable.timestamp()
            self.viewport = self.viewport.follow(self.cursor)
        self._recompute()
        self.refresh(layout=self._height() != height)  # a row per timeline: a layout only when that changes
        self._announce()

    def _opening(self, width: int) -> Viewport:
        """The first view: the finest zoom that holds the whole history, its newest instant near the
        right edge (the history across the width, not empty future); the cursor in view."""
        extent = self.model.extent() if self.model is not None else None
        if extent is None:
            return Viewport(level_for_span(86400.0, width), 0.0, width).ending_at(self.cursor)
        end = max(extent[1], self.cursor)
        level = level_for_span(end - extent[0], width)
        return Viewport(level, 0.0, width).ending_at(end).follow(self.cursor)

    @property
    def cursor_time(self) -> datetime:
        return to_datetime(self.cursor)

    @property
    def cursor_column(self) -> tuple[float, float]:
        """The span of time the cursor's column covers (the events sharing it are listed in the panel)."""
        start = self.viewport.column_start(self.viewport.column_of(self.cursor))
        return start, start + self.viewport.spc

    def move_to(self, t: float, *, latest: bool = False) -> None:
        """Put the cursor at ``t`` (scrolling as needed); the one place the cursor changes."""
        started = time.perf_counter()
        low, high = self._bounds()
        t = clamp(t, low, high)
        old_column = self.viewport.column_of(self.cursor)
        self.cursor = t
        self.at_latest = latest
        moved = self.viewport.follow(t)
        if moved != self.viewport:
            self.viewport = moved
            self._recompute()
            self.refresh()
        else:
            self._refresh_column(old_column)
            self._refresh_column(self.viewport.column_of(t))
        self._announce()
        self.last_step_seconds = time.perf_counter() - started

    def _bounds(self) -> tuple[float, float]:
        if self.model is None:
            return (self.cursor, self.cursor)
        extent = self.model.extent()
        if extent is None:
            return (self._now - 86400, self._now)
        return (extent[0] - 86400.0, max(extent[1], self._now))

    def _announce(self) -> None:
        self.post_message(self.CursorMoved(self.cursor, self.at_latest))

    # --- actions ---------------------------------------------------------------------------------

    def action_step(self, columns: int) -> None:
        if abs(columns) > 1:
            columns = BIG_STEP_COLUMNS if columns > 0 else -BIG_STEP_COLUMNS
        self.move_to(self.cursor + columns * self.viewport.spc)

    def action_mark(self, direction: int) -> None:
        if self.model is None:
            return
        found = self.model.next_mark(self.cursor) if direction > 0 else self.model.previous_mark(self.cursor)
        if found is not None:
            self.move_to(found)

    def action_zoom(self, delta: int) -> None:
        zoomed = self.viewport.zoomed(delta, self.cursor)
        if zoomed != self.viewport:
            self.viewport = zoomed
            self._recompute()
            self.refresh()
            self._announce()

    def action_edge(self, direction: int) -> None:
        if self.model is None:
            return
        if direction < 0 and self.model.earliest_recoverable is not None:
            self.move_to(self.model.earliest_recoverable.timestamp())
        elif direction > 0 and self.model.latest_recoverable is not None:
            self.move_to(self.model.latest_recoverable.timestamp(), latest=True)

    def legend(self, width: int | None = None, *, incremental: bool = False) -> Text:
        """What each symbol means, drawn with the very styles the rows use.

        The incremental mark is named only when the catalog holds one (PostgreSQL 17+), and the full
        backup's mark is then called "full" to tell the two apart. When the words do not fit ``width``
        (80 columns), shorter ones are used, so no symbol's meaning is cut off.
        """
        g = self.glyphs
        parts: list[tuple[str, str, str, str]] = [
            (g.full, "timeline--full", "recoverable", "recoverable"),
            (g.wal_only, "timeline--wal-only", "WAL only", "WAL only"),
            (g.gap, "timeline--gap", "gap", "gap"),
            (
                g.backup,
                "timeline--backup",
                "full backup" if incremental else "backup",
                "full" if incremental else "backup",
            ),
            *([(g.incremental, "timeline--incremental", "incremental", "incr")] if incremental else []),
            (g.logical, "timeline--logical", "dump", "dump"),
            (g.restore_point, "timeline--restore-point", "restore point", "restore pt"),
            (g.destructive, "timeline--destructive", "drop/truncate", "drop"),
        ]
        long = sum(len(glyph) + len(label) + 3 for glyph, _, label, _ in parts) - 2
        short = width is not None and long > width
        text = Text(no_wrap=True, overflow="ellipsis")
        for i, (glyph, component, label, brief) in enumerate(parts):
            text.append(glyph, style=self.get_component_rich_style(component, partial=True))
            text.append(f" {brief if short else label}" + ("  " if i < len(parts) - 1 else ""))
        return text

    # --- layout and drawing ----------------------------------------------------------------------

    @property
    def zoom_name(self) -> str:
        return ZOOM_LEVELS[self.viewport.level].name

    def _bar_width(self) -> int:
        return max(1, self.size.width - GUTTER) if self.size.width else 60

    def _height(self) -> int:
        rows = len(self.model.rows) if self.model is not None else 1
        return TOP_ROWS + rows + BOTTOM_ROWS

    def get_content_height(self, container: Size, viewport: Size, width: int) -> int:
        return self._height()

    def on_resize(self) -> None:
        width = self._bar_width()
        if width != self.viewport.width:
            self.viewport = self.viewport.resized(width, self.cursor)
            self._recompute()
            self.refresh()

    def notify_style_update(self) -> None:
        super().notify_style_update()
        self._styles = {}

    def _recompute(self) -> None:
        self._columns = self.model.columns(self.viewport) if self.model is not None else None

    def _refresh_column(self, column: int) -> None:
        if 0 <= column < self.viewport.width:
            self.refresh(Region(GUTTER + column, 0, 1, self._height()))

    def _style(self, name: str) -> Style:
        if not self._styles:
            base = self.rich_style
            for component in self.COMPONENT_CLASSES:
                self._styles[component] = base + self.get_component_rich_style(component, partial=True)
            self._styles[""] = base
        return self._styles[name]

    def render_line(self, y: int) -> Strip:
        width = self.size.width
        if self.model is None or self._columns is None:
            return Strip([Segment(" " * width, self._style(""))], width)
        cols = self._columns
        rows = len(cols.rows)
        g = self.glyphs
        cells: list[tuple[str, str]]
        if y == 0:
            gutter = "events"
            table = {
                Mark.RESTORE_POINT: (g.restore_point, "timeline--restore-point"),
                Mark.DESTRUCTIVE: (g.destructive, "timeline--destructive"),
            }
            cells = [table.get(m, (" ", "")) for m in cols.events]
            for column, count in enumerate(cols.event_counts):
                if count > 1:  # events sharing a column: their count (zoom in, or put the cursor there)
                    cells[column] = (str(count) if count < 10 else "+", cells[column][1])
        elif y == 1:
            gutter = "backup"
            table = {
                Mark.BACKUP: (g.backup, "timeline--backup"),
                Mark.INCREMENTAL: (g.incremental, "timeline--incremental"),
                Mark.LOGICAL: (g.logical, "timeline--logical"),
            }
            cells = [table.get(m, (" ", "")) for m in cols.backups]
        elif y < TOP_ROWS + rows:
            row = self.model.rows[y - TOP_ROWS]
            gutter = f"TL {row.timeline}" + (f" {g.bad}" if row.abandoned else "")
            cell_table = {
                Cell.FULL: (g.full, "timeline--full"),
                Cell.PARTIAL: (g.partial, "timeline--partial"),
                Cell.GAP: (g.gap, "timeline--gap"),
                Cell.WAL_ONLY: (g.wal_only, "timeline--wal-only"),
                Cell.NONE: (" ", ""),
            }
            cells = [cell_table[c] for c in cols.rows[y - TOP_ROWS]]
        elif y == TOP_ROWS + rows:
            gutter = ""
            cells = [(g.axis, "timeline--axis")] * cols.viewport.width
            for column, _ in cols.viewport.ticks(self.zone):
                if 0 <= column < len(cells):
                    cells[column] = (g.tick, "timeline--axis")
        elif y == TOP_ROWS + rows + 1:
            gutter = ""
            cells = [(" ", "")] * cols.viewport.width
            for column, label in cols.viewport.ticks(self.zone):
                for i, ch in enumerate(label):
                    if 0 <= column + i < len(cells):
                        cells[column + i] = (ch, "timeline--label")
        else:
            return Strip([Segment(" " * width, self._style(""))], width)
        cursor = cols.viewport.column_of(self.cursor)
        return self._strip(gutter, cells, cursor, width)

    def _strip(self, gutter: str, cells: list[tuple[str, str]], cursor: int, width: int) -> Strip:
        segments = [Segment(gutter[: GUTTER - 1].ljust(GUTTER), self._style("timeline--gutter"))]
        run: list[str] = []
        run_style = ""
        for index, (ch, style) in enumerate(cells):
            if index == cursor:
                if run:
                    segments.append(Segment("".join(run), self._style(run_style)))
                    run = []
                segments.append(self._cursor_cell(ch, style))
                continue
            if style != run_style and run:
                segments.append(Segment("".join(run), self._style(run_style)))
                run = []
            run_style = style
            run.append(ch)
        if run:
            segments.append(Segment("".join(run), self._style(run_style)))
        return Strip(segments).adjust_cell_length(width, self._style(""))

    def _cursor_cell(self, ch: str, style: str) -> Segment:
        """The cursor: a bright vertical bar over the cell's own colour, so a bar under it never looks cut.

        Block cells (coverage, gaps) lend their colour to the background; marks and labels keep their
        glyph, highlighted; empty cells show the bar alone.
        """
        cursor = self._style("timeline--cursor")
        cell = self._style(style)
        if style in BLOCKS:
            return Segment(self.glyphs.cursor, cell + Style(color=cursor.color, bgcolor=cell.color, bold=True))
        if ch.strip() and style not in ("timeline--axis", ""):
            return Segment(ch, cell + Style(bgcolor=cursor.bgcolor, bold=True))
        return Segment(self.glyphs.cursor, cell + Style(color=cursor.color, bold=True))
