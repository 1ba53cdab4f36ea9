"""A local cache of the WAL index, so a year of history opens in well under a second.

The repository stays the source of truth (``walindex/`` objects); this SQLite file in the state dir
only remembers what was already read, keyed by repository location and segment name, with each
segment's sha256, so a different segment under the same name (another cluster reusing a path) is
never mistaken for a cached one. Only what the timeline and the restore plan need is kept: commit
times, whether the tail was complete, the events (rare) as plain tuples, and the packed list of the
transactions that ended in the segment (``XidRuns``: a few bytes each, unpacked only by a lookup). An
event's timeline is its segment's, read from the name: not kept per event, so caches written before
events had one serve as they are.

Entries are stored as one row per WAL folder (``wal_directory``: a timeline's 4 GiB of WAL), its
segments as columns: a year of WAL is 105,000 segments but 410 folders, and reading 410 blobs and
comparing each folder's names and checksums as two lists costs a fraction of 105,000 rows and
lookups.

It also remembers, per folder, the segments that could not be indexed, with the stored copies that
were tried: a segment that is not readable WAL (damaged, truncated, written by something else) would
otherwise be fetched and rejected again by every command, and a year of them costs far more than an
operator waits. Such a segment is tried again only when one of its copies changes (another sha256,
size or archive time: replaced, re-archived); one that failed for a reason of the moment (a
repository out of reach) after ``index.RETRY_AFTER_S``. Deleting the file loses nothing.
"""

from __future__ import annotations

import marshal
import math
import sqlite3
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from backend.cachefile import cache_path, open_cache
from backend.walindex import EventKind, SegmentIndex, TimeSource, WalEvent, XidRuns, segment_timeline

SCHEMA = 6  # 6: the ended transactions of each segment, and the event kinds that tell rewrites apart

#: One WAL event as cached: kind, LSN, time (microseconds since the epoch, UTC) or None, xid, name,
#: relations, oids, time source. Tuples of plain values: a year's thousands of events load with the
#: folder's blob (marshal), where JSON text cost a tenth of the console's open to decode.
EventRow = tuple[
    EventKind, int, int | None, int | None, str | None, tuple[str, ...], tuple[int, ...], TimeSource | None
]
#: The transactions that ended in one segment as cached: ``XidRuns``' low, high and packed runs; None
#: for an entry written before pgdr listed them.
XidRow = tuple[int, int, bytes] | None
#: One folder's cached entries as columns, sorted by name: segments, sha256s, first and last commit
#: (POSIX seconds, NaN when none), tail complete, events (an empty tuple when none), ended transactions.
FolderEntries = tuple[
    list[str], list[str], list[float], list[float], list[bool], list[tuple[EventRow, ...]], list[XidRow]
]

#: The stored copies of some segments as the catalog lists them, one row per copy: segment,
#: repository, sha256 in its key, stored size, archived at (POSIX seconds). A copy replaced or
#: archived again differs in one of them.
CopyRows = tuple[list[str], list[str], list[str], list[int], list[float]]
#: One folder's segments that could not be indexed, sorted: their names, when to try each again
#: (POSIX seconds; infinity while its copies stay as they are), and the copies that were tried.
Failures = tuple[list[str], list[float], CopyRows]


def no_entries() -> FolderEntries:
    return [], [], [], [], [], [], []


