"""The catalog: what the repositories hold, read from the repositories themselves.

A backup is listed only when its manifest is present and parses; the WAL archive is summarised as
contiguous ranges of segments per timeline, so a gap is visible at a glance.
"""

from __future__ import annotations

import bisect
import functools
import itertools
import math
import operator
import os
from collections import defaultdict
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, overload

from backend.archive.walfile import WAL_PREFIX, WalObject
from backend.errors import ObjectNotFound, PgdrError
from backend.listcache import folder_contents
from backend.manifest import BACKUPS_PREFIX, MANIFEST_NAME, BackupManifest
from backend.repository import ObjectInfo, Repository, read_identity
from backend.timeline import History, RecoveryTimeline, SegmentTable, build_timeline, run_starts
from backend.walnames import DEFAULT_SEGMENT_SIZE, HISTORY_RE, SEGMENT_RE, SegmentName


@dataclass
class CatalogBackup:
    manifest: BackupManifest
    repositories: list[str] = field(default_factory=list)
    #: The newest stored ``pgdr verify`` result (``backend.verify.records.last_verified``'s record), filled in
    #: by ``read_verified`` only: reading the records costs requests most readers of the catalog
    #: (restore planning, the RPO check every minute) do not need.
    verified: dict[str, Any] | None = None

    def last_verified(self) -> dict[str, Any] | None:
        """When the backup was last verified, how ("checksums" or "deep"), and whether it was sound.

        ``last_deep`` says when it was last rehearsed (a quicker run since does not hide that), so an
        operator can tell a backup proven restorable from one only read back.
        """
        v = self.verified
        if v is None:
            return None
        deep = v.get("last_deep")
        return {
            "time": v["time"],
            "level": str(v.get("level", "checksums")),
            "ok": v["ok"],
            "repository": v.get("repository"),
            "last_deep": {"time": deep.get("time"), "ok": deep.get("ok")} if isinstance(deep, dict) else None,
        }

    def to_json(self) -> dict[str, Any]:
        m = self.manifest
        return {
            "name": m.name,
            "kind": m.kind,
            "parent": m.parent,
            "start_time": m.start_time.isoformat(),
            "stop_time": m.stop_time.isoformat(),
            "start_lsn": m.start_lsn,
            "stop_lsn": m.stop_lsn,
            "timeline": m.timeline,
            "size_bytes": m.size_bytes,
            "stored_bytes": m.stored_bytes,
            "repositories": self.repositories,
            "wal_start": m.wal_start,
            "wal_stop": m.wal_stop,
            "database": m.database,
            "last_verified": self.last_verified(),
        }


@dataclass(frozen=True)
class ArchivedSegment:
    segment: SegmentName
    repository: str
    size: int
    archived_at: datetime
    checksum: str = ""


@dataclass(frozen=True)
class WalRange:
    """Contiguous archived segments of one timeline in one repository."""

    repository: str
    timeline: int
    first: SegmentName
    last: SegmentName
    segments: int
    stored_bytes: int
    first_archived_at: datetime
    last_archived_at: datetime

    def to_json(self) -> dict[str, Any]:
        return {
            "repository": self.repository,
            "timeline": self.timeline,
            "first_segment": self.first.name,
            "last_segment": self.last.name,
            "segments": self.segments,
            "stored_bytes": self.stored_bytes,
            "start_time": self.first_archived_at.isoformat(),
            "end_time": self.last_archived_at.isoformat(),
        }


@dataclass(frozen=True)
class WalColumns:
    """One repository's archived segments of one timeline, as parallel columns sorted by number.

    Columns, not an object per segment: a year of WAL is 100,000 segments, and the objects alone
    would cost more than the rest of ``pgdr list`` (``Catalog.segments`` makes them when asked).
    """

    repository: str
    timeline: int
    names: list[str]
    numbers: list[int]
    checksums: list[str]
    sizes: list[int]
    #: POSIX seconds.
    archived_at: list[float]
    segment_size: int = DEFAULT_SEGMENT_SIZE


