"""The header every screen shares: cluster, server state, RPO now, last backup, last verify.

These are the five facts an operator checks first when paged. They are separate parts with a mark
between them (a copy, a screen reader or a screenshot's text never runs them together), in long
words when they fit the width, in short ones when not, and on a second line rather than cut. They
are recomputed from the app's facts, which follow the server, the daemon and a running restore
(``pgdr_tui.app``), never by the widget itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from rich.text import Text
from textual.widgets import Static

from pgdr_tui import fmt
from pgdr_tui.widgets.wrap import lines_of


@dataclass
class StatusFacts:
    cluster: str
    server: str = "checking..."
    #: ``server`` in fewer words (``ServerState.short``).
    server_short: str = ""
    server_ok: bool | None = None
    newest_archive: datetime | None = None
    last_backup: datetime | None = None
    last_verify: datetime | None = None
    last_verify_ok: bool | None = None
    demo: bool = False
    loading: bool = True
    #: A restore of this cluster running on this host (``RestoreJob.active``): what it does now. While it
    #: runs, the server is stopped or replaying, and the header says so instead of what a probe saw.
    restore: str | None = None
    #: The daemon's jobs running now, by name (``base_backup``, ``verify``...).
    daemon_running: tuple[str, ...] = ()
    #: archive_command fails since the newest segment was archived (``pg_stat_archiver``).
    archive_failing: bool = False


def status_parts(facts: StatusFacts, now: datetime, *, short: bool) -> list[Text]:
    """The header's parts: in long words, or (``short``) in the fewest that still say it."""
    head = Text()
    if not short:  # the tool's name: the first thing to go at 80 columns (the terminal's title says it)
        head.append(" pgdr ", style="bold reverse")
    head.append(f" {facts.cluster}", style="bold")
    if facts.demo and not short:
        head.append(" (demo)", style="italic")
    server = Text("server ")
    if facts.restore is not None:
        server.append(f"RESTORE: {facts.restore}", style="bold yellow")
    else:
        style = "green" if facts.server_ok else ("red" if facts.server_ok is False else "dim")
        server.append(facts.server_short if short and facts.server_short else facts.server, style=style)
    rpo = Text("RPO ")
    if facts.newest_archive is None:
        rpo.append("no WAL" if not facts.loading else "...", style="red" if not facts.loading else "dim")
    else:
        lag = (now - facts.newest_archive).total_seconds()
        words = fmt.short_lag(lag) if short else fmt.lag(lag)
        rpo.append(words, style="red" if lag > 900 else ("yellow" if lag > 300 else "green"))
    if facts.archive_failing:
        rpo.append(" (archiving FAILS)", style="bold red")
    backup = Text("backup ")
    if any(job in facts.daemon_running for job in ("base_backup", "incremental_backup", "logical_dump")):
        backup.append("running", style="bold yellow")
    elif facts.loading:
        backup.append("...", style="dim")
    else:
        backup.append(fmt.short_age(facts.last_backup, now) if short else fmt.age(facts.last_backup, now))
    verify = Text("verify ")
    if any(job in facts.daemon_running for job in ("verify", "verify_deep")):
        verify.append("running", style="bold yellow")
    elif facts.last_verify is None:
        verify.append("never" if not facts.loading else "...", style="yellow" if not facts.loading else "dim")
    else:
        when = fmt.short_age(facts.last_verify, now) if short else fmt.age(facts.last_verify, now)
        verify.append(when, style="green" if facts.last_verify_ok else "red")
    return [head, server, rpo, backup, verify]


def status_text(facts: StatusFacts, now: datetime, width: int = 200, *, separator: str = "│") -> Text:
    """The header for ``width`` columns: one line when the long words fit, else the short ones, and a
    second line before anything would be cut."""
    sep = Text(f" {separator} ", style="dim")
    for short in (False, True):
        lines = lines_of(status_parts(facts, now, short=short), width, separator=sep, indent=" ")
        if len(lines) == 1 or short:
            break
    text = Text("\n").join(lines)
    text.no_wrap = True
    return text


class StatusBar(Static):
    """The header: one line, or two when the width calls for it (a layout only when that changes)."""

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self._lines = 1
        self._shown: Text | None = None
        self._facts: tuple[StatusFacts, datetime, str] | None = None

    def show(self, facts: StatusFacts, now: datetime, separator: str = "│") -> None:
        self._facts = (facts, now, separator)
        width = self.content_region.width or self.app.size.width
        text = status_text(facts, now, width, separator=separator)
        if text == self._shown:
            return
        self._shown = text
        lines = text.plain.count("\n") + 1
        self.update(text, layout=lines != self._lines)
        self._lines = lines

    def on_resize(self) -> None:
        if self._facts is not None:
            self.show(*self._facts)


#: The screens, their keys and labels, in the order the navigation line shows them.
SCREENS = (
    ("timeline", "t", "Timeline"),
    ("backups", "b", "Backups"),
    ("backup", "n", "Backup now"),
    ("verify", "v", "Verify"),
    ("status", "s", "Daemon"),
    ("settings", "c", "Config"),
)


def nav_text(current: str) -> Text:
    text = Text(no_wrap=True, overflow="ellipsis")
    for mode, key, label in SCREENS:
        style = "bold reverse" if mode == current else ""
        text.append(f" {key} ", style="bold" if mode != current else "bold reverse")
        text.append(f"{label} ", style=style)
        text.append(" ")
    return text


class NavBar(Static):
    """The screens and the key of each; the current one highlighted (the footer keeps the screen's own keys)."""

    def __init__(self, current: str, *, id: str | None = None) -> None:
        super().__init__(nav_text(current), id=id)
