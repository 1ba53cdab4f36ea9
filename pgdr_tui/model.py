"""The timeline's data, indexed once per load so every redraw and scrub step is a few bisects.

Built from the backend's ``RecoveryView`` (catalog + recovery timeline + WAL events) and free of
Textual, so it is tested with plain asserts and benchmarked without a terminal. A load of a year of
history (1,500 backups, 100,000 segments) costs one pass over the segments here; after that,
``columns()`` is O(visible columns x log n) and ``details()`` touches only the WAL a restore would read.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import IntEnum
from typing import TYPE_CHECKING

from backend.manifest import BrokenChain, chain
from backend.timeline import RecoveryTimeline, Window, estimate_restore_seconds
from backend.walindex import lineage
from backend.walnames import SegmentName
from pgdr_tui import fmt
from pgdr_tui.timescale import Viewport, to_datetime

if TYPE_CHECKING:
    from backend.catalog import Catalog, CatalogBackup
    from backend.recovery import RecoveryView
    from backend.walindex import WalEvent


#: Of the events sharing the cursor's column, how many the panel can list (a week per column holds thousands).
HERE_LISTED = 20


class Cell(IntEnum):
    """What one column of a timeline row shows, in drawing priority order."""

    NONE = 0
    WAL_ONLY = 1  # WAL archived, but no base backup before it: not recoverable
    PARTIAL = 2  # part of the column is recoverable
    GAP = 3  # WAL missing: not recoverable (drawn even where part of the column is recoverable)
    FULL = 4  # the whole column is recoverable


class Mark(IntEnum):
    """What a column of the backup or event row shows; of several in one column, the highest is drawn.

    A full backup outranks an incremental: a restore of any incremental starts from a full one, so
    where a column holds both, the full backup is the one worth seeing.
    """

    NONE = 0
    LOGICAL = 1
    INCREMENTAL = 2
    BACKUP = 3
    RESTORE_POINT = 4
    DESTRUCTIVE = 5


@dataclass
class Intervals:
    """Sorted, disjoint, half-open ``[start, end)`` intervals in POSIX seconds, queried by bisect."""

    starts: list[float] = field(default_factory=list)
    ends: list[float] = field(default_factory=list)

    @classmethod
    def union(cls, spans: Sequence[tuple[float, float]]) -> Intervals:
        out = cls()
        for start, end in sorted(spans):
            if end < start:
                continue
            if out.ends and start <= out.ends[-1]:
                out.ends[-1] = max(out.ends[-1], end)
            else:
                out.starts.append(start)
                out.ends.append(end)
        return out

    def overlap(self, a: float, b: float) -> tuple[bool, bool]:
        """(some of ``[a, b)`` is covered, all of it is)."""
        i = bisect.bisect_right(self.ends, a)
        if i >= len(self.starts) or self.starts[i] >= b:
            return False, False
        return True, self.starts[i] <= a and self.ends[i] >= b

    def contains(self, t: float) -> bool:
        i = bisect.bisect_right(self.ends, t)
        return i < len(self.starts) and self.starts[i] <= t

    @property
    def first(self) -> float | None:
        return self.starts[0] if self.starts else None

    @property
    def last(self) -> float | None:
        return self.ends[-1] if self.ends else None


@dataclass
class Row:
    """One PostgreSQL timeline's row: where it is recoverable, where WAL is missing, where WAL exists."""

    timeline: int
    recoverable: Intervals
    gaps: Intervals
    wal: Intervals
    #: No running cluster continues it (``RecoveryTimeline.abandoned``): restores follow it only when named.
    abandoned: bool = False

    def cell(self, a: float, b: float) -> Cell:
        some, full = self.recoverable.overlap(a, b)
        if full:
            return Cell.FULL
        if self.gaps.overlap(a, b)[0]:
            return Cell.GAP  # a gap must show at every zoom level, even inside a mostly recoverable column
        if some:
            return Cell.PARTIAL
        if self.wal.overlap(a, b)[0]:
            return Cell.WAL_ONLY
        return Cell.NONE


