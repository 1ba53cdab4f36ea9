"""A cache of what the repository's folders hold, so a year of history is not listed again per command.

Listing a local repository costs a ``stat`` per object, and an S3 one a request per 1,000 keys plus
a GET per backup manifest: 100,000 WAL segments and 1,500 backups take seconds before anything is
computed. This cache keeps, per folder (``wal/<timeline+log>/``, ``backups/<name>/``), what a
caller derived from its listing, and serves it again while the folder is known to be unchanged:

* **local**: while the folder's modification time is unchanged. Every object is written to a
  temporary name and renamed, and deleted with unlink, so adding, replacing or removing an object
  always changes its folder's time; a folder changed less than ``RACY_S`` before it was looked at is
  not trusted (the time may not yet have ticked since the last change).
* **S3** (no folder times): one delimiter listing names the folders (a request per 1,000 folders),
  so a folder that appeared is listed and one that disappeared (an expired backup, whoever expired
  it) is dropped at once. What the folder listing cannot show is an object removed from a folder that
  remains (an expire trimming a WAL folder, a backup whose manifest went first): so the whole prefix
  is listed again when the last full listing is older than ``RELIST_S``, or when this host deleted
  anything from the repository since (``invalidate``, which the S3 repository's ``delete`` calls).

Either way ``live`` folders (where archiving is writing right now) are listed every time. A folder
listed again whose objects are the same (keys, sizes, times) keeps its derived value, so listing again
never means reading its manifest again.

The listing itself always goes through the Repository interface (so an encrypting wrapper's sizes
are the ones cached). The cache is a SQLite file in pgdr's state dir, like the WAL index cache;
deleting it loses nothing, and a cache that cannot be opened or written costs time, never an answer.
"""

from __future__ import annotations

import contextlib
import hashlib
import marshal
import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar, cast

from backend.cachefile import cache_path, open_cache
from backend.repository.base import ObjectInfo, Repository

T = TypeVar("T")

#: A folder changed this recently may change again within the same tick of its time: not cached.
RACY_S = 2.0
#: An S3 prefix is listed in full again after this long, so objects other hosts removed from a
#: folder that remains are eventually seen (removed folders are seen at once).
RELIST_S = 3600.0
#: The cache's layout; a file of another version is emptied, not migrated (it is only a cache).
SCHEMA = 2

