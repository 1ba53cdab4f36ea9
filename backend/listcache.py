"""A cache of what the repository's folders hold, so a year of WAL is not listed again per command.

Listing a local repository costs a ``stat`` per object: 100,000 WAL segments take most of a
second before anything is computed. This cache keeps, per folder (``wal/<timeline+log>/``,
``backups/<name>/``), what a caller derived from its listing, and serves it again while the
folder's modification time is unchanged. Every object is written to a temporary name and renamed,
and deleted with unlink, so adding, replacing or removing an object always changes its folder's
time; a folder changed less than ``RACY_S`` before it was looked at is not trusted (the time may not
yet have ticked since the last change), and ``live`` folders (where archiving is writing right now)
are always listed again. Folders that appeared are listed, folders that disappeared are dropped.

The listing itself always goes through the Repository interface (so an encrypting wrapper's sizes
are the ones cached); only the folders' times are read off the disk, below the repository's
``local_root()``. For a repository with no folder times (S3) every command lists, as before. The cache
is a SQLite file in pgdr's state dir, like the WAL index cache; deleting it loses nothing.
"""

from __future__ import annotations

import contextlib
import marshal
import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar, cast

from backend.repository import ObjectInfo, Repository

T = TypeVar("T")

#: A folder changed this recently may change again within the same tick of its time: not cached.
RACY_S = 2.0


def cache_path() -> Path:
    from backend.audit import state_dir

    return state_dir() / "cache" / "listing.sqlite"


def folder_contents(
    repo: Repository,
    prefix: str,
    derive: Callable[[list[ObjectInfo]], T],
    *,
    kind: str,
    live: Callable[[list[str]], set[str]] = lambda names: set(),
) -> dict[str, T]:
    """``derive(listing)`` of every folder directly below ``prefix`` (``"wal/"``), by folder name, in
    key order.

    ``derive`` must return plain data (lists, tuples, numbers, strings, bytes): it is what is stored.
    ``kind`` names what ``derive`` computes (change it when ``derive`` changes); ``live`` picks the
    folders (of those present) to list every time. Objects directly in ``prefix`` are not pgdr's
    layout and are ignored.
    """
    root = repo.local_root()
    cache = _open_cache() if root is not None else None
    if root is None or cache is None:
        return _derive_all(repo, prefix, derive)
    try:
        with cache:
            return _cached(
                repo, root / prefix, prefix, derive, cache=cache, kind=f"{kind}:{repo.encryption}", live=live
            )
    except sqlite3.Error:
        return _derive_all(repo, prefix, derive)  # a broken cache file costs time, never an answer
    finally:
        cache.close()


def _cached(
    repo: Repository,
    top: Path,
    prefix: str,
    derive: Callable[[list[ObjectInfo]], T],
    *,
    cache: sqlite3.Connection,
    kind: str,
    live: Callable[[list[str]], set[str]],
) -> dict[str, T]:
    location = repo.location()
    stamps = _folder_stamps(top)
    fresh = live(sorted(stamps))
    stored = {
        folder: (stamp, data)
        for folder, stamp, data in cache.execute(
            "SELECT folder, stamp, data FROM listing WHERE location = ? AND kind = ?", (location, kind)
        )
    }
    out: dict[str, T] = {}
    changed: list[tuple[str, str, str, int, bytes]] = []
    for name in sorted(stamps):
        stamp = stamps[name]
        hit = stored.get(name)
        if hit is not None and hit[0] == stamp and name not in fresh:
            out[name] = cast(T, marshal.loads(hit[1]))
            continue
        value = derive(list(repo.list(f"{prefix}{name}/")))
        out[name] = value
        trusted = stamp if stamp < time.time_ns() - int(RACY_S * 1e9) else -1
        changed.append((location, kind, name, trusted, marshal.dumps(cast(Any, value))))
    gone = [(location, kind, name) for name in stored if name not in stamps]
    cache.executemany("INSERT OR REPLACE INTO listing VALUES (?, ?, ?, ?, ?)", changed)
    cache.executemany("DELETE FROM listing WHERE location = ? AND kind = ? AND folder = ?", gone)
    return out


def _folder_stamps(top: Path) -> dict[str, int]:
    """Each subfolder's modification time (ns); stat'ed before it is listed, so a change during the
    listing shows as a different time next time."""
    stamps: dict[str, int] = {}
    try:
        entries = list(os.scandir(top))
    except (FileNotFoundError, NotADirectoryError):
        return stamps
    for entry in entries:
        if entry.name.startswith(".") or not entry.is_dir(follow_symlinks=False):
            continue
        with contextlib.suppress(FileNotFoundError):  # removed meanwhile: gone
            stamps[entry.name] = entry.stat(follow_symlinks=False).st_mtime_ns
    return stamps


def _derive_all(repo: Repository, prefix: str, derive: Callable[[list[ObjectInfo]], T]) -> dict[str, T]:
    """One listing of the whole prefix, split by folder: what a repository without folder times gets."""
    out: dict[str, T] = {}
    for name, infos in _by_folder(repo.list(prefix), len(prefix)):
        out[name] = derive(infos)
    return out


def _by_folder(listing: Iterator[ObjectInfo], skip: int) -> Iterator[tuple[str, list[ObjectInfo]]]:
    name, group = "", list[ObjectInfo]()
    for info in listing:
        folder, slash, _ = info.key[skip:].partition("/")
        if not slash:
            continue
        if folder != name and group:
            yield name, group
            group = []
        name = folder
        group.append(info)
    if group:
        yield name, group


def _open_cache() -> sqlite3.Connection | None:
    """The cache, or None where the state dir cannot hold it (read-only home, say)."""
    try:
        path = cache_path()
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        db = sqlite3.connect(path, timeout=10)
        db.execute(
            "CREATE TABLE IF NOT EXISTS listing (location TEXT, kind TEXT, folder TEXT, stamp INTEGER, data BLOB,"
            " PRIMARY KEY (location, kind, folder))"
        )
    except (OSError, sqlite3.Error):
        return None
    return db
