"""Where the WAL index lives: one small JSON per segment, ``walindex/<folder>/<segment>.json``.

The index is kept in every repository that holds the segment, so a host that has only the S3
repository (the local disk is gone) still knows commit times, restore points and destructive
transactions. It is built off the acknowledgement path: by the background ``pgdr wal-upload``
(wal-push queues each segment for it) and, for whatever is still missing, when a command needs the
timeline. A segment whose last record runs into a segment not yet archived is indexed again once
that segment arrives (``tail_complete``). An entry written before pgdr listed each segment's ended
transactions (``SegmentIndex.xids`` None) is used as it is, and read again by the daemon's background
indexing (``index_archive``), newest first: until then its events keep the labels of the pgdr that
wrote it, and a ``--xid`` target in it needs ``--backup``. Commands never wait for that: a restore
plan re-reading a year of WAL would keep the operator waiting for hours.

A segment no copy of which pg_waldump can read (damaged, truncated, not WAL at all) has no entry: this
host's cache (``indexcache``) remembers the copies it tried, so commands do not fetch it again until
one of them changes, and the timeline counts it as ``unreadable``; when no copy even matches its
checksum, it is a gap recovery cannot cross.
"""

from __future__ import annotations

import bisect
import contextlib
import json
import math
import sqlite3
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from backend.archive.indexcache import (
    CopyRows,
    Failures,
    FolderEntries,
    IndexCache,
    XidRow,
    add_entry,
    copy_entry,
    entry_events,
    entry_index,
    entry_xids,
    no_entries,
    xid_row,
)
from backend.archive.segmentreader import ReadAhead, SegmentReader, UnreadableSegment
from backend.config import Config
from backend.errors import ConfigError, PgdrError
from backend.listcache import folder_contents
from backend.postgres import program
from backend.progress import Progress, ProgressCallback, no_progress
from backend.repository import ObjectInfo, Repository, open_repositories
from backend.walindex import (
    Lineage,
    SegmentIndex,
    WaldumpUnavailable,
    WalEvents,
    WalIndexError,
    XidFate,
    XidSightings,
    each_once,
    index_segment,
    segment_timeline,
)
from backend.walnames import SegmentName, wal_directory

if TYPE_CHECKING:
    from backend.catalog import WalColumns

INDEX_PREFIX = "walindex/"


def index_key(segment: str) -> str:
    return f"{INDEX_PREFIX}{wal_directory(segment)}/{segment}.json"


def _stored_entries(repos: Iterable[Repository], unresolved: set[str], failed: set[str]) -> dict[str, SegmentIndex]:
    """The repositories' entries of the ``unresolved`` segments and of those that ``failed`` here,
    the first repository's copy winning.

    Which entries exist comes from a listing of ``walindex/`` kept by the listing cache, so only
    entries that exist are read: a segment that failed here is looked for on every command (another
    host may read it), and a request each would add up. From a remote store a few new segments are
    still read one by one, cheaper than listing an index of a year.
    """
    found: dict[str, SegmentIndex] = {}
    for repo in repos:
        wanted = (unresolved | failed) - found.keys()
        if failed or repo.local_root() is not None or len(unresolved) >= BULK_READ:
            present = folder_contents(repo, INDEX_PREFIX, _entry_names, kind="walindex", live=_newest_folders)
            candidates: Iterable[str] = [name for names in present.values() for name in names if name in wanted]
        else:
            candidates = wanted
        for name in candidates:
            try:
                found[name] = SegmentIndex.from_json(json.loads(repo.get(index_key(name))))
            except PgdrError:
                continue  # not there (or removed since the listing)
            except (ValueError, KeyError, TypeError):
                continue  # a damaged entry: another repository's copy, or indexed again
    return found


#: From a remote store, up to this many new segments' entries are read one by one, not listed.
BULK_READ = 2000


def _entry_names(listing: list[ObjectInfo]) -> list[str]:
    return [info.key.rsplit("/", 1)[-1].removesuffix(".json") for info in listing if info.key.endswith(".json")]


