"""The recovery timeline: which instants a restore can reach, from which base backup, with which WAL.

A restore replays WAL from a base backup's start up to the target. On PostgreSQL timeline T, segment
number n is read from the newest timeline on T's ancestry whose history begins at or before n (the
rule of PostgreSQL's ``XLogFileReadAnyTLI``), so after a promotion the window of an old backup
continues on the new timeline. A window ends where the archived WAL stops being contiguous; the
missing stretch is reported as a gap. Pure logic: no I/O here, the catalog feeds it.
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from backend.manifest import BackupManifest, BrokenChain, chain
from backend.walnames import SegmentName, format_lsn, parse_lsn

# Conservative throughputs for the restore-time estimate (this machine class: 2 cores). They are
# deliberately on the slow side: an operator planning an outage wants an upper bound.
RESTORE_BYTES_PER_S = 150e6
REPLAY_BYTES_PER_S = 60e6
RESTORE_FIXED_S = 5.0


@dataclass(frozen=True)
class SegmentInfo:
    """What the timeline knows about one archived segment (from any repository)."""

    segment: SegmentName
    repositories: tuple[str, ...]
    stored_bytes: int
    archived_at: datetime
    first_commit: datetime | None = None
    last_commit: datetime | None = None
    indexed: bool = False

    @property
    def latest_time(self) -> datetime:
        """The newest instant this segment is known to reach: its last commit, else its archive time."""
        return self.last_commit or self.archived_at


@dataclass(frozen=True)
class History:
    """A ``.history`` file: each ancestor timeline and the LSN where it was left."""

    timeline: int
    parents: tuple[tuple[int, int], ...]
    #: When it was archived, i.e. (within a second or so) when the promotion began the timeline.
    created: datetime | None = None

    @classmethod
    def parse(cls, timeline: int, text: str, *, created: datetime | None = None) -> History:
        parents = []
        for raw in text.splitlines():
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            fields = line.split(None, 2)
            parents.append((int(fields[0]), parse_lsn(fields[1])))
        return cls(timeline, tuple(parents), created)


@dataclass(frozen=True)
class Window:
    timeline: int
    start: datetime
    end: datetime
    start_lsn: int
    end_lsn: int
    base_backup: str
    first_segment: SegmentName
    last_segment: SegmentName

    def contains(self, instant: datetime) -> bool:
        """Reachable: recovery to a time stops at the first commit after it, so one must exist (``< end``)."""
        return self.start <= instant < self.end

    def to_json(self) -> dict[str, Any]:
        return {
            "timeline": self.timeline,
            "start": self.start.isoformat(),
            "end": self.end.isoformat(),
            "start_lsn": format_lsn(self.start_lsn),
            "end_lsn": format_lsn(self.end_lsn),
            "base_backup": self.base_backup,
            "first_segment": self.first_segment.name,
            "last_segment": self.last_segment.name,
        }


@dataclass(frozen=True)
class Gap:
    timeline: int
    after_segment: SegmentName
    missing_from: SegmentName
    missing_to: SegmentName

    def to_json(self) -> dict[str, Any]:
        return {
            "timeline": self.timeline,
            "after_segment": self.after_segment.name,
            "missing_from": self.missing_from.name,
            "missing_to": self.missing_to.name,
        }


@dataclass
class SegmentTable:
    """Every archived segment of one PostgreSQL timeline, as parallel columns in strictly increasing
    order of number.

    A year of WAL is 100,000 segments: one Python object (and two datetimes) each would cost more
    than everything else a command does, so a ``SegmentInfo`` is made only for the segments asked
    about (a restore's WAL, a cursor's details). Times are POSIX seconds, NaN where unknown.
    """

    timeline: int
    numbers: list[int] = field(default_factory=list)
    stored_bytes: list[int] = field(default_factory=list)
    archived_at: list[float] = field(default_factory=list)
    first_commit: list[float] = field(default_factory=list)
    last_commit: list[float] = field(default_factory=list)
    indexed: list[bool] = field(default_factory=list)
    repositories: list[tuple[str, ...]] = field(default_factory=list)

    def find(self, number: int) -> int | None:
        """The row of segment ``number``, or None when it is not archived."""
        i = bisect.bisect_left(self.numbers, number)
        return i if i < len(self.numbers) and self.numbers[i] == number else None

    def latest_time(self, row: int) -> float:
        """The newest instant the segment is known to reach: its last commit, else its archive time."""
        last = self.last_commit[row]
        return self.archived_at[row] if math.isnan(last) else last  # NaN: no commit in it

    def info(self, row: int, segment_size: int) -> SegmentInfo:
        return SegmentInfo(
            segment=SegmentName(self.timeline, self.numbers[row], segment_size),
            repositories=self.repositories[row],
            stored_bytes=self.stored_bytes[row],
            archived_at=_instant(self.archived_at[row]),
            first_commit=_maybe_instant(self.first_commit[row]),
            last_commit=_maybe_instant(self.last_commit[row]),
            indexed=self.indexed[row],
        )


@dataclass
class RecoveryTimeline:
    windows: list[Window]
    gaps: list[Gap]
    timelines: list[int]
    segment_size: int
    _tables: dict[int, SegmentTable] = field(default_factory=dict, repr=False)
    _paths: dict[int, list[tuple[int, int]]] = field(default_factory=dict, repr=False)
    #: WAL index events (restore points, destructive transactions), set by whoever built the index.
    events: list[Any] = field(default_factory=list, repr=False)
    #: The timeline the cluster runs on (its data directory says so), None when it cannot be read.
    current: int | None = None
    #: Backups whose manifest the WAL contradicts (name -> why): they get no window.
    disowned: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "windows": [w.to_json() for w in self.windows],
            "gaps": [g.to_json() for g in self.gaps],
            "timelines": self.timelines,
            "current_timeline": self.current,
            "abandoned_timelines": self.abandoned(),
            "disowned_backups": self.disowned,
        }

    def latest_timeline(self) -> int:
        return max(self.timelines) if self.timelines else 1

    def followed_timeline(self) -> int:
        """The timeline a restore follows unless told otherwise: the one the cluster runs on, when known.

        PostgreSQL's own default (the newest timeline in the archive) can be a branch nobody continued:
        the server of a killed restore that promoted on its own, after the operator rolled back.
        """
        return self.current if self.current is not None else self.latest_timeline()

    def ancestry(self, timeline: int) -> list[int]:
        """``timeline`` and the timelines its history passes through, newest first."""
        return [tli for tli, _ in reversed(self._paths.get(timeline) or [(timeline, 0)])]

    def abandoned(self) -> list[int]:
        """Timelines in the archive that the running cluster's history does not pass through."""
        if self.current is None:
            return []
        followed = set(self.ancestry(self.current))
        return [tli for tli in self.timelines if tli not in followed]

    def windows_on(self, timeline: int) -> list[Window]:
        return [w for w in self.windows if w.timeline == timeline]

    def segments_between(self, timeline: int, first: int, last: int) -> list[SegmentInfo]:
        """The segments replay reads from segment number ``first`` to ``last`` on ``timeline``."""
        out = []
        for number in range(first, last + 1):
            info = self.segment_info(timeline, number)
            if info is None:
                break
            out.append(info)
        return out

    def segment_reaching(self, timeline: int, first: int, instant: datetime) -> int | None:
        """The first segment (from ``first``) whose newest known commit is at or after ``instant``."""
        at = instant.timestamp()
        number = first
        while True:
            found = _lookup(self._tables, self._paths[timeline], number)
            if found is None:
                return None
            table, row = found
            if table.latest_time(row) >= at:
                return number
            number += 1

    def segment_info(self, timeline: int, number: int) -> SegmentInfo | None:
        found = _lookup(self._tables, self._paths[timeline], number)
        return found[0].info(found[1], self.segment_size) if found is not None else None

    def gap_after(self, window: Window) -> Gap | None:
        """The gap that ends ``window``, when its WAL stops because a segment is missing (not at the archive's end)."""
        last = window.last_segment
        return next(
            (g for g in self.gaps if g.timeline == last.timeline and g.after_segment.number == last.number), None
        )


