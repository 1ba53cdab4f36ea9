"""The jobs the operator and the daemon both run, with the lock and the notifications around them.

Every job notifies Telegram (when configured) of what it did, outside the lock: a notification is
never on a backup's critical path and can never fail it (see ``backend.notify``). A job that finds
the lock held raises ``LockBusy``: ``pgdr backup`` reports it as before, the daemon skips the run.
A cancelled job (``Cancelled``, or an interrupt) notifies nothing: the operator or the daemon's
shutdown asked for it.

verify and retention are imported when their job runs, so this module loads without them.
"""

from __future__ import annotations

import contextlib
import inspect
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from backend import notify as tg
from backend.config import Config
from backend.errors import PgdrError, RepositoryError
from backend.locks import EXCLUSIVE, job_lock
from backend.manifest import BackupManifest
from backend.progress import Cancelled, ProgressCallback, no_progress
from backend.repository import open_repositories, open_repository
from backend.walnames import SegmentName


class LockBusy(PgdrError):
    """Another pgdr job holds the lock: a scheduled run is skipped, a manual one refused."""


def _is_lock_busy(exc: BaseException) -> bool:
    # job_lock refuses with a plain PgdrError naming the holder; a RepositoryError is a real failure.
    return isinstance(exc, LockBusy) or (
        type(exc) is PgdrError and "holds the" in str(exc) and str(exc).startswith("cannot start")
    )


@contextlib.contextmanager
def locked(cfg: Config, job: str, *, name: str = EXCLUSIVE) -> Iterator[None]:
    """``job_lock``, with "someone else holds it" raised as ``LockBusy``."""
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(job_lock(cfg, job, name=name))
        except PgdrError as exc:
            if isinstance(exc, RepositoryError) or not _is_lock_busy(exc):
                raise
            raise LockBusy(str(exc), exit_code=exc.exit_code) from None
        yield


def _accepts(func: Callable[..., Any], **optional: Any) -> dict[str, Any]:
    """The keyword arguments ``func`` takes, of those given (for modules still growing their API)."""
    params = inspect.signature(func).parameters
    return {k: v for k, v in optional.items() if k in params and v is not None}


# --- backups ---------------------------------------------------------------------------------------


def backup_kind(logical: bool, incremental: bool = False) -> str:
    """The job (and notification) name: "base_backup", "incremental_backup" or "logical_dump".

    An incremental's own name keeps its messages out of the full backups' repeat window: a failing
    6-hourly incremental must not silence the weekly full backup's failure, nor the other way round.
    """
    return "logical_dump" if logical else "incremental_backup" if incremental else "base_backup"


def take_backup(
    cfg: Config,
    *,
    logical: bool = False,
    incremental: bool = False,
    only: str | None = None,
    on_progress: ProgressCallback = no_progress,
    cancel: threading.Event | None = None,
) -> BackupManifest:
    """One base backup (or logical dump) under the repository lock, without notifications."""
    repos = open_repositories(cfg, only)
    with locked(cfg, "logical dump" if logical else "base backup"):
        if logical:
            from backend.backup.logical import take_logical_dump

            return take_logical_dump(cfg, repos, on_progress=on_progress, cancel=cancel)
        from backend.backup.physical import take_base_backup

        return take_base_backup(cfg, repos, incremental=incremental, on_progress=on_progress, cancel=cancel)


def backup_job(
    cfg: Config,
    *,
    logical: bool = False,
    incremental: bool = False,
    only: str | None = None,
    on_progress: ProgressCallback = no_progress,
    cancel: threading.Event | None = None,
) -> BackupManifest:
    """One base backup (or logical dump) under the repository lock: never two at once, never during expire.

    Telegram hears of the result (size, duration, or the error) after the lock is released.
    """
    started = time.monotonic()
    try:
        manifest = take_backup(
            cfg, logical=logical, incremental=incremental, only=only, on_progress=on_progress, cancel=cancel
        )
    except (LockBusy, Cancelled):
        raise
    except Exception as exc:
        notify_backup(cfg, logical=logical, incremental=incremental, error=exc, took=time.monotonic() - started)
        raise
    notify_backup(cfg, logical=logical, incremental=incremental, manifest=manifest)
    return manifest


def notify_backup(
    cfg: Config,
    *,
    logical: bool,
    incremental: bool = False,
    manifest: BackupManifest | None = None,
    error: BaseException | None = None,
    took: float | None = None,
) -> None:
    kind = backup_kind(logical, incremental)
    if manifest is not None:
        tg.notify(cfg, kind, tg.backup_succeeded_text(manifest), ok=True)
    else:
        what = tg.describe_backup("logical" if logical else "incremental" if incremental else "physical")
        tg.notify(cfg, kind, tg.failed_text(what, cfg.cluster.name, error or "unknown error", took), ok=False)


# --- restore ---------------------------------------------------------------------------------------


# --- verify and retention --------------------------------------------------------------------------


def verify_job(
    cfg: Config,
    *,
    deep: bool = False,
    on_progress: ProgressCallback = no_progress,
    cancel: threading.Event | None = None,
) -> Any:
    """Verify every backup and the WAL archive (``deep``: a restore rehearsal too); returns the report.

    A report that is not ok is returned, not raised; an error is raised. ``backend.verify.command.verify``
    notifies Telegram itself (so a manual ``pgdr verify`` alerts as the daemon's does); here a lock
    held by another job only becomes ``LockBusy``, so the daemon skips the run instead of failing it.
    """
    from backend.verify.command import verify

    try:
        return verify(cfg, None, deep=deep, **_accepts(verify, on_progress=on_progress, cancel=cancel))
    except Cancelled:
        raise
    except Exception as exc:
        if _is_lock_busy(exc):
            raise LockBusy(str(exc)) from None
        raise