def _newest_folders(folders: list[str]) -> set[str]:
    """The newest two folders of each timeline: where entries are being written now."""
    by_timeline: dict[str, list[str]] = {}
    for name in folders:
        by_timeline.setdefault(name[:8], []).append(name)
    return {name for names in by_timeline.values() for name in sorted(names)[-2:]}


class SegmentIndexes(Mapping[str, SegmentIndex]):
    """Segment name -> its index. Entries the local cache served stay columns per WAL folder until
    looked at: the timeline needs only their commit times, and a year of them as objects would cost
    seconds. A name is either in a folder's entries or among the ones indexed by this command."""

    def __init__(self) -> None:
        self._folders: dict[str, FolderEntries] = {}
        self._built: dict[str, SegmentIndex] = {}
        self._rows: dict[str, dict[str, int]] = {}
        #: The WAL folders of the segments in ``_built``.
        self.built_folders: set[str] = set()
        #: Segments not indexed yet: the command's indexing budget ran out, or they could not be read
        #: for a reason of the moment. Tried again by a later command.
        self.pending = 0
        #: Segments no stored copy of which pg_waldump reads; tried again when a copy changes.
        self.unreadable_names: set[str] = set()
        #: Those of them no copy of which matches its checksum: recovery cannot replay them, so the
        #: timeline counts them as missing (a gap). The others keep their archive times.
        self.damaged_names: set[str] = set()
        #: Segments this command ran pg_waldump on.
        self.indexed = 0

    @property
    def unreadable(self) -> int:
        return len(self.unreadable_names)

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
        self.built_folders.add(wal_directory(name))

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
            if not (entries and entries[0]) and folder not in self.built_folders:
                indexed += [False] * len(chunk)
                firsts += [math.nan] * len(chunk)
                lasts += [math.nan] * len(chunk)
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

    def events(self, lineage: Lineage) -> WalEvents:
        """Every segment's events (restore points, destructive transactions), in LSN order, each record
        once though both copies of a switch segment hold it (``lineage``: the archive's timelines), and
        where any transaction ended (``find_xid``)."""
        found = [event for index in self._built.values() for event in index.events]
        for entries in self._folders.values():
            found += [
                event
                for name, rows in zip(entries[0], entries[5], strict=True)
                if rows
                for event in entry_events(rows, segment_timeline(name))
            ]
        lists = [(list(self._built), [xid_row(index.xids) for index in self._built.values()])]
        lists += [(entries[0], entries[6]) for entries in self._folders.values()]
        xids = _XidLists(lists, set(self.unreadable_names), self.pending)
        return WalEvents(each_once(found, lineage), xids.find)

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


@dataclass
class _XidLists:
    """What ``find_xid`` reads, kept with a view's events: the segments' names and packed lists of
    ended transactions (``columns``), not the rest of their entries, which a console holding the view
    would otherwise keep in memory for a year of segments."""

    columns: list[tuple[list[str], list[XidRow]]]
    unreadable: set[str]
    pending: int

    def find(self, xid: int) -> XidSightings:
        """Every segment ``xid`` (32 bits, as the WAL records it) ended in: a segment's list is unpacked
        only when its bounds hold ``xid``."""
        ends: list[tuple[str, XidFate]] = []
        unlisted = set(self.unreadable)
        newest: int | None = None
        for names, rows in self.columns:
            for name, row in zip(names, rows, strict=True):
                runs = entry_xids(row)
                if runs is None:
                    unlisted.add(name)
                    continue
                if runs.packed:
                    newest = runs.high if newest is None else max(newest, runs.high)
                fate = runs.fate(xid)
                if fate is not None:
                    ends.append((name, fate))
        return XidSightings(sorted(ends), sorted(unlisted), self.pending, newest)