@dataclass
class Catalog:
    backups: list[CatalogBackup]
    wal: list[WalRange]
    history_files: dict[str, list[str]]
    columns: list[WalColumns] = field(default_factory=list)
    histories: dict[int, str] = field(default_factory=dict)
    #: When each timeline's .history file was archived: the promotion that began it, to the second.
    history_times: dict[int, datetime] = field(default_factory=dict)
    segment_size: int = DEFAULT_SEGMENT_SIZE
    #: Repositories that could not be read at all (a local one whose directory is missing), with the
    #: one line that says why and what to do: what the others hold is listed, and this is the warning.
    unreadable: dict[str, str] = field(default_factory=dict)

    @property
    def segments(self) -> ArchivedSegments:
        """Every archived segment, per repository in order of timeline and number."""
        return ArchivedSegments(self.columns)

    def newest_segment(self) -> tuple[str, datetime] | None:
        """The most recently archived segment (the first of equals, in ``segments`` order) and when."""
        best: tuple[float, str] | None = None
        for c in self.columns:
            if c.archived_at:
                when = max(c.archived_at)
                if best is None or when > best[0]:
                    best = (when, c.names[c.archived_at.index(when)])
        return (best[1], datetime.fromtimestamp(best[0], UTC)) if best is not None else None

    def to_json(self) -> dict[str, Any]:
        return {
            "backups": [b.to_json() for b in self.backups],
            "wal": [r.to_json() for r in self.wal],
            "history_files": self.history_files,
            "unreadable_repositories": self.unreadable,
        }


class ArchivedSegments(Sequence[ArchivedSegment]):
    """The catalog's segments as a sequence made on demand: counting them costs nothing, and only the
    ones looked at become objects."""

    def __init__(self, columns: list[WalColumns]) -> None:
        self._columns = columns
        self._starts = list(itertools.accumulate((len(c.numbers) for c in columns), initial=0))

    def __len__(self) -> int:
        return self._starts[-1]

    @overload
    def __getitem__(self, index: int) -> ArchivedSegment: ...

    @overload
    def __getitem__(self, index: slice) -> list[ArchivedSegment]: ...

    def __getitem__(self, index: int | slice) -> ArchivedSegment | list[ArchivedSegment]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError("segment index out of range")
        which = bisect.bisect_right(self._starts, index) - 1
        return _archived(self._columns[which], index - self._starts[which])

    def __iter__(self) -> Iterator[ArchivedSegment]:
        for column in self._columns:
            for row in range(len(column.numbers)):
                yield _archived(column, row)


def _archived(column: WalColumns, row: int) -> ArchivedSegment:
    return ArchivedSegment(
        SegmentName(column.timeline, column.numbers[row], column.segment_size),
        column.repository,
        column.sizes[row],
        datetime.fromtimestamp(column.archived_at[row], UTC),
        column.checksums[row],
    )


#: Per segment name: indexed, first commit, last commit (POSIX seconds, NaN when unknown).
CommitTimes = Callable[[list[str]], tuple[list[bool], list[float], list[float]]]

#: What is cached per WAL folder: {timeline: (names, numbers, checksums, sizes, times)} and the
#: .history files as (file name, text, time).
_Folder = tuple[dict[int, tuple[list[str], list[int], list[str], list[int], list[float]]], list[tuple[str, str, float]]]


