"""The restore flow: the dry-run plan in full, in place or beside, the confirmation, and the detached run.

The plan shown is ``RestorePlan.render()``, the text ``pgdr restore --dry-run`` prints, computed by
the same backend call. "Restore" stays greyed until a dry run of exactly the request on screen has
succeeded (changing the directory or port greys it again until the next dry run).
"""

from __future__ import annotations

from datetime import UTC
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, VerticalScroll
from textual.message import Message
from textual.widgets import Input, Label, ProgressBar, RichLog, Static
from textual.worker import Worker

from backend.errors import PgdrError
from pgdr_tui import fmt
from pgdr_tui.live import restore_step
from pgdr_tui.request import RestoreRequest
from pgdr_tui.restorejob import REPORT_FOLLOWS, RestoreJob, command_line
from pgdr_tui.screens.base import BaseScreen
from pgdr_tui.screens.dialogs import ConfirmRestoreModal
from pgdr_tui.widgets.hanging import Hanging
from pgdr_tui.widgets.para import Para
from pgdr_tui.widgets.plain import progress_bar
from pgdr_tui.widgets.tail import LogTail
from pgdr_tui.widgets.wrap import hanging

if TYPE_CHECKING:
    from backend.restore.plan import RestorePlan


class PlanReady(Message):
    def __init__(self, request: RestoreRequest, plan: RestorePlan | None, error: str | None) -> None:
        super().__init__()
        self.request = request
        self.plan = plan
        self.error = error


