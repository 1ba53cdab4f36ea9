"""Modal screens: errors, help, "go to time", and the restore confirmation.

All keyboard-only. The restore confirmation is deliberately strict: nothing is pre-selected, Enter
does nothing until the cluster name is typed exactly, and Escape (the default) cancels.
"""

from __future__ import annotations

from datetime import datetime, timedelta, tzinfo
from typing import TYPE_CHECKING, Any, ClassVar, cast

from rich.console import Group
from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Input, Static

from pgdr_tui import fmt
from pgdr_tui.screens.base import calm

if TYPE_CHECKING:
    from backend.restore.plan import RestorePlan
    from pgdr_tui.app import PgdrApp


class ErrorModal(ModalScreen[None]):
    """A scrollable error: the backend's one-line message, or a traceback for a bug."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,enter,q", "dismiss", "Close", id="error.close"),
    ]

    def __init__(self, title: str, text: str) -> None:
        super().__init__()
        self.title_text = title
        self.text = text

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog", classes="error"):
            yield Static(Text(self.title_text, style="bold red"), classes="dialog-title")
            with VerticalScroll():
                yield Static(Text(self.text), id="error-text")
            yield Static(Text("enter / escape: close", style="dim"))

    def action_dismiss(self, result: Any = None) -> None:  # type: ignore[override]
        self.dismiss(None)


class GotoModal(ModalScreen[datetime | None]):
    """Type a time; the timeline cursor goes there."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "cancel", "Cancel", id="goto.cancel")]

    def __init__(self, zone: tzinfo, now: datetime) -> None:
        super().__init__()
        self.zone = zone
        self.now = now

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Static(Text("Go to time", style="bold"), classes="dialog-title")
            yield Static(
                f"In your zone ({self.now.astimezone(self.zone).tzname()}): 'YYYY-MM-DD HH:MM[:SS]' or 'HH:MM';\n"
                "add 'UTC' or '+02:00' for another zone; or relative: -90m, -2h, -3d."
            )
            # An example in the operator's zone: an hour ago, the kind of time one types at 3 a.m.
            example = (self.now - timedelta(hours=1)).astimezone(self.zone).strftime("%Y-%m-%d %H:%M")
            yield Input(placeholder=f"e.g. {example}", id="goto-input")
            yield Static("", id="goto-error", classes="error-text")
            yield Static(Text("enter: go   escape: cancel", style="dim"))

    def on_mount(self) -> None:
        calm(self)
        self.query_one(Input).focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        error = self.query_one("#goto-error", Static)
        try:
            when = fmt.parse_when(event.value, self.zone, self.now)
        except ValueError as exc:
            error.update(Text(str(exc), style="red"))
            return
        if when > self.now:
            shown = fmt.when(when, self.zone)
            if not fmt.is_time_of_day(event.value):
                now = fmt.when(self.now, self.zone)
                error.update(Text(f"{shown} is in the future (now: {now}): type a time that has passed", style="red"))
                return
            # "23:59" typed at 03:00 means last night: a time of day later than now is yesterday's, said so.
            when -= timedelta(days=1)
            typed, yesterday = event.value.strip(), fmt.when(when, self.zone)
            self.app.notify(f"{typed} today is still to come: the cursor goes to yesterday, {yesterday}", title="Go to")
        self.dismiss(when)

    def action_cancel(self) -> None:
        self.dismiss(None)


