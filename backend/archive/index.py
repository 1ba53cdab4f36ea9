"""Where the WAL index lives: one small JSON per segment, ``walindex/<folder>/<segment>.json``.

The index is kept in every repository that holds the segment, so a host that has only the S3
repository (the local disk is gone) still knows commit times, restore points and destructive
transactions. It is built off the acknowledgement path: by the background ``pgdr wal-upload``
(wal-push queues each segment for it) and, for whatever is still missing, when a command needs the
timeline. A segment whose last record runs into a segment not yet archived is indexed again once
that segment arrives (``tail_complete``).
"""

from __future__ import annotations

import bisect
import contextlib
import json
import math
import sqlite3
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from backend.archive.fetch import fetch
from backend.archive.indexcache import FolderEntries, IndexCache, add_entry, copy_entry, entry_index, no_entries
from backend.archive.walfile import find_archived
from backend.config import Config
from backend.errors import PgdrError
from backend.postgres import program
from backend.progress import Progress, ProgressCallback, no_progress
from backend.repository import Repository
from backend.walindex import SegmentIndex, WalEvent, index_segment
from backend.walnames import SegmentName, wal_directory

if TYPE_CHECKING:
    from backend.catalog import WalColumns

INDEX_PREFIX = "walindex/"


def index_key(segment: str) -> str:
    return f"{INDEX_PREFIX}{wal_directory(segment)}/{segment}.json"


def read_indexes(repos: Iterable[Repository]) -> dict[str, SegmentIndex]:
    """Every stored segment index, the first repository's copy winning."""
    found: dict[str, SegmentIndex] = {}
    for repo in repos:
        for info in repo.list(INDEX_PREFIX):
            segment = info.key.rsplit("/", 1)[-1].removesuffix(".json")
            if segment in found:
                continue
            try:
                found[segment] = SegmentIndex.from_json(json.loads(repo.get(info.key)))
            except (ValueError, KeyError, TypeError):
                continue  # a damaged index entry is rebuilt below
    return found


class SegmentIndexes(Mapping[str, SegmentIndex]):
    """Segment name -> its index. Entries the local cache served stay columns per WAL folder until
    looked at: the timeline needs only their commit times, and a year of them as objects would cost
    seconds. A name is either in a folder's entries or among the ones indexed by this command."""

    def __init__(self) -> None:
        self._folders: dict[str, FolderEntries] = {}
        self._built: dict[str, SegmentIndex] = {}
        self._rows: dict[str, dict[str, int]] = {}
        #: Segments left unindexed because the command's indexing budget ran out (tried next time).
        self.pending = 0

    def _find(self, name: str) -> tuple[FolderEntries, int] | None:
        folder = wal_directory(name)
        entries = self._folders.get(folder)
        if entries is None:
            return None
        rows = self._rows.get(folder)
        if rows is None:
            rows = self._rows[folder] = {n: i for i, n in enumerate(entries[0])}
        row = rows.get(name)
        return None if row is None else (entries, row)

    def __getitem__(self, name: str) -> SegmentIndex:
        built = self._built.get(name)
        if built is not None:
            return built
        found = self._find(name)
        if found is None:
            raise KeyError(name)
        return entry_index(*found)

    def __iter__(self) -> Iterator[str]:
        for entries in self._folders.values():
            yield from entries[0]
        yield from self._built

    def __len__(self) -> int:
        return sum(len(entries[0]) for entries in self._folders.values()) + len(self._built)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and (name in self._built or self._find(name) is not None)

    def add(self, name: str, index: SegmentIndex) -> None:
        self._built[name] = index

    def add_folder(self, folder: str, entries: FolderEntries) -> None:
        self._folders[folder] = entries
        self._rows.pop(folder, None)

    def commit_columns(self, names: list[str]) -> tuple[list[bool], list[float], list[float]]:
        """For each segment (of one timeline, in order): whether it is indexed, its first and last
        commit (POSIX seconds, NaN when it has none or is not indexed). A run of names that is exactly
        a cached folder is answered by the folder's columns whole: the timeline asks for every archived
        segment."""
        indexed: list[bool] = []
        firsts: list[float] = []
        lasts: list[float] = []
        start = 0
        while start < len(names):
            folder = wal_directory(names[start])
            end = max(start + 1, bisect.bisect_right(names, folder + "\uffff", start))
            chunk = names[start:end]
            start = end
            entries = self._folders.get(folder)
            if entries is not None and entries[0] == chunk:
                indexed += [True] * len(chunk)
                firsts += entries[2]
                lasts += entries[3]
                continue
            for name in chunk:
                first, last = self._commits(name)
                indexed.append(first is not None)
                firsts.append(math.nan if first is None else first)
                lasts.append(math.nan if last is None else last)
        return indexed, firsts, lasts

    def _commits(self, name: str) -> tuple[float | None, float]:
        """(first, last) commit of an indexed segment, NaN where it has none; (None, NaN) if not indexed."""
        index = self._built.get(name)
        if index is not None:
            first, last = index.first_commit, index.last_commit
            return (first.timestamp() if first else math.nan), (last.timestamp() if last else math.nan)
        found = self._find(name)
        if found is None:
            return None, math.nan
        entries, row = found
        return entries[2][row], entries[3][row]

    def events(self) -> list[WalEvent]:
        """Every segment's events (restore points, destructive transactions), in LSN order."""
        found = [event for index in self._built.values() for event in index.events]
        for entries in self._folders.values():
            if any(entries[5]):
                found += [e for row, text in enumerate(entries[5]) if text for e in entry_index(entries, row).events]
        return sorted(found, key=lambda e: e.lsn)

    def entries(self, names: list[str], checksums: list[str]) -> FolderEntries:
        """What the cache keeps for one folder: the indexed ones of ``names``, in order."""
        out = no_entries()
        for name, checksum in zip(names, checksums, strict=True):
            built = self._built.get(name)
            if built is not None:
                add_entry(out, checksum, built)
            elif (found := self._find(name)) is not None:
                copy_entry(*found, out)
        return out