def timeline_path(timeline: int, histories: dict[int, History], segment_size: int) -> list[tuple[int, int]]:
    """``[(tli, first segment number read from it), ...]`` from the oldest ancestor to ``timeline``."""
    history = histories.get(timeline)
    if history is None:
        return [(timeline, 0)]
    path = []
    begin = 0
    for parent, switch_lsn in history.parents:
        path.append((parent, begin))
        begin = switch_lsn // segment_size
    path.append((timeline, begin))
    return path


def expected_tli(path: list[tuple[int, int]], number: int) -> int:
    """The timeline whose copy of segment ``number`` recovery reads on this path."""
    tli = path[0][0]
    for candidate, begin in path:
        if begin <= number:
            tli = candidate
    return tli


def _lookup(
    tables: dict[int, SegmentTable], path: list[tuple[int, int]], number: int
) -> tuple[SegmentTable, int] | None:
    table = tables.get(expected_tli(path, number))
    if table is None:
        return None
    row = table.find(number)
    return (table, row) if row is not None else None


def _readable(tables: dict[int, SegmentTable], path: list[tuple[int, int]]) -> list[int]:
    """The segment numbers replay along ``path`` reads, in order.

    ``expected_tli`` is constant between consecutive switch points, so each stretch is one slice of
    one timeline's table.
    """
    bounds = sorted({begin for _, begin in path} | {0})
    numbers: list[int] = []
    for lo_number, hi_number in itertools.pairwise([*bounds, None]):
        assert lo_number is not None
        table = tables.get(expected_tli(path, lo_number))
        if table is None:
            continue
        lo = bisect.bisect_left(table.numbers, lo_number)
        hi = len(table.numbers) if hi_number is None else bisect.bisect_left(table.numbers, hi_number)
        numbers.extend(table.numbers[lo:hi])
    return numbers


