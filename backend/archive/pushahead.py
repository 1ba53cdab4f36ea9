"""Pushing ahead inside the push server: the segments waiting in ``pg_wal`` are stored by worker
threads while the archiver is still busy with earlier ones, and the archiver's request for one of
them waits for that worker instead of pushing the segment a second time.

The in-memory twin of the spool's notes (backend/archive/spool.py), which serve pgdr when the push
server is off: here nothing is written to disk and no process is started. The server that pushed a
segment ahead is the one that answers for it, with the config its fingerprint pins, so only the
file itself must be vouched for: a worker records the file's identity (device, inode, size, mtime)
before reading it and checks it after storing; the archiver's request is answered from the worker
only when the file at that path still has that identity. Anything else (the worker failed, the file
changed or went away) means "push it the normal way", never "stored".
"""

from __future__ import annotations

import os
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

from backend.archive.push import open_sync_repositories, push
from backend.archive.spool import ready_segments
from backend.errors import PgdrError
from backend.walnames import SEGMENT_RE

if TYPE_CHECKING:
    from backend.config import Config
    from backend.repository import Repository

_Identity = tuple[int, int, int, int]


def _identity(path: str) -> _Identity | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


class PushAhead:
    """The worker threads and the segments they have in hand, by absolute path."""

    def __init__(self, cfg: Config, repositories: dict[str, Repository]) -> None:
        self.cfg = cfg
        #: Shared with the server's own pushes; opened by the thread that schedules (boto3 sessions
        #: are not to be built by two threads at once).
        self.repositories = repositories
        self.pool = ThreadPoolExecutor(max_workers=max(1, cfg.archive.workers), thread_name_prefix="push-ahead")
        self.pending: dict[str, Future[_Identity | None]] = {}

    def take(self, path: str) -> bool:
        """True when a worker stored exactly the file now at ``path``; waits for one still at work."""
        future = self.pending.pop(os.path.normpath(path), None)
        if future is None:
            return False
        stored = future.result()
        return stored is not None and stored == _identity(path)

    def schedule(self, path: str) -> None:
        """Hand the workers the segments PostgreSQL marked ready after ``path``, ``archive.push_ahead``
        at most in hand at once. Called after the reply for ``path`` went out, so never delays it."""
        limit = self.cfg.archive.push_ahead
        folder, name = os.path.split(os.path.normpath(path))
        if limit <= 0 or not SEGMENT_RE.match(name):
            return
        try:
            open_sync_repositories(self.cfg, self.repositories)
        except PgdrError:
            return  # the archiver's own requests push, and report why this fails
        for key in [k for k in self.pending if os.path.dirname(k) == folder and os.path.basename(k) <= name]:
            del self.pending[key]  # asked for meanwhile, or archived another way: its result has no taker
        for later in ready_segments(Path(folder)):
            if len(self.pending) >= limit:
                break
            key = os.path.join(folder, later)
            if later > name and key not in self.pending:
                self.pending[key] = self.pool.submit(self._push, key)

    def _push(self, path: str) -> _Identity | None:
        before = _identity(path)
        if before is None:
            return None
        try:
            push(self.cfg, path, ahead=False, repositories=self.repositories)
        except PgdrError:
            return None  # the archiver's own request pushes it again, and reports why it fails
        return before if _identity(path) == before else None

    def close(self) -> None:
        """Let the pushes under way finish (each is a complete store or nothing); drop the rest."""
        self.pool.shutdown(wait=True, cancel_futures=True)
        self.pending.clear()
