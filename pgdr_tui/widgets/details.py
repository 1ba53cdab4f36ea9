"""The details panel under the timeline: what a restore to the cursor would mean.

It answers the operator's questions in reading order: can I get back to this instant (and if not,
why not), from which base backup, how much WAL must be replayed, how long it would take, and what
happened nearby (the DROP they are trying to undo).

Every line is wrapped to the panel's width, never cut: at 80 columns the reason an instant is or is
not recoverable goes on on a second line. When the panel is short, the lines that matter least go
first (the WAL file range, then the chain, ...); never the status. When it is tall (120x40), the
room left lists the backups and events around the cursor.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, tzinfo

from rich.text import Text
from textual.widget import Widget

from pgdr_tui import fmt
from pgdr_tui.glyphs import Glyphs
from pgdr_tui.model import CursorDetails, NearEvent, NearItem
from pgdr_tui.widgets.wrap import labelled

#: The label column: the longest label and two spaces, so a label never runs into its value.
LABEL = 14
#: Spare lines from which the backups and events around the cursor are listed too (120x40, not 80x24).
NEARBY_FROM = 6

Nearby = Callable[[datetime, int], list[NearItem]]


@dataclass
class _Block:
    """Lines shown together; of the blocks that do not fit, the highest ``drop`` goes first (0: never)."""

    lines: list[Text]
    drop: int


def details_text(
    d: CursorDetails,
    *,
    zone: tzinfo,
    now: datetime,
    glyphs: Glyphs,
    zoom: str,
    width: int = 1000,
    height: int = 1000,
    nearby: Nearby | None = None,
) -> Text:
    """The panel's text for ``width`` x ``height`` cells (see the module docstring)."""
    blocks: list[_Block] = []

    def row(label: str, value: str | Text, style: str = "", *, drop: int = 1) -> _Block:
        value = value if isinstance(value, Text) else Text(value, style=style)
        block = _Block(labelled(label, value, label_width=LABEL, width=width), drop)
        blocks.append(block)
        return block

    row("Cursor", f"{fmt.when(d.instant, zone, seconds=True)}  ({fmt.age(d.instant, now)})", drop=2)
    if d.recoverable:
        tl = "" if d.target_timeline == "latest" else f" (before the switch to timeline {d.latest_timeline})"
        verdict = "RECOVERABLE" if not d.latest else "RECOVERABLE: latest"
        row("Status", Text.assemble((f"{glyphs.ok} {verdict}", "bold green"), f" on timeline {d.timeline}{tl}"), drop=0)
    else:
        row("Status", Text.assemble((f"{glyphs.bad} NOT RECOVERABLE", "bold red"), f": {d.reason}"), drop=0)
    if d.at is not None:
        row("At cursor", _at(d.at, zone, recoverable=d.recoverable), drop=0)
    if d.backup is not None:
        m = d.backup.manifest
        row(
            "Base backup",
            f"{m.name}  finished {fmt.short(m.stop_time, zone)} ({fmt.age(m.stop_time, now)}), "
            f"{fmt.size(m.size_bytes)}",
            drop=1,
        )
        if m.parent is not None:
            row("", _chain(m.parent, d, glyphs), drop=5)
    else:
        row("Base backup", "-", drop=3)
    if d.segments:
        row("WAL replay", f"{d.segments} segments, {fmt.size(d.wal_bytes)} ({fmt.size(d.wal_stored_bytes)} stored)")
        row("", f"{d.first_segment} .. {d.last_segment}", "dim", drop=6)
    else:
        row("WAL replay", "-", drop=3)
    estimate = f"about {fmt.duration(d.estimated_seconds)}" if d.estimated_seconds is not None else "-"
    row("Restore est.", estimate, drop=3)
    if d.here:
        _here(blocks, d, zone, width)
    row("Event before", _event(d.before, zone), drop=4)
    row("Event after", _event(d.after, zone), drop=4)
    spare = height - sum(len(b.lines) for b in blocks)
    if nearby is not None and spare >= NEARBY_FROM:
        block = _Block([], 4)
        for i, item in enumerate(nearby(d.instant, spare)):
            line = _nearby_line(item, zone, glyphs)
            block.lines += labelled("Nearby" if i == 0 else "", line, label_width=LABEL, width=width)
        block.lines = block.lines[:spare]  # a wrapped line takes two
        blocks.append(block)
    return _fit(blocks, height)


