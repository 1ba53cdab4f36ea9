"""Where the WAL index lives: one small JSON per segment, ``walindex/<folder>/<segment>.json``.

The index is kept in every repository that holds the segment, so a host that has only the S3
repository (the local disk is gone) still knows commit times, restore points and destructive
transactions. It is built off the acknowledgement path: by the background ``pgdr wal-upload``
(wal-push queues each segment for it) and, for whatever is still missing, when a command needs the
timeline. A segment whose last record runs into a segment not yet archived is indexed again once
that segment arrives (``tail_complete``).
"""

from __future__ import annotations

import contextlib
import json
import math
import sqlite3
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

from backend.archive.fetch import fetch
from backend.archive.indexcache import CachedRow, IndexCache, row_index
from backend.archive.walfile import find_archived
from backend.config import Config
from backend.errors import PgdrError
from backend.postgres import program
from backend.progress import Progress, ProgressCallback, no_progress
from backend.repository import Repository
from backend.walindex import SegmentIndex, WalEvent, index_segment
from backend.walnames import SegmentName, wal_directory

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
    """Segment name -> its index. Entries the local cache served stay cache rows until looked at:
    the timeline needs only their commit times, and a year of them as objects would cost seconds."""

    def __init__(self) -> None:
        self._rows: dict[str, CachedRow] = {}
        self._built: dict[str, SegmentIndex] = {}

    def __getitem__(self, name: str) -> SegmentIndex:
        built = self._built.get(name)
        if built is None:
            built = self._built[name] = row_index(self._rows[name])
        return built

    def __iter__(self) -> Iterator[str]:
        yield from self._rows
        yield from (name for name in self._built if name not in self._rows)

    def __len__(self) -> int:
        return len(self._rows) + sum(1 for name in self._built if name not in self._rows)

    def __contains__(self, name: object) -> bool:
        return name in self._rows or name in self._built

    def add(self, name: str, index: SegmentIndex) -> None:
        self._built[name] = index

    def add_row(self, name: str, row: CachedRow) -> None:
        self._rows[name] = row

    def commit_columns(self, names: list[str]) -> tuple[list[bool], list[float], list[float]]:
        """For each segment: whether it is indexed, its first and last commit (POSIX seconds, NaN when
        it has none or is not indexed), in one pass: the timeline asks for every archived segment."""
        nan = math.nan
        rows = self._rows
        if not self._built:
            found = [rows.get(name) for name in names]
            firsts = [nan if r is None or r[2] is None else r[2] for r in found]
            lasts = [nan if r is None or r[3] is None else r[3] for r in found]
            return [r is not None for r in found], firsts, lasts
        indexed, firsts, lasts = [], [], []
        for name in names:
            index = self._built.get(name)
            if index is not None:
                first, last = index.first_commit, index.last_commit
                times = (first.timestamp() if first else nan, last.timestamp() if last else nan)
            elif (row := rows.get(name)) is not None:
                times = (nan if row[2] is None else row[2], nan if row[3] is None else row[3])
            else:
                indexed.append(False)
                firsts.append(nan)
                lasts.append(nan)
                continue
            indexed.append(True)
            firsts.append(times[0])
            lasts.append(times[1])
        return indexed, firsts, lasts

    def events(self) -> list[WalEvent]:
        """Every segment's events (restore points, destructive transactions), in LSN order."""
        found = [event for index in self._built.values() for event in index.events]
        for name, row in self._rows.items():
            if row[5] and name not in self._built:
                found += row_index(row).events
        return sorted(found, key=lambda e: e.lsn)


def ensure_indexes(
    cfg: Config,
    repos: list[Repository],
    segments: dict[str, list[str]],
    segment_size: int,
    *,
    checksums: dict[str, str] | None = None,
    on_progress: ProgressCallback = no_progress,
    persist: bool = True,
) -> SegmentIndexes:
    """Index every archived segment (name -> repositories holding it) that has no complete index yet.

    Entries come from the local cache when it knows the segment (same sha256), else from the
    repositories, else pg_waldump builds them. ``persist=False`` stores nothing in the repositories
    (a dry run changes nothing there); the local cache, pgdr's own, is kept either way.
    """
    sums = checksums or {}
    cache = _open_cache()
    location = repos[0].location() if repos else ""
    cached = cache.load(location) if cache is not None else {}
    indexes = SegmentIndexes()
    unresolved = []
    for name in segments:
        row = cached.get(name)
        if (
            row is not None
            and row[1] == sums.get(name, "")
            and (row[4] or SegmentName.parse(name, segment_size).next().name not in segments)
        ):
            indexes.add_row(name, row)
        else:
            unresolved.append(name)
    if not unresolved:
        if cache is not None:
            cache.close()
        return indexes
    # Few new segments: read their entries one by one; many (a cold cache): list them all at once.
    stored = _read_some(repos, unresolved) if len(unresolved) < BULK_READ else read_indexes(repos)
    failed_lately = cache.recently_failed(location, within=RETRY_AFTER_S) if cache is not None else {}
    todo = []
    for name in sorted(unresolved):
        found = stored.get(name)
        if found is not None and not _needs_index(found, name, segments, segment_size):
            indexes.add(name, found)
        elif failed_lately.get(name) != sums.get(name, ""):
            todo.append(name)
    failures: list[tuple[str, str]] = []
    for done, name in enumerate(todo):
        on_progress(Progress("index", done, len(todo), f"indexing WAL {name}"))
        holders = [r for r in repos if r.name in segments[name]]
        following = SegmentName.parse(name, segment_size).next().name
        try:
            index = index_from_archive(cfg, name, with_next=bool(segments.get(following)))
        except PgdrError:
            # Unreadable here: `pgdr verify` reports the segment, the timeline falls back to its archive
            # time, and it is tried again after RETRY_AFTER_S rather than on every command.
            failures.append((name, sums.get(name, "")))
            continue
        if persist:
            body = json.dumps(index.to_json(), sort_keys=True).encode()
            for repo in holders:
                repo.put(index_key(name), body)
        indexes.add(name, index)
    if cache is not None:
        with contextlib.suppress(sqlite3.Error):
            cache.store(location, [(sums.get(n, ""), indexes[n]) for n in unresolved if n in indexes])
            cache.remember_failures(location, failures)
        cache.close()
    return indexes


#: Below this many segments missing from the local cache, their entries are read one by one.
BULK_READ = 2000
#: A segment that could not be indexed is tried again after this long.
RETRY_AFTER_S = 3600.0


def _open_cache() -> IndexCache | None:
    """The local cache, or None where the state dir cannot hold it (read-only home, say)."""
    try:
        return IndexCache()
    except (OSError, sqlite3.Error):
        return None


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


def _needs_index(index: SegmentIndex, name: str, segments: dict[str, list[str]], segment_size: int) -> bool:
    return not index.tail_complete and SegmentName.parse(name, segment_size).next().name in segments


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
