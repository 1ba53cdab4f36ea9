"""Take a backup now: a full or incremental base backup, or the logical dumps, with progress, rate, ETA and a log.

The job runs ``backend.jobs.backup_job`` in a thread worker with a ``threading.Event`` to cancel; the
backend removes every partial object on ``Cancelled`` before it raises, so a cancelled backup leaves
nothing listed. The lock the backend takes means the daemon and this screen never back up at once.
"""

from __future__ import annotations

import threading
from datetime import datetime
from typing import ClassVar

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.widgets import ProgressBar, RichLog, Static

from backend.errors import PgdrError
from backend.progress import Cancelled, Progress
from pgdr_tui import fmt
from pgdr_tui.messages import JobFinished, JobLog, JobProgress
from pgdr_tui.screens.base import BaseScreen
from pgdr_tui.widgets.para import Para
from pgdr_tui.widgets.plain import progress_bar
from pgdr_tui.widgets.tail import LogTail
from pgdr_tui.widgets.wrap import hanging


class RateMeter:
    """Bytes per second over a short window, and the ETA it implies."""

    def __init__(self) -> None:
        self.samples: list[tuple[float, int]] = []

    def add(self, at: float, done: int) -> None:
        self.samples.append((at, done))
        cutoff = at - 5.0
        while len(self.samples) > 2 and self.samples[0][0] < cutoff:
            self.samples.pop(0)

    def rate(self) -> float | None:
        if len(self.samples) < 2:
            return None
        (t0, d0), (t1, d1) = self.samples[0], self.samples[-1]
        return (d1 - d0) / (t1 - t0) if t1 > t0 else None

    def eta(self, done: int, total: int | None) -> float | None:
        rate = self.rate()
        if not rate or not total or total <= done:
            return None
        return (total - done) / rate