def ensure_indexes(
    cfg: Config,
    repos: list[Repository],
    columns: list[WalColumns],
    segment_size: int,
    *,
    on_progress: ProgressCallback = no_progress,
    persist: bool = True,
    budget_s: float | None = None,
    cancel: threading.Event | None = None,
    upgrade: bool = False,
) -> SegmentIndexes:
    """Index every archived segment (the catalog's ``columns``) that has no complete index yet.

    Entries come from the local cache when it knows the segment (same sha256), else from the
    repositories, else pg_waldump builds them. ``persist=False`` stores nothing in the repositories
    (a dry run changes nothing there); the local cache, pgdr's own, is kept either way.

    ``budget_s`` bounds the pg_waldump work: an archive nobody indexed yet (an S3-only setup, a new
    host reading an old bucket) can hold months of segments, hours of work, and an operator asking
    for the timeline must get an answer now. The newest segments go first (they decide the latest
    recoverable commit); the rest keep their archive times, are counted in ``pending``, and the next
    command goes on where this one stopped. ``cancel`` stops the work the same way (a daemon
    stopping).

    A segment whose copies are not readable WAL is remembered as ``unreadable`` with those copies, and
    not fetched again until one of them changes: otherwise every command would pay for it again.

    ``upgrade`` also reads again the segments whose entries an older pgdr wrote (no list of ended
    transactions), within the same budget; their old entries serve until then.
    """
    archived = _by_folder(columns)
    everything = set().union(*(column.names for column in columns))
    cache = IndexCache.open()
    location = repos[0].location() if repos else ""
    cached = cache.load(location) if cache is not None else {}
    remembered = cache.failures(location) if cache is not None else {}
    failures, forgotten = _standing_failures(archived, remembered, time.time())
    unreadable = {name for failed in failures.values() for name, retry in failed.items() if retry >= NOT_WAL}
    # The segment after an unreadable one will never complete its predecessor's last record.
    readable = everything - unreadable if unreadable else everything
    indexes = SegmentIndexes()
    unresolved: dict[str, str] = {}
    outdated: list[str] = []
    trimmed: set[str] = set()
    for folder, part in archived.items():
        entries = cached.get(folder)
        if (
            entries is not None
            and entries[0] == part.names
            and entries[1] == part.checksums
            and _settled(entries, readable, segment_size)
            and not (upgrade and None in entries[6])
        ):
            indexes.add_folder(folder, entries)
            continue
        kept = no_entries()
        failed = failures.get(folder, {})
        if entries is not None or len(failed) != len(part.names):  # else not one of them could be indexed
            rows = {n: i for i, n in enumerate(entries[0])} if entries is not None else {}
            for name, checksum in zip(part.names, part.checksums, strict=True):
                row = rows.get(name)
                if (
                    entries is not None
                    and row is not None
                    and entries[1][row] == checksum
                    and _settled_at(entries, row, readable, segment_size)
                ):
                    if upgrade and entries[6][row] is None and name not in failed:
                        indexes.add(name, entry_index(entries, row))  # serves until read again
                        outdated.append(name)
                    else:
                        copy_entry(entries, row, kept)
                elif name not in failed:
                    unresolved[name] = checksum
            if entries is not None and len(kept[0]) != len(entries[0]):
                trimmed.add(folder)
        indexes.add_folder(folder, kept)
    todo: list[str] = []
    if unresolved or failures:
        todo, recovered = _from_repositories(
            repos, indexes, unresolved, failures, readable, segment_size=segment_size, upgrade=upgrade
        )
        for name in recovered:  # another host could read it, and stored its entry
            folder = wal_directory(name)
            del failures[folder][name]
            forgotten.add(folder)
    for failed in failures.values():
        stuck = {name for name, retry in failed.items() if retry >= NOT_WAL}
        indexes.unreadable_names |= stuck
        indexes.damaged_names |= {name for name in stuck if failed[name] == DAMAGED}
        indexes.pending += len(failed) - len(stuck)  # failed lately for a reason of the moment: tried again later
    tried: dict[str, float] = {}
    if outdated:
        todo = sorted([*todo, *outdated])
    if todo:
        todo.reverse()  # newest first
        deadline = None if budget_s is None else time.monotonic() + budget_s
        with tempfile.TemporaryDirectory(prefix="pgdr-index-") as scratch:
            tried = _index_archived(
                cfg,
                SegmentReader(repos, Path(scratch)),
                columns,
                todo,
                indexes,
                readable=readable,
                segment_size=segment_size,
                persist=persist,
                deadline=deadline,
                cancel=cancel,
                on_progress=on_progress,
            )
    if cache is not None:
        for name, retry in tried.items():
            failures.setdefault(wal_directory(name), {})[name] = retry
        changed = forgotten | {wal_directory(name) for name in tried}
        with contextlib.suppress(sqlite3.Error):
            cache.store(
                location,
                {
                    folder: indexes.entries(archived[folder].names, archived[folder].checksums)
                    for folder in trimmed | indexes.built_folders
                },
                {folder: _failures(archived[folder], failures.get(folder, {})) for folder in changed},
                gone=(cached.keys() | remembered.keys()) - archived.keys(),
            )
        cache.close()
    return indexes