def read_catalog(repos: list[Repository]) -> Catalog:
    """What ``repos`` hold; one that cannot be read at all is named in ``Catalog.unreadable``.

    A local repository whose directory is missing (an unmounted disk, a typo in ``[local] path``)
    reads as empty, and "no backups yet" is the one thing a list must not say when the backups
    may well be where the directory should be: ``pgdr list`` (``read_verified``) refuses a list
    where nothing was readable. Other readers keep reading it as empty (the RPO check alarms on
    it as "nothing archived"), and it is still read, so nothing changes for them.
    """
    backups: dict[str, CatalogBackup] = {}
    ranges: list[WalRange] = []
    history: dict[str, list[str]] = defaultdict(list)
    histories: dict[int, str] = {}
    history_times: dict[int, datetime] = {}
    columns: list[WalColumns] = []
    segment_size = DEFAULT_SEGMENT_SIZE
    unreadable: dict[str, str] = {}
    for repo in repos:
        reason = unreadable_reason(repo)
        if reason is not None:
            unreadable[repo.name] = reason
        identity = read_identity(repo)
        segment_size = identity.segment_size if identity else segment_size
        for manifest in manifests(repo):
            entry = backups.setdefault(manifest.name, CatalogBackup(manifest))
            entry.repositories.append(repo.name)
        folders = folder_contents(
            repo,
            WAL_PREFIX,
            functools.partial(_wal_folder, repo, segment_size),
            kind=f"wal+history:{segment_size}",
            live=_unsettled,
        )
        parts: dict[int, list[tuple[list[str], list[int], list[str], list[int], list[float]]]] = defaultdict(list)
        for segments, files in folders.values():
            for tli, part in segments.items():
                parts[tli].append(part)
            for filename, text, when in files:
                history[repo.name].append(filename)
                timeline = int(filename[:8], 16)
                histories.setdefault(timeline, text)
                modified = datetime.fromtimestamp(when, UTC)
                history_times[timeline] = min(modified, history_times.get(timeline, modified))
        for tli in sorted(parts):
            column = _column(repo.name, tli, parts[tli], segment_size)
            columns.append(column)
            ranges.extend(contiguous_ranges(column))
    ordered = sorted(backups.values(), key=lambda b: b.manifest.name)
    return Catalog(
        ordered, ranges, dict(history), columns, histories, history_times, segment_size, unreadable=unreadable
    )


def unreadable_reason(repo: Repository) -> str | None:
    """Why ``repo`` cannot be read at all, and what to do, in one line; None when it can be.

    Only a local repository's configured directory (the parent of its cluster folder) is checked:
    the cluster folder itself is missing in a repository nothing was stored in yet, which is empty,
    not unreadable. Any other trouble (a file in its place, permissions, S3) fails the reading
    itself, with its own message.
    """
    root = repo.local_root()
    if root is None:
        return None
    folder = root.parent
    try:
        os.stat(folder)
    except (FileNotFoundError, NotADirectoryError):
        return (
            f"the local repository's directory {folder} does not exist: create it (mkdir -p {folder}) "
            "or mount the disk it is on, or fix [local] path in the config"
        )
    except OSError:
        return None  # there, but not to be looked at: the reading says why
    return None


#: Verify records read at once by ``read_verified``: a long S3 history costs a request per backup, and
#: one after another they would be most of ``pgdr list``'s time.
VERIFIED_READERS = 8


def read_verified(catalog: Catalog, repos: list[Repository]) -> None:
    """Fill in each listed backup's newest verify result, for ``pgdr list``.

    When no repository could be read at all (``Catalog.unreadable``), there is nothing to list and
    this is where ``pgdr list`` fails, with the reason and the fix, rather than print "none yet".
    """
    if repos and all(repo.name in catalog.unreadable for repo in repos):
        raise PgdrError("; ".join(catalog.unreadable[repo.name] for repo in repos))
    records = verified_records([b.manifest.name for b in catalog.backups], repos)
    for backup in catalog.backups:
        backup.verified = records.get(backup.manifest.name)


def verified_records(names: list[str], repos: list[Repository]) -> dict[str, dict[str, Any]]:
    """The newest verify record of each of the backups ``names`` that has one.

    One listing of ``verify/`` per repository, then one read per verified backup (its most recently
    written record; an older copy only when that one cannot be read), several at once: never one
    request per backup and repository, nor one after another. A repository that cannot be listed is
    skipped: the list of backups must not fail because a verify record is out of reach.
    """
    from concurrent.futures import ThreadPoolExecutor

    from backend.verify.records import VERIFY_PREFIX, read_record

    wanted = set(names)
    written: dict[str, list[tuple[datetime, Repository]]] = defaultdict(list)
    for repo in repos:
        try:
            for info in repo.list(VERIFY_PREFIX):
                name = info.key.removeprefix(VERIFY_PREFIX).removesuffix(".json")
                if name in wanted and info.key.endswith(".json"):
                    written[name].append((info.modified, repo))
        except PgdrError:
            continue

    def newest(name: str) -> dict[str, Any] | None:
        copies = sorted(written[name], key=lambda c: c[0], reverse=True)
        return next((r for r in (read_record(repo, name) for _, repo in copies) if r is not None), None)

    found = sorted(written)
    with ThreadPoolExecutor(max_workers=max(1, min(VERIFIED_READERS, len(found)))) as pool:
        records = dict(zip(found, pool.map(newest, found), strict=True))
    return {name: record for name, record in records.items() if record is not None}


