"""WAL continuity: the holes in each repository's archive, found and classified so that normal archive lag
never raises a data-loss alarm (``wal_continuity``, pure logic), and each WAL object read back against
the sha256 in its name (``verify_wal`` applies both to a run).
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import IO

from backend.archive import queue
from backend.archive.walfile import WalObject
from backend.config import Config
from backend.errors import ObjectNotFound, PgdrError, RepositoryError
from backend.manifest import BackupManifest
from backend.repository import ObjectInfo, Repository
from backend.timeline import History, timeline_path
from backend.verify.records import Memory
from backend.verify.report import BackupProblem, VerifyReport, WalFinding, WalResult, WalSpan
from backend.verify.scan import Meter, Scan, holdings_of, read_through
from backend.walnames import SegmentName, WalKind, wal_kind

#: How long a hole in a repository that ``wal-push`` does not wait for may be the uploader catching
#: up (retrying after an outage) before it counts as lost.
DELAY_GRACE = timedelta(minutes=10)


def wal_continuity(
    repository: str,
    holdings: dict[str, dict[tuple[int, int], datetime]],
    backups: list[BackupManifest],
    *,
    sync: bool,
    queued: set[str],
    histories: dict[int, History],
    segment_size: int,
    now: datetime,
    grace: timedelta = DELAY_GRACE,
) -> tuple[list[WalSpan], list[WalFinding]]:
    """Holes in one repository's archive, classified; pure logic, so every rule is testable alone.

    ``holdings`` maps each repository to the segments it holds ((timeline, number) -> archived at).
    Per timeline the stretch checked runs from the oldest backup's ``wal_start`` (or, on a timeline
    a backup's WAL continues onto after a promotion, the timeline's first segment) to the newest
    segment this repository or another holds, and on to each backup's ``wal_stop``: the WAL a backup
    needs to become consistent must be there even if no repository holds anything newer.
    """
    mine = holdings.get(repository, {})
    elsewhere: dict[tuple[int, int], list[str]] = {}
    arrived: dict[tuple[int, int], datetime] = {}
    for other, theirs in holdings.items():
        if other != repository:
            for key, at in theirs.items():
                elsewhere.setdefault(key, []).append(other)
                arrived[key] = min(at, arrived.get(key, at))
    timelines = sorted({tli for tli, _ in mine} | {b.timeline for b in backups if b.timeline})
    spans: list[WalSpan] = []
    findings: list[WalFinding] = []
    for tli in timelines:
        path = timeline_path(tli, histories, segment_size)
        starts: list[int] = []
        needed: dict[int, BackupManifest] = {}
        for b in backups:
            if not (b.wal_start and b.wal_stop and b.timeline):
                continue
            first = SegmentName.parse(b.wal_start, segment_size).number
            last = SegmentName.parse(b.wal_stop, segment_size).number
            if b.timeline == tli:
                starts.append(first)
                for number in range(first, last + 1):
                    needed.setdefault(number, b)
            elif _continues_onto(path, b.timeline, last):
                starts.append(path[-1][1])
        if not starts:
            continue  # no backup replays this timeline: a hole here cannot hurt a restore
        start = min(starts)
        held = sorted(n for t, n in mine if t == tli and n >= start)
        newest = held[-1] if held else start - 1
        end = max([newest, *needed, *(n for t, n in elsewhere if t == tli)])
        if held:
            spans.append(
                WalSpan(
                    tli,
                    SegmentName(tli, start, segment_size).name,
                    SegmentName(tli, newest, segment_size).name,
                    len(held),
                )
            )
        missing: list[tuple[int, str, str]] = []
        for number in range(start, end + 1):
            tail = number > newest
            if (tli, number) in mine or (tail and number not in needed and (tli, number) not in elsewhere):
                continue
            after = bisect.bisect_right(held, number)
            status, detail = _classify(
                repository,
                tli,
                number,
                next_archived=mine[(tli, held[after])] if after < len(held) else None,
                arrived_elsewhere=arrived.get((tli, number)),
                tail=tail,
                elsewhere=elsewhere.get((tli, number), []),
                sync=sync,
                queued=queued,
                needed_by=needed.get(number),
                segment_size=segment_size,
                now=now,
                grace=grace,
            )
            missing.append((number, status, detail))
        findings += _runs(repository, tli, missing, segment_size)
    return spans, findings


def _continues_onto(path: list[tuple[int, int]], backup_tli: int, stop_number: int) -> bool:
    """Whether a backup taken on ``backup_tli`` is replayed on along this timeline path."""
    tlis = [t for t, _ in path]
    if backup_tli not in tlis[:-1]:
        return False
    index = tlis.index(backup_tli)
    return stop_number <= path[index + 1][1]


def _classify(
    repository: str,
    tli: int,
    number: int,
    *,
    next_archived: datetime | None,
    arrived_elsewhere: datetime | None,
    tail: bool,
    elsewhere: list[str],
    sync: bool,
    queued: set[str],
    needed_by: BackupManifest | None,
    segment_size: int,
    now: datetime,
    grace: timedelta,
) -> tuple[str, str]:
    """One missing segment's status; ``tail``: it is newer than anything this repository holds."""
    name = SegmentName(tli, number, segment_size).name
    why = f"backup {needed_by.name} needs it to become consistent; " if needed_by else ""
    if not elsewhere:
        return "lost", (
            f"{why}no repository holds it: point-in-time recovery cannot cross it; "
            "take a new base backup to start a restorable stretch after it"
        )
    copies = ", ".join(elsewhere)
    if name in queued:
        return "uploading", f"queued for upload to {repository} (a copy is in {copies})"
    if sync and not tail:  # past the newest, a push storing into several repositories may be midway
        return "lost", (
            f"{why}missing from {repository}, which wal-push waits for, so it was removed after archiving; "
            f"an intact copy is in {copies}"
        )
    # How long ago the hole became visible: when the segment after it arrived here (or, for WAL a
    # backup needs beyond this repository's newest, when that backup finished; for any other, when
    # another repository got it).
    reference = next_archived or (needed_by.stop_time if needed_by else arrived_elsewhere)
    if reference is not None and now - reference <= grace:
        newer = "" if tail else ", though newer WAL is"
        return "delayed", f"not in {repository} yet{newer} (a copy is in {copies})"
    return "lost", (
        f"{why}missing from {repository} and not queued for it; an intact copy is in {copies}, so recovery still "
        f"works from there, but {repository} alone cannot {'reach' if tail else 'cross'} it"
    )