@dataclass(frozen=True)
class Columns:
    """The visible columns of every row, computed once per viewport change."""

    viewport: Viewport
    rows: list[list[Cell]]
    backups: list[Mark]
    events: list[Mark]
    #: How many events each column holds: two or more are drawn as their count, not one mark over the others.
    event_counts: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class NearEvent:
    time: datetime
    kind: str
    text: str
    #: The transaction of a destructive event: a restore to it stops just before that transaction.
    xid: int | None = None

    @property
    def destructive(self) -> bool:
        return self.kind != "restore_point"


@dataclass(frozen=True)
class _Near:
    before: NearEvent | None
    after: NearEvent | None
    at: NearEvent | None
    here: tuple[NearEvent, ...]
    here_count: int


@dataclass(frozen=True)
class NearItem:
    """A backup or an event around the cursor, or the cursor itself (``cursor``), for the panel's list."""

    time: datetime
    kind: str
    text: str
    cursor: bool = False


@dataclass(frozen=True)
class CursorDetails:
    """What the details panel says about the instant under the cursor."""

    instant: datetime
    timeline: int
    recoverable: bool
    latest: bool
    reason: str
    backup: CatalogBackup | None = None
    window: Window | None = None
    first_segment: str | None = None
    last_segment: str | None = None
    segments: int = 0
    wal_bytes: int = 0
    wal_stored_bytes: int = 0
    estimated_seconds: float | None = None
    #: The nearest event before the instant (a restore to the instant replays it) and after it (it does not).
    before: NearEvent | None = None
    after: NearEvent | None = None
    #: The event exactly at the instant (the cursor landed on it with ``[``/``]``): what a restore does
    #: with it is said beside it (stops just before a drop, at a restore point).
    at: NearEvent | None = None
    #: The events in the cursor's column when it holds more than one (the timeline draws their count): the
    #: first ``HERE_LISTED`` of them, and how many there are.
    here: tuple[NearEvent, ...] = ()
    here_count: int = 0
    #: The backups a restore combines (``backend.manifest.chain``), the full one first and ``backup``
    #: last: just ``backup`` for a full backup, empty without one.
    chain: tuple[str, ...] = ()
    #: An incremental ``backup`` whose chain is broken: the backup gone from under it (then ``chain`` is empty).
    broken_chain: str = ""

    @property
    def target_timeline(self) -> str:
        """What a restore to this instant passes as recovery_target_timeline."""
        return "latest" if self.latest or self.timeline == self.latest_timeline else str(self.timeline)

    latest_timeline: int = 0


def describe_event(event: WalEvent) -> str:
    if event.kind == "restore_point":
        return f"restore point {event.name!r}"
    what = event.kind.replace("_", " ")
    rels = f" {', '.join(event.relations[:2])}" if event.relations else ""
    xid = f" xid {event.xid}" if event.xid else ""
    return f"{what}{xid}{rels}"