class ConfirmRestoreModal(ModalScreen[bool]):
    """Type the cluster name to restore. Escape, or anything else, cancels; nothing defaults to yes."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "cancel", "Cancel", id="confirm.cancel")]

    def __init__(self, cluster: str, plan: RestorePlan) -> None:
        super().__init__()
        self.cluster = cluster
        self.plan = plan

    def compose(self) -> ComposeResult:
        plan = self.plan
        if plan.in_place:
            what = Text.assemble(
                ("This REPLACES the data directory ", "bold"),
                (str(plan.data_dir), "bold red"),
                (" of cluster ", "bold"),
                (self.cluster, "bold"),
                ".\n",
                "The server is stopped first; connections are cut.\n",
            )
            if plan.safety_copy is not None:
                what.append(f"The current data directory is moved aside (never deleted) to\n  {plan.safety_copy}\n")
            else:
                what.append("No safety copy: the data directory does not exist or is empty.\n")
        else:
            what = Text.assemble(
                ("Restore BESIDE: a new cluster in ", "bold"),
                (str(plan.data_dir), "bold"),
                f" on port {plan.port}.\nThe running cluster is left alone.\n",
            )
        what.append(f"Target: {plan.target.describe()}\nBase backup: {plan.backup.name}\n")
        with Vertical(id="dialog", classes="confirm"):
            yield Static(Text("Confirm restore", style="bold red"), classes="dialog-title")
            yield Static(what)
            yield Static(
                Text.assemble("Type the cluster name (", (self.cluster, "bold"), ") and press enter to restore.")
            )
            yield Input(placeholder="cluster name", id="confirm-input")
            yield Static("", id="confirm-error", classes="error-text")
            yield Static(Text("escape: cancel (nothing is changed)", style="dim"))

    def on_mount(self) -> None:
        calm(self)
        self.query_one(Input).focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if event.value.strip() != self.cluster:
            self.query_one("#confirm-error", Static).update(
                Text(f"type {self.cluster!r} exactly to restore, or escape to cancel", style="red")
            )
            return
        self.dismiss(True)

    def action_cancel(self) -> None:
        self.dismiss(False)


class HelpScreen(ModalScreen[None]):
    """The keys of the screen underneath and of the app, and what the timeline's symbols mean."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape,question_mark,q", "close", "Close", id="help.close")]

    def compose(self) -> ComposeResult:
        app = cast("PgdrApp", self.app)
        g = app.glyphs
        keys = Table.grid(padding=(0, 2))  # a key's words wrap beside it, under each other
        keys.add_column(style="bold cyan", no_wrap=True)
        keys.add_column()
        seen: set[str] = set()
        below = app.screen_stack[-2] if len(app.screen_stack) > 1 else app.screen
        nodes: list[Any] = [*below.focus_chain[:1], below, app]
        for node in nodes:
            for binding in getattr(node, "BINDINGS", []):
                if not isinstance(binding, Binding) or binding.key in seen:
                    continue
                seen.add(binding.key)
                shown = ", ".join(app.get_key_display(Binding(k.strip(), "")) for k in binding.key.split(","))
                keys.add_row(f"  {shown}", binding.tooltip or binding.description)
        keys.add_row("  ctrl+p", "command palette: every action, backups and events by name")
        symbols = Table.grid(padding=(0, 2))
        symbols.add_column(no_wrap=True)
        symbols.add_column()
        for glyph, style, meaning in (
            (g.full, "green", "recoverable: a restore can reach any instant here"),
            (g.partial, "green", "part of the column is recoverable"),
            (g.wal_only, "dim", "WAL archived, but no base backup before it"),
            (g.gap, "black on yellow", "WAL gap: segments missing, not recoverable"),
            (g.backup, "cyan", "physical base backup finished"),
            (g.incremental, "cyan", "incremental backup (PostgreSQL 17+), restored with the chain it builds on"),
            (g.logical, "cyan", "logical dump"),
            (g.restore_point, "magenta", "named restore point"),
            (g.destructive, "bold red", "DROP / TRUNCATE / DROP DATABASE committed (or relation files removed)"),
            ("2-9", "bold red", "that many events in one column (+: ten or more): zoom in, or put the cursor there"),
        ):
            symbols.add_row(Text.assemble("  ", (glyph, style)), meaning)
        text = Group(
            Text("Keys", style="bold"),
            keys,
            Text("\nTimeline symbols", style="bold"),
            symbols,
            Text(
                "\nTimes are shown in your zone with UTC beside them. Restores run detached: they go on if this "
                "terminal closes, and reopening pgdr shows them. Set PGDR_ASCII=1 for plain ASCII symbols."
            ),
        )
        with Vertical(id="dialog", classes="help"):
            yield Static(Text("pgdr help", style="bold"), classes="dialog-title")
            with VerticalScroll():
                yield Static(text)
            yield Static(Text("escape / ? : close", style="dim"))

    def action_close(self) -> None:
        self.dismiss(None)
