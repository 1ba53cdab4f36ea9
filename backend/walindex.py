"""What an archived WAL segment covers: commit times, the transactions that ended in it, restore
points and destructive transactions.

File times are not commit times: a segment archived at 14:05 may hold commits from 09:00 (a quiet
server) or be a copy made hours later. This module reads the WAL itself, through PostgreSQL 15's
``pg_waldump``, and keeps, per segment, the range of commit timestamps, which transactions committed
or aborted in it (compactly, see :class:`XidRuns`), the named restore points and the transactions that
destroyed relations (DROP, TRUNCATE, DROP DATABASE), so an operator can pick a recovery target "just
before the TRUNCATE", or any committed transaction by its xid.

What pg_waldump prints (PostgreSQL 15, checked on a real cluster), one line per record::

    rmgr: Transaction len (rec/tot):     34/    34, tx:        725, lsn: 0/01521700, prev 0/015216C0, desc: ...
    ... desc: COMMIT 2026-11-25 14:33:18.285139 UTC
    ... desc: COMMIT <time>; rels: base/5/16388 base/5/16384; inval msgs: ...        (TRUNCATE)
    ... desc: COMMIT <time>; rels: base/5/16389; dropped stats: 2/5/16389; inval ... (DROP TABLE)
    ... desc: COMMIT <time>; rels: base/5/16512; subxacts: 772; inval msgs: ...      (in a subtransaction)
    ... tx: 0, ... desc: COMMIT_PREPARED 770: <time>; rels: ...; dropped stats: ...  (two-phase commit)
    ... desc: ABORT <time>[; rels: ...][; dropped stats: ...]
    rmgr: XLOG ... tx: 0, ... desc: RESTORE_POINT before_migration
    rmgr: Storage ... desc: CREATE base/5/16396            (a new relfilenode; forks end _fsm, _vm, _init)
    rmgr: Storage ... desc: CREATE pg_tblspc/16402/PG_15_202209061/5/16410         (in a tablespace)
    rmgr: Storage ... desc: TRUNCATE base/5/16400 to 0 blocks flags 7
    rmgr: Standby ... tx: 727, ... desc: LOCK xid 727 db 5 rel 16384               (an ACCESS EXCLUSIVE lock)
    rmgr: Heap ... desc: INSERT off 11 flags 0x00, blkref #0: rel 1663/5/1259 blk 1  (a row into pg_class)
    rmgr: Database ... desc: DROP dir 1663/16508            (DROP DATABASE, before its COMMIT)
    rmgr: XLOG ... desc: FPI , blkref #0: rel 1663/5/16399 blk 0 FPW

* Times are printed in pg_waldump's *local* time zone with a zone abbreviation ("EST"), so pg_waldump
  is always run with ``TZ=UTC`` (and ``LC_ALL=C`` so its messages are not translated); the parser
  refuses any zone but UTC/GMT.
* WAL names relations by relfilenode path (``base/<db oid>/<relfilenode>``), never by table name;
  ``dropped stats`` entries are ``<kind>/<db oid>/<object oid>`` with kind 1 = database, 2 = relation,
  3 = function, and name the relation's OID, which differs from its relfilenode once the table has been
  truncated or rewritten. ``rels:`` lists only relations with WAL-logged files: not views, not
  temporary tables.
* RESTORE_POINT prints only the name: the record's ``rp_time`` is not shown. :func:`index_segment`
  reads it from the record's bytes in the segment file (checking the name stored beside it); the
  pure parser can only approximate it with the time of the commit before it.

How a commit is classified (``WalEvent.kind``; the console and ``pgdr timeline --events`` print the
kind with spaces for underscores). Each statement below was run on a PostgreSQL 15 server and its
records read with pg_waldump:

* DROP TABLE: ``Standby LOCK`` on each relation, ``Heap DELETE`` from the catalogs, and a commit whose
  ``rels:`` are the files and ``dropped stats`` the relations.
* TRUNCATE: ``Standby LOCK`` on the table, then per relation (table, toast, indexes) a ``Storage
  CREATE`` of a new relfilenode in the same tablespace, left empty (the indexes get their metapage as a
  page image); ``rels:`` are the old relfilenodes, nothing's statistics are dropped.
* ALTER TABLE ... SET TABLESPACE: the same, but the new relfilenodes are created in the other
  tablespace and filled with page images (``FPI``; an empty toast table gets none).
* REINDEX: new index relfilenodes filled with page images (or index records), old ones in ``rels:``.
* VACUUM FULL, CLUSTER, REFRESH MATERIALIZED VIEW: a transient table is created (``Standby LOCK`` on
  its new OID, then a ``Heap INSERT`` into ``pg_class``), filled, its relfilenodes swapped with the
  table's, then dropped: ``dropped stats`` name the transient relations, ``rels:`` the table's old
  files. REFRESH (and ALTER TABLE rewrites) also drop the old toast table and its index, OIDs X and
  X + 1, which existed: one such pair per transient heap is not counted as a drop.
* REFRESH MATERIALIZED VIEW CONCURRENTLY: temporary tables are created and dropped (``dropped stats``,
  no ``rels:``: temporary files are not WAL-logged); the view itself is changed row by row.

So a relation the commit drops was created by the transaction itself when its ``LOCK`` record was
followed by an insert into ``pg_class`` (or its OID is a relfilenode the transaction created), and
existed before when it was locked without that (a ``Standby LOCK`` is written on the first ACCESS
EXCLUSIVE lock of a relation in a transaction, for creating and dropping alike). A relfilenode the
transaction created for an existing relation replaced that relation's files.

``drop``
    The commit drops relations that existed before the transaction: DROP TABLE / INDEX / VIEW /
    MATERIALIZED VIEW / SEQUENCE, DROP SCHEMA CASCADE, a temporary table dropped at the end of its
    session, and also the index that ALTER TABLE ... ALTER COLUMN TYPE or REINDEX CONCURRENTLY replaces.
    ``relations`` are the relfilenodes removed, ``oids`` the dropped relations' OIDs.
``truncate``
    Relfilenodes are removed at commit without any pre-existing relation being dropped, and a new
    relfilenode the transaction gave an existing relation, in a tablespace files were removed from, was
    left empty or got rows inserted (TRUNCATE, also followed by reloading the table). TRUNCATE does not
    write a Storage TRUNCATE record: that is written only by VACUUM cutting empty pages off a table, or
    by TRUNCATE of a table created in the same transaction, neither of which destroys committed data,
    so neither is reported.
``rewrite``
    Relations were rebuilt without losing rows: every file removed is accounted for by a transient
    relation dropped or a replacement filled with page images or moved to another tablespace (VACUUM
    FULL, CLUSTER, REFRESH MATERIALIZED VIEW, ALTER TABLE rewrites, REINDEX, ALTER TABLE / INDEX ... SET
    TABLESPACE), or the transaction dropped only relations it created itself (REFRESH MATERIALIZED VIEW
    CONCURRENTLY; also a temporary table created and dropped in one transaction, which the WAL does not
    tell apart from it). Not destructive; listed so a ``rels:`` commit is explained.
``relation_files_removed``
    Relfilenodes are removed at commit, but the records that tell a TRUNCATE from a rewrite are not in
    this segment: the transaction began in an earlier one (a long VACUUM FULL, a TRUNCATE at the start
    of a long load). Counted as destructive, since it may be a TRUNCATE.
``relations_without_files_dropped``
    The commit drops relations that have no WAL-logged files (views, temporary tables), and whether
    the transaction created them itself (REFRESH MATERIALIZED VIEW CONCURRENTLY) or they existed
    (DROP VIEW) is not in this segment. Counted as destructive, since it may be a DROP VIEW.
``drop_database``
    DROP DATABASE: ``relations`` are the database directories (``base/<db oid>``, or
    ``pg_tblspc/<spc oid>/<db oid>`` without the version directory), ``oids`` the database OID.
``restore_point``
    ``pg_create_restore_point(name)``: usable as ``recovery_target_name``.

``relations`` lists the relfilenodes removed at commit that the transaction had not created itself.
Row-level destruction (DELETE without WHERE, UPDATE of every row) is not detected: it looks like any
other DML.

Each segment is read on its own, so a transaction that began in an earlier segment is classified from
what this one shows: a dropped relation not locked here counts as transient when its OID is newer
than every relfilenode the commit removes (a table's files are numbered from its OID up), and existed
otherwise; removed files not accounted for by what this segment shows make ``relation_files_removed``
unless a TRUNCATE is seen. The time of drop/truncate/rewrite events is the commit time: to undo one,
recover to ``recovery_target_xid = xid`` with ``recovery_target_inclusive = false`` (or to a time
before it).

A record belongs to the segment it starts in, and its event to that segment's timeline. A record that
starts near the end of a segment and ends in the next one can only be decoded with the next segment at
hand: :func:`index_segment` uses it when it lies beside the segment (or is given), and says in
``tail_complete`` whether every record starting in the segment was decoded.
"""