#: What "now" is for ``RELIST_S``: a test replaces it to move time on.
clock: Callable[[], float] = time.time


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
    folders (of those present, in key order) to list every time. Objects directly in ``prefix`` are
    not pgdr's layout and are ignored.
    """
    cache = _open_cache()
    if cache is None:
        return {name: derive(infos) for name, infos in _by_folder(repo.list(prefix), len(prefix))}
    try:
        return _Folders(repo, prefix, f"{kind}:{repo.encryption}", cache).contents(derive, live)
    except sqlite3.Error:
        return {name: derive(infos) for name, infos in _by_folder(repo.list(prefix), len(prefix))}
    finally:
        cache.close()


def invalidate(location: str) -> None:
    """This host removed objects from the repository at ``location``: its next listing is a full one.

    Best effort: when the cache cannot be written the removal stays unseen until ``RELIST_S``.
    """
    cache = _open_cache()
    if cache is None:
        return
    with contextlib.suppress(sqlite3.Error), cache:
        cache.execute(
            "INSERT INTO generation VALUES (?, 1) ON CONFLICT (location) DO UPDATE SET n = n + 1", (location,)
        )
    cache.close()


class _Folders:
    """One prefix of one repository against its cached rows."""

    def __init__(self, repo: Repository, prefix: str, kind: str, cache: sqlite3.Connection) -> None:
        self.repo, self.prefix, self.kind, self.cache = repo, prefix, kind, cache
        self.location = repo.location()

    def contents(self, derive: Callable[[list[ObjectInfo]], T], live: Callable[[list[str]], set[str]]) -> dict[str, T]:
        stored: dict[str, tuple[int, bytes, bytes]] = {
            folder: (stamp, fingerprint, data)
            for folder, stamp, fingerprint, data in self.cache.execute(
                "SELECT folder, stamp, fingerprint, data FROM folders WHERE location = ? AND kind = ?",
                (self.location, self.kind),
            )
        }
        root = self.repo.local_root()
        if root is not None:
            stamps = _folder_stamps(root / self.prefix)
            names = sorted(stamps, key=_key_order)
            stale = {n for n in names if n not in stored or stored[n][0] != stamps[n]} | live(names)
            listings = self._list(names, stale)
            racy = time.time_ns() - int(RACY_S * 1e9)
            trusted = {n: stamps[n] if stamps[n] < racy else -1 for n in listings}
            return self._merge(names, listings, stored, trusted, derive)
        generation = self._generation()
        if self._relisted_since(generation):
            names = list(self.repo.folders(self.prefix))
            listings = self._list(names, {n for n in names if n not in stored} | live(names))
        else:
            began = clock()
            listings = dict(_by_folder(self.repo.list(self.prefix), len(self.prefix)))
            names = list(listings)
            self._write("INSERT OR REPLACE INTO relisted VALUES (?, ?, ?, ?)", [(*self._id, began, generation)])
        return self._merge(names, listings, stored, dict.fromkeys(listings, 0), derive)

    @property
    def _id(self) -> tuple[str, str]:
        return self.location, self.kind

    def _list(self, names: list[str], wanted: set[str]) -> dict[str, list[ObjectInfo]]:
        """The listings of the ``wanted`` folders (of ``names``, in key order): each run of neighbours
        is one listing that resumes at its first folder and stops after its last, so the live folders
        at the end of a prefix and the new ones after them cost one request, not one each."""
        listings: dict[str, list[ObjectInfo]] = {}
        for run in _runs(names, wanted):
            members, last = set(run), run[-1] + "/"
            begin = f"{self.prefix}{run[0]}/"
            for folder, infos in _by_folder(self.repo.list(self.prefix, start_after=begin), len(self.prefix)):
                if folder + "/" > last:
                    break
                if folder in members:
                    listings[folder] = infos
        return {name: listings.get(name, []) for name in names if name in wanted}

    def _generation(self) -> int:
        row = self.cache.execute("SELECT n FROM generation WHERE location = ?", (self.location,)).fetchone()
        return int(row[0]) if row else 0

    def _relisted_since(self, generation: int) -> bool:
        """Whether a full listing was made within ``RELIST_S``, and nothing was deleted here since."""
        row = self.cache.execute(
            "SELECT at, generation FROM relisted WHERE location = ? AND kind = ?", self._id
        ).fetchone()
        return row is not None and row[1] == generation and 0 <= clock() - row[0] < RELIST_S

    def _merge(
        self,
        names: list[str],
        listings: dict[str, list[ObjectInfo]],
        stored: dict[str, tuple[int, bytes, bytes]],
        stamps: dict[str, int],
        derive: Callable[[list[ObjectInfo]], T],
    ) -> dict[str, T]:
        """Cached values for folders not listed; for listed ones, the cached value while their objects
        are the same, else ``derive``. Stores what changed and forgets folders that are gone."""
        out: dict[str, T] = {}
        changed: list[tuple[str, str, str, int, bytes, bytes]] = []
        for name in names:
            hit = stored.get(name)
            listing = listings.get(name)
            if listing is None:
                assert hit is not None  # only cached folders are left unlisted
                out[name] = cast(T, marshal.loads(hit[2]))
                continue
            fingerprint = _fingerprint(listing)
            if hit is not None and hit[1] == fingerprint:
                out[name] = cast(T, marshal.loads(hit[2]))
                if hit[0] == stamps[name]:
                    continue
                data = hit[2]
            else:
                out[name] = derive(listing)
                data = marshal.dumps(cast(Any, out[name]))
            changed.append((*self._id, name, stamps[name], fingerprint, data))
        gone = [(*self._id, name) for name in stored.keys() - set(names)]
        self._write("INSERT OR REPLACE INTO folders VALUES (?, ?, ?, ?, ?, ?)", changed)
        self._write("DELETE FROM folders WHERE location = ? AND kind = ? AND folder = ?", gone)
        return out

    def _write(self, sql: str, rows: list[tuple[Any, ...]]) -> None:
        """Short transactions, after the listing: a slow listing never holds the file locked."""
        if rows:
            with self.cache:
                self.cache.executemany(sql, rows)


def _key_order(folder: str) -> str:
    """Folders in the order of their keys ("a-b/..." before "a/..."), as S3 lists them."""
    return folder + "/"


def _runs(names: list[str], wanted: set[str]) -> Iterator[list[str]]:
    run: list[str] = []
    for name in names:
        if name in wanted:
            run.append(name)
        elif run:
            yield run
            run = []
    if run:
        yield run


def _fingerprint(listing: list[ObjectInfo]) -> bytes:
    digest = hashlib.blake2b(digest_size=16)
    for info in listing:
        digest.update(f"{info.key}\0{info.size}\0{info.modified.timestamp()}\n".encode())
    return digest.digest()


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


def _by_folder(listing: Iterator[ObjectInfo], skip: int) -> Iterator[tuple[str, list[ObjectInfo]]]:
    """One listing of a whole prefix, split by folder."""
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
    return open_cache(
        cache_path("listing.sqlite"),
        SCHEMA,
        [
            "CREATE TABLE folders (location TEXT, kind TEXT, folder TEXT, stamp INTEGER, fingerprint BLOB, data BLOB,"
            " PRIMARY KEY (location, kind, folder))",
            "CREATE TABLE relisted (location TEXT, kind TEXT, at REAL, generation INTEGER,"
            " PRIMARY KEY (location, kind))",
            "CREATE TABLE generation (location TEXT PRIMARY KEY, n INTEGER)",
        ],
    )