def expire_job(cfg: Config) -> Any:
    """Apply retention; returns the report. Refused with ``LockBusy`` while a backup holds the lock."""
    from backend.retention import expire

    with locked(cfg, "expire"):
        pass  # only a probe: the scheduled run is skipped, not failed, while a backup runs
    started = time.monotonic()
    try:
        report = expire(cfg, dry_run=False)
    except Exception as exc:
        if _is_lock_busy(exc):
            raise LockBusy(str(exc)) from None
        text = tg.failed_text("retention (expire)", cfg.cluster.name, exc, time.monotonic() - started)
        tg.notify(cfg, "expire", text, ok=False)
        raise
    tg.notify(
        cfg, "expire", f"✅ pgdr: retention of cluster {cfg.cluster.name} works again", ok=True, only_on_change=True
    )
    return report


# --- the RPO alarm ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class RpoStatus:
    ok: bool
    threshold_minutes: int
    #: Seconds since the newest archived WAL segment reached a repository; None: nothing archived.
    lag_seconds: float | None
    newest_segment: str | None
    newest_time: datetime | None
    message: str

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "threshold_minutes": self.threshold_minutes,
            "lag_seconds": self.lag_seconds,
            "newest_segment": self.newest_segment,
            "newest_time": self.newest_time.isoformat() if self.newest_time else None,
            "message": self.message,
        }


def _nothing_unarchived(cfg: Config, newest: SegmentName) -> bool:
    """True when the server has written nothing past the newest archived segment (it is idle).

    Unknown (server unreachable) counts as False: then the file age stands as the RPO.
    """
    from backend.postgres import connect

    try:
        with connect(cfg) as conn:
            row = conn.execute(
                "SELECT pg_current_wal_insert_lsn() - '0/0'::pg_lsn, (SELECT timeline_id FROM pg_control_checkpoint())"
            ).fetchone()
    except PgdrError:
        return False
    if row is None or int(row[1]) != newest.timeline:
        return False
    next_start = (newest.number + 1) * newest.segment_size
    return int(row[0]) <= next_start + 64  # at most the next segment's page header


def _archiving_just_began(cfg: Config, at: datetime, threshold_minutes: int) -> float | None:
    """Seconds since the server started, when it has archived nothing and failed nothing since, and
    started less than the alarm threshold ago: a new deployment whose first segment is not full yet
    (up to ``archive_timeout``), not a lost archive. None otherwise, or when the server cannot be asked.
    """
    from backend.postgres import connect

    try:
        with connect(cfg) as conn:
            row = conn.execute(
                "SELECT archived_count, failed_count, pg_postmaster_start_time() FROM pg_stat_archiver"
            ).fetchone()
    except PgdrError:
        return None
    if row is None or int(row[0]) or int(row[1]):
        return None
    started = (at - row[2]).total_seconds()
    return started if 0 <= started < threshold_minutes * 60 else None


def rpo_check_job(cfg: Config, *, now: datetime | None = None) -> RpoStatus:
    """Alarm when the newest archived WAL (per the catalog) is older than ``schedule.rpo_alarm_minutes``.

    Only the repositories ``wal-push`` waits for are read (the local one, usually: cheap every
    minute). On an idle server set ``archive_timeout`` below the threshold, or it alarms rightly:
    nothing newer is archived. The alarm is rate limited; its clearing is sent once.
    """
    from backend.catalog import read_catalog

    threshold = cfg.schedule.rpo_alarm_minutes
    try:
        repos = [open_repository(cfg, name) for name in cfg.sync_repositories]
        catalog = read_catalog(repos)
    except Exception as exc:
        tg.notify(cfg, "rpo", tg.failed_text("the RPO check", cfg.cluster.name, exc), ok=False)
        raise
    at = now or datetime.now(UTC)
    newest = max(catalog.segments, key=lambda s: (s.archived_at, s.segment.name), default=None)
    if newest is None and (started := _archiving_just_began(cfg, at, threshold)) is not None:
        message = f"nothing archived yet: the server started {int(started)} s ago and has not finished a segment"
        return RpoStatus(True, threshold, None, None, None, message)
    if newest is None:
        text = tg.rpo_alarm_text(cfg.cluster.name, None, threshold, None)
        tg.notify(cfg, "rpo", text, ok=False)
        return RpoStatus(False, threshold, None, None, None, text.removeprefix("⚠️ pgdr: "))
    lag = max(0.0, (at - newest.archived_at).total_seconds())
    if lag > threshold * 60 and _nothing_unarchived(cfg, newest.segment):
        lag = 0.0  # an idle server: everything it wrote is archived, no data is at risk
    if lag > threshold * 60:
        text = tg.rpo_alarm_text(cfg.cluster.name, lag, threshold, newest.segment.name)
        tg.notify(cfg, "rpo", text, ok=False)
        return RpoStatus(False, threshold, lag, newest.segment.name, newest.archived_at, text.removeprefix("⚠️ pgdr: "))
    tg.notify(cfg, "rpo", tg.rpo_ok_text(cfg.cluster.name, lag), ok=True, only_on_change=True)
    message = f"newest archived WAL {newest.segment.name} is {int(lag)} s old"
    return RpoStatus(True, threshold, lag, newest.segment.name, newest.archived_at, message)
