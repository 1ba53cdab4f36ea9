"""``pgdr verify`` itself (``verify``): list the repositories, pick what to read, run the checks in turn
(repositories compared, backups read back, WAL, manifests, chains, the rehearsal), remember what was
found intact, store each backup's result, and tell Telegram.
"""

from __future__ import annotations

import difflib
import threading
import time
from datetime import UTC, datetime

from backend import notify as tg
from backend.config import Config
from backend.errors import PgdrError
from backend.manifest import BackupManifest
from backend.progress import Cancelled, Progress, ProgressCallback, check_cancel, no_progress
from backend.repository import open_repositories
from backend.timeline import History
from backend.verify.losses import losses
from backend.verify.objects import check_against_postgres, check_against_wal, check_chains, verify_backup
from backend.verify.records import Memory, store_results
from backend.verify.rehearsal import rehearse
from backend.verify.report import VerifyReport
from backend.verify.scan import Meter, Scan, histories_of, index_segments, scan_repository, segment_size_of
from backend.verify.wal import queued_for, verify_wal


class NoSuchBackup(PgdrError):
    """``pgdr verify NAME`` named a backup no selected repository holds: a typo, not a verify failure."""


def verify(
    cfg: Config,
    name: str | None = None,
    *,
    deep: bool = False,
    full: bool = False,
    only: str | None = None,
    on_progress: ProgressCallback = no_progress,
    cancel: threading.Event | None = None,
    now: datetime | None = None,
) -> VerifyReport:
    """Verify every backup (or the one named) and the WAL archive; see the package docstring (``backend.verify``).

    ``full`` reads every object now, whatever the repositories remember as verified (``deep`` and a
    named backup always do). ``only`` limits the check to one repository (the others are still
    listed, so a hole there can be told apart from a segment another repository holds). ``now`` is
    for tests of the grace periods and of the turns objects are read again at.

    Telegram hears of a verify that found problems or failed, whoever started it (``pgdr verify``,
    the console, the daemon): damage found by hand at 3 a.m. is as urgent as damage the daemon found,
    and the console or the CLI may be the only verify an installation runs. The notification never
    raises, so it never changes the report nor what ``pgdr verify`` exits with.
    """
    kind, what = ("verify_deep", "deep verify") if deep else ("verify", "verify")
    started = time.monotonic()
    try:
        report = _verify(cfg, name, deep=deep, full=full, only=only, on_progress=on_progress, cancel=cancel, now=now)
    except (Cancelled, NoSuchBackup):
        raise  # asked for by the operator (or the daemon's shutdown), or a typo: nothing is wrong
    except Exception as exc:
        tg.notify(cfg, kind, tg.failed_text(what, cfg.cluster.name, exc, time.monotonic() - started), ok=False)
        raise
    if not report.ok:
        tg.notify(cfg, kind, tg.verify_failed_text(cfg.cluster.name, deep, report.render()), ok=False)
    elif name is None and only is None:
        # Only a run over everything may say the archive is sound again: one good backup (or one good
        # repository) verified by hand does not end an episode another backup's damage started.
        text = f"✅ pgdr: {what} of cluster {cfg.cluster.name} passed again"
        tg.notify(cfg, kind, text, ok=True, only_on_change=True)
    return report


def _verify(
    cfg: Config,
    name: str | None,
    *,
    deep: bool,
    full: bool,
    only: str | None,
    on_progress: ProgressCallback,
    cancel: threading.Event | None,
    now: datetime | None,
) -> VerifyReport:
    """The checks themselves, without notifications (see ``verify``)."""
    began = datetime.now(UTC)
    now = now or began
    report = VerifyReport(cfg.cluster.name, "deep" if deep else "checksums", began, began)
    report.full = full or deep or name is not None or cfg.verify.reread_days == 0
    selected = open_repositories(cfg, only)
    every = open_repositories(cfg) if only else selected
    selected_names = [r.name for r in selected]
    # The queue is read before any repository is listed: the uploader stores a segment and only then
    # removes its queue entry, so a segment queued now is either still queued or already stored by
    # the time the listing runs; read the other way round, an upload finishing in between would look lost.
    queued = queued_for(cfg, selected_names)

    scans: dict[str, Scan] = {}
    for repo in every:
        on_progress(Progress("verify", 0, None, f"listing the {repo.name} repository"))
        try:
            scans[repo.name] = scan_repository(repo, backups=repo.name in selected_names)
        except PgdrError as exc:
            if repo.name in selected_names:
                report.errors.append(f"the {repo.name} repository cannot be read: {exc}")
    segment_size = segment_size_of(scans)
    for scan in scans.values():
        index_segments(scan, segment_size)
    verified_scans = [scans[n] for n in selected_names if n in scans]
    histories = histories_of(list(scans.values()))
    if name is None:
        selected_scans = [n for n in selected_names if n in scans]
        report.losses = losses(
            cfg, scans, selected_scans, queued=queued, histories=histories, segment_size=segment_size, now=now
        )

    folders = sorted({f for s in verified_scans for f in s.folders})
    if name is not None and name not in folders:
        close = difflib.get_close_matches(name, folders, n=3, cutoff=0.0)
        raise NoSuchBackup(
            f"there is no backup named {name!r} in {', '.join(selected_names)} "
            f"(closest: {', '.join(close) if close else 'none, no backups yet'})"
        )
    chosen = _with_chain(name, verified_scans) if name is not None else folders

    memories: dict[str, Memory] = {}
    for scan in verified_scans:
        memory = Memory.load(scan, now=now, reread_days=cfg.verify.reread_days)
        memory.active = not report.full
        if memory.problem is not None:
            report.notes.append(memory.problem)
        memories[scan.repo.name] = memory
    try:
        _verify_stored(
            cfg,
            report,
            name,
            chosen,
            verified_scans=verified_scans,
            scans=scans,
            memories=memories,
            queued=queued,
            histories=histories,
            segment_size=segment_size,
            deep=deep,
            now=now,
            on_progress=on_progress,
            cancel=cancel,
        )
    finally:
        # Also when cancelled or failed: what was read and found intact so far need not be read again.
        for memory in memories.values():
            try:
                memory.save()
            except PgdrError as exc:
                report.notes.append(f"could not record what was verified in {memory.repo.name}: {exc}")
    report.finished = datetime.now(UTC)
    store_results(report, {s.repo.name: s.repo for s in verified_scans}, now)
    return report


