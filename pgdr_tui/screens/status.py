"""The daemon's jobs as ``pgdr status`` knows them: last and next run, result, duration.

``backend.daemon.read_status`` is imported lazily; without it (or without a status file) the view
says what to do instead of failing.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, ClassVar

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.widgets import DataTable, Static

from pgdr_tui import fmt
from pgdr_tui.messages import JobFinished
from pgdr_tui.screens.base import BaseScreen
from pgdr_tui.widgets.para import Para


class StatusScreen(BaseScreen):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("r", "refresh", "Refresh", id="status.refresh", tooltip="Read the daemon's status file again"),
    ]

    def compose(self) -> ComposeResult:
        yield from self.compose_header()
        yield Para(Text(" Daemon", style="bold"), id="daemon-title", classes="title")
        table: DataTable[Text | str] = DataTable(id="daemon-table", cursor_type="row", zebra_stripes=True)
        yield table
        yield Para(id="daemon-detail")
        yield Para(id="daemon-problems")
        yield from self.compose_footer()

    def on_mount(self) -> None:
        self.jobs: list[tuple[str, dict[str, Any]]] = []
        table = self.query_one(DataTable)
        # Every column fits 80: did it work, how long ago (fmt.short_age), when next, and the schedule;
        # when the last run started and how long it took are in the highlighted job's lines below.
        for label in ("Job", "Result", "Last run", "Next run", "Schedule"):
            table.add_column(label, key=label.lower())
        super().on_mount()
        table.focus()
        self.action_refresh()

    def action_refresh(self) -> None:
        self._read()

    @work(thread=True, exclusive=True, exit_on_error=False, group="daemon", name="read the daemon status")
    def _read(self) -> None:
        status = self.pgdr.source.daemon_status()
        self.post_message(JobFinished(status.to_json() if status is not None else None))

    def on_job_finished(self, message: JobFinished) -> None:
        data: dict[str, Any] | None = message.result
        title = self.query_one("#daemon-title", Static)
        problems = self.query_one("#daemon-problems", Static)
        table = self.query_one(DataTable)
        table.clear()
        zone, now = self.pgdr.source.zone, self.pgdr.source.now()
        if data is None:
            title.update(Text(" Daemon: status is not available in this build", style="yellow"))
            return
        if data.get("running"):
            state = Text.assemble(
                (" Daemon running", "bold green"),
                f" (pid {data.get('pid')}, since {fmt.when(_time(data.get('started')), zone)})",
            )
        elif data.get("started") or data.get("jobs"):
            state = Text.assemble(
                (" Daemon NOT running", "bold red"), f" (stopped {fmt.when(_time(data.get('stopped')), zone)})"
            )
        else:
            state = Text.assemble(
                (" Daemon has never run", "bold yellow"), " for this cluster: start it with `pgdr --daemon`"
            )
        title.update(state)
        g = self.pgdr.glyphs
        self.jobs = list((data.get("jobs") or {}).items())
        for name, job in self.jobs:
            result = _result(job)
            style = {"ok": "green", "succeeded": "green", "failed": "bold red", "skipped": "yellow"}.get(result, "")
            mark = g.ok if style == "green" else (g.bad if style == "bold red" else "")
            table.add_row(
                name,
                Text(result if mark == result else f"{mark} {result}".strip(), style=style),
                fmt.short_age(_time(job.get("last_start")), now) if job.get("last_start") else "-",
                fmt.short(_time(job.get("next_run")), zone) if data.get("running") and job.get("next_run") else "-",
                str(job.get("schedule") or "disabled"),
            )
        self._show_job()
        lines = [f"{g.bad} {p}" for p in _problems(data)]
        problems.update(Text("\n".join(lines) or f"{g.ok} healthy", style="red" if lines else "green"))

    def on_data_table_row_highlighted(self, _: DataTable.RowHighlighted) -> None:
        self._show_job()

    def _show_job(self) -> None:
        """The highlighted job's last run in full: when, how it was started, how long it took, and what
        it said."""
        panel = self.query_one("#daemon-detail", Static)
        row = self.query_one(DataTable).cursor_row
        if not self.jobs or not 0 <= row < len(self.jobs):
            panel.update("")
            return
        name, job = self.jobs[row]
        zone = self.pgdr.source.zone
        if not job.get("last_start"):
            panel.update(Text(f" {name}: not run yet", style="dim"))
            return
        text = Text(f" {name}", style="bold")
        result, took = _result(job), job.get("duration_seconds")
        if isinstance(took, int | float) and result != "running":
            result += f" in {fmt.short_duration(took)}"
        text.append(f": {result}, started {fmt.when(_time(job.get('last_start')), zone)}")
        if job.get("trigger"):
            text.append(f" ({job['trigger']})")
        said = job.get("error") if job.get("result") in ("failed", "skipped", "cancelled") else job.get("detail")
        if said:
            text.append(f"\n {said}", style="red" if job.get("result") == "failed" else "")
        panel.update(text)


def _problems(data: dict[str, Any]) -> list[str]:
    """The status's problems, jobs that failed with the same error said once ("verify, verify_deep: the
    last run failed: ..."): at 80 columns the nightly verify and its deep twin would fill the screen."""
    jobs = data.get("jobs") or {}
    out: list[str] = []
    failed: dict[str, list[str]] = {}
    for problem in data.get("problems", []):
        name, _, said = str(problem).partition(": ")
        if name in jobs and said:
            failed.setdefault(said, []).append(name)
        else:
            out.append(str(problem))
    out += [f"{', '.join(names)}: {said}" for said, names in failed.items()]
    return out


def _result(job: dict[str, Any]) -> str:
    return "running" if job.get("running_since") else str(job.get("result") or "-")


def _time(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None