def index_archive(
    cfg: Config, *, budget_s: float | None = None, cancel: threading.Event | None = None
) -> SegmentIndexes:
    """Index what the archive holds and nothing indexed yet: work for the daemon.

    wal-push queues each segment for the background indexer only where there is a local repository
    to queue it in: an archive kept only in S3 would otherwise wait for an operator's ``pgdr
    timeline`` to index it, and make that command pay.
    """
    from backend.catalog import read_catalog

    repos = open_repositories(cfg)
    catalog = read_catalog(repos)
    return ensure_indexes(
        cfg, repos, catalog.columns, catalog.segment_size, budget_s=budget_s, cancel=cancel, upgrade=True
    )


#: A segment that could not be indexed for a reason of the moment (a repository out of reach, an
#: encrypted copy without the key) is tried again after this long.
RETRY_AFTER_S = 3600.0
#: Remembered failures not tried again until a copy changes: no copy matches its checksum ...
DAMAGED = math.inf
#: ... or the copies are intact, yet pg_waldump cannot read them.
NOT_WAL = 1e300


def _index_archived(
    cfg: Config,
    reader: SegmentReader,
    columns: list[WalColumns],
    todo: list[str],
    indexes: SegmentIndexes,
    *,
    readable: set[str],
    segment_size: int,
    persist: bool,
    deadline: float | None,
    cancel: threading.Event | None,
    on_progress: ProgressCallback,
) -> dict[str, float]:
    """Run pg_waldump on the ``todo`` segments in order until ``deadline``; return the ones that could
    not be indexed, with when to try each again (infinity: not while its copies stay the same)."""
    tried: dict[str, float] = {}
    waldump = ""
    holders, sizes = _stored(columns, todo)
    with ReadAhead(reader, todo, holders, sizes) as ahead:
        for done, name in enumerate(todo):
            if (deadline is not None and time.monotonic() >= deadline) or (cancel is not None and cancel.is_set()):
                indexes.pending += len(todo) - done
                break
            on_progress(Progress("index", done, len(todo), f"indexing WAL {name}"))
            following = ""
            try:
                path = ahead.read(done)
                following = SegmentName.parse(name, segment_size).next().name
                if following in readable and following not in tried:
                    with contextlib.suppress(PgdrError):  # then the last record's end is unknown, for now
                        reader.read(following, _holders(columns, following))
                waldump = waldump or program(cfg, "pg_waldump")
                index = index_segment(path, waldump)
            except (ConfigError, WaldumpUnavailable):
                indexes.pending += len(todo) - done  # this host cannot run pg_waldump: no segment is at fault
                break
            except UnreadableSegment:
                # No copy matches its checksum: wal-fetch refuses every one, and recovery ends there.
                # `pgdr verify` names the copies; the timeline shows a gap.
                tried[name] = DAMAGED
                indexes.unreadable_names.add(name)
                indexes.damaged_names.add(name)
                continue
            except WalIndexError:
                # Intact as archived, yet pg_waldump cannot read it: kept as archived, with its archive time.
                tried[name] = NOT_WAL
                indexes.unreadable_names.add(name)
                continue
            except PgdrError:
                tried[name] = time.time() + RETRY_AFTER_S
                indexes.pending += 1
                continue
            finally:
                # Newest first: the segment after this one is needed no more, this one only by the next.
                needed = bool(following) and done + 1 < len(todo) and _precedes(todo[done + 1], name, segment_size)
                reader.drop(following, *(() if needed else (name,)))
            if persist:
                body = json.dumps(index.to_json(), sort_keys=True).encode()
                for repo in reader.repos:
                    if repo.name in holders[name]:
                        repo.put(index_key(name), body)
            indexes.add(name, index)
            indexes.indexed += 1
    return tried