from __future__ import annotations

import base64
import bisect
import os
import re
import struct
import subprocess
import tempfile
import zlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal, cast, get_args

from backend.errors import PgdrError
from backend.timeline import History
from backend.walnames import PARTIAL_RE, SEGMENT_RE, SegmentName, format_lsn, parse_lsn

EventKind = Literal[
    "restore_point",
    "drop",
    "truncate",
    "rewrite",
    "relation_files_removed",
    "relations_without_files_dropped",
    "drop_database",
]
EVENT_KINDS: tuple[EventKind, ...] = get_args(EventKind)
#: What may have destroyed committed data: the two neutral kinds count, since either may hide a
#: TRUNCATE or a DROP VIEW.
DESTRUCTIVE_KINDS: frozenset[str] = frozenset(
    {"drop", "truncate", "relation_files_removed", "relations_without_files_dropped", "drop_database"}
)
TimeSource = Literal["commit", "record", "preceding_commit"]

DEFAULT_TABLESPACE = 1663
GLOBAL_TABLESPACE = 1664
STATS_KIND_DATABASE = 1
STATS_KIND_RELATION = 2

# Errors with which pg_waldump reports the end of valid WAL (zeroed or recycled space after the last
# record of a partial or in-progress segment), after "error in WAL record at X/Y: ". PostgreSQL's own
# recovery treats every one of these as the end of WAL.
END_OF_WAL_ERRORS = (
    "invalid record length",
    "invalid record offset",
    "contrecord",
    "invalid resource manager ID",
    "incorrect prev-link",
    "incorrect resource manager data checksum",
    "invalid magic number",
    "invalid info bits",
    "unexpected pageaddr",
    "out-of-sequence timeline ID",
)


class WalIndexError(PgdrError):
    """pg_waldump could not read a segment, or printed something this module does not understand."""


class WaldumpUnavailable(WalIndexError):
    """pg_waldump could not be started: a fault of this host, not of the segment, so no segment is
    to be marked unreadable for it."""


@dataclass
class WalEvent:
    """A restore point or a transaction that dropped, truncated or rewrote relations.

    ``lsn`` is the restore point record's or the commit record's start; ``xid`` the top-level
    transaction (None for restore points). ``time_source`` says where ``time`` comes from: "commit"
    (the commit record's timestamp), "record" (the restore point's own rp_time, read from the segment
    file), "preceding_commit" (a restore point whose record could not be read: the time of the last
    commit before it, a lower bound) or None (no time known).

    ``timeline`` is the timeline of the segment whose WAL holds the record (its name says which): after
    a branch each timeline has records of its own at the same LSNs, and a restore meets a record only on
    a timeline whose history passes through it (:meth:`replayed_on`). 0 only for a parser fed lines
    without a segment name.
    """

    kind: EventKind
    lsn: int
    time: datetime | None
    xid: int | None = None
    name: str | None = None
    relations: list[str] = field(default_factory=list)
    oids: list[int] = field(default_factory=list)
    time_source: TimeSource | None = None
    timeline: int = 0

    @property
    def destructive(self) -> bool:
        return self.kind in DESTRUCTIVE_KINDS

    def replayed_on(self, timeline: int, lineage: Lineage) -> bool:
        """Whether recovery following ``timeline`` replays this record: it is in that timeline's own
        WAL, or in an ancestor's before the LSN where the timeline's history left the ancestor."""
        return self.timeline == timeline or self.lsn < lineage.get(timeline, {}).get(self.timeline, -1)

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "timeline": self.timeline,
            "lsn": format_lsn(self.lsn),
            "time": _time_json(self.time),
            "time_source": self.time_source,
            "xid": self.xid,
            "name": self.name,
            "relations": list(self.relations),
            "oids": list(self.oids),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any], timeline: int) -> WalEvent:
        """``timeline`` is the segment's: its name says which timeline holds the record (entries written
        before events named theirs have none, and a segment's name cannot be wrong about it)."""
        kind = data["kind"]
        if kind not in EVENT_KINDS:
            raise ValueError(f"unknown WAL event kind {kind!r}")
        source = data.get("time_source")
        if source not in (None, "commit", "record", "preceding_commit"):
            raise ValueError(f"unknown WAL event time source {source!r}")
        return cls(
            kind=cast(EventKind, kind),
            lsn=parse_lsn(data["lsn"]),
            time=_time_from_json(data.get("time")),
            xid=data.get("xid"),
            name=data.get("name"),
            relations=list(data.get("relations", [])),
            oids=[int(o) for o in data.get("oids", [])],
            time_source=cast("TimeSource | None", source),
            timeline=timeline,
        )