class RestorePlanScreen(BaseScreen):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "back", "Back", id="plan.back", tooltip="Back to where you came from (nothing changes)"),
        Binding("d", "dry_run", "Dry run", id="plan.dry_run", tooltip="Plan again (changes nothing)"),
        Binding("i", "in_place", "In place", id="plan.in_place", tooltip="Replace the cluster's data directory"),
        Binding("b", "beside", "Beside", id="plan.beside", tooltip="Restore into a new directory on another port"),
        Binding("r", "restore", "Restore", id="plan.restore", tooltip="Restore (after a successful dry run)"),
    ]

    def __init__(self, request: RestoreRequest) -> None:
        super().__init__()
        self.request = request
        self.plan: RestorePlan | None = None
        self.error: str | None = None
        self.running = False

    def compose(self) -> ComposeResult:
        yield from self.compose_header()
        yield Para(id="plan-title", classes="title")
        with Horizontal(id="beside-row"):
            yield Label("directory ")
            yield Input(id="beside-dir")
            yield Label(" port ")
            yield Input(id="beside-port", type="integer")
        with VerticalScroll(id="plan-scroll"):
            yield Hanging(id="plan-text")
        yield from self.compose_footer()

    def on_mount(self) -> None:
        super().on_mount()
        cfg = self.pgdr.source.cfg
        stamp = self.pgdr.source.now().astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
        if cfg.postgres.data_dir:
            default_dir = f"{Path(cfg.postgres.data_dir).absolute()}.beside-{stamp}"
        else:
            default_dir = str(self.pgdr.source.state_dir() / "beside" / stamp)
        self.query_one("#beside-dir", Input).value = self.request.target_dir or default_dir
        port = self.request.port if self.request.port is not None else cfg.postgres.port + 1
        self.query_one("#beside-port", Input).value = str(port)
        if not cfg.postgres.data_dir and not self.request.beside:
            self.request = self._beside_request()
        self._show_mode()
        self.query_one("#plan-scroll").focus()
        self.action_dry_run()

    # --- mode ------------------------------------------------------------------------------------

    def _beside_request(self) -> RestoreRequest:
        port_text = self.query_one("#beside-port", Input).value.strip()
        port = int(port_text) if port_text.isdigit() else None
        return self.request.placed_beside(self.query_one("#beside-dir", Input).value.strip(), port)

    def _show_mode(self) -> None:
        self.query_one("#beside-row").display = self.request.beside
        mode = (
            Text("beside (new directory and port; the cluster is left alone)", style="bold")
            if self.request.beside
            else Text("in place (replaces the data directory)", style="bold red")
        )
        title = Text.assemble(
            (" Restore: ", "bold"),
            self.request.describe().split(", ")[0],
            "   mode: ",
            mode,
        )
        self.query_one("#plan-title", Static).update(title)
        self.refresh_bindings()

    def action_in_place(self) -> None:
        if not self.pgdr.source.cfg.postgres.data_dir:
            self.notify("postgres.data_dir is not set: only a restore beside is possible", severity="warning")
            return
        self.request = self.request.in_place()
        self._show_mode()
        self.action_dry_run()

    def action_beside(self) -> None:
        self.request = self._beside_request()
        self._show_mode()
        self.query_one("#beside-dir", Input).focus()
        self.action_dry_run()

    def on_input_changed(self, _: Input.Changed) -> None:
        if self.request.beside:
            self.request = self._beside_request()
            self.refresh_bindings()

    def on_input_submitted(self, _: Input.Submitted) -> None:
        self.action_dry_run()
        self.query_one("#plan-scroll").focus()

    # --- dry run ---------------------------------------------------------------------------------

    def action_dry_run(self) -> None:
        self.running = True
        self.query_one("#plan-text", Hanging).update(Text(f"Planning {self.request.describe()} ...", style="dim"))
        self.refresh_bindings()
        self._plan(self.request)

    @work(thread=True, exclusive=True, exit_on_error=False, group="plan", name="plan the restore")
    def _plan(self, request: RestoreRequest) -> None:
        try:
            _, plan = self.pgdr.source.plan(request)
        except PgdrError as exc:  # an unreachable target is an answer, shown in place of the plan
            self.post_message(PlanReady(request, None, str(exc)))
            return
        self.post_message(PlanReady(request, plan, None))

    def on_plan_ready(self, message: PlanReady) -> None:
        if message.request != self.request:
            return  # the operator changed the request meanwhile; a newer dry run is coming
        self.running = False
        self.plan, self.error = message.plan, message.error
        text = Text()
        text.append(command_line(message.request, "--dry-run") + "\n\n", style="dim")
        if message.plan is not None:
            self.pgdr.planned = (message.request, message.plan)
            text.append(message.plan.render())
            text.append("\n\nDry run: nothing was changed. ", style="bold green")
            text.append("Press r to restore (you will type the cluster name).")
        else:
            text.append("Cannot restore to this target:\n", style="bold red")
            text.append(message.error or "unknown error")
        self.query_one("#plan-text", Hanging).update(text)
        self.refresh_bindings()

    # --- restore ---------------------------------------------------------------------------------

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "restore":
            return True if not self.running and self.pgdr.restore_allowed(self.request) else None
        return True

    def action_restore(self) -> None:
        if not self.pgdr.restore_allowed(self.request) or self.pgdr.planned is None:
            return
        plan = self.pgdr.planned[1]
        request = self.request

        def confirmed(yes: bool | None) -> None:
            if yes:
                self.app.pop_screen()
                self.pgdr.start_restore(request)
            else:
                self.notify("Restore cancelled: nothing was changed.")

        self.app.push_screen(ConfirmRestoreModal(self.pgdr.source.cluster, plan), confirmed)

    def action_back(self) -> None:
        self.app.pop_screen()


class JobUpdate(Message):
    def __init__(
        self, progress: list[dict[str, Any]], log: list[str], result: dict[str, Any] | None, alive: bool
    ) -> None:
        super().__init__()
        self.progress = progress
        self.log = log
        self.result = result
        self.alive = alive