def build_timeline(
    backups: Iterable[BackupManifest],
    tables: dict[int, SegmentTable],
    histories: dict[int, History],
    segment_size: int,
) -> RecoveryTimeline:
    timelines = sorted({tli for tli, t in tables.items() if t.numbers} | set(histories) | {1})
    paths = {tli: timeline_path(tli, histories, segment_size) for tli in timelines}

    # Segment numbers readable on each timeline, as sorted contiguous runs.
    runs = {tli: _runs(_readable(tables, path)) for tli, path in paths.items()}

    windows = []
    # Per timeline and end of run: the segment where the latest commit was found, and that commit. A
    # year of backups shares a handful of runs: found once, not once per backup.
    reached: dict[tuple[int, int], tuple[int, datetime]] = {}
    physical = [b for b in backups if b.kind == "physical" and b.wal_start and b.wal_stop and b.timeline]
    disowned: dict[str, str] = {}
    by_name = {b.name: b for b in physical}
    for backup in sorted(physical, key=lambda b: b.stop_time):
        assert backup.wal_start and backup.wal_stop and backup.stop_lsn and backup.timeline
        try:
            chain(backup, by_name)
        except BrokenChain as exc:
            disowned[backup.name] = str(exc)
            continue
        start = SegmentName.parse(backup.wal_start, segment_size).number
        stop = SegmentName.parse(backup.wal_stop, segment_size).number
        stop_lsn = parse_lsn(backup.stop_lsn)
        contradiction = _contradicted_stop(backup, tables, paths.get(backup.timeline), stop)
        if contradiction:
            disowned[backup.name] = contradiction
            continue
        for tli, path in paths.items():
            if not _descends(path, backup.timeline, stop_lsn, segment_size):
                continue
            run = _run_containing(runs[tli], start)
            if run is None or run[1] < stop:
                continue  # the WAL this backup needs to become consistent is incomplete on this path
            last = _lookup(tables, path, run[1])
            assert last is not None
            known = reached.get((tli, run[1]))
            if known is not None and start <= known[0]:
                latest = known[1]  # scanning down from the run's end stops there for this backup too
            else:
                at, latest = _latest_commit(tables, path, start, run[1])
                if at is not None:
                    reached[tli, run[1]] = (at, latest)
            begin_of_tli = path[-1][1]
            if run[1] < begin_of_tli:
                continue  # the WAL never reaches this timeline's own segments
            window_start = backup.stop_time
            start_lsn = stop_lsn
            if tli != backup.timeline:
                # Wall-clock times before the promotion that began this timeline belong to an older
                # timeline (its abandoned future included): this window starts at the promotion.
                created = histories[tli].created if tli in histories else None
                if created is not None:
                    window_start = max(window_start, created)
                start_lsn = max(start_lsn, begin_of_tli * segment_size)
            windows.append(
                Window(
                    timeline=tli,
                    start=window_start,
                    end=max(latest, window_start),
                    start_lsn=start_lsn,
                    end_lsn=(run[1] + 1) * segment_size,
                    base_backup=backup.name,
                    first_segment=SegmentName(expected_tli(path, start), start, segment_size),
                    last_segment=SegmentName(last[0].timeline, run[1], segment_size),
                )
            )

    gaps = []
    for tli, table in sorted(tables.items()):
        for (_, end), (next_start, _) in itertools.pairwise(_runs(table.numbers)):
            gaps.append(
                Gap(
                    tli,
                    SegmentName(tli, end, segment_size),
                    SegmentName(tli, end + 1, segment_size),
                    SegmentName(tli, next_start - 1, segment_size),
                )
            )
    return RecoveryTimeline(windows, gaps, timelines, segment_size, tables, paths, disowned=disowned)


#: How far a backup's recorded stop time may fall behind a commit the WAL holds before its stop
#: segment (the manifest's clock is the backup host's, the commit's the server's).
CLOCK_TOLERANCE_S = 120.0
#: How many segments before the stop segment are searched for the last commit.
_STOP_SEARCH = 16


