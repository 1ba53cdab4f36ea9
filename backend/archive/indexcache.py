"""A local cache of the WAL index, so a year of history opens in well under a second.

The repository stays the source of truth (``walindex/`` objects); this SQLite file in the state dir
only remembers what was already read, keyed by repository location and segment name, with each
segment's sha256, so a different segment under the same name (another cluster reusing a path) is
never mistaken for a cached one. Only what the timeline needs is kept: commit times, whether the
tail was complete, and the events (rare) as JSON.

Entries are stored as one row per WAL folder (``wal_directory``: a timeline's 4 GiB of WAL), its
segments as columns: a year of WAL is 105,000 segments but 410 folders, and reading 410 blobs and
comparing each folder's names and checksums as two lists costs a fraction of 105,000 rows and
lookups. Deleting the file loses nothing.
"""

from __future__ import annotations

import json
import marshal
import math
import sqlite3
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any, cast

from backend.cachefile import cache_path, open_cache
from backend.walindex import SegmentIndex, WalEvent

SCHEMA = 2

#: One folder's cached entries as columns, sorted by name: segments, sha256s, first and last commit
#: (POSIX seconds, NaN when none), tail complete, events as JSON ("" when none).
FolderEntries = tuple[list[str], list[str], list[float], list[float], list[bool], list[str]]


def no_entries() -> FolderEntries:
    return [], [], [], [], [], []


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
                "CREATE TABLE unindexable (location TEXT, segment TEXT, checksum TEXT, failed REAL,"
                " PRIMARY KEY (location, segment))",
            ],
        )
        return cls(db) if db is not None else None

    def load(self, location: str) -> dict[str, FolderEntries]:
        rows = self.db.execute("SELECT folder, entries FROM folders WHERE location = ?", (location,))
        return {folder: cast(FolderEntries, marshal.loads(blob)) for folder, blob in rows}

    def store(self, location: str, folders: dict[str, FolderEntries], gone: Iterable[str] = ()) -> None:
        """Replace the entries of ``folders``; forget the folders ``gone`` (no longer archived)."""
        with self.db:
            self.db.executemany(
                "INSERT OR REPLACE INTO folders VALUES (?, ?, ?)",
                [(location, folder, marshal.dumps(cast(Any, entries))) for folder, entries in folders.items()],
            )
            self.db.executemany(
                "DELETE FROM folders WHERE location = ? AND folder = ?", [(location, folder) for folder in gone]
            )

    def recently_failed(self, location: str, *, within: float) -> dict[str, str]:
        """Segments (-> sha256) that could not be indexed lately: not retried on every command."""
        cutoff = datetime.now(UTC).timestamp() - within
        rows = self.db.execute(
            "SELECT segment, checksum FROM unindexable WHERE location = ? AND failed > ?", (location, cutoff)
        )
        return dict(rows.fetchall())

    def remember_failures(self, location: str, failures: Iterable[tuple[str, str]]) -> None:
        now = datetime.now(UTC).timestamp()
        with self.db:
            self.db.executemany(
                "INSERT OR REPLACE INTO unindexable VALUES (?, ?, ?, ?)",
                [(location, segment, checksum, now) for segment, checksum in failures],
            )

    def close(self) -> None:
        self.db.close()


def add_entry(entries: FolderEntries, checksum: str, index: SegmentIndex) -> None:
    """Append ``index`` (callers append in name order)."""
    names, checksums, firsts, lasts, tails, events = entries
    names.append(index.segment)
    checksums.append(checksum)
    firsts.append(index.first_commit.timestamp() if index.first_commit else math.nan)
    lasts.append(index.last_commit.timestamp() if index.last_commit else math.nan)
    tails.append(index.tail_complete)
    events.append(json.dumps([e.to_json() for e in index.events]) if index.events else "")


def copy_entry(source: FolderEntries, row: int, target: FolderEntries) -> None:
    """Append row ``row`` of ``source``."""
    for column, into in zip(cast(tuple[list[Any], ...], source), cast(tuple[list[Any], ...], target), strict=True):
        into.append(column[row])


def entry_index(entries: FolderEntries, row: int) -> SegmentIndex:
    """The index of one cached segment: made only for a segment someone looks at."""
    names, _checksums, firsts, lasts, tails, events = entries
    return SegmentIndex(
        segment=names[row],
        first_commit=_time(firsts[row]),
        last_commit=_time(lasts[row]),
        tail_complete=tails[row],
        events=[WalEvent.from_json(e) for e in json.loads(events[row])] if events[row] else [],
    )


def _time(value: float) -> datetime | None:
    return None if math.isnan(value) else datetime.fromtimestamp(value, UTC)