def _wal_folder(repo: Repository, segment_size: int, listing: list[ObjectInfo]) -> _Folder:
    """What one WAL folder's listing says: its segments (as columns per timeline) and .history files
    (read here, so a cached folder costs no request for them).

    Other objects (.partial, .backup, anything not pgdr's) are not part of the catalog.
    """
    per_log = 0x1_0000_0000 // segment_size
    segments: dict[int, tuple[list[str], list[int], list[str], list[int], list[float]]] = {}
    files = []
    for info in listing:
        obj = WalObject.parse_key(info.key)
        if obj is None:
            continue
        filename = obj.filename
        if len(filename) == 24 and SEGMENT_RE.match(filename):
            tli, log, seg = int(filename[:8], 16), int(filename[8:16], 16), int(filename[16:], 16)
            if seg >= per_log:
                continue  # not a segment name for this segment size: not pgdr's object
            names, numbers, checksums, sizes, times = segments.setdefault(tli, ([], [], [], [], []))
            names.append(filename)
            numbers.append(log * per_log + seg)
            checksums.append(obj.checksum)
            sizes.append(info.size)
            times.append(info.modified.timestamp())
        elif HISTORY_RE.match(filename):
            files.append((filename, _history_text(repo, info.key, obj.compression), info.modified.timestamp()))
    return segments, files


def _unsettled(folders: list[str]) -> set[str]:
    """The newest two WAL folders of each timeline (and the .history folder): archiving writes into
    the newest now, and parallel uploads can still complete a segment just before its boundary."""
    by_timeline: dict[str, list[str]] = defaultdict(list)
    for name in folders:
        by_timeline[name[:8]].append(name)
    return {name for names in by_timeline.values() for name in sorted(names)[-2:]}


def _column(
    repository: str,
    timeline: int,
    parts: list[tuple[list[str], list[int], list[str], list[int], list[float]]],
    segment_size: int,
) -> WalColumns:
    names: list[str] = []
    numbers: list[int] = []
    checksums: list[str] = []
    sizes: list[int] = []
    times: list[float] = []
    for part_names, part_numbers, part_checksums, part_sizes, part_times in parts:
        names += part_names
        numbers += part_numbers
        checksums += part_checksums
        sizes += part_sizes
        times += part_times
    if any(map(operator.ge, numbers, itertools.islice(numbers, 1, None))):
        # A segment outside its folder, or stored twice: put in order, the first copy winning.
        rows = sorted(range(len(numbers)), key=numbers.__getitem__)
        rows = [r for i, r in enumerate(rows) if i == 0 or numbers[r] != numbers[rows[i - 1]]]
        names, checksums = [names[r] for r in rows], [checksums[r] for r in rows]
        sizes, times, numbers = [sizes[r] for r in rows], [times[r] for r in rows], [numbers[r] for r in rows]
    return WalColumns(repository, timeline, names, numbers, checksums, sizes, times, segment_size)


def _history_text(repo: Repository, key: str, compression: str) -> str:
    from backend.archive.walfile import decode

    return decode(repo.get(key), compression).decode("utf-8", errors="replace")


def manifests(repo: Repository) -> list[BackupManifest]:
    """Every backup's manifest; their bytes are cached by the listing cache with their folder."""
    found = []
    for name, raw in folder_contents(
        repo, BACKUPS_PREFIX, functools.partial(_manifest_bytes, repo), kind="manifest", live=_newest_backup
    ).items():
        if raw is None:
            continue
        try:
            found.append(BackupManifest.from_json(raw, f"{repo.name}:{BACKUPS_PREFIX}{name}/{MANIFEST_NAME}"))
        except PgdrError:
            continue  # a damaged manifest is not a backup; `pgdr verify` names it
    return found


def _newest_backup(folders: list[str]) -> set[str]:
    """The newest backup's folder: one may be being written there (backups run one at a time), and
    its manifest, written last, is what makes it a backup."""
    return set(folders[-1:])


def _manifest_bytes(repo: Repository, listing: list[ObjectInfo]) -> bytes | None:
    for info in listing:
        if info.key.endswith("/" + MANIFEST_NAME) and info.key.count("/") == 2:
            try:
                return repo.get(info.key)
            except ObjectNotFound:
                return None  # deleted since the listing (an expire): not a backup
    return None