def _contradicted_stop(
    backup: BackupManifest, tables: dict[int, SegmentTable], path: list[tuple[int, int]] | None, stop: int
) -> str:
    """Why the WAL says a backup's manifest cannot be right, or "".

    The manifest's stop time starts the backup's window. Every commit in a segment before the one
    holding the stop LSN was written before the backup ended, so a stop time earlier than such a
    commit is false: a manifest changed in every copy (or written by a broken clock), which would
    offer instants the backup cannot reach. Only indexed commit times count: archive times prove
    nothing about when a segment's records were written.
    """
    if path is None:
        return ""
    for number in range(stop - 1, max(stop - 1 - _STOP_SEARCH, -1), -1):
        found = _lookup(tables, path, number)
        if found is None:
            continue
        table, row = found
        if not table.indexed[row] or math.isnan(table.last_commit[row]):
            continue
        commit = table.last_commit[row]
        if backup.stop_time.timestamp() + CLOCK_TOLERANCE_S < commit:
            return (
                f"its manifest says it stopped at {backup.stop_time:%Y-%m-%d %H:%M:%S} UTC, but the WAL before its "
                f"stop LSN {backup.stop_lsn} holds a commit of {_instant(commit):%Y-%m-%d %H:%M:%S} UTC: the "
                "manifest was changed or its clock was wrong; it is not offered for restores (`pgdr verify` checks it)"
            )
        return ""
    return ""


def _latest_commit(
    tables: dict[int, SegmentTable], path: list[tuple[int, int]], first: int, last: int
) -> tuple[int | None, datetime]:
    """The last commit replay can reach: recovery to a later time would end before its target; and
    the segment that says so (None when none between ``first`` and ``last`` does).

    Segments without a WAL index fall back to their archive time, an upper bound.
    """
    for number in range(last, first - 1, -1):
        found = _lookup(tables, path, number)
        assert found is not None
        table, row = found
        if not table.indexed[row]:
            return number, _instant(table.archived_at[row])
        commit = table.last_commit[row]
        if not math.isnan(commit):
            return number, _instant(commit)
    found = _lookup(tables, path, first)
    assert found is not None
    return None, _instant(found[0].archived_at[found[1]])


def _instant(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def _maybe_instant(seconds: float) -> datetime | None:
    return None if math.isnan(seconds) else datetime.fromtimestamp(seconds, UTC)


def _descends(path: list[tuple[int, int]], backup_tli: int, backup_stop_lsn: int, segment_size: int) -> bool:
    """Whether a backup taken on ``backup_tli`` can be replayed forward along this path."""
    tlis = [t for t, _ in path]
    if backup_tli not in tlis:
        return False
    index = tlis.index(backup_tli)
    if index + 1 < len(path):
        switch_segment = path[index + 1][1]
        return backup_stop_lsn // segment_size <= switch_segment
    return True


def _runs(numbers: list[int]) -> list[tuple[int, int]]:
    """Strictly increasing numbers as contiguous ``(first, last)`` runs."""
    bounds = [0, *run_starts(numbers), len(numbers)]
    return [(numbers[a], numbers[b - 1]) for a, b in itertools.pairwise(bounds) if a < b]


#: Below this many numbers ``run_starts`` looks at each; above, it halves the stretch first.
_SCAN = 32


def run_starts(numbers: list[int]) -> list[int]:
    """The indexes (after 0) where strictly increasing ``numbers`` skip one: where each run but the
    first begins.

    A stretch is one run exactly when its ends are as far apart as its length, so stretches are
    halved until they are whole: a year of WAL with a few gaps costs a few hundred comparisons, not
    one per segment (and an archive full of holes no more than a plain scan).
    """
    starts: list[int] = []

    def scan(lo: int, hi: int) -> None:
        if numbers[hi] - numbers[lo] == hi - lo:
            return
        if hi - lo <= _SCAN:
            starts.extend(i for i in range(lo + 1, hi + 1) if numbers[i] != numbers[i - 1] + 1)
            return
        middle = (lo + hi) // 2
        scan(lo, middle)
        scan(middle, hi)

    if numbers:
        scan(0, len(numbers) - 1)
    return starts


def _run_containing(runs: list[tuple[int, int]], number: int) -> tuple[int, int] | None:
    index = bisect.bisect_right(runs, (number, float("inf"))) - 1
    if index >= 0 and runs[index][0] <= number <= runs[index][1]:
        return runs[index]
    return None


def estimate_restore_seconds(base_bytes: int, wal_bytes: int) -> float:
    return RESTORE_FIXED_S + base_bytes / RESTORE_BYTES_PER_S + wal_bytes / REPLAY_BYTES_PER_S