def ensure_indexes(
    cfg: Config,
    repos: list[Repository],
    columns: list[WalColumns],
    segment_size: int,
    *,
    on_progress: ProgressCallback = no_progress,
    persist: bool = True,
    budget_s: float | None = None,
) -> SegmentIndexes:
    """Index every archived segment (the catalog's ``columns``) that has no complete index yet.

    Entries come from the local cache when it knows the segment (same sha256), else from the
    repositories, else pg_waldump builds them. ``persist=False`` stores nothing in the repositories
    (a dry run changes nothing there); the local cache, pgdr's own, is kept either way.

    ``budget_s`` bounds the pg_waldump work: an archive nobody indexed yet (an S3-only setup, a new
    host reading an old bucket) can hold months of segments, hours of work, and an operator asking
    for the timeline must get an answer now. The newest segments go first (they decide the latest
    recoverable commit); the rest keep their archive times, are counted in ``pending``, and the next
    command goes on where this one stopped.
    """
    archived = _by_folder(columns)
    everything = set().union(*(column.names for column in columns))
    cache = IndexCache.open()
    location = repos[0].location() if repos else ""
    cached = cache.load(location) if cache is not None else {}
    indexes = SegmentIndexes()
    unresolved: dict[str, str] = {}
    dirty: set[str] = set()
    for folder, (names, sums) in archived.items():
        entries = cached.get(folder)
        if (
            entries is not None
            and entries[0] == names
            and entries[1] == sums
            and _settled(entries, everything, segment_size)
        ):
            indexes.add_folder(folder, entries)
            continue
        dirty.add(folder)
        kept = no_entries()
        rows = {n: i for i, n in enumerate(entries[0])} if entries is not None else {}
        for name, checksum in zip(names, sums, strict=True):
            row = rows.get(name)
            if (
                entries is not None
                and row is not None
                and entries[1][row] == checksum
                and _settled_at(entries, row, everything, segment_size)
            ):
                copy_entry(entries, row, kept)
            else:
                unresolved[name] = checksum
        indexes.add_folder(folder, kept)
    failures: list[tuple[str, str]] = []
    if unresolved:
        failed_lately = cache.recently_failed(location, within=RETRY_AFTER_S) if cache is not None else {}
        todo = _from_repositories(
            repos, indexes, unresolved, everything, segment_size=segment_size, failed_lately=failed_lately
        )
        todo.reverse()  # newest first
        deadline = None if budget_s is None else time.monotonic() + budget_s
        for done, name in enumerate(todo):
            if deadline is not None and time.monotonic() >= deadline:
                indexes.pending = len(todo) - done
                break
            on_progress(Progress("index", done, len(todo), f"indexing WAL {name}"))
            following = SegmentName.parse(name, segment_size).next().name
            try:
                index = index_from_archive(cfg, name, with_next=following in everything)
            except PgdrError:
                # Unreadable here: `pgdr verify` reports the segment, the timeline falls back to its archive
                # time, and it is tried again after RETRY_AFTER_S rather than on every command.
                failures.append((name, unresolved[name]))
                continue
            if persist:
                body = json.dumps(index.to_json(), sort_keys=True).encode()
                holders = _holders(columns, name)
                for repo in repos:
                    if repo.name in holders:
                        repo.put(index_key(name), body)
            indexes.add(name, index)
    if cache is not None:
        with contextlib.suppress(sqlite3.Error):
            cache.store(
                location,
                {folder: indexes.entries(*archived[folder]) for folder in dirty},
                gone=cached.keys() - archived.keys(),
            )
            cache.remember_failures(location, failures)
        cache.close()
    return indexes


