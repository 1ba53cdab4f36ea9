"""The catalog as a table, newest first, with the selected backup's manifest and WAL range below.

Built from the loaded model (no extra reads): a year of backups is one DataTable fill per reload.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.widgets import DataTable, Static

from pgdr_tui import fmt
from pgdr_tui.request import RestoreRequest
from pgdr_tui.screens.base import BaseScreen
from pgdr_tui.widgets.para import Para
from pgdr_tui.widgets.wrap import labelled

if TYPE_CHECKING:
    from backend.catalog import CatalogBackup
    from pgdr_tui.source import Verified

COLUMNS = ("Name", "Kind", "Finished", "Size", "Repos", "Verified")


class BackupsScreen(BaseScreen):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding(
            "enter",
            "show_on_timeline",
            "On timeline",
            id="backups.timeline",
            tooltip="Put the timeline cursor at this backup",
        ),
        Binding(
            "d",
            "dry_run",
            "Dry run",
            id="backups.dry_run",
            tooltip="Plan a restore of this backup as it was taken (immediate)",
        ),
        Binding("V", "verify_one", "Verify it", id="backups.verify", tooltip="Verify this backup"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.shown: list[CatalogBackup] = []
        self._filled_for: object = None

    def compose(self) -> ComposeResult:
        yield from self.compose_header()
        yield Para(id="backups-title", classes="title")
        table: DataTable[Text | str] = DataTable(id="backups-table", cursor_type="row", zebra_stripes=True)
        yield table
        yield Static(id="backup-details")
        yield from self.compose_footer()

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        for label in COLUMNS:
            table.add_column(label, key=label.lower())
        super().on_mount()
        table.focus()

    def refresh_data(self) -> None:
        model = self.pgdr.model
        title = self.query_one("#backups-title", Static)
        if model is None:
            title.update(Text(f" Backups: {self.pgdr.load_status}"))
            return
        if self._filled_for is model:
            return
        self._filled_for = model
        source = self.pgdr.source
        backups = sorted(model.catalog.backups, key=lambda b: b.manifest.stop_time, reverse=True)
        physical = sum(1 for b in backups if b.manifest.kind == "physical")
        total = sum(b.manifest.stored_bytes for b in backups)
        title.update(
            Text.assemble(
                (" Backups", "bold"),
                f"  {physical} physical, {len(backups) - physical} logical, "
                f"{fmt.size(total)} stored; times in {source.now().astimezone(source.zone).tzname()}",
            )
        )
        table = self.query_one(DataTable)
        selected = self.shown[table.cursor_row].manifest.name if self.shown and table.row_count else None
        table.clear()
        self.shown = backups
        g = self.pgdr.glyphs
        for b in backups:
            m = b.manifest
            v = self.pgdr.verified.get(m.name)
            table.add_row(
                m.name,
                "dump" if m.kind != "physical" else ("incr" if m.incremental else "base"),
                fmt.short(m.stop_time, source.zone),
                Text(fmt.size(m.size_bytes), justify="right"),
                ",".join(b.repositories),
                _verified(v, source.now(), g.ok, g.bad),
                key=m.name,
            )
        if selected is not None and selected in {b.manifest.name for b in backups}:
            table.move_cursor(row=[b.manifest.name for b in backups].index(selected))
        self._show_selected()

    def on_data_table_row_highlighted(self, _: DataTable.RowHighlighted) -> None:
        self._show_selected()

    def on_data_table_row_selected(self, _: DataTable.RowSelected) -> None:
        self.action_show_on_timeline()

    def selected(self) -> CatalogBackup | None:
        table = self.query_one(DataTable)
        if not self.shown or not table.row_count:
            return None
        return self.shown[min(table.cursor_row, len(self.shown) - 1)]

    def _show_selected(self) -> None:
        b = self.selected()
        panel = self.query_one("#backup-details", Static)
        if b is None:
            panel.update(Text(" No backups yet: press n to take one.", style="dim"))
            return
        width = panel.content_region.width or self.app.size.width
        panel.update(backup_details(b, self.pgdr.verified.get(b.manifest.name), self, width))

    def on_resize(self) -> None:
        self._show_selected()

    def action_show_on_timeline(self) -> None:
        from pgdr_tui.screens.timeline import TimelineScreen

        b = self.selected()
        if b is None:
            return
        self.app.switch_mode("timeline")
        screen = self.app.screen
        if isinstance(screen, TimelineScreen):
            screen.jump_to(b.manifest.stop_time)

    def action_dry_run(self) -> None:
        b = self.selected()
        if b is None:
            return
        if b.manifest.kind != "physical":
            self.notify(
                f"{b.manifest.name} is a logical dump: restore it with `pgdr restore --from-dump {b.manifest.name}`",
                severity="warning",
            )
            return
        self.pgdr.open_plan(RestoreRequest("immediate", backup=b.manifest.name, timeline="current"))

    def action_verify_one(self) -> None:
        from pgdr_tui.screens.verify import VerifyScreen

        b = self.selected()
        if b is None:
            return
        self.app.switch_mode("verify")
        screen = self.app.screen
        if isinstance(screen, VerifyScreen):
            screen.select(b.manifest.name)


def _verified(v: Verified | None, now: object, ok: str, bad: str) -> Text:
    if v is None:
        return Text("never", style="yellow")
    from datetime import datetime

    assert isinstance(now, datetime)
    mark = ok if v.ok else bad
    return Text(
        f"{mark} {fmt.age(v.time, now)}" + (" deep" if v.level == "deep" else ""), style="green" if v.ok else "bold red"
    )


def backup_details(b: CatalogBackup, v: Verified | None, screen: BaseScreen, width: int = 1000) -> Text:
    """The selected backup in full, each value wrapped beside its label (``width`` columns)."""
    source = screen.pgdr.source
    zone, now = source.zone, source.now()
    m = b.manifest
    lines: list[Text] = []

    def row(label: str, value: str) -> None:
        lines.extend(labelled(f" {label}", Text(value), label_width=LABEL, width=width))

    took = (m.stop_time - m.start_time).total_seconds()
    kind = m.kind
    if m.parent is not None and screen.pgdr.model is not None:
        members, missing = screen.pgdr.model.chain_of(b)
        kind = f"incremental on {m.parent}, " + (
            f"chain BROKEN: {missing} is gone" if missing else f"chain of {len(members)}"
        )
    row("Backup", f"{m.name} ({kind}) of {m.cluster}, PostgreSQL {m.pg_version}, pgdr {m.pgdr_version or '?'}")
    row(
        "Taken",
        f"{fmt.when(m.start_time, zone, seconds=True)} .. {fmt.when(m.stop_time, zone, seconds=True, date=False)}"
        f" ({fmt.duration(took)}, {fmt.age(m.stop_time, now)})",
    )
    ratio = f", {m.size_bytes / m.stored_bytes:.1f}x" if m.stored_bytes else ""
    row(
        "Size",
        f"{fmt.size(m.size_bytes)} stored as {fmt.size(m.stored_bytes)}{ratio}; {len(m.objects)} objects"
        + (f", {m.file_count} files" if m.file_count else ""),
    )
    if m.kind == "physical":
        row("WAL", f"{m.wal_start} .. {m.wal_stop} on timeline {m.timeline}")
        row("LSN", f"{m.start_lsn} .. {m.stop_lsn}")
    else:
        row("Database", m.database or "-")
    row("Repositories", ", ".join(b.repositories))
    if v is None:
        row("Verified", "never: press V to verify it")
    else:
        row("Verified", f"{'ok' if v.ok else 'PROBLEMS'} ({v.level}) {fmt.when(v.time, zone)}, {fmt.age(v.time, now)}")
    return Text("\n").join(lines)


#: The label column of the details: the longest label ("Repositories") and two spaces.
LABEL = 15
