"""A local cache of the WAL index, so a year of history opens in well under a second.

The repository stays the source of truth (``walindex/`` objects); this SQLite file in the state dir
only remembers what was already read, keyed by repository location, segment name and the segment's
sha256, so a different segment under the same name (another cluster reusing a path) is never
mistaken for a cached one. Only what the timeline needs is stored in columns: commit times, whether
the tail was complete, and the events (rare) as JSON. Deleting the file loses nothing.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path

from backend.walindex import SegmentIndex, WalEvent

#: A cached entry as stored: segment, sha256, first and last commit (POSIX seconds), tail complete, events JSON.
CachedRow = tuple[str, str, float | None, float | None, int, str]


def cache_path() -> Path:
    from backend.audit import state_dir

    return state_dir() / "cache" / "walindex.sqlite"


class IndexCache:
    def __init__(self, path: Path | None = None) -> None:
        path = path or cache_path()
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.db = sqlite3.connect(path, timeout=10)
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS walindex (location TEXT, segment TEXT, checksum TEXT, first REAL,"
            " last REAL, tail INTEGER, events TEXT, PRIMARY KEY (location, segment))"
        )
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS unindexable (location TEXT, segment TEXT, checksum TEXT, failed REAL,"
            " PRIMARY KEY (location, segment))"
        )

    def load(self, location: str) -> dict[str, CachedRow]:
        """Every entry of ``location`` as its stored row: a year of segments is 100,000 rows, and making
        an index object (and two datetimes) of each costs more than the whole timeline, so callers make
        one only for a segment they look at (``row_index``)."""
        rows = self.db.execute(
            "SELECT segment, checksum, first, last, tail, events FROM walindex WHERE location = ?", (location,)
        )
        return {row[0]: row for row in rows}

    def store(self, location: str, entries: Iterable[tuple[str, SegmentIndex]]) -> None:
        with self.db:
            self.db.executemany(
                "INSERT OR REPLACE INTO walindex VALUES (?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        location,
                        index.segment,
                        checksum,
                        index.first_commit.timestamp() if index.first_commit else None,
                        index.last_commit.timestamp() if index.last_commit else None,
                        int(index.tail_complete),
                        json.dumps([e.to_json() for e in index.events]) if index.events else "",
                    )
                    for checksum, index in entries
                ],
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


def row_index(row: CachedRow) -> SegmentIndex:
    segment, _checksum, first, last, tail, events = row
    return SegmentIndex(
        segment=segment,
        first_commit=_time(first),
        last_commit=_time(last),
        tail_complete=bool(tail),
        events=[WalEvent.from_json(e) for e in json.loads(events)] if events else [],
    )


def _time(value: float | None) -> datetime | None:
    return datetime.fromtimestamp(value, UTC) if value is not None else None