def _fit(blocks: list[_Block], height: int) -> Text:
    """The blocks that fit ``height``, in their order; the least needed dropped first."""
    total = sum(len(b.lines) for b in blocks)
    for level in range(max(b.drop for b in blocks), 0, -1):
        if total <= height:
            break
        for block in reversed(blocks):
            if total <= height:
                break
            if block.drop == level and block.lines:
                total -= len(block.lines)
                block.lines = []
    text = Text("\n").join(line for block in blocks for line in block.lines)
    text.no_wrap = True
    return text


def _at(event: NearEvent, zone: tzinfo, *, recoverable: bool) -> Text:
    """The event the cursor stands on, and what a restore to the cursor does with it."""
    out = _event(event, zone)
    if not recoverable:
        return out
    if event.kind == "restore_point":
        out.append(": a restore here stops at it")
    elif event.xid:
        out.append(": a restore here stops just before it", style="bold")
    else:
        out.append(": a restore to this instant includes it")
    return out


def _here(blocks: list[_Block], d: CursorDetails, zone: tzinfo, width: int) -> None:
    """The events sharing the cursor's column (the timeline draws their count): the first always, the
    rest while there is room, and how many more (zoom in to tell them apart)."""
    label = f"{d.here_count} in column"
    blocks.append(_Block(labelled(label, _event(d.here[0], zone), label_width=LABEL, width=width), 0))
    for event in d.here[1:]:
        blocks.append(_Block(labelled("", _event(event, zone), label_width=LABEL, width=width), 4))
    if d.here_count > len(d.here):
        more = Text(f"and {d.here_count - len(d.here)} more: zoom in (+)", style="dim")
        blocks.append(_Block(labelled("", more, label_width=LABEL, width=width), 4))


#: How each kind of item around the cursor is marked (events in their own colours, backups in the timeline's).
_MARKS = {
    "backup": ("backup", "cyan"),
    "incremental": ("incremental", "cyan"),
    "logical": ("logical", "cyan"),
    "restore_point": ("restore_point", "magenta"),
}


def _nearby_line(item: NearItem, zone: tzinfo, glyphs: Glyphs) -> Text:
    if item.cursor:
        return Text.assemble((f"{glyphs.cursor} {fmt.when(item.time, zone, seconds=True)}  the cursor", "bold"))
    glyph, style = _MARKS.get(item.kind, ("destructive", "bold red"))
    when = item.time.astimezone(zone).strftime("%m-%d %H:%M:%S")
    event = item.kind not in ("backup", "incremental", "logical")
    return Text.assemble(
        "  ", (when, "dim"), "  ", (getattr(glyphs, glyph), style), " ", (item.text, style if event else "")
    )


def _chain(parent: str, d: CursorDetails, glyphs: Glyphs) -> Text:
    """An incremental's line: what it builds on and how many backups a restore combines, or that it cannot."""
    if d.broken_chain:
        return Text.assemble(
            f"incremental on {parent}, ",
            (f"{glyphs.bad} chain broken: {d.broken_chain} is gone", "bold red"),
        )
    return Text(f"incremental on {parent}, chain of {len(d.chain)}")


def _event(event: NearEvent | None, zone: tzinfo) -> Text:
    if event is None:
        return Text("-")
    style = "bold red" if event.destructive else "magenta"
    return Text.assemble((fmt.when(event.time, zone, seconds=True), ""), "  ", (event.text, style))


class DetailsPanel(Widget):
    """The details under the timeline, rebuilt on every (coalesced) cursor move.

    Its height comes from the screen's layout (``1fr``), not from its content, so new content only
    needs a repaint: a Static's ``update`` would lay the whole screen out again on every scrub step.
    The text is made for the panel's size when it is drawn (wrapped to its width, fitted to its
    height), and kept until the details or the size change.
    """

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self._args: tuple[CursorDetails, tzinfo, datetime, Glyphs, str, Nearby | None] | None = None
        self._made: tuple[object, ...] | None = None
        self._text = Text()

    def render(self) -> Text:
        if self._args is None:
            return self._text
        size = self.content_region.size
        key = (self._args, size.width, size.height)
        if key != self._made and size.width > 0:
            d, zone, now, glyphs, zoom, nearby = self._args
            self._text = details_text(
                d, zone=zone, now=now, glyphs=glyphs, zoom=zoom, width=size.width, height=size.height, nearby=nearby
            )
            self._made = key
        return self._text

    def show(
        self,
        d: CursorDetails,
        *,
        zone: tzinfo,
        now: datetime,
        glyphs: Glyphs,
        zoom: str,
        nearby: Nearby | None = None,
    ) -> None:
        self._args = (d, zone, now, glyphs, zoom, nearby)
        self.refresh()