def _runs(repository: str, tli: int, missing: list[tuple[int, str, str]], segment_size: int) -> list[WalFinding]:
    """Consecutive missing segments with the same status and reason become one finding."""
    findings: list[WalFinding] = []
    run: list[tuple[int, str, str]] = []

    def flush() -> None:
        if run:
            findings.append(
                WalFinding(
                    repository,
                    tli,
                    SegmentName(tli, run[0][0], segment_size).name,
                    SegmentName(tli, run[-1][0], segment_size).name,
                    len(run),
                    run[0][1],
                    run[0][2],
                )
            )

    for item in missing:
        if run and (item[0] != run[-1][0] + 1 or item[1:] != run[-1][1:]):
            flush()
            run = []
        run.append(item)
    flush()
    return findings


def verify_wal(
    cfg: Config,
    report: VerifyReport,
    *,
    verified_scans: list[Scan],
    scans: dict[str, Scan],
    physical: list[BackupManifest],
    queued: dict[str, set[str]],
    histories: dict[int, History],
    lost: set[str],
    memories: dict[str, Memory],
    segment_size: int,
    deep: bool,
    named: bool,
    now: datetime,
    cancel: threading.Event | None,
    meter: Meter,
) -> None:
    """Holes per repository, then the content of its WAL objects (``_wal_to_read``; the memory skips some).

    In a repository found to have ``lost`` what another holds, no hole gets the grace of a delay.
    """
    holdings = holdings_of(scans)
    sync = set(cfg.sync_repositories)
    for name in [n for n in cfg.repository_names if n in {s.repo.name for s in verified_scans}]:
        scan = scans[name]
        result = WalResult(name)
        held_here = [m for m in physical if m.name in scan.manifests]
        anchors = held_here or physical
        result.spans, result.findings = wal_continuity(
            name,
            holdings,
            anchors,
            sync=name in sync,
            queued=queued.get(name, set()),
            histories=histories,
            segment_size=segment_size,
            now=now,
            grace=timedelta(0) if name in lost else DELAY_GRACE,
        )
        memory = memories[name]
        for obj, info in _wal_to_read(scan, anchors, segment_size, deep=deep, named=named):
            if memory.skips(info):
                result.remembered += 1
                continue
            problem = verify_wal_object(scan.repo, obj, segment_size, cancel=cancel, meter=meter)
            result.verified += 1
            if problem is None:
                memory.found_intact(info)
                continue
            memory.found_damaged(info, wal_file=obj.filename, detail=problem)
            tli = int(obj.filename[:8], 16)
            result.findings.append(
                WalFinding(name, tli, obj.filename, obj.filename, 1, "corrupt", problem, key=obj.key)
            )
        report.wal.append(result)
        # A backup whose consistency WAL is lost or corrupt in a repository cannot be restored from there.
        for manifest in held_here:
            assert manifest.wal_start and manifest.wal_stop
            for finding in result.findings:
                if finding.problem and _overlaps(finding, manifest, segment_size):
                    backup = next(b for b in report.backups if b.name == manifest.name)
                    backup.problems.append(
                        BackupProblem(
                            name,
                            finding.segments,
                            "wal",
                            f"the WAL it needs to become consistent is {finding.status}: {finding.detail}",
                        )
                    )


