"""Repositories compared as a whole: one lacking what another holds, beyond what upload lag and its own
retention explain, lost it (emptied, or swapped for another, empty, one), though it has no hole to show.

``pgdr check`` asks this from the listings alone (``find_losses``); verify asks it first (``losses``), so a
hole in a repository found to have lost segments gets no grace of a delay.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from backend.config import Config
from backend.manifest import BackupManifest
from backend.repository import open_repositories
from backend.timeline import History
from backend.verify.report import RepositoryLoss
from backend.verify.scan import Scan, histories_of, holdings_of, index_segments, scan_repository, segment_size_of
from backend.verify.wal import queued_for
from backend.walnames import SegmentName

#: A segment stored in a repository ``wal-push`` waits for gets its queue entries a moment later; one
#: this much older that is neither queued for another repository nor in it is not on its way there.
IN_FLIGHT = timedelta(seconds=5)


def repository_loss(
    repository: str,
    holdings: dict[str, dict[tuple[int, int], datetime]],
    backups: dict[str, list[BackupManifest]],
    *,
    identities: dict[str, bool],
    queued: set[str],
    retention_days: int,
    histories: dict[int, History],
    segment_size: int,
    now: datetime,
) -> RepositoryLoss | None:
    """What ``repository`` lost that another still holds, or None; pure logic, like ``wal.wal_continuity``.

    Only what nothing normal explains counts: a segment queued for upload is lag; a segment or
    backup its own retention (``plan_expiry`` over what it holds now, so it may only expect less than
    it kept) would have removed is not owed; a segment another repository got within ``IN_FLIGHT``
    may be a push between storing and queueing. Segments newer than its oldest are holes or its
    tail, which ``wal.wal_continuity`` judges with their grace; the ones older than anything it holds (or
    all, when it holds none) cannot be lag, so they are a loss at once. ``backups`` lists each
    repository's manifests, ``identities`` whether it has a repo.json.
    """
    from backend.retention import plan_expiry

    mine = holdings.get(repository, {})
    my_backups = backups.get(repository, [])
    plan = plan_expiry(
        my_backups,
        [SegmentName(t, n, segment_size).name for t, n in mine],
        histories,
        retention_days=retention_days,
        now=now,
        segment_size=segment_size,
    )
    oldest = min((n for _, n in mine), default=None)
    receiving_since = min(mine.values(), default=None)
    have = {b.name for b in my_backups}
    worst: RepositoryLoss | None = None
    for other, theirs in holdings.items():
        if other == repository:
            continue
        missing = sorted(
            (t, n)
            for (t, n), at in theirs.items()
            if (t, n) not in mine
            and (oldest is None or n < oldest)
            and now - at > IN_FLIGHT
            and SegmentName(t, n, segment_size).name not in queued
            and plan.keeps_segment(t, n)
        )
        their_backups = backups.get(other, [])
        lacking = [b for b in their_backups if b.name not in have and b.stop_time >= plan.cutoff]
        # Backups go to every repository; one holding none, though it was archiving before they were
        # taken, had them removed (``pgdr backup --repo`` for every one of them is not a likely story).
        backups_removed = not my_backups and any(
            receiving_since is not None and receiving_since < b.start_time for b in lacking
        )
        if not missing and not backups_removed:
            continue
        loss = RepositoryLoss(
            repository=repository,
            other=other,
            segments=len(missing),
            first=SegmentName(*missing[0], segment_size).name if missing else None,
            last=SegmentName(*missing[-1], segment_size).name if missing else None,
            other_segments=len(theirs),
            backups=len(lacking),
            other_backups=len(their_backups),
            empty=not mine and not my_backups,
            identity_gone=not identities.get(repository, False) and identities.get(other, False),
        )
        if worst is None or (loss.segments, loss.backups) > (worst.segments, worst.backups):
            worst = loss
    return worst


def find_losses(cfg: Config, *, now: datetime | None = None) -> list[RepositoryLoss]:
    """Every repository compared with the others from listings alone (nothing is read back): ``pgdr check``."""
    now = now or datetime.now(UTC)
    repos = open_repositories(cfg)
    queued = queued_for(cfg, [r.name for r in repos])  # before the listings: see command._verify
    scans = {repo.name: scan_repository(repo, backups=True) for repo in repos}
    segment_size = segment_size_of(scans)
    for scan in scans.values():
        index_segments(scan, segment_size)
    histories = histories_of(list(scans.values()))
    return losses(cfg, scans, list(scans), queued=queued, histories=histories, segment_size=segment_size, now=now)


def losses(
    cfg: Config,
    scans: dict[str, Scan],
    names: list[str],
    *,
    queued: dict[str, set[str]],
    histories: dict[int, History],
    segment_size: int,
    now: datetime,
) -> list[RepositoryLoss]:
    from backend.retention import retention_days

    holdings = holdings_of(scans)
    backups = {name: list(scan.manifests.values()) for name, scan in scans.items()}
    identities = {name: scan.has_identity for name, scan in scans.items()}
    found = []
    for name in names:
        loss = repository_loss(
            name,
            holdings,
            backups,
            identities=identities,
            queued=queued.get(name, set()),
            retention_days=retention_days(cfg, name),
            histories=histories,
            segment_size=segment_size,
            now=now,
        )
        if loss is not None:
            found.append(loss)
    return found