class IndexCache:
    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    @classmethod
    def open(cls) -> IndexCache | None:
        """The cache, or None where the state dir cannot hold it."""
        db = open_cache(
            cache_path("walindex.sqlite"),
            SCHEMA,
            [
                "CREATE TABLE folders (location TEXT, folder TEXT, entries BLOB, PRIMARY KEY (location, folder))",
                "CREATE TABLE failures (location TEXT, folder TEXT, entries BLOB, PRIMARY KEY (location, folder))",
            ],
        )
        return cls(db) if db is not None else None

    def load(self, location: str) -> dict[str, FolderEntries]:
        rows = self.db.execute("SELECT folder, entries FROM folders WHERE location = ?", (location,))
        return {folder: cast(FolderEntries, marshal.loads(blob)) for folder, blob in rows}

    def failures(self, location: str) -> dict[str, Failures]:
        rows = self.db.execute("SELECT folder, entries FROM failures WHERE location = ?", (location,))
        return {folder: cast(Failures, marshal.loads(blob)) for folder, blob in rows}

    def store(
        self,
        location: str,
        folders: dict[str, FolderEntries],
        failures: dict[str, Failures],
        gone: Iterable[str] = (),
    ) -> None:
        """Replace the entries and failures of the folders given (a folder without failures loses its
        row); forget the folders ``gone`` (no longer archived)."""
        with self.db:
            self.db.executemany(
                "INSERT OR REPLACE INTO folders VALUES (?, ?, ?)",
                [(location, folder, marshal.dumps(cast(Any, entries))) for folder, entries in folders.items()],
            )
            self.db.executemany(
                "INSERT OR REPLACE INTO failures VALUES (?, ?, ?)",
                [(location, folder, marshal.dumps(failed)) for folder, failed in failures.items() if failed[0]],
            )
            self.db.executemany(
                "DELETE FROM failures WHERE location = ? AND folder = ?",
                [(location, folder) for folder, failed in failures.items() if not failed[0]],
            )
            for folder in gone:
                self.db.execute("DELETE FROM folders WHERE location = ? AND folder = ?", (location, folder))
                self.db.execute("DELETE FROM failures WHERE location = ? AND folder = ?", (location, folder))

    def close(self) -> None:
        self.db.close()


def add_entry(entries: FolderEntries, checksum: str, index: SegmentIndex) -> None:
    """Append ``index`` (callers append in name order)."""
    names, checksums, firsts, lasts, tails, events, xids = entries
    names.append(index.segment)
    checksums.append(checksum)
    firsts.append(index.first_commit.timestamp() if index.first_commit else math.nan)
    lasts.append(index.last_commit.timestamp() if index.last_commit else math.nan)
    tails.append(index.tail_complete)
    events.append(tuple(_event_row(e) for e in index.events))
    xids.append(xid_row(index.xids))


def copy_entry(source: FolderEntries, row: int, target: FolderEntries) -> None:
    """Append row ``row`` of ``source``."""
    for column, into in zip(cast(tuple[list[Any], ...], source), cast(tuple[list[Any], ...], target), strict=True):
        into.append(column[row])


def entry_index(entries: FolderEntries, row: int) -> SegmentIndex:
    """The index of one cached segment: made only for a segment someone looks at."""
    names, _checksums, firsts, lasts, tails, events, xids = entries
    return SegmentIndex(
        segment=names[row],
        first_commit=_time(firsts[row]),
        last_commit=_time(lasts[row]),
        tail_complete=tails[row],
        events=entry_events(events[row], segment_timeline(names[row])),
        xids=entry_xids(xids[row]),
    )


def entry_xids(row: XidRow) -> XidRuns | None:
    """One cached segment's ended transactions (its ``xids`` column)."""
    return None if row is None else XidRuns(*row)


def xid_row(runs: XidRuns | None) -> XidRow:
    """``runs`` as the ``xids`` column keeps them."""
    return None if runs is None else (runs.low, runs.high, runs.packed)


def entry_events(rows: tuple[EventRow, ...], timeline: int) -> list[WalEvent]:
    """One cached segment's events (its ``events`` column), on the segment's ``timeline``: the
    timeline's events need nothing else."""
    return [
        WalEvent(
            kind=kind,
            lsn=lsn,
            time=None if micros is None else _EPOCH + timedelta(microseconds=micros),
            xid=xid,
            name=name,
            relations=list(relations),
            oids=list(oids),
            time_source=source,
            timeline=timeline,
        )
        for kind, lsn, micros, xid, name, relations, oids, source in rows
    ]


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _event_row(event: WalEvent) -> EventRow:
    micros = None if event.time is None else (event.time - _EPOCH) // timedelta(microseconds=1)
    relations, oids = tuple(event.relations), tuple(event.oids)
    return (event.kind, event.lsn, micros, event.xid, event.name, relations, oids, event.time_source)


def _time(value: float) -> datetime | None:
    return None if math.isnan(value) else datetime.fromtimestamp(value, UTC)
