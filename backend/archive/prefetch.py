"""Prefetch for recovery: fetch the next segments in parallel while PostgreSQL replays this one.

PostgreSQL's startup process calls ``restore_command`` for one segment at a time and waits; from S3
that is one round trip and one download per 16 MB of replay. After each ``wal-fetch`` pgdr starts
(at most one) background prefetcher that downloads the next ``restore.prefetch`` segments with
``restore.prefetch_workers`` threads into ``pg_wal/pgdr-prefetch/``, each verified against its
sha256 before it is renamed into place there. ``wal-fetch`` then takes the file from that folder with
a rename. A file in the folder is always complete and verified; anything else (temp files, a crash)
is ignored and removed. The folder is removed when ``pgdr restore`` ends.
"""

from __future__ import annotations

import fcntl
import os
import shutil
from pathlib import Path

from backend.config import Config
from backend.spawn import spawn_pgdr
from backend.walnames import SEGMENT_RE, SegmentName

FOLDER = "pgdr-prefetch"


def prefetch_dir(destination: Path) -> Path:
    """Beside %p (in pg_wal), so taking a file is a rename on the same filesystem."""
    return destination.absolute().parent / FOLDER


def take(filename: str, destination: Path) -> bool:
    """Move a prefetched, verified ``filename`` to ``destination``; False when it is not there."""
    if not SEGMENT_RE.match(filename):
        return False
    source = prefetch_dir(destination) / filename
    try:
        os.rename(source, destination)
    except OSError:
        return False
    return True


def kick(cfg: Config, filename: str, destination: Path) -> None:
    """Start a background prefetcher after ``filename`` unless one runs or prefetch is off."""
    if cfg.restore.prefetch <= 0 or not SEGMENT_RE.match(filename):
        return
    folder = prefetch_dir(destination)
    folder.mkdir(mode=0o700, exist_ok=True)
    fd = os.open(folder / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return  # one is running; it keeps going past what it was started for
    finally:
        os.close(fd)
    spawn_pgdr(cfg, "wal-prefetch", str(folder), "--after", filename)


def run_prefetch(cfg: Config, folder: Path, after: str) -> list[str]:
    """Fetch the segments after ``after`` into ``folder`` until the archive ends or the window is full."""
    from concurrent.futures import ThreadPoolExecutor

    from backend.archive.fetch import fetch
    from backend.errors import PgdrError
    from backend.repository import open_repositories, read_identity

    repos = open_repositories(cfg)
    identity = next((i for i in map(read_identity, repos) if i is not None), None)
    if identity is None:
        return []
    fd = os.open(folder / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    fetched: list[str] = []
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return fetched
        current = SegmentName.parse(after, identity.segment_size)
        _forget_older(folder, current.name)

        def one(segment: SegmentName) -> str | None:
            target = folder / segment.name
            if target.exists():
                return segment.name
            try:
                fetch(cfg, segment.name, target, prefetch=False)  # verified, written to a temp name, renamed
            except PgdrError:
                return None
            return segment.name

        window = [current]
        for _ in range(cfg.restore.prefetch):
            window.append(window[-1].next())
        with ThreadPoolExecutor(max_workers=max(1, cfg.restore.prefetch_workers)) as pool:
            for name in pool.map(one, window[1:]):
                if name is None:
                    break  # the end of the archive (or a bad copy the foreground fetch will report)
                fetched.append(name)
    finally:
        os.close(fd)
    return fetched


def _forget_older(folder: Path, current: str) -> None:
    """Drop prefetched files recovery has moved past (another timeline, or skipped)."""
    for entry in os.listdir(folder):
        stale_temp = entry.startswith(".") and entry != ".lock"
        if stale_temp or (SEGMENT_RE.match(entry) and entry <= current):
            (folder / entry).unlink(missing_ok=True)


def clean(data_dir: Path) -> None:
    """Remove the prefetch folder once recovery is over."""
    shutil.rmtree(data_dir / "pg_wal" / FOLDER, ignore_errors=True)