def _precedes(earlier: str, name: str, segment_size: int) -> bool:
    return SegmentName.parse(earlier, segment_size).next().name == name


def _stored(columns: list[WalColumns], names: list[str]) -> tuple[dict[str, set[str]], dict[str, int]]:
    """The repositories holding each of ``names``, and its largest stored size: one pass over the
    columns, not a search per segment."""
    wanted = set(names)
    holders: dict[str, set[str]] = {}
    sizes: dict[str, int] = {}
    for column in columns:
        for name, size in zip(column.names, column.sizes, strict=True):
            if name in wanted:
                holders.setdefault(name, set()).add(column.repository)
                sizes[name] = max(size, sizes.get(name, 0))
    return holders, sizes


def _from_repositories(
    repos: list[Repository],
    indexes: SegmentIndexes,
    unresolved: dict[str, str],
    failures: dict[str, dict[str, float]],
    readable: set[str],
    *,
    segment_size: int,
    upgrade: bool,
) -> tuple[list[str], set[str]]:
    """Add the repositories' entries of the ``unresolved`` segments (complete ones) and of those that
    failed here (any: pg_waldump elsewhere read more than nothing); return the unresolved ones left
    to index (with ``upgrade``, also those an older pgdr indexed), in order, and the failed ones found."""
    failed = {name for names in failures.values() for name in names}
    stored = _stored_entries(repos, set(unresolved), failed)
    todo = []
    for name in sorted(unresolved):
        found = stored.get(name)
        if found is not None and not _needs_index(found, name, readable, segment_size):
            indexes.add(name, found)
            if upgrade and found.xids is None:
                todo.append(name)
        else:
            todo.append(name)
    recovered = stored.keys() & failed
    for name in recovered:
        indexes.add(name, stored[name])
    return todo, recovered


@dataclass
class _Archived:
    """One WAL folder's archived segments: names and sha256s in order (of several repositories, the
    union, the first one's sha256 winning), and the rows of each repository's column holding them."""

    names: list[str]
    checksums: list[str]
    spans: list[tuple[WalColumns, int, int]] = field(default_factory=list)


def _by_folder(columns: list[WalColumns]) -> dict[str, _Archived]:
    """The archived segments per WAL folder: slices of the columns, not a row per segment."""
    folders: dict[str, _Archived] = {}
    for column in columns:
        names, sums = column.names, column.checksums
        start = 0
        while start < len(names):
            folder = wal_directory(names[start])
            end = bisect.bisect_right(names, folder + "\uffff", start)
            part = names[start:end], sums[start:end]
            seen = folders.get(folder)
            if seen is None:
                seen = folders[folder] = _Archived(*part)
            elif (seen.names, seen.checksums) != part:
                merged = dict(zip(*part, strict=True)) | dict(zip(seen.names, seen.checksums, strict=True))
                seen.names = sorted(merged)
                seen.checksums = [merged[n] for n in seen.names]
            seen.spans.append((column, start, end))
            start = end
    return folders


def _copy_rows(part: _Archived, wanted: list[str]) -> CopyRows:
    """The stored copies of the ``wanted`` segments of one folder (sorted names), as the catalog lists
    them: a repository's whole slice when every segment it holds there is wanted (a folder nobody
    could index), else the rows picked one by one."""
    rows: CopyRows = ([], [], [], [], [])
    segments, repositories, sums, sizes, times = rows
    keep: set[str] | None = None
    for column, start, end in part.spans:
        if column.names[start:end] == wanted:
            picked: range | list[int] = range(start, end)
            segments += wanted
            sums += column.checksums[start:end]
            sizes += column.sizes[start:end]
            times += column.archived_at[start:end]
        else:
            keep = set(wanted) if keep is None else keep
            picked = [row for row in range(start, end) if column.names[row] in keep]
            segments += [column.names[row] for row in picked]
            sums += [column.checksums[row] for row in picked]
            sizes += [column.sizes[row] for row in picked]
            times += [column.archived_at[row] for row in picked]
        repositories += [column.repository] * len(picked)
    return rows


