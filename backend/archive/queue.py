"""The queue of WAL files still owed to repositories that ``wal-push`` does not wait for.

An entry is an empty file ``queue/<repository>/<wal file name>`` in the local repository, written
durably before ``wal-push`` acknowledges, so a crash of the uploader loses nothing: the next one
finds the entry and copies the file from a repository that has it. The WAL indexer's entries
(``queue/index/``) are not obligations (a segment without an index entry is indexed when a command
next needs the timeline), so they are written without the fsyncs.

One uploader runs per target, held by an flock; ``wal-push`` starts one when none holds the lock.
Started that way, it stays ``LINGER`` seconds after the queue empties, so a stream of pushes finds
it still running rather than starting a process (and an S3 client) per segment. A started uploader
that finds the lock held exits at once instead of queueing behind it: the holder sees every entry
written before it lets go (see ``drain``), and twenty blocked uploaders cost half a gigabyte. Until
the one it started takes the lock, ``wal-push`` starts no other (``.<target>.starting``): a Python
process needs a few hundred milliseconds to get there, and pushes come faster than that.

Nothing here runs without a push: the daemon drains the queues on its own (backend/daemon.py), so a
segment whose uploader died still reaches its repository on an idle database.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
import time
from collections.abc import Iterator

from backend import faults
from backend.archive.walfile import find_archived, store
from backend.config import Config
from backend.errors import PgdrError
from backend.repository import Repository, open_repositories, open_repository, read_identity
from backend.repository.local import TEMP_PREFIX, LocalRepository
from backend.spawn import spawn_pgdr
from backend.walnames import DEFAULT_SEGMENT_SIZE

#: The queue target of segments waiting for the WAL index (commit times, restore points, drops), not a repository.
INDEX_TARGET = "index"

QUEUE_PREFIX = "queue/"
#: Seconds a background uploader waits for more entries once its queue is empty.
LINGER = 2.0
_POLL = 0.1
#: The background WAL indexer starts a segment only once nothing was queued for it this long. Pushes
#: closer together are a bulk load or a backlog draining, and pg_waldump on the other core slowed
#: each of them from 30 to 42 ms here, SCHED_IDLE or not (cache and memory bandwidth are shared).
ARCHIVER_QUIET_S = 0.3
#: How long a started uploader may take to reach its lock before ``wal-push`` starts another.
STARTING_S = 10.0
#: A queue entry is written in milliseconds: a temporary file older than this was left by a killed writer.
STALE_TEMP_S = 300.0


def _local(cfg: Config) -> LocalRepository:
    if not cfg.local.path:
        raise PgdrError(
            "an upload queue needs a local repository: set [local] path, or list every repository in archive.sync"
        )
    return LocalRepository(cfg.local.path, cfg.cluster.name)


def enqueue(cfg: Config, target: str, filename: str) -> None:
    local, key = _local(cfg), f"{QUEUE_PREFIX}{target}/{filename}"
    if target == INDEX_TARGET:
        os.close(local.lock_file(key))  # an empty file, without put()'s two fsyncs
    else:
        local.put(key, b"")


def pending(cfg: Config, target: str) -> list[str]:
    prefix = f"{QUEUE_PREFIX}{target}/"
    return [info.key[len(prefix) :] for info in _local(cfg).list(prefix)]


@contextlib.contextmanager
def uploader_lock(cfg: Config, target: str, *, wait: bool) -> Iterator[bool]:
    """Held by the one uploader of ``target``; yields False when ``wait`` is off and it is taken."""
    fd = _local(cfg).lock_file(f"queue/.{target}.lock")
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


def ensure_uploader(cfg: Config, targets: list[str]) -> None:
    """Start a detached ``pgdr wal-upload`` for each target no uploader is working on or starting for."""
    for target in targets:
        with uploader_lock(cfg, target, wait=False) as free:
            if not free:
                continue
        if _claim_start(cfg, target):
            spawn_pgdr(cfg, "wal-upload", "--repo", target, "--quiet", "--background")


def _starting_key(target: str) -> str:
    return f"{QUEUE_PREFIX}.{target}.starting"


def _claim_start(cfg: Config, target: str) -> bool:
    """Whether this push starts the uploader: not while one it started is on its way to the lock.

    The uploader removes the marker once it tried the lock, before it lists the queue, so an entry
    written by a push that found the marker is listed by it (or by whoever holds the lock). A marker
    older than ``STARTING_S`` is of an uploader that died on the way and no longer counts. Two pushes
    claiming at the same instant start two, of which one exits at once: no harm.
    """
    local = _local(cfg)
    with contextlib.suppress(FileNotFoundError):
        if time.time() - (local.root / _starting_key(target)).stat().st_mtime < STARTING_S:
            return False
    try:
        fd = local.lock_file(_starting_key(target))
    except (OSError, PgdrError):
        return True  # without a marker, at worst a second uploader starts and exits at once
    try:
        os.utime(fd)
    finally:
        os.close(fd)
    return True


def _forget_start(cfg: Config, target: str) -> None:
    with contextlib.suppress(OSError):
        (_local(cfg).root / _starting_key(target)).unlink(missing_ok=True)


def remove_stale_temporaries(cfg: Config, target: str, *, older_than: float = STALE_TEMP_S) -> int:
    """Delete what killed writers left in ``target``'s queue folder; returns how many.

    A temporary file younger than ``older_than`` may be a ``wal-push`` writing its entry right now,
    so only old ones go (the repository's own ``cleanup_temporary`` needs the job lock instead). The
    folders are opened without following links: the daemon runs as root in a repository PostgreSQL's
    user owns, and must not be pointed at another folder's files.
    """
    try:
        fd = os.open(_local(cfg).root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return 0  # no repository yet: nothing was queued
    for name in (QUEUE_PREFIX.rstrip("/"), target):
        try:
            child = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
        except OSError:
            return 0  # no queue, or a link where the folder should be: left alone
        finally:
            os.close(fd)
        fd = child
    try:
        cutoff = time.time() - older_than
        removed = 0
        for entry in os.scandir(fd):
            if entry.name.startswith(TEMP_PREFIX):
                with contextlib.suppress(FileNotFoundError):
                    if entry.stat(follow_symlinks=False).st_mtime < cutoff:
                        os.unlink(entry.name, dir_fd=fd)
                        removed += 1
        return removed
    finally:
        os.close(fd)


def drain(
    cfg: Config,
    target: str,
    *,
    wait: bool = True,
    linger: float = 0.0,
    defer_to_archiver: bool = False,
    cancel: threading.Event | None = None,
) -> list[str]:
    """Copy every queued file to ``target``; returns what was uploaded.

    With ``linger``, keep the lock and look for new entries that many seconds after the queue
    empties. After letting go of the lock it looks once more, so an entry written by a ``wal-push``
    that saw the lock still held is never left behind. With ``defer_to_archiver``, each index entry
    waits until the archiver has been quiet for ``ARCHIVER_QUIET_S``. ``cancel`` stops it between
    files (the daemon stopping): what is left stays queued.
    """
    uploaded: list[str] = []
    uploader = _Uploader(cfg, target, defer_to_archiver=defer_to_archiver)
    while True:
        with uploader_lock(cfg, target, wait=wait) as held:
            _forget_start(cfg, target)
            if not held:
                return uploaded
            remove_stale_temporaries(cfg, target)
            idle_since = time.monotonic()
            while True:
                batch = pending(cfg, target)
                for filename in batch:
                    if cancel is not None and cancel.is_set():
                        return uploaded
                    uploader.upload(filename)
                    uploaded.append(filename)
                if batch:
                    idle_since = time.monotonic()
                elif time.monotonic() - idle_since >= linger:
                    break
                else:
                    time.sleep(_POLL)
        if not pending(cfg, target):
            return uploaded


def drain_in_background(cfg: Config, target: str) -> list[str]:
    """The detached uploader ``wal-push`` starts: it exits at once when another holds the lock, it
    lingers for the next entries, and the WAL indexer gives way.

    Indexing (pg_waldump decoding every record of every segment) is the least urgent work on the
    host: it runs only on what the server and the archiver leave idle, instead of slowing both
    during a bulk load. Its queue entries wait durably meanwhile, and a timeline read indexes what
    it needs. SCHED_IDLE, not just nice 19: the kernel then also counts a core running only the
    indexer as free when it places a waking process, so a ``wal-push`` starts at once rather than
    sharing a core with pg_waldump. Even so it waits for a pause in archiving (ARCHIVER_QUIET_S).
    """
    faults.point("uploader-starting")
    if target != INDEX_TARGET:
        return drain(cfg, target, wait=False, linger=LINGER)
    os.nice(19)  # clamped at the lowest priority; both are inherited by pg_waldump
    with contextlib.suppress(OSError):
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    return drain(cfg, target, wait=False, linger=LINGER, defer_to_archiver=True)


def archiver_busy(cfg: Config) -> bool:
    """Whether a segment was queued for indexing within ``ARCHIVER_QUIET_S``: every push queues one.

    Only the newest entry is looked at (WAL file names sort in the order PostgreSQL writes them), so
    the check costs one listing without a stat per entry, however long the queue grew during a bulk
    load. An entry stamped in the future (the clock was set back) does not count as busy, or the
    indexer would wait for the clock to catch up."""
    folder = _local(cfg).root / QUEUE_PREFIX / INDEX_TARGET
    try:
        newest = max((e.name for e in os.scandir(folder) if not e.name.startswith(".")), default=None)
        if newest is None:
            return False
        age = time.time() - os.stat(folder / newest).st_mtime
    except FileNotFoundError:  # no queue yet, or the entry was indexed meanwhile
        return False
    return 0 <= age < ARCHIVER_QUIET_S


class _Uploader:
    """Copies queued files to one target; the repositories are opened once per drain, not per file
    (building an S3 client costs about 100 ms of CPU)."""

    def __init__(self, cfg: Config, target: str, *, defer_to_archiver: bool = False) -> None:
        self.cfg = cfg
        self.target = target
        self.defer_to_archiver = defer_to_archiver
        self._repos: list[Repository] = []

    def repos(self) -> list[Repository]:
        if not self._repos:
            self._repos = open_repositories(self.cfg)
        return self._repos

    def upload(self, filename: str) -> None:
        repos = self.repos()
        local = next(r for r in repos if r.name == "local")  # a queue needs one (see _local)
        if self.target == INDEX_TARGET:
            from backend.archive.index import index_one

            while self.defer_to_archiver and archiver_busy(self.cfg):
                time.sleep(_POLL)
            identity = read_identity(local)
            # A failure leaves it unindexed: the next timeline read indexes it (and verify names a bad segment).
            with contextlib.suppress(PgdrError):
                index_one(self.cfg, repos, filename, identity.segment_size if identity else DEFAULT_SEGMENT_SIZE)
        else:
            self._copy(repos, filename)
        local.delete([f"{QUEUE_PREFIX}{self.target}/{filename}"])

    def _copy(self, repos: list[Repository], filename: str) -> None:
        dest = next((r for r in repos if r.name == self.target), None) or open_repository(self.cfg, self.target)
        for source in repos:
            if source is dest:
                continue
            found = find_archived(source, filename)
            if found:
                store(dest, found[0], source.get(found[0].key), read_identity(source), self.cfg.cluster.name)
                return
        raise PgdrError(f"{filename} is queued for the {self.target} repository but no other repository holds it")