class TimelineModel:
    """Everything the timeline screen draws and reports, derived once from a ``RecoveryView``."""

    def __init__(self, view: RecoveryView) -> None:
        self.view = view
        self.catalog: Catalog = view.catalog
        self.timeline: RecoveryTimeline = view.timeline
        self.backups = {b.manifest.name: b for b in self.catalog.backups}
        self.latest_tli = self.timeline.latest_timeline()
        self.windows_by_tli: dict[int, list[Window]] = {}
        for w in self.timeline.windows:
            self.windows_by_tli.setdefault(w.timeline, []).append(w)
        #: Each timeline's windows from the lowest rank to the highest (of equals, the first listed
        #: highest), and their starts: ``details`` finds the best window holding an instant without
        #: looking at the others (a year of backups is 1,500 windows, and scrubbing asks every step).
        self._ranked: dict[int, list[Window]] = {}
        self._ranked_starts: dict[int, list[datetime]] = {}
        for tli, windows in self.windows_by_tli.items():
            ranked = sorted(enumerate(windows), key=lambda iw: (self._window_rank(iw[1]), -iw[0]))
            self._ranked[tli] = [w for _, w in ranked]
            self._ranked_starts[tli] = [w.start for _, w in ranked]
        on_latest = self.windows_by_tli.get(self.latest_tli, [])
        latest_end = max((w.end_lsn for w in on_latest), default=None)
        #: What a "latest" restore replays from: of the windows reaching the archive's end, the best.
        self._latest_window = max(
            (w for w in on_latest if w.end_lsn == latest_end), key=self._window_rank, default=None
        )
        self.rows = [self._row(tli) for tli in self.timeline.timelines if self._has_data(tli)]
        abandoned = set(self.timeline.abandoned())
        for row in self.rows:
            row.abandoned = row.timeline in abandoned
        if not self.rows:
            self.rows = [Row(self.latest_tli, Intervals(), Intervals(), Intervals())]
        ordered = sorted(self.catalog.backups, key=lambda b: b.manifest.stop_time)
        self.backup_times = [b.manifest.stop_time.timestamp() for b in ordered]
        self.backup_order = ordered
        self.backup_kinds = [_backup_mark(b) for b in ordered]
        #: Whether any backup is incremental: the legend names the incremental mark only then.
        self.has_incremental = any(b.manifest.incremental for b in ordered)
        self._physical = {b.manifest.name: b.manifest for b in ordered if b.manifest.kind == "physical"}
        # Each record once already (the backend's view); a rewrite loses no rows and is not drawn.
        timed = sorted((e for e in view.events if e.time is not None and e.kind != "rewrite"), key=_event_time)
        self.events: list[WalEvent] = timed
        self.event_times = [_event_time(e) for e in timed]
        self.lineage = lineage(self.catalog.histories)
        #: Per timeline, the events a restore following it replays (and their times); under None, all of
        #: them. After a branch each timeline has records of its own: the panel names only those.
        self._replayed: dict[int | None, tuple[list[float], list[WalEvent]]] = {None: (self.event_times, timed)}
        for tli in self.timeline.timelines:
            on = [e for e in timed if e.replayed_on(tli, self.lineage)]
            self._replayed[tli] = ([_event_time(e) for e in on], on)
        self.event_kinds = [Mark.RESTORE_POINT if e.kind == "restore_point" else Mark.DESTRUCTIVE for e in timed]
        self.marks = sorted(set(self.backup_times) | set(self.event_times))
        newest = self.catalog.newest_segment()
        self.newest_archive: datetime | None = newest[1] if newest else None
        self.newest_segment: str | None = newest[0] if newest else None
        latest = [w for w in self.timeline.windows if w.timeline == self.latest_tli]
        self.earliest_recoverable = min((w.start for w in latest), default=None)
        self.latest_recoverable = max((w.end for w in latest), default=None)

    # --- building ------------------------------------------------------------------------------

    def _has_data(self, tli: int) -> bool:
        return (
            bool(self.timeline.windows_on(tli))
            or any(g.timeline == tli for g in self.timeline.gaps)
            or any(r.timeline == tli for r in self.catalog.wal)
        )

    def _segment_start(self, tli: int, number: int) -> float | None:
        info = self.timeline.segment_info(tli, number)
        if info is None:
            return None
        return (info.first_commit or info.archived_at).timestamp()

    def _segment_end(self, tli: int, number: int) -> float | None:
        info = self.timeline.segment_info(tli, number)
        return info.latest_time.timestamp() if info is not None else None

    def _row(self, tli: int) -> Row:
        """One timeline's row, drawn by the rule ``details`` answers with: recoverable exactly where one of
        the timeline's windows holds the instant (and at the end of the archive, which a "latest"
        restore reaches), so a column never says "WAL only" where the panel says RECOVERABLE.

        A timeline born of a promotion holds copies of its parent's last segment (the parent's records
        up to the switch); its own WAL is drawn from its birth (when its ``.history`` was archived), so
        the parent's history is drawn once, on the parent's row, and not as WAL without a backup.
        """
        spans = [(w.start.timestamp(), w.end.timestamp()) for w in self.timeline.windows_on(tli)]
        if tli == self.latest_tli and self._latest_window is not None:
            end = self._latest_window.end.timestamp()
            spans.append((end, end + 1e-3))  # the latest instant: "RECOVERABLE: latest"
        gaps = []
        for g in self.timeline.gaps:
            if g.timeline != tli:
                continue
            a = self._segment_end(tli, g.after_segment.number)
            b = self._segment_start(tli, g.missing_to.number + 1)
            if a is not None and b is not None:
                gaps.append((a, max(a, b)))
        runs: dict[int, int] = {}
        for r in self.catalog.wal:
            if r.timeline == tli:
                runs[r.first.number] = max(runs.get(r.first.number, r.last.number), r.last.number)
        born = self.catalog.history_times.get(tli) if tli in self.catalog.histories else None
        wal = []
        for first, last in runs.items():
            a = self._segment_start(tli, first)
            b = self._segment_end(tli, last)
            if a is not None and b is not None:
                if born is not None:
                    a = max(a, born.timestamp())
                wal.append((a, max(a, b)))
        return Row(tli, Intervals.union(spans), Intervals.union(gaps), Intervals.union(wal))

    # --- the extent and navigation --------------------------------------------------------------

    def extent(self) -> tuple[float, float] | None:
        """The span worth showing: first data to last data."""
        firsts = [v for row in self.rows for v in (row.recoverable.first, row.wal.first, row.gaps.first) if v]
        lasts = [v for row in self.rows for v in (row.recoverable.last, row.wal.last, row.gaps.last) if v]
        firsts += self.backup_times[:1] + self.event_times[:1]
        lasts += self.backup_times[-1:] + self.event_times[-1:]
        if not firsts or not lasts:
            return None
        return min(firsts), max(lasts)

    def previous_mark(self, t: float) -> float | None:
        i = bisect.bisect_left(self.marks, t - 1e-6)
        return self.marks[i - 1] if i > 0 else None

    def next_mark(self, t: float) -> float | None:
        i = bisect.bisect_right(self.marks, t + 1e-6)
        return self.marks[i] if i < len(self.marks) else None

    # --- drawing ---------------------------------------------------------------------------------

    def columns(self, viewport: Viewport) -> Columns:
        spc = viewport.spc
        starts = [viewport.column_start(c) for c in range(viewport.width + 1)]
        rows = [[row.cell(starts[c], starts[c + 1]) for c in range(viewport.width)] for row in self.rows]
        counts = self._counts(self.event_times, viewport.left, spc, viewport.width)
        return Columns(
            viewport,
            rows,
            self._marks(self.backup_times, self.backup_kinds, viewport.left, spc, viewport.width),
            self._marks(self.event_times, self.event_kinds, viewport.left, spc, viewport.width),
            counts,
        )

    @staticmethod
    def _counts(times: list[float], left: float, spc: float, width: int) -> list[int]:
        out = [0] * width
        i = bisect.bisect_left(times, left)
        right = left + width * spc
        while i < len(times) and times[i] < right:
            column = int((times[i] - left) // spc)
            if 0 <= column < width:
                out[column] += 1
            i += 1
        return out

    @staticmethod
    def _marks(times: list[float], kinds: list[Mark], left: float, spc: float, width: int) -> list[Mark]:
        out = [Mark.NONE] * width
        i = bisect.bisect_left(times, left)
        right = left + width * spc
        while i < len(times) and times[i] < right:
            column = int((times[i] - left) // spc)
            if 0 <= column < width and kinds[i] > out[column]:
                out[column] = kinds[i]
            i += 1
        return out

    # --- the details panel -----------------------------------------------------------------------

    def details(
        self, instant: datetime, *, latest: bool = False, column: tuple[float, float] | None = None
    ) -> CursorDetails:
        """Whether ``instant`` is recoverable, on which timeline, from which backup, with which WAL.

        The newest timeline whose windows hold the instant wins (what ``recovery_target_timeline =
        latest`` reaches); an instant only an older timeline holds (before a promotion, or on an
        abandoned branch) is reported with that timeline, which the restore then names explicitly. On
        an event, only a timeline that replays its record counts: the event belongs to the timeline
        whose WAL holds it, and its branch's. The events before and after are the chosen timeline's.
        ``latest`` means the operator asked for the end of the archive: a "latest" target, which
        replays everything (a time target must lie before the last commit to be reached).
        ``column`` is the span of the cursor's column: the events sharing it are listed.
        """
        t = instant.timestamp()
        here, count = self._here(column) if column is not None else ((), 0)
        if latest and self._latest_window is not None:
            window = self._latest_window
            near = _Near(*self._near(t, self.latest_tli), here, count)
            return self._recoverable(instant, self.latest_tli, window, None, near, latest=True)
        standing = self._events_at(t)
        for tli in sorted(self._ranked, reverse=True):
            if standing and not any(e.replayed_on(tli, self.lineage) for e in standing):
                continue  # the cursor stands on another branch's record: a restore on this one never meets it
            ranked = self._ranked[tli]
            # Of the windows starting by the instant, the highest ranked one still open at it.
            for i in range(bisect.bisect_right(self._ranked_starts[tli], instant) - 1, -1, -1):
                if ranked[i].contains(instant):
                    near = _Near(*self._near(t, tli), here, count)
                    return self._recoverable(instant, tli, ranked[i], instant, near)
        near = _Near(*self._near(t, None), here, count)
        return CursorDetails(
            instant,
            self.latest_tli,
            False,
            False,
            self._why(instant),
            latest_timeline=self.latest_tli,
            before=near.before,
            after=near.after,
            at=near.at,
            here=near.here,
            here_count=near.here_count,
        )

    def _window_rank(self, window: Window) -> tuple[datetime, datetime]:
        """The window whose backup replays the least WAL: latest start, then newest backup.

        Windows inherited across a promotion all start at the new timeline's birth; the newest backup
        among them is the one to use (the backend's planner takes the first, so the console passes
        the backup it shows explicitly).
        """
        backup = self.backups.get(window.base_backup)
        return window.start, backup.manifest.stop_time if backup is not None else window.start

    def _recoverable(
        self,
        instant: datetime,
        tli: int,
        window: Window,
        target: datetime | None,
        near: _Near,
        *,
        latest: bool = False,
    ) -> CursorDetails:
        backup = self.backups.get(window.base_backup)
        size = self.timeline.segment_size
        first = window.first_segment.number
        if backup is not None and backup.manifest.wal_start:
            first = SegmentName.parse(backup.manifest.wal_start, size).number
        last = window.last_segment.number
        if target is not None:
            reach = self.timeline.segment_reaching(tli, first, target)
            last = reach if reach is not None else last
        segments = self.timeline.segments_between(tli, first, max(first, last))
        wal_bytes = len(segments) * size
        members, broken = self.chain_of(backup)
        # A restore of an incremental unpacks and combines its whole chain: the estimate counts it all,
        # as the restore plan's does.
        if members:
            base = sum(self._physical[name].size_bytes for name in members)
        else:
            base = backup.manifest.size_bytes if backup is not None else 0
        reason = "latest: replays all archived WAL" if latest else "inside a recovery window"
        return CursorDetails(
            instant,
            tli,
            True,
            latest,
            reason,
            backup=backup,
            window=window,
            first_segment=segments[0].segment.name if segments else None,
            last_segment=segments[-1].segment.name if segments else None,
            segments=len(segments),
            wal_bytes=wal_bytes,
            wal_stored_bytes=sum(s.stored_bytes for s in segments),
            estimated_seconds=estimate_restore_seconds(base, wal_bytes),
            latest_timeline=self.latest_tli,
            chain=members,
            broken_chain=broken,
            before=near.before,
            after=near.after,
            at=near.at,
            here=near.here,
            here_count=near.here_count,
        )

    def chain_of(self, backup: CatalogBackup | None) -> tuple[tuple[str, ...], str]:
        """(the chain a restore of ``backup`` combines, full first; the missing backup when it is broken).

        Read from every repository's backups (the catalog), as the restore plan reads it.
        """
        if backup is None or backup.manifest.kind != "physical":
            return (), ""
        try:
            return tuple(m.name for m in chain(backup.manifest, self._physical)), ""
        except BrokenChain as exc:
            return (), exc.missing

    def _why(self, instant: datetime) -> str:
        windows = self.timeline.windows
        if not windows:
            return "nothing is recoverable yet: no base backup with complete WAL"
        t = instant.timestamp()
        if any(row.gaps.contains(t) for row in self.rows):
            return "in a WAL gap: segments are missing from the archive"
        if instant < min(w.start for w in windows):
            return "before the first base backup finished"
        if instant >= max(w.end for w in windows):
            return "after the last archived commit"
        return "not reached: no backup's contiguous WAL covers it (a gap or a timeline switch)"

    def _near(self, t: float, tli: int | None) -> tuple[NearEvent | None, NearEvent | None, NearEvent | None]:
        """(the last event before ``t``, the first event after ``t``, the event at ``t``) of those a
        restore following timeline ``tli`` replays (None: of all).

        An event the cursor stands on is neither before nor after it: a restore to a drop stops just
        before it (the panel must not list it as replayed), one to a restore point stops at it.
        """
        times, events = self._replayed.get(tli) or ([], [])
        lo = bisect.bisect_left(times, t - 1e-3)
        hi = bisect.bisect_right(times, t + 1e-3)
        at = self._near_event(events[lo]) if hi > lo else None
        before = self._near_event(events[lo - 1]) if lo > 0 else None
        after = self._near_event(events[hi]) if hi < len(events) else None
        return before, after, at

    def _here(self, column: tuple[float, float]) -> tuple[tuple[NearEvent, ...], int]:
        lo = bisect.bisect_left(self.event_times, column[0])
        hi = bisect.bisect_left(self.event_times, column[1])
        if hi - lo < 2:
            return (), 0
        return tuple(self._near_event(e) for e in self.events[lo : min(hi, lo + HERE_LISTED)]), hi - lo

    @staticmethod
    def _near_event(event: WalEvent) -> NearEvent:
        assert event.time is not None
        return NearEvent(
            event.time, event.kind, describe_event(event), event.xid if event.kind != "restore_point" else None
        )

    def nearby(self, instant: datetime, lines: int) -> list[NearItem]:
        """``lines`` items in time order: the backups and events around ``instant`` and the cursor itself,
        as many on each side as there are (the rest of the room to the other side): what the panel lists
        when it has room."""
        t = instant.timestamp()
        room = max(0, lines - 1)
        earlier: list[NearItem] = []
        later: list[NearItem] = []
        for times, make in ((self.backup_times, self._backup_item), (self.event_times, self._event_item)):
            i = bisect.bisect_left(times, t - 1e-3)
            earlier += [make(k) for k in range(max(0, i - room), i)]
            later += [make(k) for k in range(i, min(len(times), i + room))]
        earlier.sort(key=lambda item: item.time)
        later.sort(key=lambda item: item.time)
        before = min(len(earlier), max(room // 2, room - len(later)))
        after = min(len(later), room - before)
        cursor = NearItem(instant, "cursor", "", cursor=True)
        return [*earlier[len(earlier) - before :], cursor, *later[:after]]

    def _backup_item(self, k: int) -> NearItem:
        m = self.backup_order[k].manifest
        if m.kind != "physical":
            return NearItem(m.stop_time, "logical", f"dump {m.name}, {fmt.size(m.size_bytes)}")
        if m.incremental:
            return NearItem(m.stop_time, "incremental", f"incremental {m.name} on {m.parent}, {fmt.size(m.size_bytes)}")
        return NearItem(m.stop_time, "backup", f"backup {m.name}, {fmt.size(m.size_bytes)}")

    def _event_item(self, k: int) -> NearItem:
        event = self.events[k]
        assert event.time is not None
        return NearItem(event.time, event.kind, describe_event(event))

    def event_at(self, t: float, timeline: int | None = None) -> WalEvent | None:
        """The event exactly at ``t`` (the cursor lands on events with ``[``/``]``); with ``timeline``,
        one a restore following that timeline replays."""
        times, events = self._replayed.get(timeline) or ([], [])
        i = bisect.bisect_left(times, t - 1e-6)
        if i < len(events) and abs(times[i] - t) < 1e-3:
            return events[i]
        return None

    def _events_at(self, t: float) -> list[WalEvent]:
        """Every event at ``t``, of any timeline."""
        lo = bisect.bisect_left(self.event_times, t - 1e-3)
        return self.events[lo : bisect.bisect_right(self.event_times, t + 1e-3)]

    def backup_at(self, t: float) -> CatalogBackup | None:
        i = bisect.bisect_left(self.backup_times, t - 1e-6)
        if i < len(self.backup_order) and abs(self.backup_times[i] - t) < 1e-3:
            return self.backup_order[i]
        return None


def _backup_mark(backup: CatalogBackup) -> Mark:
    if backup.manifest.kind != "physical":
        return Mark.LOGICAL
    return Mark.INCREMENTAL if backup.manifest.incremental else Mark.BACKUP


def _event_time(event: WalEvent) -> float:
    assert event.time is not None
    return event.time.timestamp()


__all__ = ["Cell", "Columns", "CursorDetails", "Mark", "NearEvent", "NearItem", "TimelineModel", "to_datetime"]
