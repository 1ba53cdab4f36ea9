"""The header line every screen shares: cluster, server state, RPO now, last backup, last verify.

These are the five facts an operator checks first when paged; they sit on one line at 80 columns
(two when wider texts need it) and are recomputed from the loaded model, never by the widget itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from rich.text import Text
from textual.widgets import Static

from pgdr_tui import fmt


@dataclass
class StatusFacts:
    cluster: str
    server: str = "checking..."
    server_ok: bool | None = None
    newest_archive: datetime | None = None
    last_backup: datetime | None = None
    last_verify: datetime | None = None
    last_verify_ok: bool | None = None
    demo: bool = False
    loading: bool = True


def status_text(facts: StatusFacts, now: datetime) -> Text:
    text = Text(no_wrap=True, overflow="ellipsis")
    text.append(" pgdr ", style="bold reverse")
    text.append(f" {facts.cluster}", style="bold")
    if facts.demo:
        text.append(" (demo)", style="italic")
    text.append("  server ")
    style = "green" if facts.server_ok else ("red" if facts.server_ok is False else "dim")
    text.append(facts.server, style=style)
    text.append("  RPO ")
    if facts.newest_archive is None:
        text.append("no WAL" if not facts.loading else "...", style="red" if not facts.loading else "dim")
    else:
        lag = (now - facts.newest_archive).total_seconds()
        text.append(fmt.lag(lag), style="red" if lag > 900 else ("yellow" if lag > 300 else "green"))
    text.append("  backup ")
    text.append(fmt.age(facts.last_backup, now) if not facts.loading else "...")
    text.append("  verify ")
    if facts.last_verify is None:
        text.append("never" if not facts.loading else "...", style="yellow" if not facts.loading else "dim")
    else:
        text.append(fmt.age(facts.last_verify, now), style="green" if facts.last_verify_ok else "red")
    return text


class StatusBar(Static):
    def show(self, facts: StatusFacts, now: datetime) -> None:
        # One line whatever it says (pgdr.tcss): a repaint, not a layout of the whole screen.
        self.update(status_text(facts, now), layout=False)


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
