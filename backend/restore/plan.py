"""The restore plan: everything a restore will do, worked out before anything is touched.

``pgdr restore --dry-run`` prints exactly this, and the confirmed restore executes this same object,
so what the operator read is what happens. Planning reads the repositories and the filesystem and
changes nothing anywhere.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from backend.catalog import Catalog
from backend.config import Config
from backend.errors import PgdrError
from backend.manifest import BackupManifest, chain
from backend.restore.checks import Check
from backend.restore.combine import combined_peak
from backend.restore.disk import existing_parent
from backend.restore.marker import unfinished_restore
from backend.restore.tablespaces import SAFETY_SUFFIX, Placement, place, space_by_device
from backend.restore.target import RecoveryTarget
from backend.timeline import RecoveryTimeline, SegmentInfo, Window, estimate_restore_seconds
from backend.walindex import Lineage, WalEvent, WalEvents, XidFate, XidSightings, lineage
from backend.walnames import SegmentName, format_lsn

#: PostgreSQL's commit timestamps are microseconds: the latest instant before a window's end.
_TICK = timedelta(microseconds=1)


@dataclass
class RestorePlan:
    cluster: str
    target: RecoveryTarget
    backup: BackupManifest
    backup_repository: str
    timeline: int
    wal: list[SegmentInfo]
    wal_complete: bool  # False when replay needs WAL past what the plan could count (xid/name targets)
    data_dir: Path
    in_place: bool
    port: int | None
    safety_copy: Path | None
    space_needed: int
    space_free: int
    estimated_seconds: float
    target_instant: datetime | None = None
    notes: list[str] = field(default_factory=list)
    #: What the restore needs from the host (``backend.restore.preflight``), as found when planning.
    checks: list[Check] = field(default_factory=list)
    #: Restore although an earlier restore of the data directory did not finish (``--force``).
    force: bool = False
    #: Why "latest" stops before the end of the archive (a gap): the restore then does not report success.
    cut_short: str = ""
    #: Where each of the backup's tablespaces goes (``backend.restore.tablespaces``).
    tablespaces: list[Placement] = field(default_factory=list)
    #: An incremental backup's chain below it, the full backup first (``backend.restore.combine``).
    parents: list[BackupManifest] = field(default_factory=list)

    @property
    def chain(self) -> list[BackupManifest]:
        """The backups the restore unpacks: the full one first, ``backup`` last."""
        return [*self.parents, self.backup]

    @property
    def wal_bytes(self) -> int:
        return len(self.wal) * (self.backup.wal_segment_size or 0)

    @property
    def wal_sources(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for seg in self.wal:
            counts[seg.repositories[0]] = counts.get(seg.repositories[0], 0) + 1
        return counts

    def render(self) -> str:
        import humanize

        size = humanize.naturalsize
        lines = [f"Restore plan for cluster {self.cluster}"]

        def row(label: str, value: str) -> None:
            lines.append(f"  {label + ':':<17}{value}")

        row("target", self.target.describe())
        row(
            "timeline",
            f"{self.timeline} (recovery_target_timeline = {self.target.timeline}); "
            f"then {self.target.action if self.target.kind != 'latest' else 'promote'}",
        )
        b = self.backup
        row(
            "base backup",
            f"{b.name} (stopped {b.stop_time:%Y-%m-%d %H:%M:%S} UTC, LSN {b.stop_lsn}, "
            f"{size(b.size_bytes)}) from the {self.backup_repository} repository",
        )
        if self.parents:
            members = " + ".join(f"{m.name} ({size(m.size_bytes)})" for m in self.chain)
            row(
                "chain",
                f"{len(self.parents)} backup{'s' if len(self.parents) > 1 else ''} below it, combined with "
                f"pg_combinebackup: {members}; {size(sum(m.stored_bytes for m in self.chain))} to fetch",
            )
        if self.wal:
            sources = ", ".join(f"{n} from {repo}" for repo, n in self.wal_sources.items())
            more = "" if self.wal_complete else "at least "
            row(
                "WAL to replay",
                f"{self.wal[0].segment.name} .. {self.wal[-1].segment.name} "
                f"({more}{len(self.wal)} segments, {size(self.wal_bytes)}; {sources})",
            )
        if self.target_instant is not None:
            row("reaches", f"{self.target_instant:%Y-%m-%d %H:%M:%S} UTC")
        mode = "replaced" if self.in_place else "created (restore beside: the running cluster is left alone)"
        row("data directory", f"{self.data_dir} ({mode})")
        for placement in self.tablespaces:
            row("tablespace", f"{placement.describe()}, {size(placement.tablespace.size)}")
        if self.port is not None:
            row("port", str(self.port))
        if self.safety_copy is not None:
            row("safety copy", f"{self.safety_copy} (the current data directory, moved aside, never deleted)")
        elif self.in_place:
            row("safety copy", "none needed: the data directory does not exist")
        row("disk space", f"needs {size(self.space_needed)}, {size(self.space_free)} free")
        row(
            "estimated time",
            f"about {humanize.precisedelta(self.estimated_seconds, minimum_unit='seconds', format='%0.0f')}",
        )
        for note in self.notes:
            lines.append(f"  note: {note}")
        if self.checks:
            passed = ", ".join(check.name for check in self.checks if check.ok and not check.warning)
            row("checked", f"{passed}: ok" if passed else "nothing passed")
            lines += [f"  {check.render()}" for check in self.checks if not check.ok or check.warning]
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        return {
            "cluster": self.cluster,
            "target": {
                "kind": self.target.kind,
                "description": self.target.describe(),
                "settings": self.target.recovery_settings(),
            },
            "target_instant": self.target_instant.isoformat() if self.target_instant else None,
            "timeline": self.timeline,
            "base_backup": self.backup.name,
            "base_backup_repository": self.backup_repository,
            "chain": [m.name for m in self.chain],
            "fetch_bytes": sum(m.stored_bytes for m in self.chain) + self.wal_bytes,
            "wal_first": self.wal[0].segment.name if self.wal else None,
            "wal_last": self.wal[-1].segment.name if self.wal else None,
            "wal_segments": len(self.wal),
            "wal_bytes": self.wal_bytes,
            "wal_sources": self.wal_sources,
            "data_dir": str(self.data_dir),
            "in_place": self.in_place,
            "port": self.port,
            "safety_copy": str(self.safety_copy) if self.safety_copy else None,
            "tablespaces": [placement.to_json() for placement in self.tablespaces],
            "space_needed": self.space_needed,
            "space_free": self.space_free,
            "estimated_seconds": round(self.estimated_seconds, 1),
            "notes": self.notes,
            "checks": [check.to_json() for check in self.checks],
        }


def make_plan(
    cfg: Config,
    catalog: Catalog,
    timeline: RecoveryTimeline,
    target: RecoveryTarget,
    *,
    backup_name: str | None = None,
    target_dir: str | None = None,
    port: int | None = None,
    now: datetime | None = None,
    events: Sequence[WalEvent] = (),
    tablespace_map: Mapping[str, str] | None = None,
) -> RestorePlan:
    backups = {b.manifest.name: b for b in catalog.backups}
    if backup_name is not None:
        if backup_name not in backups:
            known = ", ".join(n for n, b in backups.items() if b.manifest.kind == "physical")[-200:] or "none"
            raise PgdrError(f"there is no backup named {backup_name!r} (physical backups: {known})")
        if backups[backup_name].manifest.kind != "physical":
            raise PgdrError(
                f"{backup_name} is a logical dump: restore it with `pgdr restore --from-dump {backup_name}`"
            )
    if backup_name is not None and backup_name in timeline.disowned:
        raise PgdrError(f"backup {backup_name} cannot be restored: {timeline.disowned[backup_name]}")
    tli = _target_timeline(timeline, target, backups, backup_name)
    followed = target.timeline == "latest" and not target.timeline_named
    if target.kind == "time" and target.timeline != "current":
        tli, target = _timeline_at(timeline, tli, target)
    windows = timeline.windows_on(tli)
    notes = []
    if not windows and followed:
        newest = tli
        tli, target, windows = _newest_recoverable(timeline, tli, target)
        if tli != newest:
            notes.append(
                f"timeline {newest} has no archived WAL yet (a promotion began it); everything reachable so far "
                f"lies on timeline {tli}, which recovery is told to follow"
            )
    if followed and target.timeline == "latest" and tli != timeline.latest_timeline():
        target = replace(target, timeline=str(tli))  # PostgreSQL's "latest" would follow the abandoned branch
    abandoned = [t for t in timeline.abandoned() if t > tli] if followed else []
    if abandoned:
        names = ", ".join(map(str, abandoned))
        notes.append(
            f"timeline {names} in the archive {'is' if len(abandoned) == 1 else 'are'} abandoned (the cluster "
            f"runs on timeline {timeline.current}, whose history does not pass through it): not followed; "
            f"--target-timeline {abandoned[-1]} restores that branch"
        )
    if not windows:
        disowned = "".join(f"; backup {name} is not offered: {why}" for name, why in timeline.disowned.items())
        raise PgdrError(
            f"nothing is recoverable on timeline {tli}{disowned}: take a base backup (`pgdr backup`) and check "
            "archiving"
        )

    located = locate(target, events, timeline, tli, lineage=lineage(catalog.histories), backup_name=backup_name)
    window, instant = _choose(timeline, windows, target, backup_name, tli, located=located)
    if target.timeline == "current":
        # PostgreSQL reads 'current' as the base backup's own timeline, but the window chosen may be an
        # older timeline's backup carried over into ``tli``: name the planned timeline so the recovery
        # follows the WAL the plan counted, not the backup's abandoned timeline.
        target = replace(target, timeline=str(tli))
    chosen = backups[window.base_backup]
    members = chain(chosen.manifest, {name: b.manifest for name, b in backups.items()})
    cut_short = _cut_short(timeline, window) if target.kind == "latest" else ""
    if cut_short:
        notes.append(cut_short)
    first = SegmentName.parse(chosen.manifest.wal_start or "", timeline.segment_size).number
    wal, complete = _wal_for(timeline, tli, window, target, first=first, instant=instant, located=located)
    segment_size = timeline.segment_size

    data_dir, in_place = _data_dir(cfg, target_dir)
    safety = None
    suffix = SAFETY_SUFFIX + (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")
    if in_place and data_dir.exists() and any(data_dir.iterdir()):
        safety = data_dir.with_name(data_dir.name + suffix)
    unfinished = unfinished_restore(data_dir) if in_place else None
    earlier = unfinished.tablespaces if unfinished is not None else {}
    placements = place(
        chosen.manifest, tablespace_map or {}, data_dir, in_place=in_place, suffix=suffix, earlier=earlier
    )
    # The data directory's file system: the base backup and its WAL, and the tablespaces restored onto it
    # (those elsewhere are the pre-flight check's, per file system).
    home = existing_parent(data_dir)
    spaces = space_by_device(placements).get(home.stat().st_dev, (home, 0))[1]
    archives = {p.tablespace.archive for p in placements}
    base = sum(o.raw_size for o in chosen.manifest.objects if o.key not in archives)
    if len(members) > 1:
        base = combined_peak(members)
    needed = base + spaces + len(wal) * segment_size
    free = shutil.disk_usage(home).free
    return RestorePlan(
        cluster=cfg.cluster.name,
        target=target,
        backup=chosen.manifest,
        backup_repository=chosen.repositories[0],
        timeline=tli,
        wal=wal,
        wal_complete=complete,
        data_dir=data_dir,
        in_place=in_place,
        port=port if not in_place else None,
        safety_copy=safety,
        space_needed=needed,
        space_free=free,
        estimated_seconds=estimate_restore_seconds(sum(m.size_bytes for m in members), len(wal) * segment_size),
        target_instant=instant,
        notes=notes,
        cut_short=cut_short,
        tablespaces=placements,
        parents=members[:-1],
    )


def _target_timeline(
    timeline: RecoveryTimeline, target: RecoveryTarget, backups: dict[str, Any], backup_name: str | None
) -> int:
    if target.timeline == "latest":
        return timeline.latest_timeline() if target.timeline_named else timeline.followed_timeline()
    if target.timeline == "current":
        if backup_name is not None:
            return int(backups[backup_name].manifest.timeline or 1)
        physical = [b.manifest for b in backups.values() if b.manifest.kind == "physical"]
        return int(physical[-1].timeline or 1) if physical else 1
    tli = int(target.timeline)
    if tli not in timeline.timelines:
        raise PgdrError(f"timeline {tli} is not in the archive (timelines: {', '.join(map(str, timeline.timelines))})")
    return tli


def _timeline_at(timeline: RecoveryTimeline, tli: int, target: RecoveryTarget) -> tuple[int, RecoveryTarget]:
    """The timeline whose windows hold a time target that timeline ``tli`` does not, and what recovery is told.

    Windows on a timeline begin at its promotion, so an earlier instant is held only by an older
    timeline. Unnamed (PostgreSQL's default, latest), the instant is found on the timeline current
    then, and that timeline is named in the settings so recovery replays the WAL the plan counted.
    Named, recovery follows the timeline given, and through its history it reaches the instant only
    while that history still reads the older timeline's WAL there (before the branch): then the plan
    counts that WAL and the settings keep the name; otherwise ``_choose`` refuses, naming the timeline
    that holds the instant.
    """
    assert target.time is not None
    instant = target.time
    own = timeline.windows_on(tli)
    if any(w.contains(instant) for w in own):
        return tli, target
    began = min((w.start for w in own), default=None)
    if not target.timeline_named and began is not None and instant >= began:
        return tli, target  # after the newest timeline began: its own WAL, archived or not yet
    for older in sorted((t for t in timeline.timelines if t != tli), reverse=True):
        hits = [w for w in timeline.windows_on(older) if w.contains(instant)]
        if hits:
            break
    else:
        return tli, target
    if not target.timeline_named:
        return older, replace(target, timeline=str(older))
    reach = timeline.segment_reaching(older, min(w.first_segment.number for w in hits), instant)
    read = timeline.segment_info(tli, reach) if reach is not None else None
    return (older, target) if read is not None and read.segment.timeline == older else (tli, target)


def _cut_short(timeline: RecoveryTimeline, window: Window) -> str:
    """Why the latest instant a restore reaches is not the end of the archive: a gap ends the window."""
    gap = timeline.gap_after(window)
    if gap is None:
        return ""
    missing = gap.missing_from.name
    if gap.missing_to != gap.missing_from:
        missing = f"{missing} .. {gap.missing_to.name}"
    return (
        f"the archive goes on past a gap: {missing} is missing or damaged in every repository, so recovery ends "
        f"after {gap.after_segment.name} and the WAL archived after the gap is NOT replayed (the restore reports "
        "it as not reaching its target); put an intact copy back into the archive first if one exists"
    )


def _newest_recoverable(
    timeline: RecoveryTimeline, tli: int, target: RecoveryTarget
) -> tuple[int, RecoveryTarget, list[Window]]:
    """The newest timeline anything is recoverable on, when the latest one holds no archived WAL yet.

    Right after a restore promotes, its new timeline has a history file and nothing else in the
    archive: every instant it can reach so far lies on its parent. Recovery is pinned to the
    timeline planned, so PostgreSQL follows the WAL the plan counted.
    """
    for older in timeline.ancestry(tli)[1:]:
        windows = timeline.windows_on(older)
        if windows:
            return older, replace(target, timeline=str(older)), windows
    return tli, target, []


#: Transaction ids as the WAL records them: PostgreSQL reads ``recovery_target_xid`` as 32 bits, so a
#: 64-bit ``txid_current()`` (epoch and xid) names the same transaction.
XID_MASK = 0xFFFFFFFF


@dataclass(frozen=True)
class Located:
    """Where the WAL record a restore point or transaction target names is.

    An event gives the record itself: ``lsn`` and ``time`` are its own. Any other transaction is known
    by the segment its commit lies in (``segment``, the WAL index's list of ended transactions): ``lsn``
    is the segment's start, so a backup counts as reaching it only when it stopped before the segment
    began, and the commit's time is not known.
    """

    lsn: int
    time: datetime | None
    segment: SegmentName | None = None


def locate(
    target: RecoveryTarget,
    events: Sequence[WalEvent],
    timeline: RecoveryTimeline,
    tli: int,
    *,
    lineage: Lineage,
    backup_name: str | None = None,
) -> Located | None:
    """The WAL record a restore point or a transaction target names, when the WAL index saw it.

    Only an event recovery following timeline ``tli`` replays counts (``lineage``: the archive's
    timelines): after a branch the other timeline holds its own records, a restore point of the same
    name, a transaction of the same xid. A restore point only another branch holds is refused, naming
    that timeline. A transaction that is no event on the path is looked up in the segments' lists of
    ended transactions (when ``events`` came with them, :class:`WalEvents`), on ``tli``'s path: one
    that aborted, is a subtransaction, committed only on another branch, or never ended in the archived
    WAL is refused here, in one line, rather than left to a recovery that would replay to the end and
    fail. When some segments list no transactions it may lie there: with ``backup_name`` the restore
    replays until it meets it, without one the refusal names the backups that reach those segments.
    """
    if target.kind == "name":
        named = [e for e in events if e.kind == "restore_point" and e.name == target.name]
    elif target.kind == "xid" and target.xid is not None:
        xid = target.xid & XID_MASK
        named = [e for e in events if e.xid == xid]
    else:
        return None
    hits = [e for e in named if e.replayed_on(tli, lineage)]
    if target.kind == "name" and len(hits) > 1:
        # PostgreSQL stops at the first of them it replays after the base backup's start, wherever the
        # operator meant: a plan naming one would say where recovery does not stop.
        made = "; ".join(
            f"at LSN {format_lsn(e.lsn)}{f', {e.time:%Y-%m-%d %H:%M:%S} UTC' if e.time else ''}" for e in hits[-3:]
        )
        last = "the last three " if len(hits) > 3 else ""
        raise PgdrError(
            f"{target.describe()} was made {len(hits)} times on timeline {tli}'s path ({last}{made}) and "
            "recovery stops at the first one after the base backup's start: pass --lsn with the LSN of the one you mean"
        )
    if hits:
        return Located(hits[-1].lsn, hits[-1].time)
    if target.kind == "xid" and isinstance(events, WalEvents):
        return _committed(xid, events.find_xid(xid), timeline, tli, backup_name)
    if named:
        other = named[-1]
        raise PgdrError(
            f"{target.describe()} is on timeline {other.timeline} (at LSN {format_lsn(other.lsn)}), which timeline "
            f"{tli}'s history does not pass through: pass --target-timeline {other.timeline} to restore that branch"
        )
    return None


def _committed(
    xid: int, seen: XidSightings, timeline: RecoveryTimeline, tli: int, backup_name: str | None
) -> Located | None:
    """The segment on ``tli``'s path where transaction ``xid`` committed; None when the WAL index cannot
    tell (some segments list no transactions) and ``backup_name`` was given; raises otherwise."""
    on_path: list[tuple[SegmentName, XidFate]] = []
    elsewhere: list[SegmentName] = []
    for name, fate in seen.ends:
        segment = SegmentName.parse(name, timeline.segment_size)
        if _on_path(timeline, tli, segment):
            on_path.append((segment, fate))
        elif fate == "committed":
            elsewhere.append(segment)
    committed = [segment for segment, fate in on_path if fate == "committed"]
    if committed:
        return Located(committed[-1].start_lsn, None, committed[-1])
    if on_path:
        segment, fate = on_path[-1]
        if fate == "aborted":
            raise PgdrError(
                f"transaction {xid} was rolled back (its abort is in WAL segment {segment.name}): it committed "
                "nothing to restore to; give a transaction that committed, or a --timestamp"
            )
        raise PgdrError(
            f"transaction {xid} is a subtransaction (a savepoint) that committed with its parent in WAL segment "
            f"{segment.name}; recovery stops only at top-level transactions: give the parent's xid (pg_waldump "
            f"shows it on that segment's COMMIT with 'subxacts: {xid}')"
        )
    if elsewhere:
        other = elsewhere[-1]
        raise PgdrError(
            f"transaction {xid} committed on timeline {other.timeline} (WAL segment {other.name}), which timeline "
            f"{tli}'s history does not pass through: pass --target-timeline {other.timeline} to restore that branch"
        )
    if seen.unlisted or seen.unindexed:
        if backup_name is not None:
            return None
        raise _unplaced(xid, seen, timeline, tli)
    if seen.newest is None or xid > seen.newest:
        newest = f"the newest that did is {seen.newest}" if seen.newest is not None else "none did"
        raise PgdrError(
            f"transaction {xid} has not ended in the archived WAL ({newest}): if it committed since, archive "
            "its WAL (SELECT pg_switch_wal() on the server) and plan again"
        )
    raise PgdrError(
        f"transaction {xid} never committed in the archived WAL: it was cut off by a crash, is still running, "
        "or its commit is not archived yet (SELECT pg_switch_wal() on the server, then plan again)"
    )


def _on_path(timeline: RecoveryTimeline, tli: int, segment: SegmentName) -> bool:
    """Whether ``segment`` is the one recovery following ``tli``'s history replays at its position."""
    info = timeline.segment_info(tli, segment.number)
    return info is not None and info.segment == segment


def _unplaced(xid: int, seen: XidSightings, timeline: RecoveryTimeline, tli: int) -> PgdrError:
    """A transaction the WAL index cannot place (segments that list no ended transactions): the
    backups that reach those segments, so ``--backup`` need not be guessed."""
    listed = (SegmentName.parse(name, timeline.segment_size) for name in seen.unlisted)
    on_path = [segment for segment in listed if _on_path(timeline, tli, segment)]
    where = ""
    if on_path:
        reach = sorted(
            {
                w.base_backup
                for w in timeline.windows
                if any(w.timeline in (s.timeline, tli) and w.start_lsn <= s.start_lsn < w.end_lsn for s in on_path)
            }
        )
        where = (
            f"; {len(on_path)} archived segments on timeline {tli} do not list their transactions (indexed by an "
            "older pgdr; `pgdr --daemon` reads them again) and it may have committed in one: "
            + (f"backups that reach them: {_names(reach)}" if reach else "no backup reaches them")
        )
    if seen.unindexed:
        where += f"; {seen.unindexed} segments are not indexed yet"
    return PgdrError(
        f"the WAL index does not show where transaction {xid} committed{where}: pass --backup NAME (a base "
        "backup taken before it; see `pgdr list`), or check the target with `pgdr timeline --events`"
    )


def _choose(
    timeline: RecoveryTimeline,
    windows: list[Window],
    target: RecoveryTarget,
    backup_name: str | None,
    tli: int,
    *,
    located: Located | None,
) -> tuple[Window, datetime | None]:
    """The window (so the base backup) for the target: the newest backup that stops at or before it."""
    usable = [w for w in windows if backup_name is None or w.base_backup == backup_name]
    if backup_name is not None and not usable:
        raise PgdrError(
            f"backup {backup_name} cannot reach timeline {tli}: its WAL is incomplete or it belongs "
            "to another timeline; run `pgdr timeline` to see the windows"
        )

    if target.kind == "time":
        assert target.time is not None
        instant = target.time
        hits = [w for w in usable if w.contains(instant)]
        if not hits:
            raise _unreachable(timeline, tli, instant, backup_name, usable)
        return max(hits, key=_newest), instant
    if target.kind == "lsn" or located is not None:
        lsn = located.lsn if located is not None else target.lsn
        assert lsn is not None
        hits = [w for w in usable if w.start_lsn <= lsn < w.end_lsn]
        if not hits and located is not None:
            hits = _before_branch(timeline, tli, lsn, backup_name)
        if not hits:
            spans = "; ".join(f"{format_lsn(w.start_lsn)}..{format_lsn(w.end_lsn)}" for w in usable[-3:])
            if located is not None and located.segment is not None:
                raise PgdrError(_segment_unreached(target, located.segment, tli, usable, spans))
            what = target.describe() if located is not None else f"LSN {format_lsn(lsn)}"
            raise PgdrError(
                f"{what} at LSN {format_lsn(lsn)} is not reachable on timeline {tli} "
                f"from a base backup (reachable: {spans or 'nothing'})"
            )
        return max(hits, key=lambda w: (w.start_lsn, w.base_backup)), located.time if located is not None else None
    if target.kind in ("latest", "name", "xid"):
        if target.kind != "latest" and backup_name is None:
            known = ", ".join(sorted({e.name for e in timeline.events if e.kind == "restore_point" and e.name}))
            hint = f" (restore points in the archive: {known})" if target.kind == "name" and known else ""
            raise PgdrError(
                f"the WAL index does not show {target.describe()}{hint}: pass --backup NAME "
                "(a base backup taken before it; see `pgdr list`), or check the target with `pgdr timeline --events`"
            )
        newest_end = max(w.end_lsn for w in usable)
        hits = [w for w in usable if w.end_lsn == newest_end]
        return max(hits, key=_newest), (max(w.end for w in hits) if target.kind == "latest" else None)
    # immediate: the newest backup, consistent as soon as its own WAL is replayed
    newest = max(usable, key=_newest)
    return newest, newest.start


def _before_branch(timeline: RecoveryTimeline, tli: int, lsn: int, backup_name: str | None) -> list[Window]:
    """The windows of the timeline ``tli`` branched from that reach ``lsn``, when ``tli``'s history
    reads that timeline's WAL there (before the branch): ``tli``'s own windows begin at the branch, yet
    recovery following ``tli`` replays the older WAL first and stops at the record on its way."""
    info = timeline.segment_info(tli, lsn // timeline.segment_size)
    if info is None or info.segment.timeline == tli:
        return []
    return [
        w
        for w in timeline.windows_on(info.segment.timeline)
        if (backup_name is None or w.base_backup == backup_name) and w.start_lsn <= lsn < w.end_lsn
    ]


def _segment_unreached(target: RecoveryTarget, segment: SegmentName, tli: int, usable: list[Window], spans: str) -> str:
    """Why no backup reaches a commit known only by its segment: a backup that stopped inside that very
    segment may have stopped before or after it, and recovery cannot stop before its backup's end."""
    end = segment.next().start_lsn
    inside = [w.base_backup for w in usable if segment.start_lsn < w.start_lsn < end]
    why = (
        f"backup {inside[-1]} stopped inside that segment, so whether the commit came before its stop point "
        "is not known; a backup taken before the segment reaches it"
        if inside
        else "no base backup stopped before it"
    )
    return (
        f"transaction {target.xid} committed in WAL segment {segment.name}, which is not reachable on timeline {tli} "
        f"from a base backup ({why}; reachable: {spans or 'nothing'})"
    )


def _names(backups: list[str], shown: int = 5) -> str:
    """The newest ``shown`` of ``backups`` (sorted by name, so by time), and how many more."""
    more = f" and {len(backups) - shown} older" if len(backups) > shown else ""
    return ", ".join(backups[-shown:]) + more


def _newest(window: Window) -> tuple[datetime, str]:
    """The newest base backup wins ties: names sort by time, so less WAL to replay."""
    return window.start, window.base_backup


def _unreachable(
    timeline: RecoveryTimeline, tli: int, instant: datetime, backup_name: str | None, usable: list[Window]
) -> PgdrError:
    """Why ``instant`` cannot be reached, and the nearest instants that can, on both sides.

    The operator acts on this at the worst moment: the instants are exact (microseconds, UTC) so
    either can be pasted back as ``--timestamp``, and a window cut short by a missing segment says
    which segment, because the fix (putting that segment back) is not "pick another time". Past the
    newest archived commit the fix is on the server (archive the WAL holding the instant), and an
    instant only another timeline holds is named with that timeline, because the fix is to name it.
    """
    reachable = [w for w in usable if w.end > w.start]  # a window without a commit after its start holds no instant
    before = max((w for w in reachable if w.end <= instant), key=lambda w: w.end, default=None)
    after = min((w for w in reachable if w.start > instant), key=lambda w: w.start, default=None)
    first = min((w.start for w in usable), default=None)
    began = min((w.start for w in timeline.windows_on(tli)), default=None)
    gap = timeline.gap_after(before) if before is not None else None
    holder = max(
        (t for t in timeline.timelines if t != tli and any(w.contains(instant) for w in timeline.windows_on(t))),
        default=None,
    )
    elsewhere = (
        f"timeline {tli}'s history does not pass through it: it lies on timeline {holder}; "
        f"pass --target-timeline {holder} to restore that timeline's state, or pick one of these instants"
    )
    if first is None:
        why = "no base backup can reach any instant on it"
    elif holder is not None and began is not None and instant < began:
        why = elsewhere
    elif instant < first:
        why = (
            f"backup {backup_name} finished after it; pick an older backup"
            if backup_name is not None
            else "no base backup finished before it"
        )
    elif gap is not None:
        missing = gap.missing_from.name
        if gap.missing_to != gap.missing_from:
            missing = f"{missing} .. {gap.missing_to.name}"
        why = (
            f"the archived WAL has a gap: {missing} is missing after {gap.after_segment.name}, so replay "
            "stops there; put it back into the archive if a copy exists, or pick one of these instants"
        )
    elif not reachable:
        why = (
            "no commit was archived after the base backup stopped, and recovery to a time stops at the first "
            "commit after it; use --latest or --immediate"
        )
    elif after is None and before is not None and tli == timeline.latest_timeline():
        why = (
            f"it is after the newest archived commit, {_when(before.end)}: the WAL after it is not archived yet; "
            "run SELECT pg_switch_wal() on the server, or wait for archive_timeout, then plan again; "
            "if nothing was committed since, --latest reaches the same state"
        )
    elif after is None and holder is not None:
        why = elsewhere
    else:
        why = "the archived WAL does not reach it"
    # Recovery to a time stops at the first commit after it, so a window's end itself is not reachable.
    near = "; ".join(
        (
            f"latest reachable before it: {_when(before.end - _TICK)} (backup {before.base_backup})"
            if before is not None
            else "nothing is reachable before it",
            f"earliest reachable after it: {_when(after.start)} (backup {after.base_backup})"
            if after is not None
            else "nothing is reachable after it",
        )
    )
    return PgdrError(f"{_when(instant)} is not reachable on timeline {tli} ({why}); {near}")


def _when(instant: datetime) -> str:
    """An instant as ``--timestamp`` reads it back: UTC, to the microsecond PostgreSQL records."""
    return f"{instant.astimezone(UTC):%Y-%m-%d %H:%M:%S.%f} UTC"


def _wal_for(
    timeline: RecoveryTimeline,
    tli: int,
    window: Window,
    target: RecoveryTarget,
    *,
    first: int,
    instant: datetime | None,
    located: Located | None,
) -> tuple[list[SegmentInfo], bool]:
    last = window.last_segment.number
    complete = True
    if target.kind == "time" and instant is not None:
        reach = timeline.segment_reaching(tli, first, instant)
        last = reach if reach is not None else last
    elif located is not None:
        last = located.lsn // timeline.segment_size
    elif target.kind == "lsn" and target.lsn is not None:
        last = target.lsn // timeline.segment_size
    elif target.kind == "immediate":
        last = window.start_lsn // timeline.segment_size  # the backup's stop point: consistency
    elif target.kind in ("xid", "name"):
        complete = False
    return timeline.segments_between(tli, first, max(last, first)), complete


def _data_dir(cfg: Config, target_dir: str | None) -> tuple[Path, bool]:
    if target_dir:
        path = Path(target_dir).absolute()
        if path.exists() and (not path.is_dir() or any(path.iterdir())):
            raise PgdrError(f"--target-dir {path} exists and is not empty: give a new or empty directory")
        if cfg.postgres.data_dir and path == Path(cfg.postgres.data_dir).absolute():
            raise PgdrError("--target-dir is the cluster's own data directory: drop --target-dir to restore in place")
        return path, False
    if not cfg.postgres.data_dir:
        raise PgdrError(
            f"postgres.data_dir is not set in {cfg.where()}: set it, or restore beside with --target-dir DIR"
        )
    return Path(cfg.postgres.data_dir).absolute(), True


def safety_copies(data_dir: Path) -> list[Path]:
    """Safety copies left by earlier restores, newest last."""
    return sorted(data_dir.parent.glob(data_dir.name + SAFETY_SUFFIX + "*"))