#: Per timeline, the LSN at which its history left each ancestor (its ``.history`` file): the records
#: an ancestor wrote before that LSN are on the timeline's path too.
Lineage = Mapping[int, Mapping[int, int]]


def lineage(histories: Mapping[int, str]) -> dict[int, dict[int, int]]:
    """The archive's ``.history`` files (timeline -> text) as a :data:`Lineage`."""
    return {tli: dict(History.parse(tli, text).parents) for tli, text in histories.items()}


def segment_timeline(segment: str) -> int:
    """The timeline in a segment's name (its first eight hex digits), whatever the segment size."""
    return int(segment[:8], 16)


def each_once(events: Iterable[WalEvent], lineage: Lineage) -> list[WalEvent]:
    """``events`` in LSN order, each record once.

    A timeline born of a promotion begins with a copy of its parent's last segment up to the switch,
    so the records before the switch (a restore point, a drop) are read twice: in the parent's segment
    and in the child's copy. The record is the parent's, kept with the parent's timeline; the child
    replays it all the same (:meth:`WalEvent.replayed_on`). The same LSN on two branches after the
    switch is two records, and both stay.
    """
    kept: dict[tuple[str, int, int | None, str | None], list[WalEvent]] = {}
    out: list[WalEvent] = []
    for event in sorted(events, key=lambda e: (e.lsn, e.timeline)):  # a parent's number is below its child's
        same = kept.setdefault((event.kind, event.lsn, event.xid, event.name), [])
        if not any(earlier.replayed_on(event.timeline, lineage) for earlier in same):
            same.append(event)
            out.append(event)
    return out


XidFate = Literal["committed", "subtransaction", "aborted"]
XID_FATES: tuple[XidFate, ...] = ("committed", "subtransaction", "aborted")


@dataclass(frozen=True)
class XidRuns:
    """The transactions that ended in one segment: top-level commits, subtransactions committed with
    their parent, and aborts (of either), so ``--xid N`` finds its segment without an event per commit.

    Kept as runs of consecutive xids: xids are handed out in order and mostly end in the order they
    began, so a segment's thousands of commits are a few runs (an abort or a transaction still running
    splits one). ``packed`` is zlib over LEB128 varints: for each fate in ``XID_FATES`` the number of
    runs, then per run its distance from the end of the previous one (from ``low`` for the first) and
    its length minus one; a savepoint after every statement, which alternates fates, is a pattern zlib
    folds away. ``low``/``high`` bound every xid listed, so a lookup skips a segment without unpacking
    it. Xids are the 32-bit numbers the WAL records; an empty segment has ``packed`` empty.
    """

    low: int = 0
    high: int = 0
    packed: bytes = b""

    @classmethod
    def build(cls, ended: dict[XidFate, set[int]]) -> XidRuns:
        everything = set().union(*ended.values())
        if not everything:
            return cls()
        low = min(everything)
        numbers: list[int] = []
        for fate in XID_FATES:
            runs = _runs(sorted(ended.get(fate, ())))
            numbers.append(len(runs))
            previous = low
            for first, last in runs:
                numbers += [first - previous, last - first]
                previous = last
        return cls(low, max(everything), zlib.compress(_varints(numbers), 9))

    def fate(self, xid: int) -> XidFate | None:
        """How ``xid`` ended in this segment, or None when it did not end here."""
        if not self.packed or not self.low <= xid <= self.high:
            return None
        for fate, runs in self.runs().items():
            at = bisect.bisect_right(runs, (xid, 1 << 63)) - 1
            if at >= 0 and runs[at][0] <= xid <= runs[at][1]:
                return fate
        return None

    def runs(self) -> dict[XidFate, list[tuple[int, int]]]:
        """Per fate, the runs (first, last xid) in order."""
        numbers = iter(_read_varints(zlib.decompress(self.packed)) if self.packed else [0, 0, 0])
        out: dict[XidFate, list[tuple[int, int]]] = {}
        for fate in XID_FATES:
            runs: list[tuple[int, int]] = []
            previous = self.low
            for _ in range(next(numbers)):
                first = previous + next(numbers)
                previous = first + next(numbers)
                runs.append((first, previous))
            out[fate] = runs
        return out

    def to_json(self) -> dict[str, Any]:
        return {"low": self.low, "high": self.high, "runs": base64.b64encode(self.packed).decode("ascii")}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> XidRuns:
        return cls(int(data["low"]), int(data["high"]), base64.b64decode(data["runs"], validate=True))


def _runs(numbers: list[int]) -> list[tuple[int, int]]:
    """Sorted distinct ``numbers`` as (first, last) runs of consecutive ones."""
    runs: list[tuple[int, int]] = []
    for n in numbers:
        if runs and runs[-1][1] + 1 == n:
            runs[-1] = (runs[-1][0], n)
        else:
            runs.append((n, n))
    return runs


