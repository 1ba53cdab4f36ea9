"""The operator console: a Textual app around the recovery timeline.

``run_app(cfg)`` is what ``pgdr`` (on a terminal), ``pgdr tui`` and ``pgdr demo`` call. The App takes
its data source in the constructor, so tests and the screenshot script hand it a repository the
backend wrote, a frozen clock and a fixed zone. Slow work runs in thread workers
(``exclusive``, ``exit_on_error=False``) that post messages; one ``Worker.StateChanged`` handler turns
any failure into an error modal, so a failing backend call never takes the console down.
"""

from __future__ import annotations

import gc
import importlib
import sys
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

from textual import work
from textual.app import App
from textual.binding import Binding, BindingType
from textual.screen import Screen
from textual.signal import Signal
from textual.worker import Worker, WorkerState

from backend.config import Config
from backend.errors import PgdrError
from backend.progress import Cancelled, Progress
from pgdr_tui import glyphs as glyph_sets
from pgdr_tui.commands import PgdrCommands
from pgdr_tui.live import LIVE_SECONDS, LiveWatch
from pgdr_tui.messages import LiveChanged, LoadProgress, ModelLoaded, ServerChecked, VerifyResults
from pgdr_tui.model import TimelineModel
from pgdr_tui.request import RestoreRequest
from pgdr_tui.restorejob import RestoreJob
from pgdr_tui.screens.timeline import TimelineScreen
from pgdr_tui.source import Source, Verified
from pgdr_tui.widgets.statusbar import StatusFacts

if TYPE_CHECKING:
    from backend.catalog import Catalog
    from backend.repository import Repository

#: Seconds between catalog reloads while the console is open, whatever the live looks found (a repository
#: other hosts write to, S3, changes without this host's server or daemon saying so).
RELOAD_SECONDS = 60.0
DEMO_RELOAD_SECONDS = 15.0
#: A reload the live looks asked for waits until the cursor has rested this long (a reload in the
#: background must not slow scrubbing down)...
SCRUB_QUIET_S = 2.0
#: ... and until this many times the last load's duration has passed since it ended (never sooner than
#: ``MIN_RELOAD_GAP_S``): a year of history is read in under a second, so at most a tenth of the time.
RELOAD_COST_FACTOR = 10.0
MIN_RELOAD_GAP_S = 3.0
#: Seconds the first load may spend reading the WAL index before the timeline is drawn without it.
EARLY_TIMELINE_S = 2.0
EARLY_STATUS = "reading the WAL index: archive times, no events yet"


#: What ``_freeze_once`` has frozen in this process.
_FROZEN: set[str] = set()


def _freeze_once(stage: str) -> None:
    """Put every object alive now out of the cyclic garbage collector's sight, once per process and stage.

    The console's objects are made in two bursts that then last: the imports, the app and its first
    screen (as long as the console), and the first catalog (until the first reload: a year of history
    is tens of thousands of objects). Left in sight, the collector walks them again and again as the
    open goes on: a tenth of its time. Frozen objects are still freed when no longer referenced; only
    garbage cycles among them stay, so it is done once, never on every reload (nor for every app a
    test makes).
    """
    if stage not in _FROZEN:
        _FROZEN.add(stage)
        gc.freeze()


def _screen(module: str, name: str) -> Callable[[], Screen[Any]]:
    """A mode's screen, imported the first time it is shown: the console opens on the timeline, and
    importing the other screens (and the Textual widgets they use) cost the open some 60 ms."""

    def make() -> Screen[Any]:
        screen: Callable[[], Screen[Any]] = getattr(importlib.import_module(f"pgdr_tui.screens.{module}"), name)
        return screen()

    return make


