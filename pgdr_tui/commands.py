"""The command palette (ctrl+p): every action of the console, plus each backup and event by name.

An operator who does not remember a key types what they want ("restore", "verify", a backup's date,
"drop"). Backups and events are searched, not listed on open, so a year of history stays fast.

Actions that belong to one screen (restore in place or beside on the plan, cancel on a running
backup or verify, edit and write on the settings, a dry run of the selected backup) are listed when
the palette is opened over that screen and the action applies there, the same rule that shows or
greys the key in the footer, so the palette never offers what would do nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from functools import partial
from typing import TYPE_CHECKING, cast

from textual.command import DiscoveryHit, Hit, Hits, Provider

from pgdr_tui import fmt

if TYPE_CHECKING:
    from pgdr_tui.app import PgdrApp

Command = tuple[str, Callable[[], object], str]


class PgdrCommands(Provider):
    @property
    def pgdr(self) -> PgdrApp:
        return cast("PgdrApp", self.app)

    def _actions(self) -> list[Command]:
        app = self.pgdr
        go = app.action_go
        return [
            ("Timeline: the recovery timeline (home)", partial(go, "timeline"), "t"),
            ("Timeline: cursor to the latest recoverable instant", partial(self._timeline, "action_edge", 1), "end"),
            (
                "Timeline: cursor to the earliest recoverable instant",
                partial(self._timeline, "action_edge", -1),
                "home",
            ),
            ("Timeline: go to a typed time", partial(self._timeline, "action_goto"), "g"),
            ("Timeline: cursor to the previous backup or event", partial(self._timeline, "action_mark", -1), "["),
            ("Timeline: cursor to the next backup or event", partial(self._timeline, "action_mark", 1), "]"),
            ("Timeline: cursor one step back", partial(self._timeline, "action_step", -1), "left"),
            ("Timeline: cursor one step forward", partial(self._timeline, "action_step", 1), "right"),
            ("Timeline: zoom in", partial(self._timeline, "action_zoom", -1), "+"),
            ("Timeline: zoom out", partial(self._timeline, "action_zoom", 1), "-"),
            ("Restore: dry run to the timeline cursor", partial(self._timeline, "action_dry_run"), "d on the timeline"),
            (
                "Restore: restore to the timeline cursor",
                partial(self._timeline, "action_restore"),
                "r on the timeline, after a dry run of the same target",
            ),
            (
                "Restore: show the last restore (progress and report)",
                app.show_last_restore,
                "the newest restore job on this host, running or finished",
            ),
            (
                "Restore: dry run to the latest archived WAL",
                self._latest_dry_run,
                "plan a restore replaying everything",
            ),
            ("Backups: the catalog", partial(go, "backups"), "b"),
            ("Backup: take a physical base backup now", partial(self._backup, False), "n, then p"),
            ("Backup: take a logical dump now", partial(self._backup, True), "n, then l"),
            ("Verify: every backup and the WAL archive", partial(self._verify, None, False), "v, then r"),
            ("Verify: the latest backup", self._verify_latest, "checksums of the newest backup"),
            (
                "Verify: deep restore rehearsal of the latest backup",
                self._verify_latest_deep,
                "restores it to a scratch dir",
            ),
            ("Daemon: status of the scheduled jobs", partial(go, "status"), "s"),
            ("Daemon: read the status file again", self._daemon_refresh, "s, then r"),
            ("Settings: the effective configuration", partial(go, "settings"), "c"),
            ("Reload the catalog", app.action_reload, "ctrl+r"),
            ("Help: keys and symbols", app.action_help, "?"),
            ("Quit", app.exit, "q"),
            *self._screen_actions(),
            ("Theme: change the console's colours", app.action_change_theme, "Textual's theme picker"),
            (
                "Screenshot: save this screen as an SVG file",
                lambda: app.set_timer(0.1, app.deliver_screenshot),
                "in the current directory, to attach to a ticket",
            ),
        ]

    def _screen_actions(self) -> list[Command]:
        """The actions of the screen under the palette that apply now (see the module docstring)."""
        from pgdr_tui.screens.backup import BackupScreen
        from pgdr_tui.screens.backups import BackupsScreen
        from pgdr_tui.screens.restore import RestorePlanScreen, RestoreProgressScreen
        from pgdr_tui.screens.settings import SettingsScreen
        from pgdr_tui.screens.verify import VerifyScreen

        screen = self.screen
        out: list[Command] = []

        def offer(action: str, text: str, key: str) -> None:
            if screen.check_action(action, ()):
                out.append((text, getattr(screen, f"action_{action}"), key))

        if isinstance(screen, RestorePlanScreen):
            out.append(("Restore plan: restore in place (replace the data directory)", screen.action_in_place, "i"))
            out.append(("Restore plan: restore beside (new directory and port)", screen.action_beside, "b"))
            out.append(("Restore plan: dry run again", screen.action_dry_run, "d"))
            offer("restore", "Restore plan: restore (type the cluster name to confirm)", "r")
        elif isinstance(screen, RestoreProgressScreen):
            out.append(("Restore: leave this view (the restore goes on)", screen.action_back, "escape"))
        elif isinstance(screen, BackupsScreen):
            out.append(("Backups: dry run of the selected backup as it was taken", screen.action_dry_run, "d"))
            out.append(
                ("Backups: put the timeline cursor at the selected backup", screen.action_show_on_timeline, "enter")
            )
            out.append(("Backups: verify the selected backup", screen.action_verify_one, "V"))
        elif isinstance(screen, BackupScreen):
            offer("cancel", "Backup: cancel the running backup (nothing is listed)", "x")
        elif isinstance(screen, VerifyScreen):
            offer("cancel", "Verify: cancel the running verify", "x")
            offer("run", "Verify: run on the selection", "r")
            out.append(("Verify: toggle the deep restore rehearsal", screen.action_toggle_deep, "D"))
        elif isinstance(screen, SettingsScreen):
            out.append(("Settings: edit the selected value", screen.action_edit, "e"))
            offer("write", "Settings: write the changes to the config file (tomli-w)", "w")
            offer("undo", "Settings: forget the changes not yet written", "u")
        return out

    def _items(self) -> list[Command]:
        items = self._actions()
        model = self.pgdr.model
        if model is None:
            return items
        zone = self.pgdr.source.zone
        for b in model.backup_order:
            m = b.manifest
            items.append(
                (
                    f"Jump to backup {m.name} ({m.kind}, {fmt.short(m.stop_time, zone)})",
                    partial(self._jump, m.stop_time),
                    "put the timeline cursor there",
                )
            )
        from pgdr_tui.model import describe_event

        for e in model.events:
            if e.time is None:
                continue
            items.append(
                (
                    f"Jump to event: {describe_event(e)} at {fmt.when(e.time, zone, seconds=True)}",
                    partial(self._jump, e.time),
                    "then d plans a restore to just before it",
                )
            )
        return items

    async def discover(self) -> Hits:
        for text, callback, help_text in self._actions():
            yield DiscoveryHit(text, callback, help=help_text)

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for text, callback, help_text in self._items():
            score = matcher.match(text)
            if score > 0:
                yield Hit(score, matcher.highlight(text), callback, help=help_text)

    # --- the callbacks ---------------------------------------------------------------------------

    def _timeline(self, method: str, *args: object) -> None:
        from pgdr_tui.screens.timeline import TimelineScreen
        from pgdr_tui.widgets.timeline import TimelineView

        app = self.pgdr
        app.switch_mode("timeline")
        screen = app.screen
        if not isinstance(screen, TimelineScreen):
            return
        target: object = screen if hasattr(screen, method) else screen.query_one(TimelineView)
        getattr(target, method)(*args)

    def _jump(self, when: datetime) -> None:
        from pgdr_tui.screens.timeline import TimelineScreen

        self.pgdr.switch_mode("timeline")
        screen = self.pgdr.screen
        if isinstance(screen, TimelineScreen):
            screen.jump_to(when)

    def _latest_dry_run(self) -> None:
        self._timeline("action_edge", 1)
        self._timeline("action_dry_run")

    def _backup(self, logical: bool) -> None:
        from pgdr_tui.screens.backup import BackupScreen

        self.pgdr.switch_mode("backup")
        screen = self.pgdr.screen
        if isinstance(screen, BackupScreen):
            screen.action_start(logical)

    def _daemon_refresh(self) -> None:
        from pgdr_tui.screens.status import StatusScreen

        self.pgdr.switch_mode("status")
        screen = self.pgdr.screen
        if isinstance(screen, StatusScreen):
            screen.action_refresh()

    def _verify(self, name: str | None, deep: bool) -> None:
        from textual.widgets import Checkbox

        from pgdr_tui.screens.verify import VerifyScreen

        self.pgdr.switch_mode("verify")
        screen = self.pgdr.screen
        if isinstance(screen, VerifyScreen):
            if name is not None:
                screen.select(name)
            screen.query_one(Checkbox).value = deep
            screen.action_run()

    def _latest_name(self) -> str | None:
        model = self.pgdr.model
        if model is None:
            return None
        physical = [b for b in model.backup_order if b.manifest.kind == "physical"]
        return physical[-1].manifest.name if physical else None

    def _verify_latest(self) -> None:
        self._verify(self._latest_name(), False)

    def _verify_latest_deep(self) -> None:
        self._verify(self._latest_name(), True)