def _overlaps(finding: WalFinding, manifest: BackupManifest, segment_size: int) -> bool:
    """Whether a finding touches the WAL ``manifest`` needs to become consistent."""
    if finding.timeline != manifest.timeline or not manifest.wal_start or not manifest.wal_stop:
        return False
    first = SegmentName.parse(manifest.wal_start, segment_size).number
    last = SegmentName.parse(manifest.wal_stop, segment_size).number
    return (
        SegmentName.parse(finding.first, segment_size).number <= last
        and first <= SegmentName.parse(finding.last, segment_size).number
    )


def _wal_to_read(
    scan: Scan, anchors: list[BackupManifest], segment_size: int, *, deep: bool, named: bool
) -> Iterator[tuple[WalObject, ObjectInfo]]:
    """Which WAL objects to decode: all of them in a run over every backup; for a named backup, the
    WAL it needs to become consistent (deep: everything it can replay)."""
    if not named:
        yield from scan.wal
        return
    wanted: set[tuple[int, int]] = set()
    oldest: dict[int, int] = {}
    for m in anchors:
        assert m.wal_start and m.wal_stop and m.timeline
        first = SegmentName.parse(m.wal_start, segment_size).number
        last = SegmentName.parse(m.wal_stop, segment_size).number
        wanted.update((m.timeline, n) for n in range(first, last + 1))
        oldest[m.timeline] = min(first, oldest.get(m.timeline, first))
    for obj, info in scan.wal:
        try:
            kind = wal_kind(obj.filename)
        except ValueError:
            continue
        if kind is not WalKind.SEGMENT:
            if deep:
                yield obj, info
            continue
        seg = SegmentName.parse(obj.filename, segment_size)
        if (seg.timeline, seg.number) in wanted or (
            deep and oldest and seg.timeline >= min(oldest) and seg.number >= min(oldest.values())
        ):
            yield obj, info


def verify_wal_object(
    repo: Repository,
    obj: WalObject,
    segment_size: int,
    *,
    sink: IO[bytes] | None = None,
    cancel: threading.Event | None,
    meter: Meter,
) -> str | None:
    """Decode one WAL object and compare with the sha256 in its name; the problem, or None."""
    try:
        readout = read_through(repo, obj.key, obj.compression, raw_sink=sink, cancel=cancel, meter=meter)
    except ObjectNotFound:
        return "removed while being verified"
    except RepositoryError as exc:
        return f"cannot be read: {exc}"
    if readout.decode_error:
        return readout.decode_error
    if readout.raw_sha256 != obj.checksum:
        return f"decodes to bytes with sha256 {readout.raw_sha256[:16]}..., its name says {obj.checksum[:16]}..."
    if wal_kind(obj.filename) is WalKind.SEGMENT and readout.raw_size != segment_size:
        return f"decodes to {readout.raw_size} bytes, a segment is {segment_size}"
    return None


def queued_for(cfg: Config, names: list[str]) -> dict[str, set[str]]:
    """WAL files queued for each repository (the queue lives in the local repository)."""
    out: dict[str, set[str]] = {}
    for name in names:
        try:
            out[name] = set(queue.pending(cfg, name)) if cfg.local.path else set()
        except PgdrError:
            out[name] = set()
    return out
