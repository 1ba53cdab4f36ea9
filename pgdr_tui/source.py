"""The console's data source: every read and every job goes through here, and from here to ``backend``.

The App takes a ``Source`` in its constructor (as Harlequin takes its adapter) so tests hand it a
real catalog written by the backend, a frozen clock and a fixed time zone, and screenshots come out
the same every run. Nothing here imports Textual: each method is a plain blocking call that the
screens run in thread workers. A module other engineers are still writing (the daemon) is imported
lazily and its absence degrades to "unknown", never to a crash.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from pathlib import Path
from typing import TYPE_CHECKING, Any

from backend.config import Config
from backend.postgres import connect_params
from backend.progress import ProgressCallback, no_progress
from pgdr_tui import fmt

if TYPE_CHECKING:
    from backend.catalog import Catalog
    from backend.manifest import BackupManifest
    from backend.recovery import RecoveryView
    from backend.repository import Repository
    from backend.restore.plan import RestorePlan
    from pgdr_tui.request import RestoreRequest

#: Seconds the header waits for the server: the console must open even when the server is down.
CONNECT_TIMEOUT = 2

#: What the header shows of the server, in one round trip. A primary's timeline is the one its WAL is
#: written on now (a promotion's new timeline at once; the last checkpoint's lags until the next
#: checkpoint, and the header would contradict a restore report's "new timeline"); in recovery, the
#: replayed checkpoint's. ``pg_stat_archiver`` says which segment was archived last and when (a new
#: one means the timeline has something new to show, and the RPO is that much younger) and whether
#: archive_command fails since.
SERVER_QUERY = """
SELECT current_setting('server_version'),
       pg_is_in_recovery(),
       CASE WHEN pg_is_in_recovery() THEN (SELECT timeline_id FROM pg_control_checkpoint())
            ELSE ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int END,
       a.last_archived_wal,
       coalesce(a.last_failed_time > coalesce(a.last_archived_time, '-infinity'), false),
       a.last_archived_time
  FROM pg_stat_archiver a
