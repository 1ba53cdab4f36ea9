"""Prefetch for recovery: fetch the next segments in parallel while PostgreSQL replays this one.

PostgreSQL's startup process calls ``restore_command`` for one segment at a time and waits; from S3
each call would pay a Python start, an S3 client, a listing and a download per 16 MB of replay. So
the first ``wal-fetch`` of a recovery starts one background prefetcher that stays for the whole
recovery: it opens the repositories once (one S3 client, shared by its threads) and keeps the
``restore.prefetch`` segments from the one recovery asks for next downloaded, with
``restore.prefetch_workers`` threads, into ``pg_wal/pgdr-prefetch/``:

* ``<segment>``: complete and verified. Each is fetched to a temporary name, checked against its
  sha256, fsynced and only then renamed into place; anything else (temp files, a crash) is ignored
  and removed.
* ``.wanted``: the segment recovery asked for last, written by every ``wal-fetch``; the prefetcher
  slides its window to it and drops what recovery has moved past.
* ``.failed``: the first segment the prefetcher could not place (the end of the archive, or no
  intact copy). ``wal-fetch`` fetches that one itself, which says exactly why.
* ``.lock``: held by the prefetcher for as long as it runs.

``wal-fetch`` takes its segment with a rename. When recovery moves forward and a prefetcher runs, it
waits for the segment rather than downloading it a second time; a segment asked for again is fetched
directly (the prefetcher delivers each segment once). The prefetcher leaves once recovery has
asked for nothing new for ``LINGER`` seconds, or when the folder is gone: ``pgdr restore`` removes it
when recovery is over.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING

from backend.config import Config
from backend.spawn import spawn_pgdr
from backend.walnames import SEGMENT_RE, SegmentName, wal_directory

if TYPE_CHECKING:
    from backend.archive.walfile import WalObject
    from backend.repository import Repository

FOLDER = "pgdr-prefetch"
LOCK, WANTED, FAILED = ".lock", ".wanted", ".failed"
TEMP_MARK = ".pgdr-fetch."  # in the temporary names backend.archive.fetch writes
#: Seconds a prefetcher waits for recovery to ask for something new before it exits.
LINGER = 5.0
#: How often a waiting ``wal-fetch`` looks for its segment, and the prefetcher for a new request.
POLL = 0.01
#: A ``wal-fetch`` waits at most this long for a running prefetcher before fetching by itself.
WAIT_LIMIT = 120.0


def prefetch_dir(destination: Path) -> Path:
    """Beside %p (in pg_wal), so taking a file is a rename on the same filesystem."""
    return destination.absolute().parent / FOLDER


def request(cfg: Config, filename: str, destination: Path) -> bool:
    """Tell the prefetcher recovery wants ``filename`` now; True when a running one will bring it.

    When none runs, one is started for the segments after this one (this one is fetched directly:
    the new process needs a moment before it can help).
    """
    if not SEGMENT_RE.match(filename):
        return False
    folder = prefetch_dir(destination)
    folder.mkdir(mode=0o700, exist_ok=True)
    previous = _read_note(folder / WANTED)
    _write_note(folder / WANTED, filename)
    if _running(folder):
        return filename > previous
    spawn_pgdr(cfg, "wal-prefetch", str(folder), "--after", filename)
    return False


def take(filename: str, destination: Path, *, wait: bool) -> bool:
    """Move the prefetched, verified ``filename`` to ``destination``; False when it is not there.

    With ``wait``, keep looking while a prefetcher runs that has not given up on this segment.
    """
    if not SEGMENT_RE.match(filename):
        return False
    folder = prefetch_dir(destination)
    deadline = time.monotonic() + WAIT_LIMIT
    while True:
        with contextlib.suppress(OSError):
            os.rename(folder / filename, destination)
            return True
        if not wait or time.monotonic() > deadline or _gave_up(folder, filename) or not _running(folder):
            break
        time.sleep(POLL)
    try:  # it may have arrived just before the prefetcher stopped
        os.rename(folder / filename, destination)
    except OSError:
        return False
    return True


def run_prefetch(cfg: Config, folder: Path, after: str) -> list[str]:
    """Keep the segments after ``after`` (then after each requested one) fetched until recovery is done.

    Returns the segments placed in ``folder``.
    """
    from backend.repository import open_repositories, read_identity

    try:
        fd = os.open(folder / LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    except FileNotFoundError:
        return []  # recovery is over and the folder removed before this process got going
    try:
        try:  # first thing: from now on wal-fetch waits for this one rather than fetching by itself
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return []
        repos = open_repositories(cfg)  # once: every thread shares these (and their S3 client)
        identity = next((i for i in map(read_identity, repos) if i is not None), None)
        if identity is None:
            return []
        return _Prefetcher(cfg, repos, folder, identity.segment_size).run(after)
    finally:
        os.close(fd)


class _Prefetcher:
    def __init__(self, cfg: Config, repos: list[Repository], folder: Path, segment_size: int) -> None:
        import threading

        self.repos = repos
        self._listings: dict[tuple[str, str], dict[str, list[WalObject]]] = {}
        self._listing_lock = threading.Lock()
        self.folder = folder
        self.segment_size = segment_size
        self.ahead = max(1, cfg.restore.prefetch)
        self.workers = max(1, cfg.restore.prefetch_workers)

    def run(self, after: str) -> list[str]:
        from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait

        for entry in os.listdir(self.folder):
            if TEMP_MARK in entry or entry == FAILED:
                (self.folder / entry).unlink(missing_ok=True)  # an earlier prefetcher's
        seen = _read_note(self.folder / WANTED)
        position = SegmentName.parse(after, self.segment_size).next()
        if SEGMENT_RE.match(seen) and seen > position.name:  # recovery got further while this one started
            position = SegmentName.parse(seen, self.segment_size)
        self._forget_before(position.name)
        placed: set[str] = set()
        in_flight: dict[Future[bool], str] = {}
        failed = ""
        active = time.monotonic()
        with ThreadPoolExecutor(max_workers=self.workers) as pool:
            while self.folder.is_dir():
                wanted = _read_note(self.folder / WANTED)
                if wanted != seen and SEGMENT_RE.match(wanted):
                    position = SegmentName.parse(wanted, self.segment_size)
                    if wanted < seen:  # asked for again: wal-fetch gets that one itself (see request)
                        position = position.next()
                    seen, active = wanted, time.monotonic()
                    self._forget_before(wanted)
                    if failed:  # recovery got past it, or asks again: try again
                        failed = ""
                        (self.folder / FAILED).unlink(missing_ok=True)
                segment = position
                for _ in range(self.ahead):
                    if len(in_flight) >= self.workers or (failed and segment.name >= failed):
                        break  # queued no deeper than the workers, so a new request goes first
                    name = segment.name
                    if name not in placed and name not in in_flight.values() and not (self.folder / name).exists():
                        in_flight[pool.submit(self._fetch, name)] = name
                    segment = segment.next()
                if not in_flight:
                    if time.monotonic() - active > LINGER:
                        break
                    time.sleep(POLL)
                    continue
                done, _ = wait(in_flight, timeout=POLL, return_when=FIRST_COMPLETED)
                for future in done:
                    name = in_flight.pop(future)
                    if future.result():
                        placed.add(name)
                        active = time.monotonic()
                    elif not failed or name < failed:
                        failed = name
                        _write_note(self.folder / FAILED, name)
        return sorted(placed)

    def _fetch(self, name: str) -> bool:
        from backend.archive.fetch import fetch_from
        from backend.errors import PgdrError

        try:
            fetch_from(self.repos, name, self.folder / name, self._find)  # verified, fsynced, then renamed
        except PgdrError:
            return False  # the end of the archive, or a bad copy: wal-fetch's own fetch reports it
        return True

    def _find(self, repo: Repository, filename: str) -> list[WalObject]:
        """What a repository holds of ``filename``, from one listing of its WAL folder; listed again
        when the file is not in it (archived since, or really not there)."""
        from backend.archive.walfile import WAL_PREFIX, archived_under

        key = (repo.name, wal_directory(filename))
        with self._listing_lock:
            listing = self._listings.get(key, {})
        if filename not in listing:
            listing = archived_under(repo, f"{WAL_PREFIX}{key[1]}/")
            with self._listing_lock:
                self._listings[key] = listing
        return listing.get(filename, [])

    def _forget_before(self, current: str) -> None:
        """Drop prefetched files recovery has moved past (another timeline, or skipped)."""
        with contextlib.suppress(OSError):
            for entry in os.listdir(self.folder):
                if SEGMENT_RE.match(entry) and entry < current:
                    (self.folder / entry).unlink(missing_ok=True)


def _running(folder: Path) -> bool:
    """Whether a prefetcher holds the folder's lock."""
    try:
        fd = os.open(folder / LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError:
        return False  # the folder is gone: recovery is over
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def _gave_up(folder: Path, filename: str) -> bool:
    failed = _read_note(folder / FAILED)
    return bool(failed) and failed <= filename


def _read_note(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def _write_note(path: Path, text: str) -> None:
    """A hint between processes, replaced atomically; not fsynced: after a crash it is simply stale."""
    temp = path.with_name(f"{path.name}.{os.getpid()}")
    with contextlib.suppress(OSError):
        temp.write_text(text)
        os.replace(temp, path)


def clean(data_dir: Path) -> None:
    """Remove the prefetch folder once recovery is over, after its prefetcher has stopped.

    The folder is renamed away first, so a prefetcher still running finds it gone and stops, and
    nothing it was writing can land in a folder that survives.
    """
    folder = data_dir / "pg_wal" / FOLDER
    leaving = folder.with_name(f".{FOLDER}.removed.{os.getpid()}")
    try:
        os.rename(folder, leaving)
    except OSError:
        return
    with contextlib.suppress(OSError):
        fd = os.open(leaving / LOCK, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    time.sleep(0.05)
        finally:
            os.close(fd)
    shutil.rmtree(leaving, ignore_errors=True)