class PgdrApp(App[int]):
    """The console. ``source`` is where every read and job goes; see ``pgdr_tui.source``."""

    CSS_PATH = "pgdr.tcss"
    TITLE = "pgdr"
    #: pgdr's own commands only, so ctrl+p opens on them: Textual's system commands (theme, quit, keys,
    #: screenshot) came first. The two of them an operator may want are among pgdr's, at the end.
    COMMANDS: ClassVar = {PgdrCommands}
    COMMAND_PALETTE_BINDING = "ctrl+p"
    MODES: ClassVar = {
        "timeline": TimelineScreen,
        "backups": _screen("backups", "BackupsScreen"),
        "backup": _screen("backup", "BackupScreen"),
        "verify": _screen("verify", "VerifyScreen"),
        "status": _screen("status", "StatusScreen"),
        "settings": _screen("settings", "SettingsScreen"),
    }
    DEFAULT_MODE = "timeline"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding(
            "t", "go('timeline')", "Timeline", id="go.timeline", show=False, tooltip="The recovery timeline (home)"
        ),
        Binding("b", "go('backups')", "Backups", id="go.backups", show=False, tooltip="The catalog of backups"),
        Binding("n", "go('backup')", "Backup", id="go.backup", show=False, tooltip="Take a backup now"),
        Binding("v", "go('verify')", "Verify", id="go.verify", show=False, tooltip="Verify backups"),
        Binding("s", "go('status')", "Daemon", id="go.status", show=False, tooltip="The daemon's jobs"),
        Binding("c", "go('settings')", "Config", id="go.settings", show=False, tooltip="The effective configuration"),
        Binding("question_mark", "help", "Help", id="help", tooltip="Keys and symbols"),
        Binding("q", "quit", "Quit", id="quit", tooltip="Leave the console (a running restore goes on)"),
        Binding("ctrl+r", "reload", "Reload", show=False, id="reload", tooltip="Read the catalog again"),
    ]

    def __init__(self, source: Source, *, ascii_only: bool | None = None) -> None:
        _freeze_once("imports")
        super().__init__()
        self.source = source
        self.glyphs = glyph_sets.choose(ascii_only)
        if self.glyphs.plain:
            self.add_class("-ascii")  # pgdr.tcss: ASCII borders and cut marks
        self.model: TimelineModel | None = None
        self.verified: dict[str, Verified] = {}
        self.facts = StatusFacts(cluster=source.cluster, demo=source.demo)
        #: Published whenever the model or the status facts change; screens subscribe.
        self.changed: Signal[None] = Signal(self, "changed")
        #: The newest successful dry run: "restore" stays greyed until it matches the request at hand.
        self.planned: tuple[RestoreRequest, Any] | None = None
        self.load_status = "reading the catalog..."
        self.live = LiveWatch()
        #: When the cursor last moved (``time.monotonic``): live reloads wait for it to rest.
        self.last_scrub = 0.0
        self._reload_wanted = False
        self._reload_timer: Any = None
        self._next_reload_at = 0.0
        self._last_archived: str | None = None
        #: The backups whose verify records were read last (read again when they change).
        self._verified_for: frozenset[str] | None = None
        self._server_timeline: int | None = None
        if source.frozen:
            # Stable screenshots and tests: no blinking cursors, no animations.
            self.animation_level = "none"

    #: Textual shows some keys as arrows; in ASCII mode they are spelled out.
    ASCII_KEYS: ClassVar[dict[str, str]] = {"left": "<-", "right": "->", "up": "up", "down": "down"}

    def get_key_display(self, binding: Binding) -> str:
        """The footer's and help's name for a key, in plain ASCII when the console is."""
        if self.glyphs.plain:
            parts = binding.key.split("+")
            if parts[-1] in self.ASCII_KEYS:
                return "+".join([*parts[:-1], self.ASCII_KEYS[parts[-1]]])
        return super().get_key_display(binding)

    # --- lifecycle -------------------------------------------------------------------------------

    def on_mount(self) -> None:
        self.reload()
        self.look()
        if not self.source.frozen:
            every = DEMO_RELOAD_SECONDS if self.source.demo else RELOAD_SECONDS
            self.set_interval(every, self.request_reload)
            self.set_interval(LIVE_SECONDS, self.look)
        # A restore running (or finished unwatched) since this console was last open: show it first.
        state = self.source.state_dir()
        job = RestoreJob.active(state, self.source.cluster) or RestoreJob.unseen(state, self.source.cluster)
        if job is not None:
            self.call_later(self.attach_restore, job, True)

    def action_go(self, mode: str) -> None:
        self.switch_mode(mode)

    def action_help(self) -> None:
        from pgdr_tui.screens.dialogs import HelpScreen

        self.push_screen(HelpScreen())

    def action_reload(self) -> None:
        self.reload()

    def reload(self) -> None:
        """Read the catalog again now (the operator asked, or a job of this console changed it), and
        the verify records with it."""
        self._reload_wanted = False
        self._verified_for = None
        self._load_catalog()

    def request_reload(self) -> None:
        """Read the catalog again when it is cheap to: not while the cursor moves, not more often than the
        last load's cost allows (see ``SCRUB_QUIET_S``, ``RELOAD_COST_FACTOR``)."""
        self._reload_wanted = True
        self._maybe_reload()

    def _live_reload(self) -> None:
        """A reload ``_maybe_reload`` decided on: the catalog, and the verify records only if the
        backups changed."""
        self._reload_wanted = False
        self._load_catalog()

    def _maybe_reload(self) -> None:
        self._reload_timer = None
        if not self._reload_wanted or any(w.group == "load" and not w.is_finished for w in self.workers):
            return  # a load is running: ``on_model_loaded`` looks again
        now = time.monotonic()
        wait = max(self.last_scrub + SCRUB_QUIET_S, self._next_reload_at) - now
        if wait > 0:
            if self._reload_timer is None:
                self._reload_timer = self.set_timer(wait, self._maybe_reload)
            return
        self._live_reload()

    def note_scrub(self) -> None:
        """The cursor moved (the timeline screen says so): a live reload waits until it rests."""
        self.last_scrub = time.monotonic()

    @work(thread=True, exclusive=True, exit_on_error=False, group="load", name="read the catalog")
    def _load_catalog(self) -> None:
        started = time.monotonic()
        try:
            self._read_catalog()
        finally:
            ended = time.monotonic()
            self._next_reload_at = ended + max(MIN_RELOAD_GAP_S, RELOAD_COST_FACTOR * (ended - started))

    def _read_catalog(self) -> None:
        def progress(p: Progress) -> None:
            self.post_message(LoadProgress(p.message))

        from backend.recovery import collector_paused

        early = _EarlyTimeline(self) if self.model is None and not self.source.frozen else None
        # The load is bounded (``Source.load_view``), so the collector can be held off all along, the
        # WAL index's cache (read in one burst too) included: a third of the load's time. What it made
        # is then frozen, not walked again.
        with collector_paused():
            view = self.source.load_view(progress, on_catalog=early.start if early else None)
            model = TimelineModel(view)
            _freeze_once("first catalog")
        if early is not None:
            early.cancel()
        self.post_message(ModelLoaded(model))

    @work(thread=True, exclusive=True, exit_on_error=False, group="verified", name="read the verify results")
    def _read_verified(self, names: list[str]) -> None:
        self.post_message(VerifyResults(self.source.last_verified(names)))

    @work(thread=True, exclusive=True, exit_on_error=False, group="server", name="check the server")
    def check_server(self) -> None:
        self.live.server_asked(time.monotonic())
        self.post_message(ServerChecked(self.source.server_state()))

    def look(self) -> None:
        """A live look (``pgdr_tui.live``): the server, the daemon, this host's restores; one at a time."""
        if not any(w.group == "live" and not w.is_finished for w in self.workers):
            self._look()

    @work(thread=True, exit_on_error=False, group="live", name="look at the server, the daemon and restores")
    def _look(self) -> None:
        self.post_message(LiveChanged(self.live.tick(self.source, time.monotonic())))

    def on_live_changed(self, message: LiveChanged) -> None:
        state = message.state
        facts = self.facts
        facts.restore = state.restore
        if state.daemon_running is not None:
            facts.daemon_running = state.daemon_running
        if state.server is not None:
            self.on_server_checked(ServerChecked(state.server))
        if state.restore_ended:
            # The server was stopped, replayed and promoted meanwhile: ask it now, not in a few seconds,
            # so the header never says "in recovery, TL 1" beside the report's "new timeline: 2".
            self.check_server()
            self.reload()
        elif state.daemon_backup_done:
            self.request_reload()
        self._show_header()  # also the ages in it ("RPO 4 s"): redrawn only when its text changed

    def on_model_loaded(self, message: ModelLoaded) -> None:
        self.model = message.model
        self.load_status = "" if message.final else EARLY_STATUS
        model = message.model
        physical = [b for b in model.catalog.backups if b.manifest.kind == "physical"]
        self.facts.loading = False
        newest = model.newest_archive
        if newest is not None and self.facts.newest_archive is not None:
            newest = max(newest, self.facts.newest_archive)  # the server may have said a newer one
        self.facts.newest_archive = newest
        self.facts.last_backup = max((b.manifest.stop_time for b in physical), default=None)
        self.changed.publish(None)
        if message.final and self._reload_wanted:
            self.call_later(self._maybe_reload)  # asked for while this load ran
        names = [b.manifest.name for b in model.catalog.backups]
        if message.final and frozenset(names) != self._verified_for:
            # After the timeline is drawn: on S3 this is a request per backup, and only the header's
            # "last verify" and the backups screen show the results. A live reload reads them again
            # only when the backups changed (a verify run from this console asks with ``reload``).
            self._verified_for = frozenset(names)
            self.call_after_refresh(self._read_verified, names)

    def on_verify_results(self, message: VerifyResults) -> None:
        if message.verified == self.verified:
            return
        self.verified = message.verified
        newest = max(self.verified.values(), key=lambda v: v.time, default=None)
        self.facts.last_verify = newest.time if newest else None
        self.facts.last_verify_ok = newest.ok if newest else None
        self.changed.publish(None)

    def on_load_progress(self, message: LoadProgress) -> None:
        self.load_status = message.text
        self.changed.publish(None)

    def on_server_checked(self, message: ServerChecked) -> None:
        state = message.state
        facts = self.facts
        facts.server, facts.server_short, facts.server_ok = state.text, state.short, state.reachable
        facts.archive_failing = state.archive_failing
        if state.archived_at is not None and (facts.newest_archive is None or state.archived_at > facts.newest_archive):
            facts.newest_archive = state.archived_at  # the RPO follows the server, not only the catalog
        # Something new to show: a segment archived since the last look, or the server on another timeline.
        news = (state.last_archived, state.timeline) != (self._last_archived, self._server_timeline)
        if state.reachable and news and self._server_timeline is not None:
            self.request_reload()
        if state.reachable:
            self._last_archived, self._server_timeline = state.last_archived, state.timeline
        self._show_header()

    def _show_header(self) -> None:
        """Redraw the header of the screen shown (the facts only: nothing else is recomputed)."""
        from pgdr_tui.screens.base import BaseScreen

        if not self.screen_stack:
            return  # leaving: a look that ended after the last screen went
        screen = self.screen
        if isinstance(screen, BaseScreen) and screen.is_mounted:
            screen.show_header()

    # --- failures --------------------------------------------------------------------------------

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        """The one place a failed worker becomes visible: an error modal, never a dead console."""
        if event.state != WorkerState.ERROR:
            return
        error = event.worker.error
        if isinstance(error, Cancelled):
            self.notify(str(error), title="Cancelled", severity="warning")
            return
        what = event.worker.name or "a background job"
        if isinstance(error, PgdrError):
            text = str(error)
        else:
            import traceback

            text = "".join(traceback.format_exception(error)) if error else "unknown error"
        from pgdr_tui.screens.dialogs import ErrorModal

        if event.worker.group == "load":
            self.load_status = f"could not read the catalog: {str(error).splitlines()[0] if error else '?'}"
            self.changed.publish(None)
        self.push_screen(ErrorModal(f"Could not {what}", text))

    # --- restore ---------------------------------------------------------------------------------

    def open_plan(self, request: RestoreRequest) -> None:
        from pgdr_tui.screens.restore import RestorePlanScreen

        self.push_screen(RestorePlanScreen(request))

    def restore_allowed(self, request: RestoreRequest) -> bool:
        return self.planned is not None and self.planned[0] == request

    def confirm_restore(self, request: RestoreRequest) -> None:
        """The typed-name confirmation for the dry-run plan of ``request``; then the detached restore."""
        if self.planned is None or self.planned[0] != request:
            return
        from pgdr_tui.screens.dialogs import ConfirmRestoreModal

        def confirmed(yes: bool | None) -> None:
            if yes:
                self.start_restore(request)
            else:
                self.notify("Restore cancelled: nothing was changed.")

        self.push_screen(ConfirmRestoreModal(self.source.cluster, self.planned[1]), confirmed)

    def start_restore(self, request: RestoreRequest) -> None:
        """Start the confirmed restore detached from this terminal and watch it."""
        job = RestoreJob.start(self.source.cfg, request, self.source.state_dir(), now=None)
        self.attach_restore(job, False)

    def attach_restore(self, job: RestoreJob, reattached: bool) -> None:
        from pgdr_tui.screens.restore import RestoreProgressScreen

        if job.result() is None and not reattached:
            # The header says so from now on, not from the next live look: the server is about to stop.
            self.facts.restore = "starting"
        self.push_screen(RestoreProgressScreen(job, reattached=reattached))
        self.look()

    def show_last_restore(self) -> None:
        """The newest restore job's progress and report (the palette's way back to a restore's outcome)."""
        job = RestoreJob.latest(self.source.state_dir(), self.source.cluster)
        if job is None:
            self.notify("No restore has been started from a console on this host.")
            return
        self.attach_restore(job, True)