"""


@dataclass(frozen=True)
class ServerState:
    reachable: bool
    text: str
    #: ``text`` in fewer words, for a header at 80 columns.
    short: str = ""
    #: The timeline the server writes (a primary) or replays (in recovery); None when unknown.
    timeline: int | None = None
    in_recovery: bool | None = None
    #: ``pg_stat_archiver``: the newest segment archived, and whether archiving fails since then.
    last_archived: str | None = None
    archive_failing: bool = False
    #: When it was archived: the header's RPO follows it between two reads of the catalog.
    archived_at: datetime | None = None

    @property
    def brief(self) -> str:
        return self.short or self.text


@dataclass(frozen=True)
class Verified:
    """When a backup was last verified, how, and with what result (from ``backend.verify``)."""

    time: datetime
    level: str
    ok: bool


class Source:
    """Config, clock and zone for one console session, and the calls the screens make."""

    def __init__(
        self,
        cfg: Config,
        *,
        clock: Callable[[], datetime] | None = None,
        zone: tzinfo | None = None,
        demo: bool = False,
        probe_server: bool = True,
        ticker: Callable[[], float] | None = None,
    ) -> None:
        self.cfg = cfg
        self._clock = clock
        self._ticker = ticker
        self.zone = zone or fmt.local_zone()
        self.demo = demo
        self.probe_server = probe_server
        self._repos: list[Any] | None = None

    @property
    def cluster(self) -> str:
        return self.cfg.cluster.name

    @property
    def frozen(self) -> bool:
        """A frozen clock means a test or a screenshot: no live refreshes, no blinking."""
        return self._clock is not None

    def now(self) -> datetime:
        return self._clock() if self._clock is not None else datetime.now(UTC)

    def monotonic(self) -> float:
        """Seconds for durations, rates and ETAs on screen.

        A frozen clock also freezes this (time does not pass in a test or a screenshot, so an elapsed
        time cannot differ between two runs) unless a ``ticker`` is given to drive it.
        """
        if self._ticker is not None:
            return self._ticker()
        return 0.0 if self._clock is not None else time.monotonic()

    def state_dir(self) -> Path:
        from backend.statedir import state_dir

        return state_dir()

    # --- reads ------------------------------------------------------------------------------------

    def load_view(
        self,
        on_progress: ProgressCallback = no_progress,
        on_catalog: Callable[[Catalog, list[Repository]], None] | None = None,
    ) -> RecoveryView:
        from backend.recovery import VIEW_INDEX_BUDGET_S, load_view

        # Bounded: the console must open on an archive nobody indexed yet; each refresh goes on.
        view = load_view(self.cfg, on_progress=on_progress, index_budget_s=VIEW_INDEX_BUDGET_S, on_catalog=on_catalog)
        self._repos = list(view.repositories)
        return view

    def server_state(self) -> ServerState:
        """Connect with a short timeout; "unreachable" is an answer, not an error.

        A restore of the data directory that never finished is said first: whatever the server
        answers, it may be running on a half-restored copy.
        """
        from backend.restore.marker import cluster_unfinished_restore

        if cluster_unfinished_restore(self.cfg.postgres.data_dir):
            return ServerState(
                False, "UNFINISHED RESTORE (pgdr restore --dry-run: how to roll back)", "UNFINISHED RESTORE"
            )
        if not self.probe_server:
            return ServerState(False, "not probed")
        try:
            import psycopg
        except ImportError:  # pragma: no cover - psycopg is a dependency
            return ServerState(False, "unknown (no psycopg)")
        params = connect_params(self.cfg, timeout=CONNECT_TIMEOUT, application="pgdr-console")
        try:
            with psycopg.connect(**params) as conn:
                row = conn.execute(SERVER_QUERY).fetchone()
        except psycopg.Error:
            return ServerState(False, "unreachable")
        if row is None:
            return ServerState(False, "unreachable")
        version, recovering, timeline, archived, failing, archived_at = row
        role = "in recovery" if recovering else "primary"
        return ServerState(
            True,
            f"up, PG {str(version).split()[0]}, {role}, TL {timeline}",
            f"{role}, TL {timeline}",
            timeline=int(timeline) if timeline is not None else None,
            in_recovery=bool(recovering),
            last_archived=str(archived) if archived else None,
            archive_failing=bool(failing),
            archived_at=archived_at if isinstance(archived_at, datetime) else None,
        )

    def last_verified(self, names: list[str]) -> dict[str, Verified]:
        """The newest verify record of each backup that has one (a listing, then a read per record)."""
        from backend.catalog import verified_records

        out: dict[str, Verified] = {}
        for name, record in verified_records(names, self._repositories()).items():
            try:
                when = datetime.fromisoformat(str(record["time"]))
            except (KeyError, ValueError):
                continue
            out[name] = Verified(when, str(record.get("level", "checksums")), bool(record.get("ok")))
        return out

    def daemon_status(self) -> Any | None:
        """``backend.daemon.read_status`` (to_json/render/healthy), or None when there is no daemon module."""
        try:
            from backend.daemon import read_status
        except ImportError:
            return None
        return read_status(self.cfg)

    def daemon_status_path(self) -> Path | None:
        """Where the daemon keeps its status (``stat`` it to learn whether anything changed)."""
        try:
            from backend.daemon import status_path
        except ImportError:
            return None
        return status_path(self.cfg)

    def _repositories(self) -> list[Any]:
        if self._repos is None:
            from backend.repository import open_repositories

            self._repos = list(open_repositories(self.cfg))
        return self._repos

    # --- work -------------------------------------------------------------------------------------

    def plan(self, request: RestoreRequest) -> tuple[RecoveryView, RestorePlan]:
        """The dry run: exactly what ``pgdr restore --dry-run`` computes for the same arguments."""
        from backend.recovery import plan_restore

        target = request.target(self.cfg.restore.timezone)
        return plan_restore(
            self.cfg, target, backup=request.backup, target_dir=request.target_dir or None, port=request.port
        )

    def backup(
        self,
        *,
        logical: bool,
        on_progress: ProgressCallback,
        cancel: threading.Event | None,
        incremental: bool = False,
    ) -> BackupManifest:
        from backend.jobs import backup_job

        return backup_job(self.cfg, logical=logical, incremental=incremental, on_progress=on_progress, cancel=cancel)

    def verify(
        self, name: str | None, *, deep: bool, on_progress: ProgressCallback, cancel: threading.Event | None
    ) -> Any:
        from backend.verify.command import verify

        # The console's clock: what verify records as "verified at" agrees with the header's "now".
        return verify(self.cfg, name, deep=deep, on_progress=on_progress, cancel=cancel, now=self.now())
