"""The details panel under the timeline: what a restore to the cursor would mean.

It answers the operator's questions in reading order: can I get back to this instant (and if not,
why not), from which base backup, how much WAL must be replayed, how long it would take, and what
happened nearby (the DROP they are trying to undo).
"""

from __future__ import annotations

from datetime import datetime, tzinfo

from rich.text import Text
from textual.widget import Widget

from pgdr_tui import fmt
from pgdr_tui.glyphs import Glyphs
from pgdr_tui.model import CursorDetails, NearEvent


def details_text(d: CursorDetails, *, zone: tzinfo, now: datetime, glyphs: Glyphs, zoom: str) -> Text:
    text = Text(no_wrap=True, overflow="ellipsis")

    def row(label: str, value: str | Text, style: str = "") -> None:
        text.append(f"{label:<13}", style="bold")
        if isinstance(value, Text):
            text.append_text(value)
        else:
            text.append(value, style=style)
        text.append("\n")

    row("Cursor", f"{fmt.when(d.instant, zone, seconds=True)}  ({fmt.age(d.instant, now)})")
    if d.recoverable:
        tl = "" if d.target_timeline == "latest" else f" (before the switch to timeline {d.latest_timeline})"
        verdict = "RECOVERABLE" if not d.latest else "RECOVERABLE: latest"
        row("Status", Text.assemble((f"{glyphs.ok} {verdict}", "bold green"), f" on timeline {d.timeline}{tl}"))
    else:
        row("Status", Text.assemble((f"{glyphs.bad} NOT RECOVERABLE", "bold red"), f": {d.reason}"))
    if d.backup is not None:
        m = d.backup.manifest
        row(
            "Base backup",
            f"{m.name}  finished {fmt.short(m.stop_time, zone)} ({fmt.age(m.stop_time, now)}), "
            f"{fmt.size(m.size_bytes)}",
        )
        if m.parent is not None:
            row("", _chain(m.parent, d, glyphs))
    else:
        row("Base backup", "-")
    if d.segments:
        row("WAL replay", f"{d.segments} segments, {fmt.size(d.wal_bytes)} ({fmt.size(d.wal_stored_bytes)} stored)")
        row("", f"{d.first_segment} .. {d.last_segment}", "dim")
    else:
        row("WAL replay", "-")
        row("", "")
    row("Restore est.", f"about {fmt.duration(d.estimated_seconds)}" if d.estimated_seconds is not None else "-")
    row("Event before", _event(d.before, zone))
    row("Event after", _event(d.after, zone))
    text.rstrip()
    return text


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
    style = "bold red" if event.kind != "restore_point" else "magenta"
    return Text.assemble((fmt.when(event.time, zone, seconds=True), ""), "  ", (event.text, style))


class DetailsPanel(Widget):
    """The details under the timeline, rebuilt on every (coalesced) cursor move.

    Its height comes from the screen's layout (``1fr``), not from its content, so new content only
    needs a repaint: a Static's ``update`` would lay the whole screen out again on every scrub step.
    """

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self._text = Text()

    def render(self) -> Text:
        return self._text

    def show(self, d: CursorDetails, *, zone: tzinfo, now: datetime, glyphs: Glyphs, zoom: str) -> None:
        self._text = details_text(d, zone=zone, now=now, glyphs=glyphs, zoom=zoom)
        self.refresh()
