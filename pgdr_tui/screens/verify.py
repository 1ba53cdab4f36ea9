"""Verify backups from the console: one backup or all, checksums or a deep restore rehearsal.

``backend.verify`` is imported only when a run starts, so the console works (and says so) while that
module is missing or broken. Results come from the report's ``to_json()``, the same data
``pgdr verify --json`` prints.
"""

from __future__ import annotations

import threading
from typing import Any, ClassVar

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal
from textual.widgets import Checkbox, DataTable, Label, ProgressBar, Select, Static

from backend.errors import PgdrError
from backend.progress import Cancelled, Progress
from pgdr_tui import fmt
from pgdr_tui.messages import JobFinished, JobProgress
from pgdr_tui.screens.base import BaseScreen
from pgdr_tui.widgets.para import Para
from pgdr_tui.widgets.plain import progress_bar

ALL = "__all__"


class VerifyScreen(BaseScreen):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("r", "run", "Run verify", id="verify.run", tooltip="Verify the selection now"),
        Binding("D", "toggle_deep", "Deep", id="verify.deep", tooltip="Toggle the deep restore rehearsal"),
        Binding("x", "cancel", "Cancel job", id="verify.cancel", tooltip="Cancel the running verify"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.running = False
        self.cancel_event: threading.Event | None = None
        self.started = 0.0
        self.rows: list[list[str]] = []
        self._options_for: object = None
        self._pending: str | None = None

    def compose(self) -> ComposeResult:
        yield from self.compose_header()
        yield Para(
            Text.assemble(
                (" Verify", "bold"), "  checksums of every stored object and WAL continuity; deep: a restore rehearsal"
            ),
            classes="title",
        )
        with Horizontal(id="verify-choice"):
            yield Label(" What ")
            yield Select[str](
                [("all backups and the WAL archive", ALL)], value=ALL, allow_blank=False, id="verify-what"
            )
            yield Checkbox("deep: off", id="verify-deep")
        yield Para(Text(" Not run yet in this session: press r.", style="dim"), id="verify-state")
        yield progress_bar(self.pgdr.glyphs.plain, id="verify-bar", hidden=True)
        table: DataTable[Text | str] = DataTable(id="verify-table", cursor_type="row", zebra_stripes=True)
        yield table
        yield Para(id="verify-details")
        yield from self.compose_footer()

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        # The bad object's name comes right after the verdict, so it shows at 80 columns.
        for label in ("Item", "Kind", "Result", "Problems", "Checked", "Level"):
            table.add_column(label, key=label.lower())
        super().on_mount()

    def refresh_data(self) -> None:
        model = self.pgdr.model
        if model is None or self._options_for is model:
            return
        self._options_for = model
        select: Select[str] = self.query_one("#verify-what", Select)
        current = select.value
        names = [b.manifest.name for b in sorted(model.catalog.backups, key=lambda b: b.manifest.name, reverse=True)]
        select.set_options([("all backups and the WAL archive", ALL), *((n, n) for n in names)])
        wanted = self._pending or (current if isinstance(current, str) else ALL)
        select.value = wanted if wanted == ALL or wanted in names else ALL
        self._pending = None

    def select(self, name: str) -> None:
        """Preselect one backup (from the backups screen)."""
        select: Select[str] = self.query_one("#verify-what", Select)
        try:
            select.value = name
        except Exception:  # options not loaded yet: apply on the next refresh
            self._pending = name

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "run":
            return None if self.running else True
        if action == "cancel":
            return True if self.running else None
        return True

    def on_checkbox_changed(self, event: Checkbox.Changed) -> None:
        event.checkbox.label = "deep: ON (restore rehearsal)" if event.value else "deep: off"

    def action_toggle_deep(self) -> None:
        box = self.query_one(Checkbox)
        box.value = not box.value

    def action_run(self) -> None:
        if self.running:
            return
        value = self.query_one("#verify-what", Select).value
        name = None if value == ALL or not isinstance(value, str) else value
        deep = self.query_one(Checkbox).value
        self.running = True
        self.cancel_event = threading.Event()
        self.started = self.pgdr.source.monotonic()
        bar = self.query_one(ProgressBar)
        bar.update(total=None, progress=0)
        bar.display = True  # hidden until a job runs: no bar moving beside "not running"
        what = name or "every backup and the WAL archive"
        self.query_one("#verify-state", Static).update(
            Text(f" Verifying {what} ({'deep' if deep else 'checksums'})...", style="bold")
        )
        self.refresh_bindings()
        self._run(name, deep, self.cancel_event)

    def action_cancel(self) -> None:
        if self.cancel_event is not None:
            self.cancel_event.set()

    @work(thread=True, exclusive=True, exit_on_error=False, group="verify", name="verify")
    def _run(self, name: str | None, deep: bool, cancel: threading.Event) -> None:
        def progress(p: Progress) -> None:
            self.post_message(JobProgress(p, self.pgdr.source.monotonic()))

        try:
            report = self.pgdr.source.verify(name, deep=deep, on_progress=progress, cancel=cancel)
        except Cancelled as exc:
            self.post_message(JobFinished(error=str(exc), cancelled=True))
            return
        except ImportError as exc:
            self.post_message(JobFinished(error=f"verify is not available in this build: {exc}"))
            return
        except PgdrError as exc:
            self.post_message(JobFinished(error=str(exc)))
            return
        self.post_message(JobFinished(report))

    def on_job_progress(self, message: JobProgress) -> None:
        p = message.progress
        bar = self.query_one(ProgressBar)
        if p.total:
            bar.update(total=max(p.total, p.done), progress=p.done)
        self.query_one("#verify-state", Static).update(
            Text(f" {p.message}  ({fmt.duration(message.at - self.started)})", style="bold")
        )

    def on_job_finished(self, message: JobFinished) -> None:
        self.running = False
        self.refresh_bindings()
        state = self.query_one("#verify-state", Static)
        if message.error is not None:
            style = "bold yellow" if message.cancelled else "bold red"
            state.update(Text(f" {'Cancelled' if message.cancelled else 'Failed'}: {message.error}", style=style))
            return
        report = message.result
        data: dict[str, Any] = report.to_json()
        ok = bool(data.get("ok"))
        took = self.pgdr.source.monotonic() - self.started
        backups = data.get("backups", [])
        bad = sum(not b.get("ok") for b in backups)
        wal_ok = all(w.get("ok") for w in data.get("wal", []))
        # The verdict, then what it covers: "1 of 3 backups BAD" says more at 3 a.m. than "PROBLEMS".
        counts = (
            f"{bad} of {len(backups)} backup{'' if len(backups) == 1 else 's'} BAD"
            if bad
            else (f"{len(backups)} backup{'' if len(backups) == 1 else 's'} ok")
        )
        state.update(
            Text(
                f" Verify {'OK' if ok else 'found PROBLEMS'}: {counts}, WAL {'ok' if wal_ok else 'BAD'}"
                f" ({data.get('level', 'checksums')}, {fmt.duration(took)})",
                style="bold green" if ok else "bold red",
            )
        )
        self.query_one(ProgressBar).update(total=1, progress=1)
        self._fill(data)
        self.notify("Verify OK" if ok else "Verify found problems", severity="information" if ok else "error")
        self.pgdr.reload()

    def _fill(self, data: dict[str, Any]) -> None:
        g = self.pgdr.glyphs
        table = self.query_one(DataTable)
        table.clear()
        self.rows = []
        for error in data.get("errors", []):
            table.add_row("error", "-", Text(f"{g.bad} ERROR", style="bold red"), str(error), "-", "-")
            self.rows.append([str(error)])
        for loss in data.get("losses", []):
            detail = str(loss.get("detail"))
            table.add_row(
                f"{loss.get('repository')}", "repo", Text(f"{g.bad} LOST", style="bold red"), detail, "-", "-"
            )
            self.rows.append([detail, str(loss.get("fix"))])
        for b in data.get("backups", []):
            problems = [_problem(p) for p in b.get("problems", [])]
            rehearsal = b.get("rehearsal") or {}
            problems += [f"rehearsal: {p}" for p in rehearsal.get("problems", [])]
            table.add_row(
                str(b.get("name")),
                str(b.get("kind")),
                _result(bool(b.get("ok")), g.ok, g.bad),
                _first(b.get("problems", []), len(problems)),
                f"{b.get('objects_checked', 0)} obj, {fmt.size(b.get('bytes_checked', 0))}",
                str(b.get("level", "")),
            )
            self.rows.append(problems + [f"note: {n}" for n in b.get("notes", [])])
        for w in data.get("wal", []):
            findings = [
                f"{f.get('status')}: {f.get('first')} .. {f.get('last')} ({f.get('count')}): {f.get('detail')}"
                for f in w.get("findings", [])
            ]
            if w.get("error"):
                findings.insert(0, str(w["error"]))
            table.add_row(
                f"WAL {w.get('repository')}",
                "wal",
                _result(bool(w.get("ok")), g.ok, g.bad),
                _first_finding(w.get("findings", []), len(findings)),
                f"{w.get('verified_objects', 0)} obj",
                "",
            )
            self.rows.append(findings)
        self._show_row()

    def on_data_table_row_highlighted(self, _: DataTable.RowHighlighted) -> None:
        self._show_row()

    def _show_row(self) -> None:
        table = self.query_one(DataTable)
        panel = self.query_one("#verify-details", Static)
        if not self.rows or table.cursor_row >= len(self.rows):
            panel.update("")
            return
        lines = self.rows[table.cursor_row]
        # Wrapped, not cut: the end of a problem line (which copy is intact, what to do) matters most.
        panel.update(Text("\n".join(f" {line}" for line in lines[:6]) if lines else " no problems"))


def _result(ok: bool, good: str, bad: str) -> Text:
    # In ASCII the "ok" mark is the word itself: "ok", not "ok ok".
    if ok:
        return Text("ok" if good == "ok" else f"{good} ok", style="green")
    return Text(f"{bad} BAD", style="bold red")


def _problem(p: object) -> str:
    """One problem as ``pgdr verify`` prints it: which copy, which object, what is wrong."""
    if not isinstance(p, dict):
        return str(p)
    where = f"{p['repository']}: " if p.get("repository") else ""
    what = f"{p['object']}: " if p.get("object") else ""
    kind = f"{p['kind']}: " if p.get("kind") else ""
    return f"{where}{what}{kind}{p.get('detail') or p.get('message') or ''}"


def _first(problems: list[Any], count: int) -> str:
    """The Problems column: how many, and the first bad object by name, so it shows in the table itself."""
    if not count:
        return "-"
    first = problems[0] if problems else None
    if isinstance(first, dict) and first.get("object"):
        named = f"{first['object']} {first.get('kind', '')}".rstrip()
        return named if count == 1 else f"{named} (+{count - 1})"
    return str(count)


def _first_finding(findings: list[Any], count: int) -> str:
    """The Problems column of a WAL row: the first problem's status and segments, so a hole is named."""
    problems = [f for f in findings if isinstance(f, dict) and f.get("problem")]
    if not problems:
        return f"{count} notes" if count else "-"
    f = problems[0]
    more = f" (+{len(problems) - 1})" if len(problems) > 1 else ""
    return f"{f.get('status')} {f.get('first')}{more}"