class BackupScreen(BaseScreen):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("p", "start(False)", "Physical", id="backup.physical", tooltip="Start a physical base backup now"),
        Binding(
            "i",
            "start(False, True)",
            "Incremental",
            id="backup.incremental",
            tooltip="Start an incremental base backup now (PostgreSQL 17+, summarize_wal = on)",
        ),
        Binding("l", "start(True)", "Logical", id="backup.logical", tooltip="Start a logical dump now"),
        Binding("x", "cancel", "Cancel job", id="backup.cancel", tooltip="Cancel the running backup"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.cancel_event: threading.Event | None = None
        self.meter = RateMeter()
        self.started = 0.0
        self.kind = ""
        self.running = False

    def compose(self) -> ComposeResult:
        yield from self.compose_header()
        yield Para(
            Text.assemble(
                (" Backup now", "bold"),
                "  p: base backup (PITR)  i: incremental (17+)  l: logical dumps",
            ),
            classes="title",
        )
        yield Para(Text(" No backup running.", style="dim"), id="backup-state")
        yield progress_bar(self.pgdr.glyphs.plain, id="backup-bar", hidden=True)
        yield Para(id="backup-numbers")
        yield LogTail(id="backup-log", wrap=True, max_lines=1000)
        yield from self.compose_footer()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "start":
            return None if self.running else True
        if action == "cancel":
            return True if self.running else None
        return True

    def action_start(self, logical: bool, incremental: bool = False) -> None:
        if self.running:
            return
        self.running = True
        self.kind = "logical dump" if logical else "incremental base backup" if incremental else "physical base backup"
        self.cancel_event = threading.Event()
        self.meter = RateMeter()
        self.started = self.pgdr.source.monotonic()
        bar = self.query_one(ProgressBar)
        bar.update(total=None, progress=0)
        bar.display = True  # hidden until a job runs: no bar moving beside "not running"
        self.query_one("#backup-state", Static).update(Text(f" Starting a {self.kind}...", style="bold"))
        self._log(f"starting a {self.kind} of cluster {self.pgdr.source.cluster}")
        self.refresh_bindings()
        self._run(logical, incremental, self.cancel_event)

    def action_cancel(self) -> None:
        if self.cancel_event is not None and self.running:
            self.cancel_event.set()
            self._log("cancelling: the backend removes what it wrote, nothing will be listed")
            self.query_one("#backup-state", Static).update(Text(" Cancelling...", style="bold yellow"))

    @work(thread=True, exclusive=True, exit_on_error=False, group="backup", name="take the backup")
    def _run(self, logical: bool, incremental: bool, cancel: threading.Event) -> None:
        last_message = ""

        def progress(p: Progress) -> None:
            nonlocal last_message
            self.post_message(JobProgress(p, self.pgdr.source.monotonic()))
            if p.message and p.message.split(":")[-1].strip() != last_message:
                last_message = p.message.split(":")[-1].strip()
                self.post_message(JobLog(p.message, self.pgdr.source.now()))

        try:
            manifest = self.pgdr.source.backup(
                logical=logical, incremental=incremental, on_progress=progress, cancel=cancel
            )
        except Cancelled as exc:
            self.post_message(JobFinished(error=str(exc), cancelled=True))
            return
        except PgdrError as exc:
            self.post_message(JobFinished(error=str(exc)))
            return
        self.post_message(JobFinished(manifest))

    def on_job_progress(self, message: JobProgress) -> None:
        p = message.progress
        self.meter.add(message.at, p.done)
        bar = self.query_one(ProgressBar)
        if p.total:
            bar.update(total=max(p.total, p.done), progress=p.done)
        else:
            bar.update(total=None)
        rate = self.meter.rate()
        eta = self.meter.eta(p.done, p.total)
        # The total is pg_basebackup's estimate: once passed, the count stands alone ("25.3 MB of ~24.8 MB").
        parts = [f"{fmt.size(p.done)}" + (f" of ~{fmt.size(p.total)}" if p.total and p.done < p.total else "")]
        if rate:
            parts.append(fmt.rate(rate))
        if eta is not None:
            parts.append(f"ETA {fmt.duration(eta)}")
        parts.append(f"elapsed {fmt.duration(message.at - self.started)}")
        self.query_one("#backup-numbers", Static).update(Text(" " + "   ".join(parts)))
        self.query_one("#backup-state", Static).update(Text(f" {self.kind}: {p.message}", style="bold"))

    def on_job_log(self, message: JobLog) -> None:
        self._log(message.line, message.when)

    def on_job_finished(self, message: JobFinished) -> None:
        self.running = False
        self.refresh_bindings()
        state = self.query_one("#backup-state", Static)
        if message.cancelled:
            state.update(Text(f" Cancelled: {message.error}", style="bold yellow"))
            self._log(f"cancelled: {message.error}")
            self.notify("Backup cancelled: nothing was listed.", severity="warning")
        elif message.error is not None:
            state.update(Text(f" Failed: {message.error}", style="bold red"))
            self._log(f"failed: {message.error}")
            self.notify(message.error, title="Backup failed", severity="error")
        else:
            m = message.result
            bar = self.query_one(ProgressBar)
            bar.update(total=max(1, m.size_bytes), progress=max(1, m.size_bytes))
            took = (m.stop_time - m.start_time).total_seconds()
            kind = f"incremental on {m.parent}" if m.parent else m.kind
            text = (
                f"backup {m.name} ({kind}) complete: {fmt.size(m.size_bytes)} stored as "
                f"{fmt.size(m.stored_bytes)} in {fmt.duration(took)}"
            )
            state.update(Text(" " + text, style="bold green"))
            if m.extra.get("full_because"):
                self._log(f"taken as a full backup: {m.extra['full_because']}")
            # The live rate ends with the job: say what the whole backup averaged instead.
            average = f"   {fmt.rate(m.size_bytes / took)} on average" if took > 0 else ""
            self.query_one("#backup-numbers", Static).update(
                Text(f" {fmt.size(m.size_bytes)} in {fmt.duration(took)}{average}")
            )
            self._log(text)
            self.notify(text, title="Backup")
            self.pgdr.reload()

    def _log(self, line: str, when: datetime | None = None) -> None:
        now = (when or self.pgdr.source.now()).astimezone(self.pgdr.source.zone)
        log = self.query_one(RichLog)
        width = log.scrollable_content_region.width or self.app.size.width
        for part in hanging(Text.assemble((f"{now:%H:%M:%S} ", "dim"), line), width):
            log.write(part, width=width)