def _varints(numbers: list[int]) -> bytes:
    out = bytearray()
    for number in numbers:
        rest = number
        while rest >= 0x80:
            out.append(rest & 0x7F | 0x80)
            rest >>= 7
        out.append(rest)
    return bytes(out)


def _read_varints(data: bytes) -> list[int]:
    numbers: list[int] = []
    value = shift = 0
    for byte in data:
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            numbers.append(value)
            value = shift = 0
    return numbers


@dataclass
class XidSightings:
    """Where the WAL index saw one transaction end, and how much of the archive it could look at.

    ``ends`` are (segment name, fate) in name order, on every timeline. The transaction may also have
    ended in a segment whose ended transactions are not known: ``unlisted`` names those (unreadable, or
    indexed by a pgdr that did not list them), ``unindexed`` counts those not indexed yet. ``newest`` is
    the highest xid seen ending anywhere (None when none is listed).
    """

    ends: list[tuple[str, XidFate]]
    unlisted: list[str]
    unindexed: int
    newest: int | None


class WalEvents(list[WalEvent]):
    """The archive's events in LSN order, each record once (:func:`each_once`), and (``find_xid``) where
    any transaction ended: what a restore plan needs to find a target no event names."""

    def __init__(self, events: Iterable[WalEvent], find_xid: Callable[[int], XidSightings]) -> None:
        super().__init__(events)
        self.find_xid = find_xid