def _from_repositories(
    repos: list[Repository],
    indexes: SegmentIndexes,
    unresolved: dict[str, str],
    everything: set[str],
    *,
    segment_size: int,
    failed_lately: dict[str, str],
) -> list[str]:
    """Add the repositories' complete entries of the ``unresolved`` segments; return the ones left to
    index (not those that failed lately with the same sha256)."""
    # Few new segments: read their entries one by one; many (a cold cache): list them all at once.
    stored = _read_some(repos, list(unresolved)) if len(unresolved) < BULK_READ else read_indexes(repos)
    todo = []
    for name in sorted(unresolved):
        found = stored.get(name)
        if found is not None and not _needs_index(found, name, everything, segment_size):
            indexes.add(name, found)
        elif failed_lately.get(name) != unresolved[name]:
            todo.append(name)
    return todo


#: Below this many segments missing from the local cache, their entries are read one by one.
BULK_READ = 2000
#: A segment that could not be indexed is tried again after this long.
RETRY_AFTER_S = 3600.0


def _by_folder(columns: list[WalColumns]) -> dict[str, tuple[list[str], list[str]]]:
    """The archived segments' names and sha256s per WAL folder, in order: slices of the columns, or
    for a folder several repositories hold, the union (the first repository's sha256 winning)."""
    folders: dict[str, tuple[list[str], list[str]]] = {}
    for column in columns:
        names, sums = column.names, column.checksums
        start = 0
        while start < len(names):
            folder = wal_directory(names[start])
            end = bisect.bisect_right(names, folder + "\uffff", start)
            part = names[start:end], sums[start:end]
            start = end
            seen = folders.get(folder)
            if seen is None:
                folders[folder] = part
            elif seen != part:
                merged = dict(zip(*part, strict=True)) | dict(zip(*seen, strict=True))
                ordered = sorted(merged)
                folders[folder] = ordered, [merged[n] for n in ordered]
    return folders


def _settled(entries: FolderEntries, everything: set[str], segment_size: int) -> bool:
    """No cached entry in the folder waits for the segment after it (now archived) to be complete."""
    return all(entries[4]) or all(_settled_at(entries, row, everything, segment_size) for row in range(len(entries[0])))


def _settled_at(entries: FolderEntries, row: int, everything: set[str], segment_size: int) -> bool:
    return entries[4][row] or SegmentName.parse(entries[0][row], segment_size).next().name not in everything


def _holders(columns: list[WalColumns], name: str) -> set[str]:
    found = set()
    for column in columns:
        at = bisect.bisect_left(column.names, name)
        if at < len(column.names) and column.names[at] == name:
            found.add(column.repository)
    return found


def _read_some(repos: list[Repository], names: list[str]) -> dict[str, SegmentIndex]:
    found: dict[str, SegmentIndex] = {}
    for name in names:
        for repo in repos:
            try:
                found[name] = SegmentIndex.from_json(json.loads(repo.get(index_key(name))))
                break
            except PgdrError:
                continue
            except (ValueError, KeyError, TypeError):
                break  # a damaged entry: indexed again
    return found


def _needs_index(index: SegmentIndex, name: str, everything: set[str], segment_size: int) -> bool:
    return not index.tail_complete and SegmentName.parse(name, segment_size).next().name in everything


def index_from_archive(cfg: Config, name: str, *, with_next: bool) -> SegmentIndex:
    """Fetch the segment (and, ``with_next``, the one after it, for a record crossing the boundary) and
    run pg_waldump."""
    with tempfile.TemporaryDirectory(prefix="pgdr-index-") as folder:
        # The same verified fetch restore_command uses (sha256 checked, another repository's copy on damage).
        fetch(cfg, name, Path(folder) / name, prefetch=False)
        if with_next:
            following = SegmentName.parse(name, _segment_size(Path(folder) / name)).next().name
            fetch(cfg, following, Path(folder) / following, prefetch=False)
        return index_segment(Path(folder) / name, program(cfg, "pg_waldump"))


def _segment_size(path: Path) -> int:
    return path.stat().st_size


def index_one(cfg: Config, repos: list[Repository], name: str, segment_size: int) -> None:
    """Index a newly archived segment, and re-index the one before it if its tail waited for this one."""
    previous = SegmentName.parse(name, segment_size)
    candidates = [name]
    if previous.number > 0:
        before = SegmentName(previous.timeline, previous.number - 1, segment_size).name
        stored = _stored_index(repos, before)
        if stored is not None and not stored.tail_complete:
            candidates.insert(0, before)
    holders = {
        segment: [r.name for r in repos if find_archived(r, segment)]
        for segment in {*candidates, *(SegmentName.parse(c, segment_size).next().name for c in candidates)}
    }
    for segment in candidates:
        if not holders[segment]:
            continue
        following = SegmentName.parse(segment, segment_size).next().name
        index = index_from_archive(cfg, segment, with_next=bool(holders[following]))
        body = json.dumps(index.to_json(), sort_keys=True).encode()
        for repo in repos:
            if repo.name in holders[segment]:
                repo.put(index_key(segment), body)


def _stored_index(repos: list[Repository], segment: str) -> SegmentIndex | None:
    for repo in repos:
        try:
            return SegmentIndex.from_json(json.loads(repo.get(index_key(segment))))
        except PgdrError:
            continue
        except (ValueError, KeyError, TypeError):
            return None
    return None