def contiguous_ranges(column: WalColumns) -> list[WalRange]:
    """Group one repository's segments of one timeline into runs without gaps."""
    bounds = [0, *run_starts(column.numbers), len(column.numbers)]
    return [_range(column, begin, end) for begin, end in itertools.pairwise(bounds) if begin < end]


def _range(column: WalColumns, begin: int, end: int) -> WalRange:
    times = column.archived_at[begin:end]
    return WalRange(
        repository=column.repository,
        timeline=column.timeline,
        first=SegmentName(column.timeline, column.numbers[begin], column.segment_size),
        last=SegmentName(column.timeline, column.numbers[end - 1], column.segment_size),
        segments=end - begin,
        stored_bytes=sum(column.sizes[begin:end]),
        first_archived_at=datetime.fromtimestamp(min(times), UTC),
        last_archived_at=datetime.fromtimestamp(max(times), UTC),
    )


def recovery_timeline(
    catalog: Catalog, commit_times: CommitTimes | None = None, damaged: Collection[str] = ()
) -> RecoveryTimeline:
    """Merge every repository's WAL into one timeline; ``commit_times`` (from the WAL index) sharpens it.

    ``damaged`` segments (no stored copy is WAL recovery can read) count as missing: recovery ends
    where it meets one, so a window that ran through it would promise instants no restore reaches.

    ``commit_times(segment names)`` says, per segment, whether it is indexed and its first and last
    commit in POSIX seconds (NaN where it has none). A segment counts as archived when any repository holds
    it; the repositories are listed local first, the order a restore reads from.
    """
    by_timeline: dict[int, list[WalColumns]] = defaultdict(list)
    for column in catalog.columns:
        by_timeline[column.timeline].append(column)
    tables = {tli: _table(tli, copies, commit_times, damaged) for tli, copies in by_timeline.items()}
    histories = {
        tli: History.parse(tli, text, created=catalog.history_times.get(tli)) for tli, text in catalog.histories.items()
    }
    return build_timeline((b.manifest for b in catalog.backups), tables, histories, catalog.segment_size)


def _without(column: WalColumns, damaged: Collection[str]) -> WalColumns:
    keep = [i for i, name in enumerate(column.names) if name not in damaged]
    if len(keep) == len(column.names):
        return column
    return WalColumns(
        column.repository,
        column.timeline,
        [column.names[i] for i in keep],
        [column.numbers[i] for i in keep],
        [column.checksums[i] for i in keep],
        [column.sizes[i] for i in keep],
        [column.archived_at[i] for i in keep],
        column.segment_size,
    )


def _table(
    timeline: int, copies: list[WalColumns], commit_times: CommitTimes | None, damaged: Collection[str]
) -> SegmentTable:
    table = SegmentTable(timeline)
    if damaged:
        copies = [_without(column, damaged) for column in copies]
    if len(copies) == 1:
        only = copies[0]
        table.numbers, table.stored_bytes, table.archived_at = only.numbers, only.sizes, only.archived_at
        table.repositories = [(only.repository,)] * len(only.numbers)
        names = only.names
    else:
        merged: dict[int, tuple[str, int, float, tuple[str, ...]]] = {}
        for column in copies:
            for name, number, size, when in zip(
                column.names, column.numbers, column.sizes, column.archived_at, strict=True
            ):
                seen = merged.get(number)
                if seen is None:
                    merged[number] = (name, size, when, (column.repository,))
                else:
                    merged[number] = (seen[0], seen[1], max(seen[2], when), (*seen[3], column.repository))
        table.numbers = sorted(merged)
        rows = [merged[n] for n in table.numbers]
        names = [r[0] for r in rows]
        table.stored_bytes = [r[1] for r in rows]
        table.archived_at = [r[2] for r in rows]
        table.repositories = [r[3] for r in rows]
    if commit_times is not None:
        table.indexed, table.first_commit, table.last_commit = commit_times(names)
    else:
        table.indexed, table.first_commit, table.last_commit = (
            [False] * len(names),
            [math.nan] * len(names),
            [math.nan] * len(names),
        )
    return table