def _standing_failures(
    archived: dict[str, _Archived], remembered: dict[str, Failures], now: float
) -> tuple[dict[str, dict[str, float]], set[str]]:
    """Per folder, the remembered failures that still hold (same copies, not yet due for another
    try: segment -> when), and the folders where some no longer do."""
    standing: dict[str, dict[str, float]] = {}
    changed: set[str] = set()
    for folder, (names, retries, tried) in remembered.items():
        part = archived.get(folder)
        if part is None:
            continue
        current = _copy_rows(part, names)
        if current == tried:
            kept = {name: retry for name, retry in zip(names, retries, strict=True) if retry > now}
        else:
            before, after = _per_segment(tried), _per_segment(current)
            kept = {
                name: retry
                for name, retry in zip(names, retries, strict=True)
                if retry > now and before[name] == after.get(name)
            }
        if len(kept) != len(names):
            changed.add(folder)
        if kept:
            standing[folder] = kept
    return standing, changed


def _per_segment(rows: CopyRows) -> dict[str, list[tuple[str, str, int, float]]]:
    found: dict[str, list[tuple[str, str, int, float]]] = {}
    for segment, repository, sha, size, archived_at in zip(*rows, strict=True):
        found.setdefault(segment, []).append((repository, sha, size, archived_at))
    return found


def _failures(part: _Archived, retries: dict[str, float]) -> Failures:
    names = sorted(retries)
    return names, [retries[name] for name in names], _copy_rows(part, names)


def _settled(entries: FolderEntries, readable: set[str], segment_size: int) -> bool:
    """No cached entry in the folder waits for the segment after it (now archived) to be complete."""
    return all(entries[4]) or all(_settled_at(entries, row, readable, segment_size) for row in range(len(entries[0])))


def _settled_at(entries: FolderEntries, row: int, readable: set[str], segment_size: int) -> bool:
    return entries[4][row] or SegmentName.parse(entries[0][row], segment_size).next().name not in readable


def _holders(columns: list[WalColumns], name: str) -> set[str]:
    found = set()
    for column in columns:
        at = bisect.bisect_left(column.names, name)
        if at < len(column.names) and column.names[at] == name:
            found.add(column.repository)
    return found


def _needs_index(index: SegmentIndex, name: str, readable: set[str], segment_size: int) -> bool:
    return not index.tail_complete and SegmentName.parse(name, segment_size).next().name in readable


def index_one(cfg: Config, repos: list[Repository], name: str, segment_size: int) -> None:
    """Index a newly archived segment, and re-index the one before it if its tail waited for this one."""
    segment = SegmentName.parse(name, segment_size)
    candidates = [name]
    if segment.number > 0:
        before = SegmentName(segment.timeline, segment.number - 1, segment_size).name
        stored = _stored_index(repos, before)
        if stored is not None and not stored.tail_complete:
            candidates.append(before)  # after the new one, which it then finds already read
    with tempfile.TemporaryDirectory(prefix="pgdr-index-") as folder:
        reader = SegmentReader(repos, Path(folder))
        for candidate in candidates:
            holders = [repo for repo in repos if reader.stored(repo, candidate)]
            if not holders:
                continue
            path = reader.read(candidate)
            with contextlib.suppress(PgdrError):  # not archived yet: the tail waits for it
                reader.read(SegmentName.parse(candidate, segment_size).next().name)
            body = json.dumps(index_segment(path, program(cfg, "pg_waldump")).to_json(), sort_keys=True).encode()
            for repo in holders:
                repo.put(index_key(candidate), body)


def _stored_index(repos: list[Repository], segment: str) -> SegmentIndex | None:
    for repo in repos:
        try:
            return SegmentIndex.from_json(json.loads(repo.get(index_key(segment))))
        except PgdrError:
            continue
        except (ValueError, KeyError, TypeError):
            return None
    return None
