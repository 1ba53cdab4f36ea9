"""What changed since the last look, cheaply: the console's header and timeline follow it.

Every few seconds the app runs ``LiveWatch.tick`` in a thread worker: a look at this host's restore
jobs (a folder listing and, for a running one, the progress lines appended since), a ``stat`` of the
daemon's status file (read only when it changed), and every ``SERVER_SECONDS`` one query to the
server (``Source.server_state``). None of it reads the catalog: the app reloads that only when the
answer says there is something new to show (a segment archived, a timeline switch, a backup the
daemon finished, a restore that ended), and not while the operator scrubs. No Textual here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pgdr_tui.restorejob import RestoreJob

if TYPE_CHECKING:
    from pgdr_tui.source import ServerState, Source

#: Seconds between two looks (restore jobs, the daemon's status file).
LIVE_SECONDS = 2.0
#: Seconds between two queries to the server (the header's server state, the newest archived segment).
SERVER_SECONDS = 5.0


@dataclass(frozen=True)
class LiveState:
    """One look's answer. ``server`` is None when the server was not asked this time."""

    server: ServerState | None = None
    #: The restore of this cluster running on this host now, in a few words ("replay 3 of 9").
    restore: str | None = None
    #: A restore this watch saw running has ended since the last look.
    restore_ended: bool = False
    #: The daemon's jobs running now; None when its status file did not change since the last look.
    daemon_running: tuple[str, ...] | None = None
    #: The daemon's status file says it finished a backup since the last look.
    daemon_backup_done: bool = False


@dataclass
class LiveWatch:
    """The state kept between two looks (one worker at a time uses it)."""

    _job: RestoreJob | None = None
    _step: str | None = None
    _daemon_mtime: int | None = None
    _daemon_backups: Any = None
    _server_at: float | None = None

    def tick(self, source: Source, now: float) -> LiveState:
        server = None
        if self._server_at is None or now - self._server_at >= SERVER_SECONDS:
            self._server_at = now
            server = source.server_state()
        restore, ended = self._restore(source)
        running, backup_done = self._daemon(source)
        return LiveState(server, restore, ended, running, backup_done)

    def server_asked(self, now: float) -> None:
        """The app asked the server itself (a restore ended, a reload): the next query can wait."""
        self._server_at = now

    def _restore(self, source: Source) -> tuple[str | None, bool]:
        if self._job is not None and (self._job.result() is not None or not self._job.alive()):
            self._job, self._step = None, None
            return None, True
        if self._job is None:
            self._job = RestoreJob.active(source.state_dir(), source.cluster)
            if self._job is None:
                return None, False
        for line in self._job.new_progress():
            self._step = restore_step(line)
        return self._step or "starting", False

    def _daemon(self, source: Source) -> tuple[tuple[str, ...] | None, bool]:
        path = source.daemon_status_path()
        if path is None:
            return None, False
        try:
            mtime = os.stat(path).st_mtime_ns
        except OSError:
            mtime = None
        if mtime == self._daemon_mtime:
            return None, False
        first = self._daemon_mtime is None and self._daemon_backups is None
        self._daemon_mtime = mtime
        status = source.daemon_status()
        if status is None:
            return (), False
        data = status.to_json()
        running = tuple(name for name, job in (data.get("jobs") or {}).items() if job.get("running_since"))
        backups = data.get("backups")
        done = not first and backups != self._daemon_backups
        self._daemon_backups = backups
        return (running if data.get("running") else ()), done


def restore_step(line: dict[str, Any]) -> str:
    """A restore's progress line in a few words for the header: "base backup 45%", "replay 3 of 9"."""
    step = str(line.get("step") or "")
    done, total = line.get("done"), line.get("total")
    if isinstance(done, int | float) and isinstance(total, int | float) and total > 1:
        if step == "base backup":
            return f"{step} {min(100, int(done * 100 / total))}%"
        return f"{step} {int(done)} of {int(total)}"
    return step or "running"