@dataclass
class SegmentIndex:
    """The commits, restore points and destructive transactions of one WAL segment.

    ``first_commit``/``last_commit`` are the earliest and latest commit timestamps (COMMIT and
    COMMIT_PREPARED records; timestamps of concurrent commits are not strictly in LSN order), and
    ``first_lsn``/``last_lsn`` the LSNs of the first and last commit records. ``aborts`` counts ABORT
    and ABORT_PREPARED records, including those of rolled-back subtransactions. ``records`` counts the
    records decoded, ``last_record_lsn`` is the start of the last one. ``tail_complete`` is True when
    every record starting in the segment was decoded (it ends with a WAL switch, or the next segment
    supplied the end of the record crossing the boundary, or there is none); False means re-index once
    the next segment exists. ``stop_reason`` is pg_waldump's end-of-WAL message when valid WAL ended
    inside the segment (a .partial or in-progress segment), else None. ``xids`` are the transactions
    that ended in the segment; None only for an entry an older pgdr wrote, which did not list them.
    """

    segment: str
    first_commit: datetime | None = None
    last_commit: datetime | None = None
    commits: int = 0
    aborts: int = 0
    first_lsn: int | None = None
    last_lsn: int | None = None
    events: list[WalEvent] = field(default_factory=list)
    records: int = 0
    last_record_lsn: int | None = None
    tail_complete: bool = False
    stop_reason: str | None = None
    xids: XidRuns | None = field(default_factory=XidRuns)

    def destructive(self) -> list[WalEvent]:
        return [e for e in self.events if e.destructive]

    def restore_points(self) -> list[WalEvent]:
        return [e for e in self.events if e.kind == "restore_point"]

    def to_json(self) -> dict[str, Any]:
        return {
            "segment": self.segment,
            "first_commit": _time_json(self.first_commit),
            "last_commit": _time_json(self.last_commit),
            "commits": self.commits,
            "aborts": self.aborts,
            "first_lsn": _lsn_json(self.first_lsn),
            "last_lsn": _lsn_json(self.last_lsn),
            "records": self.records,
            "last_record_lsn": _lsn_json(self.last_record_lsn),
            "tail_complete": self.tail_complete,
            "stop_reason": self.stop_reason,
            "events": [e.to_json() for e in self.events],
            "xids": self.xids.to_json() if self.xids is not None else None,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SegmentIndex:
        return cls(
            segment=data["segment"],
            first_commit=_time_from_json(data.get("first_commit")),
            last_commit=_time_from_json(data.get("last_commit")),
            commits=int(data.get("commits", 0)),
            aborts=int(data.get("aborts", 0)),
            first_lsn=_lsn_from_json(data.get("first_lsn")),
            last_lsn=_lsn_from_json(data.get("last_lsn")),
            events=[WalEvent.from_json(e, segment_timeline(data["segment"])) for e in data.get("events", [])],
            records=int(data.get("records", 0)),
            last_record_lsn=_lsn_from_json(data.get("last_record_lsn")),
            tail_complete=bool(data.get("tail_complete", False)),
            stop_reason=data.get("stop_reason"),
            xids=XidRuns.from_json(data["xids"]) if data.get("xids") is not None else None,
        )


def _time_json(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _time_from_json(value: str | None) -> datetime | None:
    if value is None:
        return None
    parsed = datetime.fromisoformat(value)
    if parsed.tzinfo is None:
        raise ValueError(f"time without a UTC offset: {value!r}")
    return parsed


def _lsn_json(value: int | None) -> str | None:
    return format_lsn(value) if value is not None else None


def _lsn_from_json(value: str | None) -> int | None:
    return parse_lsn(value) if value is not None else None


# --- parsing pg_waldump's text -------------------------------------------------------------------

RECORD_RE = re.compile(
    r"^rmgr: (?P<rmgr>\S+)\s+len \(rec/tot\):\s*\d+/\s*(?P<tot>\d+), tx:\s*(?P<tx>\d+), "
    r"lsn: (?P<lsn>[0-9A-Fa-f]+/[0-9A-Fa-f]+), prev [0-9A-Fa-f]+/[0-9A-Fa-f]+, desc: (?P<desc>.*)$"
)
XACT_TIME_RE = re.compile(
    r"^(?:(?P<xid>\d+): )?(?P<date>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)(?P<frac>\.\d+)? (?P<zone>[^\s;]+)(?P<rest>.*)$"
)
BLKREF_RE = re.compile(r"\brel (\d+)/(\d+)/(\d+)(?: fork (\w+))? blk \d+")
RELPATH_RE = re.compile(r"^(?:base/(\d+)/(\d+)|global/(\d+)|pg_tblspc/(\d+)/[^/]+/(\d+)/(\d+))(?:_(\w+))?$")
UTC_ZONES = frozenset({"UTC", "GMT", "Z", "+00", "+0000", "+00:00", "UCT", "Etc/UTC"})
HEAP_RMGRS = frozenset({"Heap", "Heap2"})
LOCK_RE = re.compile(r"xid (\d+) db (\d+) rel (\d+)")
PG_CLASS = 1259  # pg_class's relfilenode (a mapped catalog: it changes only by VACUUM FULL pg_class)
HEAP_INSERTS = frozenset({"INSERT", "INSERT+INIT"})

RelKey = tuple[int, int, int]  # tablespace, database, relfilenode


def relation_key(path: str) -> tuple[RelKey, str | None] | None:
    """``base/5/16384`` -> ((1663, 5, 16384), None); ``base/5/16384_fsm`` -> (..., "fsm"); else None."""
    match = RELPATH_RE.match(path)
    if not match:
        return None
    g = match.groups()
    if g[0] is not None:
        key = (DEFAULT_TABLESPACE, int(g[0]), int(g[1]))
    elif g[2] is not None:
        key = (GLOBAL_TABLESPACE, 0, int(g[2]))
    else:
        key = (int(g[3]), int(g[4]), int(g[5]))
    return key, g[6]


@dataclass
class _Xact:
    """What a transaction (or subtransaction) did before its commit record.

    ``locked`` are the relations (database, OID) it took an ACCESS EXCLUSIVE lock on, ``new_oids``
    those of them it created (the lock was followed by an insert into ``pg_class``), ``last_lock`` the
    latest lock not yet followed by a ``pg_class`` change.
    """

    created: set[RelKey] = field(default_factory=set)
    bulk_written: set[RelKey] = field(default_factory=set)
    heap_written: set[RelKey] = field(default_factory=set)
    dropped_dirs: list[tuple[int, int]] = field(default_factory=list)
    locked: set[tuple[int, int]] = field(default_factory=set)
    new_oids: set[tuple[int, int]] = field(default_factory=set)
    last_lock: tuple[int, int] | None = None

    def merge(self, other: _Xact) -> None:
        self.created |= other.created
        self.bulk_written |= other.bulk_written
        self.heap_written |= other.heap_written
        self.dropped_dirs.extend(other.dropped_dirs)
        self.locked |= other.locked
        self.new_oids |= other.new_oids


@dataclass
class _Completion:
    kind: str  # COMMIT, COMMIT_PREPARED, ABORT, ABORT_PREPARED
    xid: int
    time: datetime
    rels: list[str]
    subxacts: list[int]
    stats: list[tuple[int, int, int]]


def parse_xact_time(date: str, frac: str | None, zone: str) -> datetime:
    if zone not in UTC_ZONES:
        raise WalIndexError(f"pg_waldump printed a time in zone {zone!r}: it prints local time, run it with TZ=UTC")
    base = datetime.strptime(date, "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC)
    micros = int((frac or ".0")[1:].ljust(6, "0")[:6])
    return base + timedelta(microseconds=micros)


def _parse_completion(ident: str, tx: int, text: str, lsn: int) -> _Completion:
    match = XACT_TIME_RE.match(text)
    if not match:
        raise WalIndexError(f"cannot read the {ident} record at {format_lsn(lsn)}: {text[:120]!r}")
    xid = int(match.group("xid")) if match.group("xid") else tx
    when = parse_xact_time(match.group("date"), match.group("frac"), match.group("zone"))
    rels: list[str] = []
    subxacts: list[int] = []
    stats: list[tuple[int, int, int]] = []
    for part in match.group("rest").split("; "):
        if part.startswith("rels: "):
            rels = part[len("rels: ") :].split()
        elif part.startswith("subxacts: "):
            subxacts = [int(x) for x in part[len("subxacts: ") :].split()]
        elif part.startswith("dropped stats: "):
            for item in part[len("dropped stats: ") :].split():
                kind, db, oid = item.split("/")
                stats.append((int(kind), int(db), int(oid)))
    return _Completion(ident, xid, when, rels, subxacts, stats)


class WaldumpParser:
    """Feed pg_waldump lines one at a time (the output of one run: a consecutive stretch of WAL).

    Lines that are not records ("first record is after ...", blank lines) are ignored, and so are
    records at or after ``stop_lsn`` when given. :meth:`result` returns the index built so far.
    """

    def __init__(self, segment: str = "", stop_lsn: int | None = None) -> None:
        self.index = SegmentIndex(segment=segment)
        self.stop_lsn = stop_lsn
        self.ended_with_switch = False
        self._xacts: dict[int, _Xact] = {}
        self._last_commit_time: datetime | None = None
        self._ended: dict[XidFate, set[int]] = {fate: set() for fate in XID_FATES}

    def feed(self, line: str) -> None:
        if not line.startswith("rmgr: "):
            return
        match = RECORD_RE.match(line.rstrip("\r\n"))
        if not match:
            raise WalIndexError(f"cannot read this pg_waldump line: {line[:160]!r}")
        lsn = parse_lsn(match.group("lsn"))
        if self.stop_lsn is not None and lsn >= self.stop_lsn:
            return
        rmgr, tx, desc = match.group("rmgr"), int(match.group("tx")), match.group("desc")
        ident, _, rest = desc.partition(" ")
        self.index.records += 1
        self.index.last_record_lsn = lsn
        self.ended_with_switch = rmgr == "XLOG" and ident == "SWITCH"
        if rmgr == "Transaction":
            self._transaction(ident, tx, rest, lsn)
        elif rmgr == "XLOG" and ident == "RESTORE_POINT":
            self.index.events.append(
                WalEvent(
                    "restore_point",
                    lsn,
                    self._last_commit_time,
                    name=rest,
                    time_source="preceding_commit" if self._last_commit_time else None,
                )
            )
        elif rmgr == "Storage" and ident == "CREATE":
            parsed = relation_key(rest.strip())
            if parsed is not None and parsed[1] in (None, "init") and tx:
                self._xacts.setdefault(tx, _Xact()).created.add(parsed[0])
        elif rmgr == "Database" and ident == "DROP" and tx:
            dirs = [(int(s), int(d)) for s, d in re.findall(r"(\d+)/(\d+)", rest)]
            self._xacts.setdefault(tx, _Xact()).dropped_dirs.extend(dirs)
        elif rmgr == "Standby" and ident == "LOCK" and tx:
            # tx 0: a standby snapshot's list of every lock held, not a lock this transaction took now
            locks = [(int(db), int(rel)) for xid, db, rel in LOCK_RE.findall(rest) if int(xid) == tx]
            if locks:
                xact = self._xacts.setdefault(tx, _Xact())
                xact.locked.update(locks)
                xact.last_lock = locks[-1]
        if tx in self._xacts and "blkref" in rest:
            xact = self._xacts[tx]
            for spc, db, rel, fork in BLKREF_RE.findall(rest):
                key = (int(spc), int(db), int(rel))
                if key in xact.created and fork in ("", "main"):
                    (xact.heap_written if rmgr in HEAP_RMGRS else xact.bulk_written).add(key)
                elif rmgr == "Heap" and key[2] == PG_CLASS and xact.last_lock is not None:
                    # A new relation is locked, then its row goes into pg_class; an existing one's row
                    # is updated or deleted after its lock.
                    if ident in HEAP_INSERTS:
                        xact.new_oids.add(xact.last_lock)
                    xact.last_lock = None

    def _transaction(self, ident: str, tx: int, rest: str, lsn: int) -> None:
        if ident not in ("COMMIT", "COMMIT_PREPARED", "ABORT", "ABORT_PREPARED"):
            return  # PREPARE (its effects come with COMMIT_PREPARED), ASSIGNMENT
        done = _parse_completion(ident, tx, rest, lsn)
        xact = _Xact()
        for xid in (done.xid, *done.subxacts):
            part = self._xacts.pop(xid, None)
            if part is not None:
                xact.merge(part)
        if ident.startswith("ABORT"):
            self.index.aborts += 1
            self._ended["aborted"].update((done.xid, *done.subxacts))
            return
        self._ended["committed"].add(done.xid)
        self._ended["subtransaction"].update(done.subxacts)
        index = self.index
        index.commits += 1
        if index.first_lsn is None:
            index.first_lsn = lsn
        index.last_lsn = lsn
        if index.first_commit is None or done.time < index.first_commit:
            index.first_commit = done.time
        if index.last_commit is None or done.time > index.last_commit:
            index.last_commit = done.time
        self._last_commit_time = done.time
        index.events.extend(_classify(done, xact, lsn))

    def result(self) -> SegmentIndex:
        self.index.xids = XidRuns.build(self._ended)
        if self.index.segment:
            for event in self.index.events:
                event.timeline = segment_timeline(self.index.segment)
        return self.index


def _classify(done: _Completion, xact: _Xact, lsn: int) -> list[WalEvent]:
    """The events of one commit record; see the module docstring for the rules."""
    events: list[WalEvent] = []

    def event(kind: EventKind, relations: list[str], oids: list[int]) -> WalEvent:
        return WalEvent(kind, lsn, done.time, done.xid, None, relations, oids, "commit")

    db_oids = [db for kind, db, _ in done.stats if kind == STATS_KIND_DATABASE]  # "1/<db oid>/0"
    if xact.dropped_dirs or db_oids:
        dirs = [f"base/{db}" if spc == DEFAULT_TABLESPACE else f"pg_tblspc/{spc}/{db}" for spc, db in xact.dropped_dirs]
        oids = sorted(set(db_oids) | {db for _, db in xact.dropped_dirs})
        events.append(event("drop_database", dirs, oids))

    keys = {path: relation_key(path) for path in done.rels}
    removed = {k[0] for k in keys.values() if k is not None}
    old_rels = [p for p, k in keys.items() if k is None or k[0] not in xact.created]
    created_numbers = {(db, rel) for _, db, rel in xact.created}
    removed_numbers: dict[int, int] = {}
    for _, db, rel in removed:
        removed_numbers[db] = max(rel, removed_numbers.get(db, 0))

    def transient(db: int, oid: int) -> bool | None:
        """Whether the transaction created the relation itself (VACUUM FULL's and friends' swap table,
        REFRESH ... CONCURRENTLY's temporary tables); None when this segment does not tell."""
        if (db, oid) in created_numbers or (db, oid) in xact.new_oids:
            return True
        if (db, oid) in xact.locked:
            return False
        if db in removed_numbers:  # not locked here: the transaction began in an earlier segment
            return oid > removed_numbers[db]
        return None

    rel_stats = [(db, oid) for kind, db, oid in done.stats if kind == STATS_KIND_RELATION]
    made = {(db, oid): transient(db, oid) for db, oid in rel_stats}
    swapped = [oid for (_, oid), new in made.items() if new]
    dropped = [oid for (_, oid), new in made.items() if new is False]
    unsure = [oid for (_, oid), new in made.items() if new is None]
    # ALTER TABLE rewrites and REFRESH MATERIALIZED VIEW swap toast tables by link: the transient heap
    # leaves with the old toast table and its index, OIDs X and X + 1. One such pair per transient heap
    # is the old toast, not a dropped relation.
    for _ in swapped:
        pair = next((oid for oid in sorted(dropped) if oid + 1 in dropped), None)
        if pair is None:
            break
        dropped = [oid for oid in dropped if oid not in (pair, pair + 1)]
    if dropped:
        events.append(event("drop", old_rels, dropped))
    elif unsure:
        events.append(event("relations_without_files_dropped", old_rels, unsure))
    elif old_rels:
        own = xact.new_oids | {key for key, new in made.items() if new}
        replacements = [k for k in xact.created if k not in removed and (k[1], k[2]) not in own]
        events.append(event(_files_replaced(xact, keys, old_rels, replacements, len(rel_stats)), old_rels, []))
    elif swapped:
        events.append(event("rewrite", [], []))
    return events


def _files_replaced(
    xact: _Xact,
    keys: dict[str, tuple[RelKey, str | None] | None],
    old_rels: list[str],
    replacements: list[RelKey],
    dropped: int,
) -> EventKind:
    """What removed ``old_rels`` when no relation that existed before was dropped.

    ``replacements`` are the relfilenodes the transaction gave existing relations. One in a tablespace
    files were removed from that was left empty or got rows (not page images) is a TRUNCATE. Otherwise
    each removed file must be accounted for by a replacement or a dropped (transient) relation: then it
    was a rewrite; if not, the transaction's earlier records are in an earlier segment.
    """
    spaces = {(k[0][0], k[0][1]) for p in old_rels if (k := keys[p]) is not None}
    if any((k not in xact.bulk_written or k in xact.heap_written) and (k[0], k[1]) in spaces for k in replacements):
        return "truncate"
    if len(old_rels) <= len(replacements) + dropped:
        return "rewrite"
    return "relation_files_removed"


def parse_waldump(lines: Iterable[str], segment: str = "") -> SegmentIndex:
    """Index pg_waldump output (run with TZ=UTC); restore point times are approximations here.

    ``tail_complete`` is set when the WAL ends with a switch record; ``stop_reason`` is never set
    (pg_waldump reports errors on stderr).
    """
    parser = WaldumpParser(segment)
    for line in lines:
        parser.feed(line)
    index = parser.result()
    index.tail_complete = parser.ended_with_switch
    return index


# --- reading segment files -----------------------------------------------------------------------

#: Each major version stamps its own 0xD1xx (15: D110, 16: D113, 17: D116, 18: D118); the records read
#: here (the page headers, a restore point's) have kept their layout across them.
XLOG_PAGE_MAGIC_MIN = 0xD100
XLP_FIRST_IS_CONTRECORD = 0x0001
XLP_LONG_HEADER = 0x0002
LONG_HEADER = struct.Struct("<HHIQI4xQII")  # XLogLongPageHeaderData, 40 bytes
LONG_HEADER_SIZE = 40
SHORT_HEADER_SIZE = 24
RECORD_HEADER_SIZE = 24
RM_XLOG_ID = 0
XLOG_RESTORE_POINT = 0x70
XLR_BLOCK_ID_DATA_SHORT = 255
XLR_BLOCK_ID_DATA_LONG = 254
XLR_BLOCK_ID_ORIGIN = 253
XLR_BLOCK_ID_TOPLEVEL_XID = 252
PG_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class SegmentHeader:
    """The long page header at the start of every WAL segment file."""

    info: int
    timeline: int
    page_address: int
    rem_len: int
    system_identifier: int
    segment_size: int
    block_size: int

    @property
    def continuation(self) -> bool:
        return bool(self.info & XLP_FIRST_IS_CONTRECORD)

    def continuation_end(self) -> int:
        """Offset in the segment just past the tail of the record continued from the previous one."""
        remaining, offset = self.rem_len, LONG_HEADER_SIZE
        while True:
            room = self.block_size - offset % self.block_size
            if remaining <= room:
                return offset + remaining
            remaining -= room
            offset += room + SHORT_HEADER_SIZE


def read_segment_header(path: Path) -> SegmentHeader:
    try:
        with path.open("rb") as fh:
            raw = fh.read(LONG_HEADER_SIZE)
    except OSError as exc:
        raise WalIndexError(f"cannot read WAL segment {path}: {exc.strerror}") from None
    if len(raw) < LONG_HEADER_SIZE:
        raise WalIndexError(f"{path} is not a WAL segment: only {len(raw)} bytes")
    magic, info, tli, pageaddr, rem_len, sysid, seg_size, blcksz = LONG_HEADER.unpack(raw)
    if magic & 0xFF00 != XLOG_PAGE_MAGIC_MIN or not info & XLP_LONG_HEADER:
        raise WalIndexError(f"{path} is not a PostgreSQL WAL segment (page magic {magic:04X}, expected D1xx)")
    return SegmentHeader(info, tli, pageaddr, rem_len, sysid, seg_size, blcksz)


def _segment_base_name(path: Path) -> str:
    name = path.name
    partial = PARTIAL_RE.match(name)
    if partial:
        return partial.group(1)
    if SEGMENT_RE.match(name):
        return name
    raise WalIndexError(f"{path}: not a WAL segment file name (24 hex digits, optionally .partial)")


def _read_wal(files: dict[int, Path], header: SegmentHeader, lsn: int, length: int) -> bytes | None:
    """``length`` bytes of record data from ``lsn``, skipping page headers; None if not at hand."""
    out = bytearray()
    pos = lsn
    while len(out) < length:
        number, offset = divmod(pos, header.segment_size)
        path = files.get(number)
        if path is None:
            return None
        if offset % header.block_size == 0:
            pos += LONG_HEADER_SIZE if offset == 0 else SHORT_HEADER_SIZE
            continue
        take = min(length - len(out), header.block_size - offset % header.block_size)
        with path.open("rb") as fh:
            fh.seek(offset)
            chunk = fh.read(take)
        if len(chunk) != take:
            return None
        out += chunk
        pos += take
    return bytes(out)


def restore_point_time(files: dict[int, Path], header: SegmentHeader, lsn: int, name: str) -> datetime | None:
    """The rp_time of the RESTORE_POINT record at ``lsn``, if its bytes are at hand and name ``name``.

    ``files`` maps segment numbers to files. The record is an XLogRecord header (24 bytes) followed by
    block ids (no block references) and the main data, xl_restore_point: int64 microseconds since
    2000-01-01 UTC, then the NUL-terminated name.
    """
    head = _read_wal(files, header, lsn, RECORD_HEADER_SIZE)
    if head is None:
        return None
    total, _xid, _prev, info, rmid = struct.unpack_from("<IIQBB", head)
    if rmid != RM_XLOG_ID or info & 0xF0 != XLOG_RESTORE_POINT or total > 4096:
        return None
    record = _read_wal(files, header, lsn, total)
    if record is None:
        return None
    pos = RECORD_HEADER_SIZE
    data: bytes | None = None
    while pos < total:
        block_id = record[pos]
        if block_id == XLR_BLOCK_ID_DATA_SHORT:
            data = record[pos + 2 : pos + 2 + record[pos + 1]]
            break
        if block_id == XLR_BLOCK_ID_DATA_LONG:
            (size,) = struct.unpack_from("<I", record, pos + 1)
            data = record[pos + 5 : pos + 5 + size]
            break
        if block_id == XLR_BLOCK_ID_ORIGIN:
            pos += 3
        elif block_id == XLR_BLOCK_ID_TOPLEVEL_XID:
            pos += 5
        else:
            return None
    if data is None or len(data) < 9:
        return None
    (micros,) = struct.unpack_from("<q", data)
    stored = data[8:].split(b"\0", 1)[0].decode("utf-8", "replace")
    if stored != name:
        return None
    try:
        return PG_EPOCH + timedelta(microseconds=micros)
    except OverflowError:
        return None


# --- running pg_waldump --------------------------------------------------------------------------


def index_segment(
    segment_path: Path,
    pg_waldump: str,
    *,
    next_segment: Path | None = None,
) -> SegmentIndex:
    """Index one WAL segment file by running ``pg_waldump`` (PostgreSQL 15) on it as the current user.

    ``segment_path`` is an uncompressed segment file named after the segment, optionally with a
    ``.partial`` suffix; it may be anywhere (a copy, a file fetched with ``pgdr wal-fetch``); the
    segment size is read from its header. ``next_segment`` is the following segment on the same
    timeline; when not given, the file of that name (or that name + ``.partial``) beside
    ``segment_path`` is used if it exists. It is read only to decode the record crossing the boundary,
    up to that record's end and no further; a record longer than a segment may need more following
    segments, looked up beside the previous one. So a folder of consecutive segments works as is.

    pg_waldump runs as ``pg_waldump --path <private folder of symlinks> --timeline <tli> --start
    <segment start> --end <segment end, or the end of the crossing record>`` with TZ=UTC and LC_ALL=C.
    It exits 0 when it reaches --end, and 1 on any error, including the normal end of valid WAL in a
    partial or in-progress segment ("error in WAL record at X: invalid record length at Y: wanted 24,
    got 0"): such end-of-WAL errors end the index (``stop_reason``); any other failure raises
    :class:`WalIndexError`. A segment that starts with the tail of a record from the previous segment
    is handled by pg_waldump (it skips to the first record starting in it); a segment holding nothing
    but the middle of one huge record has no records and is returned empty, and so is one whose only
    records cannot be completed from the segments at hand (``tail_complete`` False).
    """
    segment_path = Path(segment_path)
    base = _segment_base_name(segment_path)
    header = read_segment_header(segment_path)
    name = SegmentName.parse(base, header.segment_size)
    if header.page_address != name.start_lsn:
        raise WalIndexError(
            f"{segment_path} holds WAL from {format_lsn(header.page_address)}, not from "
            f"{format_lsn(name.start_lsn)} as its name says: a recycled or misnamed file"
        )
    if header.continuation and header.continuation_end() >= header.segment_size:
        return SegmentIndex(segment=base, tail_complete=True)

    following = name.next()
    files = {name.number: segment_path}
    end_lsn, tail_complete = _tail(files, name, next_segment or _beside(segment_path, following.name))

    with tempfile.TemporaryDirectory(prefix="pgdr-walindex-") as tmp:
        folder = Path(tmp)
        for number, path in files.items():
            link = SegmentName(name.timeline, number, header.segment_size).name
            (folder / link).symlink_to(path.resolve())
        argv = [
            pg_waldump,
            "--path", str(folder),
            "--timeline", str(name.timeline),
            "--start", format_lsn(name.start_lsn),
            "--end", format_lsn(end_lsn),
        ]  # fmt: skip
        env = {**os.environ, "TZ": "UTC", "LC_ALL": "C", "LANGUAGE": "C"}
        parser = WaldumpParser(base, stop_lsn=following.start_lsn)
        stderr_path = folder / "stderr"
        with stderr_path.open("w+") as stderr:
            try:
                proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=stderr, text=True, env=env)
            except OSError as exc:
                raise WaldumpUnavailable(f"cannot run {pg_waldump}: {exc.strerror}") from None
            assert proc.stdout is not None
            try:
                with proc.stdout:
                    for line in proc.stdout:
                        parser.feed(line)
            except BaseException:
                proc.kill()
                raise
            finally:
                returncode = proc.wait()
            stderr.seek(0)
            errors = stderr.read()

    index = parser.result()
    if returncode != 0:
        message = _waldump_error(errors)
        if not tail_complete and index.records == 0 and message.startswith("could not find a valid record after"):
            # The first record starting here runs past the WAL at hand: nothing to decode yet.
            return index
        if not _is_end_of_wal(message):
            raise WalIndexError(f"pg_waldump failed on {segment_path} (exit {returncode}): {message}")
        index.stop_reason = message
        tail_complete = False
    index.tail_complete = tail_complete or (returncode == 0 and parser.ended_with_switch)

    for event in index.events:
        if event.kind == "restore_point" and event.name is not None:
            when = restore_point_time(files, header, event.lsn, event.name)
            if when is not None:
                event.time, event.time_source = when, "record"
    return index


def _tail(files: dict[int, Path], name: SegmentName, candidate: Path | None) -> tuple[int, bool]:
    """Where pg_waldump must stop to decode the record crossing out of segment ``name``.

    Adds the following segments it needs to ``files`` (the record may span several of them, each
    looked up beside the previous one) and returns (end LSN, whether that record is complete).
    """
    number = name.number + 1
    found: dict[int, Path] = {}
    while candidate is not None:
        segment = SegmentName(name.timeline, number, name.segment_size)
        try:
            header = read_segment_header(candidate)
        except WalIndexError:
            break
        if header.page_address != segment.start_lsn or header.segment_size != name.segment_size:
            break
        found[number] = candidate
        end = header.continuation_end() if header.continuation else 0
        if end <= header.segment_size:
            files.update(found)
            return segment.start_lsn + end, True
        number += 1
        candidate = _beside(candidate, segment.next().name)
    return name.next().start_lsn, False


def _beside(segment_path: Path, name: str) -> Path | None:
    for candidate in (segment_path.with_name(name), segment_path.with_name(name + ".partial")):
        if candidate.exists():
            return candidate
    return None


def _waldump_error(stderr: str) -> str:
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    for line in lines:
        if line.startswith("pg_waldump: error: "):
            return line[len("pg_waldump: error: ") :]
    return lines[-1] if lines else "no error message"


def _is_end_of_wal(message: str) -> bool:
    return message.startswith("error in WAL record at") and any(p in message for p in END_OF_WAL_ERRORS)
