"""The home screen: the recovery timeline, its cursor, and what a restore to the cursor would mean."""

from __future__ import annotations

from datetime import datetime
from typing import ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.widgets import Static

from pgdr_tui import fmt
from pgdr_tui.model import CursorDetails
from pgdr_tui.request import RestoreRequest
from pgdr_tui.screens.base import BaseScreen
from pgdr_tui.widgets.details import DetailsPanel
from pgdr_tui.widgets.timeline import TimelineView


class TimelineScreen(BaseScreen):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("g", "goto", "Go to", id="timeline.goto", tooltip="Move the cursor to a typed time"),
        Binding(
            "d", "dry_run", "Dry run", id="timeline.dry_run", tooltip="Plan a restore to the cursor (changes nothing)"
        ),
        Binding(
            "r",
            "restore",
            "Restore",
            id="timeline.restore",
            tooltip="Restore to the cursor (after a successful dry run of the same target)",
        ),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.details: CursorDetails | None = None
        self._shown_title: Text | None = None
        self._shown_keys: tuple[bool | None, bool | None] | None = None
        self._shown_legend: tuple[int, bool] | None = None

    def compose(self) -> ComposeResult:
        yield from self.compose_header()
        yield Static(id="timeline-title", classes="title")
        yield TimelineView(self.pgdr.glyphs, self.pgdr.source.zone, id="timeline")
        yield Static(id="legend", classes="legend")
        yield DetailsPanel(id="details")
        yield from self.compose_footer()

    def on_mount(self) -> None:
        super().on_mount()
        view = self.query_one(TimelineView)
        view.focus()
        self._show_legend()

    def on_resize(self) -> None:
        self._show_legend()

    def _show_legend(self) -> None:
        """The legend for this width and catalog: shorter words where the long ones do not fit, and the
        incremental mark only once there is an incremental backup to see."""
        legend = self.query_one("#legend", Static)
        width = legend.content_region.width or self.app.size.width - 2
        model = self.pgdr.model
        shown = (width, model is not None and model.has_incremental)
        if shown != self._shown_legend:
            self._shown_legend = shown
            legend.update(self.query_one(TimelineView).legend(width, incremental=shown[1]), layout=False)

    # --- data ------------------------------------------------------------------------------------

    def refresh_data(self) -> None:
        model = self.pgdr.model
        view = self.query_one(TimelineView)
        if model is None:
            title = Text(f" Recovery timeline: {self.pgdr.load_status}")
            self.query_one("#timeline-title", Static).update(title, layout=False)
            return
        if view.model is not model:
            view.set_model(model, self.pgdr.source.now())
            self._show_legend()
        else:
            self._show_details()

    def on_timeline_view_cursor_moved(self, _: TimelineView.CursorMoved) -> None:
        self.pgdr.note_scrub()
        self._show_details()

    def _show_details(self) -> None:
        model = self.pgdr.model
        view = self.query_one(TimelineView)
        if model is None:
            return
        self.details = model.details(view.cursor_time, latest=view.at_latest, column=view.cursor_column)
        source = self.pgdr.source
        self.query_one(DetailsPanel).show(
            self.details,
            zone=source.zone,
            now=source.now(),
            glyphs=self.pgdr.glyphs,
            zoom=view.zoom_name,
            nearby=model.nearby,
        )
        status = f"  ({self.pgdr.load_status})" if self.pgdr.load_status else ""
        if model.view.unindexed and not status:
            status = f"  ({model.view.unindexed} older segments not indexed yet: archive times)"
        backups, segments, events = len(model.catalog.backups), len(model.catalog.segments), len(model.events)
        title = Text.assemble(
            (" Recovery timeline", "bold"),
            f"  {view.zoom_name}/column; {backups} backups, {segments} WAL segments, {events} events{status}",
            no_wrap=True,
            overflow="ellipsis",
        )
        width = self.size.width or self.app.size.width
        if len(title.plain) > width:  # 80 columns: fewer words, the same facts
            title = Text.assemble(
                (" Timeline", "bold"),
                f"  {view.zoom_name}/col; {backups} backups, {segments} segments, {events} events{status}",
                no_wrap=True,
                overflow="ellipsis",
            )
        # Only touch what changed: refreshing the bindings rebuilds the footer, far dearer than the
        # scrub step itself. The title is one line whatever it says (pgdr.tcss): a repaint, no layout.
        if title != self._shown_title:
            self._shown_title = title
            self.query_one("#timeline-title", Static).update(title, layout=False)
        keys = (self.check_action("restore", ()), self.check_action("dry_run", ()))
        if keys != self._shown_keys:
            self._shown_keys = keys
            self.refresh_bindings()

    # --- restore ---------------------------------------------------------------------------------

    def current_request(self) -> RestoreRequest | None:
        """The restore the cursor stands for: latest, just before a destructive event, a restore point, a time."""
        d = self.details
        model = self.pgdr.model
        if d is None or model is None:
            return None
        backup = d.backup.manifest.name if d.backup is not None else None
        if d.latest:
            return RestoreRequest("latest", backup=backup)
        event = model.event_at(d.instant.timestamp(), d.timeline)  # the cursor's record, on the timeline restored
        if event is not None and event.kind != "restore_point" and event.xid:
            return RestoreRequest("xid", str(event.xid), exclusive=True, timeline=d.target_timeline, backup=backup)
        if event is not None and event.kind == "restore_point" and event.name:
            return RestoreRequest("name", event.name, timeline=d.target_timeline, backup=backup)
        return RestoreRequest.at(d.instant, timeline=d.target_timeline, backup=backup)

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "restore":
            request = self.current_request()
            return True if request is not None and self.pgdr.restore_allowed(request) else None
        return True  # dry run too: offered while the catalog is read, so the footer is not rebuilt when it arrives

    def action_dry_run(self) -> None:
        request = self.current_request()
        if request is not None:
            self.pgdr.open_plan(request)
        elif self.pgdr.model is None:
            self.notify("The catalog is still being read: try again in a moment.", title="Dry run")

    def action_restore(self) -> None:
        request = self.current_request()
        if request is not None and self.pgdr.restore_allowed(request):
            self.pgdr.confirm_restore(request)

    def action_goto(self) -> None:
        from pgdr_tui.screens.dialogs import GotoModal

        def done(when: datetime | None) -> None:
            if when is None:
                return
            view = self.query_one(TimelineView)
            view.move_to(when.timestamp())
            if abs(view.cursor - when.timestamp()) > 1e-3:  # outside what the timeline holds: say where it went
                zone = self.pgdr.source.zone
                edge = "before the oldest archived data" if view.cursor > when.timestamp() else "after now"
                self.notify(
                    f"{fmt.when(when, zone)} is {edge}: the cursor is at {fmt.when(view.cursor_time, zone)}",
                    title="Go to",
                    severity="warning",
                )

        self.app.push_screen(GotoModal(self.pgdr.source.zone, self.pgdr.source.now()), done)

    def jump_to(self, when: datetime) -> None:
        """Used by the command palette and the backups screen."""
        self.query_one(TimelineView).move_to(when.timestamp())