class _EarlyTimeline:
    """The first load's timeline from archive times, when reading the WAL index takes long.

    A WAL index cache nobody filled yet (a new host, a year of history) is a read of every segment's
    entry: seconds, where the catalog itself took a fraction of one. The console shows the timeline
    from the catalog alone (no commit times, no events) after ``EARLY_TIMELINE_S``, and the full
    one replaces it when the load is done; a load done sooner shows only that.
    """

    def __init__(self, app: PgdrApp) -> None:
        self.app = app
        self.lock = threading.Lock()
        self.cancelled = False
        self.timer: threading.Timer | None = None

    def start(self, catalog: Catalog, repos: list[Repository]) -> None:
        self.timer = threading.Timer(EARLY_TIMELINE_S, self._show, (catalog, repos))
        self.timer.daemon = True
        self.timer.start()

    def _show(self, catalog: Catalog, repos: list[Repository]) -> None:
        from backend.catalog import recovery_timeline
        from backend.recovery import RecoveryView

        view = RecoveryView(catalog, recovery_timeline(catalog), repos, [], unindexed=len(catalog.segments))
        model = TimelineModel(view)
        with self.lock:  # never after the full timeline
            if not self.cancelled:
                self.app.post_message(ModelLoaded(model, final=False))

    def cancel(self) -> None:
        with self.lock:
            self.cancelled = True
        if self.timer is not None:
            self.timer.cancel()


def run_app(cfg: Config, *, demo: bool = False) -> int:
    """Open the console on ``cfg``'s cluster; returns the exit code."""
    source = Source(cfg, demo=demo)
    app = PgdrApp(source)
    result = app.run()
    if demo:
        print("The demo keeps running (server and workload): `pgdr demo` reopens it, `pgdr demo --clean` removes it.")
    # Textual sets return_code to 1 when the app dies of an exception (e.g. an unreadable stylesheet)
    # and prints the error itself; ``result`` is then None, which must not become exit status 0.
    code = app.return_code or 0
    if code:
        if app._exception is None:  # an exit with an error code but nothing printed: say so
            print(f"pgdr: the console stopped with an error (exit status {code})", file=sys.stderr)
        return code
    return int(result or 0)