class RestoreProgressScreen(BaseScreen):
    """Live progress of a detached restore, read from its job folder; leaving does not stop it."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "back", "Back", id="progress.back", tooltip="Leave this view (the restore goes on)"),
    ]

    def __init__(self, job: RestoreJob, *, reattached: bool = False) -> None:
        super().__init__()
        self.job = job
        self.reattached = reattached
        self.log_offset = 0
        #: The log has reached the report, which is shown once, from the result, under the log.
        self.at_report = False
        self.finished = False
        self.reader: Worker[None] | None = None

    def compose(self) -> ComposeResult:
        yield from self.compose_header()
        yield Para(id="restore-title", classes="title")
        yield Para(id="restore-step")
        yield progress_bar(self.pgdr.glyphs.plain, id="restore-bar")
        yield LogTail(id="restore-log", wrap=True, max_lines=2000)
        yield Hanging(id="restore-result")
        yield from self.compose_footer()

    def on_mount(self) -> None:
        super().on_mount()
        zone = self.pgdr.source.zone
        if self.job.result() is not None:
            how = "the last restore (finished)"
        else:
            how = "re-attached to the running restore" if self.reattached else "started a detached restore"
        self.query_one("#restore-title", Static).update(
            Text.assemble(
                (f" Restore: {how}", "bold"),
                f" ({self.job.request.describe()}), pid {self.job.pid}, "
                f"since {fmt.when(self.job.started, zone)}\n log: {self.job.log}",
            )
        )
        self.set_interval(0.5, self._poll)
        self.call_after_refresh(self._poll)  # once laid out: the log's lines are made for its width

    def _poll(self) -> None:
        # One read at a time: a slow disk must not pile reads up, and cancelling a read half-way
        # (an exclusive worker) would lose the progress lines it had already consumed.
        if not self.finished and (self.reader is None or self.reader.is_finished):
            self.reader = self._read()

    @work(thread=True, exit_on_error=False, group="restore-watch", name="watch the restore")
    def _read(self) -> None:
        progress = self.job.new_progress()
        lines: list[str] = []
        try:
            with self.job.log.open("rb") as fh:
                fh.seek(self.log_offset)
                data = fh.read()
            end = data.rfind(b"\n") + 1
            self.log_offset += end
            lines = data[:end].decode(errors="replace").splitlines()
        except OSError:
            pass
        result = self.job.result()
        if result is not None:
            self.job.mark_seen()  # about to be shown: the next console need not show it again
        self.post_message(JobUpdate(progress, lines, result, self.job.alive()))

    def on_job_update(self, message: JobUpdate) -> None:
        log = self.query_one(RichLog)
        width = log.scrollable_content_region.width or self.app.size.width
        for line in message.log:
            self.at_report = self.at_report or line == REPORT_FOLLOWS
            if self.at_report:
                continue
            for part in hanging(Text(line), width):  # a plan line goes on under its value, not at the edge
                log.write(part, width=width)
        if message.progress:
            last = message.progress[-1]
            if message.result is None and message.alive:
                # The header says what this screen says, not what the last live look read a second ago.
                self.pgdr.facts.restore = restore_step(last)
                self.show_header()
            bar = self.query_one(ProgressBar)
            total = last.get("total")
            done = last.get("done") or 0
            if last.get("step") == "base backup" and total:
                # The total is what the backup's files add up to; the tar around them is a little more,
                # so the count can pass it: then no "of" that the count contradicts.
                bar.update(total=max(total, done), progress=done)
                what = f"{fmt.size(done)} of ~{fmt.size(total)}" if done <= total else f"{fmt.size(done)}, nearly done"
            elif total:
                bar.update(total=total, progress=done)
                what = f"{done} of {total}"
            else:
                bar.update(total=None)
                what = ""
            # The count first: at 80 columns the message (an LSN, a file name) is what gets cut.
            self.query_one("#restore-step", Static).update(
                Text.assemble(
                    (f" {last.get('step', '')}", "bold"),
                    (f" {what}" if what else ""),
                    ": ",
                    str(last.get("message", "")),
                )
            )
        if message.result is not None and not self.finished:
            self.finished = True
            self._show_result(message.result)
        elif not message.alive and message.result is None and not self.finished:
            self.finished = True
            self.query_one("#restore-result", Hanging).update(
                Text(
                    f"The restore process {self.job.pid} is gone without a result: see {self.job.log}", style="bold red"
                )
            )

    def _show_result(self, result: dict[str, Any]) -> None:
        bar = self.query_one(ProgressBar)
        if result.get("ok"):
            bar.update(total=1, progress=1)
            text = Text(str(result.get("text") or "Restore finished"), style="bold green")
            self.notify("Restore finished: target reached", title="Restore")
        else:
            text = Text(str(result.get("text") or result.get("error") or "Restore failed"), style="bold red")
            self.notify("Restore did not reach its target", title="Restore", severity="error")
        self.query_one("#restore-result", Hanging).update(text)
        # The server was stopped, replayed and promoted: the header asks it now (not in a few seconds), so
        # it never says "in recovery, TL 1" beside this report's "new timeline".
        self.pgdr.check_server()
        self.pgdr.reload()

    def action_back(self) -> None:
        if not self.finished:
            self.notify(f"The restore goes on (pid {self.job.pid}); reopen pgdr to watch it again.")
        self.app.pop_screen()