def _verify_stored(
    cfg: Config,
    report: VerifyReport,
    name: str | None,
    chosen: list[str],
    *,
    verified_scans: list[Scan],
    scans: dict[str, Scan],
    memories: dict[str, Memory],
    queued: dict[str, set[str]],
    histories: dict[int, History],
    segment_size: int,
    deep: bool,
    now: datetime,
    on_progress: ProgressCallback,
    cancel: threading.Event | None,
) -> None:
    """Read back the backups ``chosen`` and the WAL, compare the manifests, and rehearse when deep."""
    total = sum(
        o.size
        for s in verified_scans
        for f in chosen
        if f in s.manifests
        for o in s.manifests[f].objects
        if not memories[s.repo.name].skips(s.folders[f].get(o.key))
    )
    meter = Meter(on_progress, total or None)
    manifests: dict[str, BackupManifest] = {}
    for folder in chosen:
        check_cancel(cancel, "verify")
        result, manifest = verify_backup(
            cfg, folder, verified_scans, memories, deep=deep, now=now, cancel=cancel, meter=meter
        )
        report.backups.append(result)
        if manifest is not None:
            manifests[folder] = manifest
    meter.finish("backups read back")

    physical = [m for m in manifests.values() if m.kind == "physical" and m.wal_start and m.wal_stop and m.timeline]
    # A named incremental is read with its chain, but a restore of it replays only from its own start:
    # the WAL its links need to become consistent on their own is not asked about.
    anchors = [m for m in physical if name is None or m.name == name]
    if name is None or anchors:  # a named logical dump needs no WAL
        verify_wal(
            cfg,
            report,
            verified_scans=verified_scans,
            scans=scans,
            physical=anchors,
            queued=queued,
            histories=histories,
            lost={loss.repository for loss in report.losses},
            memories=memories,
            segment_size=segment_size,
            deep=deep,
            named=name is not None,
            now=now,
            cancel=cancel,
            meter=Meter(on_progress, None),
        )

    check_against_postgres(report, physical, verified_scans, memories)
    check_against_wal(cfg, report, physical)
    check_chains(report, manifests, verified_scans)

    if deep:
        targets = anchors if name is not None else sorted(physical, key=lambda m: m.stop_time)[-1:]
        known = {n: m for s in verified_scans for n, m in s.manifests.items()}
        for manifest in targets:
            result = next(b for b in report.backups if b.name == manifest.name)
            # Every repository holding a backup of the chain; those whose copy of it (and, for an
            # incremental, of its chain: ``check_chains``) is sound first.
            holding = [
                s.repo for s in verified_scans if manifest.name in s.manifests or _holds_link(s, manifest, known)
            ]
            holding.sort(key=lambda r: not result.copy_ok(r.name))
            result.rehearsal = rehearse(
                cfg, manifest, holding, scans, segment_size, backups=known, on_progress=on_progress, cancel=cancel
            )
            if result.rehearsal.could_not is not None:
                report.errors.append(f"could not rehearse backup {manifest.name}: {result.rehearsal.could_not}")
        if not targets and name is None:
            report.notes.append("no physical backup to rehearse a restore of: take one with `pgdr backup`")
        elif not targets:
            report.notes.append(f"{name} is a logical dump: deep ran a full pg_restore of it into /dev/null")


def _holds_link(scan: Scan, manifest: BackupManifest, known: dict[str, BackupManifest]) -> bool:
    """Whether the repository holds a backup ``manifest`` builds on (so a rehearsal may fetch it there)."""
    parent = manifest.parent
    seen: set[str] = set()
    while parent is not None and parent not in seen:
        if parent in scan.manifests:
            return True
        seen.add(parent)
        parent = known[parent].parent if parent in known else None
    return False


def _with_chain(name: str, scans: list[Scan]) -> list[str]:
    """A named backup and, for an incremental, the backups down its chain any repository holds (full first).

    An incremental restores only together with them, so asking about it asks about them too: each is
    read whole, and ``check_chains`` judges the named one by what they were found to be.
    """
    known = {n: m for s in scans for n, m in s.manifests.items()}
    names = [name]
    manifest = known.get(name)
    while manifest is not None and manifest.parent in known and manifest.parent not in names:
        names.append(manifest.parent)
        manifest = known[manifest.parent]
    return names[::-1]
