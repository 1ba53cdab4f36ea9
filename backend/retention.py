"""Retention: remove the backups older than a repository's retention and the WAL no kept backup needs.

Each repository decides alone, with its own retention (``local.retention_days``, ``s3.retention_days``)
and only from what it holds itself, so the S3 copy stays restorable on its own when the local disk is
gone. The decision is :func:`plan_expiry`, pure logic with no I/O; :func:`expire` reads each
repository, plans, and deletes under the repository job lock (no backup can start halfway through an
expire and lose the WAL it needs), and writes the audit log.

The rules, and why:

* A backup is expired when its ``stop_time`` is older than the retention. Two kinds of backup are kept
  whatever their age, because a repository with no backup at all is worse than one with an old one:
  the newest restorable physical backup, and the newest logical dump of each database. After a
  point-in-time restore the newest backup may lie on the abandoned branch, so the newest physical
  backup from which the latest timeline can be reached is kept too.
* Incremental backups (PostgreSQL 17+) are restored by combining every backup down their chain to
  the full one, so retention never breaks a chain: a kept incremental keeps every parent this
  repository holds down its chain, whatever their age (the reason names the incremental that builds
  on it). "Restorable" above means restorable from this repository alone: an incremental whose chain
  is broken here (a parent is missing) is not, so it is never the newest backup or the one reaching
  the latest timeline that is kept whatever its age (an older whole backup is); it is kept or expired
  by its own age like any other, and the report says its chain is broken. If it is kept, the parents
  it still has here are kept with it, and its WAL floor counts (the missing link may yet be in
  another repository, and a restore combining the two would need the rest): more is kept, never less.
* WAL is deleted only when no kept physical backup can replay it: a kept backup on timeline T that
  starts in segment N needs every segment numbered N or later on T and on every timeline descending
  from T (read from the ``.history`` files; a timeline whose history is missing is assumed to
  descend). ``.backup`` and ``.partial`` files go with their segment. ``.history`` files are never
  deleted: they are tiny, and restores need them to follow timelines.
* Only a backup kept for its own sake (within the retention, or protected as above) is a WAL floor. A
  parent kept only as a link of a chain is not: a restore of an incremental replays WAL from the
  incremental's own start (the combined data directory is consistent as of the newest backup of the
  chain, whose ``backup_label`` it carries), so the WAL between the full backup's start and the kept
  incremental's start is needed by no restore this repository can still do. A full backup or an
  earlier incremental that is itself within the retention is a restore start of its own and keeps its
  floor. A parent kept only as a link is therefore restorable only through its chain, not on its own.
* A repository where no physical backup is kept deletes no WAL at all: without a backup there is no
  window to compute, and old WAL may still be the only record of something.
* An expired backup's ``manifest.json`` is deleted first, on its own, then its other objects, then
  its ``verify/<name>.json``: an interrupted expire leaves an unlisted folder of debris, never a
  listed backup with objects missing. Expired backups go oldest first, except that the expired
  incrementals of a chain go before the backup they build on (children before parents), so an
  interrupted expire never leaves a listed incremental whose parent is already unlisted. WAL is
  deleted oldest first, so an interrupted expire leaves the archive contiguous (a shorter history,
  never a hole in the middle).
"""

from __future__ import annotations

import dataclasses
import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from backend import audit
from backend.archive.walfile import WAL_PREFIX, WalObject
from backend.config import Config
from backend.errors import ConfigError, PgdrError
from backend.locks import job_lock
from backend.manifest import BACKUPS_PREFIX, BackupManifest, BrokenChain, chain
from backend.repository import ObjectInfo, Repository, open_repositories
from backend.timeline import History, timeline_path
from backend.walnames import DEFAULT_SEGMENT_SIZE, SegmentName, WalKind, parse_lsn, wal_kind

VERIFY_PREFIX = "verify/"
#: Where ``backend.archive.index`` keeps one small JSON per segment; entries of deleted segments go too.
WALINDEX_PREFIX = "walindex/"
#: Keys per delete call: S3's DeleteObjects limit, so the report can count what is really gone.
DELETE_CHUNK = 1000

_SEGMENT_PART = re.compile(r"^[0-9A-F]{24}")


# --- the pure decision ----------------------------------------------------------------------------


@dataclass(frozen=True)
class KeptBackup:
    """A backup retention keeps, and why (``overdue``: kept although older than the retention).

    ``chain_link``: kept only because a kept incremental builds on it. Such a backup is no restore
    start of its own, so it holds no WAL floor (see the module docstring).
    """

    manifest: BackupManifest
    reason: str
    overdue: bool = False
    chain_link: bool = False


@dataclass(frozen=True, eq=False)
class ExpiryPlan:
    """What one repository keeps and removes. Built by :func:`plan_expiry`; changes nothing itself."""

    retention_days: int
    now: datetime
    #: In the order they are to be deleted: oldest first, the incrementals of a chain before their parents.
    expired: tuple[BackupManifest, ...]
    kept: tuple[KeptBackup, ...]
    #: WAL file names to delete (segments, ``.backup``, ``.partial``), oldest first.
    wal_delete: tuple[str, ...]
    #: ``(timeline, first segment number)`` of every physical backup kept for its own sake (not only as
    #: a chain link): the WAL floor.
    wal_floors: tuple[tuple[int, int], ...]
    histories: Mapping[int, History] = field(repr=False)
    segment_size: int = DEFAULT_SEGMENT_SIZE
    #: True when no WAL may be deleted at all (see ``note``).
    keep_all_wal: bool = False
    note: str = ""
    #: Incremental backups whose chain is broken here, with the missing backup: not restorable from
    #: this repository, so judged by their age alone.
    broken_chains: Mapping[str, str] = field(default_factory=dict)

    @property
    def cutoff(self) -> datetime:
        return self.now - timedelta(days=self.retention_days)

    @property
    def deleted_segments(self) -> list[str]:
        """The whole segments among ``wal_delete`` (without ``.backup`` / ``.partial`` files), oldest first."""
        return [name for name in self.wal_delete if wal_kind(name) is WalKind.SEGMENT]

    def keeps_segment(self, timeline: int, number: int) -> bool:
        """Whether a kept physical backup may replay segment ``number`` of ``timeline``."""
        if self.keep_all_wal:
            return True
        return any(
            number >= first and _descends_from(timeline, base, self.histories) for base, first in self.wal_floors
        )


def plan_expiry(
    backups: Iterable[BackupManifest],
    wal: Iterable[str],
    histories: Mapping[int, History],
    *,
    retention_days: int,
    now: datetime,
    segment_size: int = DEFAULT_SEGMENT_SIZE,
) -> ExpiryPlan:
    """Decide, for one repository, which backups and WAL files go. Pure: no I/O, no clock.

    ``backups`` are the repository's manifests, ``wal`` the names of the WAL files it holds (anything
    that is not a WAL file name is ignored and kept), ``histories`` its parsed ``.history`` files by
    timeline, ``now`` the instant ages are measured from (a naive ``now`` is read as UTC).
    """
    if now.tzinfo is None:
        now = now.replace(tzinfo=UTC)
    cutoff = now - timedelta(days=retention_days)
    manifests = sorted(backups, key=lambda m: (m.stop_time, m.name))
    wal_names = sorted(set(wal))

    by_name = {m.name: m for m in manifests}
    broken: dict[str, str] = {}
    for m in manifests:
        missing = _missing_link(m, by_name)
        if missing is not None:
            broken[m.name] = missing
    # Restorable from this repository alone: a broken chain cannot be combined here.
    restorable = [m for m in manifests if _wal_start(m, segment_size) is not None and m.name not in broken]
    timelines = {1, *histories}
    timelines.update(m.timeline for m in restorable if m.timeline is not None)
    for name in wal_names:
        position = _position(name, segment_size)
        if position is not None:
            timelines.add(position[0])
    latest = max(timelines)

    protected: dict[str, str] = {}
    note = ""
    keep_all_wal = False
    if restorable:
        protected[restorable[-1].name] = "newest physical backup"
        reaching = [m for m in restorable if _reaches(m, latest, histories, segment_size)]
        if reaching and reaching[-1].name not in protected:
            protected[reaching[-1].name] = f"newest backup that reaches timeline {latest}"
        elif not reaching and latest != 1 and latest not in histories:
            # The latest timeline's ancestry is unknown here (its .history has not reached this
            # repository yet): any backup might be the one that reaches it.
            for m in restorable:
                protected.setdefault(m.name, f"timeline {latest} has no .history file here")
            keep_all_wal = True
            note = (
                f"timeline {latest} has no .history file in this repository, so which backup reaches it is "
                "unknown: no restorable physical backup and no WAL is removed"
            )
    newest_logical: dict[str | None, BackupManifest] = {}
    for m in manifests:
        if m.kind == "logical":
            newest_logical[m.database] = m
    for m in newest_logical.values():
        protected[m.name] = "newest logical dump" + (f" of {m.database}" if m.database else "")

    own: dict[str, str] = {}
    for m in manifests:
        if m.stop_time >= cutoff:
            own[m.name] = "within the retention"
        elif m.name in protected:
            own[m.name] = protected[m.name]
    links = _chain_links([by_name[name] for name in own], own, by_name)

    expired: list[BackupManifest] = []
    kept: list[KeptBackup] = []
    for m in manifests:
        overdue = m.stop_time < cutoff
        if m.name in own:
            kept.append(KeptBackup(m, own[m.name], overdue=overdue))
        elif m.name in links:
            kept.append(KeptBackup(m, links[m.name], overdue=overdue, chain_link=True))
        else:
            expired.append(m)

    floors: list[tuple[int, int]] = []
    for k in kept:
        start = _wal_start(k.manifest, segment_size)
        if start is not None and not k.chain_link:
            floors.append((start.timeline, start.number))
    if not floors and not keep_all_wal:
        keep_all_wal = True
        note = "no physical backup is kept in this repository: no WAL is removed"

    plan = ExpiryPlan(
        retention_days=retention_days,
        now=now,
        expired=tuple(_children_first(expired)),
        kept=tuple(kept),
        wal_delete=(),
        wal_floors=tuple(sorted(set(floors))),
        histories=dict(histories),
        segment_size=segment_size,
        keep_all_wal=keep_all_wal,
        note=note,
        broken_chains=broken,
    )
    doomed = []
    for name in wal_names:
        position = _position(name, segment_size)
        if position is not None and not plan.keeps_segment(*position):
            doomed.append((position, name))
    doomed.sort()
    return dataclasses.replace(plan, wal_delete=tuple(name for _, name in doomed))


def _missing_link(m: BackupManifest, by_name: Mapping[str, BackupManifest]) -> str | None:
    """The backup missing down ``m``'s chain in this repository, or None when its chain is whole.

    The chain is read by :func:`backend.manifest.chain`, the same walk a restore makes. Only physical
    backups have chains.
    """
    if m.kind != "physical":
        return None
    try:
        chain(m, by_name)
    except BrokenChain as exc:
        return exc.missing
    return None


def _parents(m: BackupManifest, by_name: Mapping[str, BackupManifest]) -> list[BackupManifest]:
    """The backups down ``m``'s chain that this repository holds, nearest first, up to a missing link.

    A broken chain yields the parents before the gap: a kept incremental keeps what it still has,
    since the missing link may be in another repository and a combine would need the rest.
    """
    if m.kind != "physical":
        return []
    try:
        return chain(m, by_name)[-2::-1]
    except BrokenChain as exc:
        missing = exc.missing
    found: list[BackupManifest] = []
    current = m
    # chain() has walked exactly these links before stopping at ``missing``: each is present, physical
    # and older than the one building on it, so this walk ends.
    while current.parent is not None and current.parent != missing:
        current = by_name[current.parent]
        found.append(current)
    return found


def _chain_links(
    roots: Sequence[BackupManifest], own: Mapping[str, str], by_name: Mapping[str, BackupManifest]
) -> dict[str, str]:
    """The parents kept only as links of the chains of ``roots`` (the backups kept for their own sake), with why.

    A parent is named after the backup that builds on it directly and, when that is another link,
    the nearest backup up the chain kept for its own sake, whose restore needs it (the newest chain's,
    when several chains share the parent).
    """
    links: dict[str, str] = {}
    for root in sorted(roots, key=lambda m: (m.stop_time, m.name), reverse=True):
        child = needs = root
        for parent in _parents(root, by_name):
            if parent.name in own:
                needs = parent
            elif parent.name not in links:
                why = f"incremental {child.name} builds on it"
                links[parent.name] = why if child is needs else f"{why} (restoring {needs.name} needs it)"
            child = parent
    return links


def _children_first(expired: Sequence[BackupManifest]) -> list[BackupManifest]:
    """``expired`` (oldest first) reordered so that every incremental comes before its expired parent.

    The expired members of a chain are grouped under their oldest expired ancestor and go newest
    first (a child is always newer than its parent: :func:`backend.manifest.chain` refuses
    otherwise); the groups keep the oldest-first order of those ancestors. Deleting manifests in this
    order, an interrupted expire never leaves a listed incremental whose parent is unlisted.
    """
    doomed = {m.name: m for m in expired}

    def root(m: BackupManifest) -> BackupManifest:
        while m.parent is not None and m.parent in doomed and m.parent < m.name:
            m = doomed[m.parent]
        return m

    rank = {m.name: i for i, m in enumerate(expired)}
    groups: dict[str, list[BackupManifest]] = defaultdict(list)
    for m in expired:
        groups[root(m).name].append(m)
    ordered: list[BackupManifest] = []
    for head in sorted(groups, key=rank.__getitem__):
        ordered.extend(sorted(groups[head], key=lambda m: m.name, reverse=True))
    return ordered


def _wal_start(m: BackupManifest, segment_size: int) -> SegmentName | None:
    """The first segment a physical backup needs, or None when it is not restorable (or not physical).

    Names are read with the repository's segment size, the same one the WAL file names are read
    with, so a backup's floor and the archived segments are always compared in the same numbering.
    """
    if m.kind != "physical" or not (m.wal_start and m.wal_stop and m.stop_lsn and m.timeline):
        return None
    try:
        parse_lsn(m.stop_lsn)
        SegmentName.parse(m.wal_stop, segment_size)
        return SegmentName.parse(m.wal_start, segment_size)
    except ValueError:
        return None


def _position(name: str, segment_size: int) -> tuple[int, int] | None:
    """``(timeline, segment number)`` of a segment, ``.partial`` or ``.backup`` file; None for the rest."""
    try:
        kind = wal_kind(name)
    except ValueError:
        return None
    if kind is WalKind.HISTORY:
        return None
    match = _SEGMENT_PART.match(name)
    if match is None:  # pragma: no cover - wal_kind already checked the form
        return None
    try:
        segment = SegmentName.parse(match.group(0), segment_size)
    except ValueError:
        return None
    return segment.timeline, segment.number


def _descends_from(timeline: int, base: int, histories: Mapping[int, History]) -> bool:
    """Whether ``timeline`` is ``base`` or a descendant; unknown ancestry counts as descending.

    A new timeline always gets a number above every existing one, so a lower number never descends.
    """
    if timeline == base:
        return True
    if timeline < base:
        return False
    history = histories.get(timeline)
    if history is None:
        return True
    return any(parent == base for parent, _ in history.parents)


def _reaches(m: BackupManifest, timeline: int, histories: Mapping[int, History], segment_size: int) -> bool:
    """Whether replay from backup ``m`` can follow the history into ``timeline`` (as recovery would)."""
    assert m.timeline is not None and m.stop_lsn is not None
    path = timeline_path(timeline, dict(histories), segment_size)
    tlis = [tli for tli, _ in path]
    if m.timeline not in tlis:
        return False
    index = tlis.index(m.timeline)
    if index + 1 < len(path):
        # The backup must be consistent before the switch to the next timeline on the path.
        return parse_lsn(m.stop_lsn) // segment_size <= path[index + 1][1]
    return True


# --- applying it ----------------------------------------------------------------------------------


@dataclass
class RemovedBackup:
    name: str
    kind: str
    stop_time: datetime
    bytes: int

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "stop_time": self.stop_time.isoformat(), "bytes": self.bytes}


@dataclass
class RepositoryExpiry:
    """What expire removed (or, on a dry run, would remove) in one repository."""

    repository: str
    retention_days: int
    removed_backups: list[RemovedBackup] = field(default_factory=list)
    kept_backups: list[KeptBackup] = field(default_factory=list)
    wal_segments: int = 0
    wal_first: str | None = None
    wal_last: str | None = None
    #: ``.backup`` and ``.partial`` files removed with their segments.
    wal_other_files: int = 0
    #: WAL index entries (``walindex/``) of removed segments.
    index_entries: int = 0
    wal_bytes: int = 0
    #: The first segment kept on each timeline a kept backup starts on.
    wal_kept_from: list[str] = field(default_factory=list)
    #: Incremental backups whose chain is broken here, with the backup missing down it.
    broken_chains: dict[str, str] = field(default_factory=dict)
    note: str = ""
    error: str | None = None

    @property
    def bytes_freed(self) -> int:
        return sum(b.bytes for b in self.removed_backups) + self.wal_bytes

    def to_json(self) -> dict[str, Any]:
        return {
            "repository": self.repository,
            "retention_days": self.retention_days,
            "removed_backups": [b.to_json() for b in self.removed_backups],
            "kept_backups": [
                {
                    "name": k.manifest.name,
                    "kind": k.manifest.kind,
                    "stop_time": k.manifest.stop_time.isoformat(),
                    "reason": k.reason,
                    "older_than_retention": k.overdue,
                    "chain_link": k.chain_link,
                }
                for k in self.kept_backups
            ],
            "broken_chains": [{"name": name, "missing": missing} for name, missing in self.broken_chains.items()],
            "wal": {
                "segments": self.wal_segments,
                "first": self.wal_first,
                "last": self.wal_last,
                "other_files": self.wal_other_files,
                "index_entries": self.index_entries,
                "bytes": self.wal_bytes,
                "kept_from": self.wal_kept_from,
            },
            "bytes_freed": self.bytes_freed,
            "note": self.note or None,
            "error": self.error,
        }


@dataclass
class ExpireReport:
    cluster: str
    dry_run: bool
    now: datetime
    repositories: list[RepositoryExpiry] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(r.error is None for r in self.repositories)

    @property
    def bytes_freed(self) -> int:
        return sum(r.bytes_freed for r in self.repositories)

    def to_json(self) -> dict[str, Any]:
        return {
            "cluster": self.cluster,
            "dry_run": self.dry_run,
            "now": self.now.isoformat(),
            "ok": self.ok,
            "bytes_freed": self.bytes_freed,
            "repositories": [r.to_json() for r in self.repositories],
        }

    def render(self) -> str:
        import humanize

        size = humanize.naturalsize
        remove, free, keep = (
            ("would remove", "would free", "would keep") if self.dry_run else ("removed", "freed", "kept")
        )
        title = f"Expire of cluster {self.cluster} at {self.now:%Y-%m-%d %H:%M:%S} UTC"
        lines = [title + (" (dry run: nothing was removed)" if self.dry_run else "")]
        for r in self.repositories:
            lines.append(f"{r.repository} repository (retention {r.retention_days} days):")
            if r.removed_backups:
                names = ", ".join(f"{b.name} ({b.kind}, {size(b.bytes)})" for b in r.removed_backups)
                lines.append(f"  {remove} {_count(len(r.removed_backups), 'backup')}: {names}")
            else:
                lines.append("  no backup to remove")
            if r.wal_segments or r.wal_other_files:
                span = f" {r.wal_first} .. {r.wal_last}" if r.wal_first else ""
                other = f", and {_count(r.wal_other_files, 'other WAL file')}" if r.wal_other_files else ""
                lines.append(f"  {remove} {_count(r.wal_segments, 'WAL segment')}{span}{other} ({size(r.wal_bytes)})")
            elif not r.note:
                lines.append("  no WAL to remove: every archived segment is needed by a kept backup")
            if r.wal_kept_from:
                lines.append(f"  {keep} all WAL from {', '.join(r.wal_kept_from)} on")
            if r.note:
                lines.append(f"  {r.note}")
            for k in r.kept_backups:
                why = f"{k.reason}, older than the retention" if k.overdue else k.reason
                if k.chain_link:
                    why += "; a link of the chain only, so the WAL to restore it on its own is not kept"
                lines.append(f"  {keep} {k.manifest.name} ({k.manifest.kind}): {why}")
            for name, missing in r.broken_chains.items():
                lines.append(
                    f"  {name} cannot be restored from this repository: it is incremental and {missing}, down its "
                    "chain, is not here; it is kept or removed by its age alone"
                )
            if r.error:
                lines.append(f"  FAILED: {r.error}")
            lines.append(f"  {free} {size(r.bytes_freed)}")
        if not self.repositories:
            lines.append("  no repository configured")
        return "\n".join(lines)


class ExpireError(PgdrError):
    """Expire failed in at least one repository; ``report`` says what was removed before that."""

    def __init__(self, message: str, report: ExpireReport) -> None:
        super().__init__(message)
        self.report = report


def retention_days(cfg: Config, repository: str) -> int:
    return cfg.local.retention_days if repository == "local" else cfg.s3.retention_days


def expire(
    cfg: Config,
    *,
    dry_run: bool = False,
    now: datetime | None = None,
    repos: Sequence[Repository] | None = None,
) -> ExpireReport:
    """Apply retention to every configured repository (``repos`` overrides which, for tests).

    A real run holds the repository job lock (so no backup starts meanwhile: it could lose the WAL it
    needs) and writes "started" and then "ok" / "failed" audit records. A dry run takes no lock, so
    it never makes a scheduled backup fail, and writes no audit record: it changes nothing.

    Each repository is handled on its own: one that fails (S3 unreachable) does not stop the others,
    and the failure is raised at the end as :class:`ExpireError`, carrying the report.
    """
    if now is None:
        moment = datetime.now(UTC)
    else:
        moment = now.replace(tzinfo=UTC) if now.tzinfo is None else now.astimezone(UTC)
    targets = list(repos) if repos is not None else open_repositories(cfg)
    report = ExpireReport(cfg.cluster.name, dry_run, moment)
    if dry_run:
        for repo in targets:
            report.repositories.append(_expire_one(repo, retention_days(cfg, repo.name), moment, dry_run=True))
        _raise_failures(report)
        return report

    audit.record(cfg, "expire", "started", now=moment.isoformat())
    try:
        with job_lock(cfg, "expire"):
            for repo in targets:
                report.repositories.append(_expire_one(repo, retention_days(cfg, repo.name), moment, dry_run=False))
    except BaseException as exc:
        audit.record(cfg, "expire", "failed", error=str(exc), report=report.to_json())
        raise
    audit.record(cfg, "expire", "ok" if report.ok else "failed", report=report.to_json())
    _raise_failures(report)
    return report


def _raise_failures(report: ExpireReport) -> None:
    """One line naming the first failure and what every repository got done (the report rides along)."""
    failed = [r for r in report.repositories if r.error]
    if not failed:
        return
    verb = "would remove" if report.dry_run else "removed"
    done = "; ".join(
        f"{r.repository}: {verb} {_count(len(r.removed_backups), 'backup')}, {_count(r.wal_segments, 'WAL segment')}"
        for r in report.repositories
    )
    raise ExpireError(
        f"expire failed in the {failed[0].repository} repository ({failed[0].error}); {done}; "
        "run `pgdr expire` again once that is fixed",
        report,
    )


def _expire_one(repo: Repository, days: int, now: datetime, *, dry_run: bool) -> RepositoryExpiry:
    result = RepositoryExpiry(repo.name, days)
    try:
        _apply(repo, result, now, dry_run=dry_run)
    except PgdrError as exc:
        result.error = str(exc)
    return result


def _apply(repo: Repository, result: RepositoryExpiry, now: datetime, *, dry_run: bool) -> None:
    from backend.catalog import read_catalog

    catalog = read_catalog([repo])
    histories: dict[int, History] = {}
    for tli, text in catalog.histories.items():
        try:
            histories[tli] = History.parse(tli, text)
        except ValueError:
            continue  # a damaged history reads as unknown ancestry: more WAL is kept, never less
    wal_objects: dict[str, list[ObjectInfo]] = defaultdict(list)
    for info in repo.list(WAL_PREFIX):
        obj = WalObject.parse_key(info.key)
        if obj is not None:
            wal_objects[obj.filename].append(info)

    plan = plan_expiry(
        (b.manifest for b in catalog.backups),
        wal_objects,
        histories,
        retention_days=result.retention_days,
        now=now,
        segment_size=catalog.segment_size,
    )
    result.kept_backups = list(plan.kept)
    result.broken_chains = dict(plan.broken_chains)
    result.note = plan.note
    result.wal_kept_from = [SegmentName(t, n, plan.segment_size).name for t, n in plan.wal_floors]
    delete: Callable[[list[str]], None] = (lambda keys: None) if dry_run else repo.delete

    if plan.expired:
        stored = _group_backups(repo.list(BACKUPS_PREFIX))
        verified = {info.key: info for info in repo.list(VERIFY_PREFIX)}
        for m in plan.expired:  # in the plan's order: the incrementals of a chain before their parents
            objects = stored.get(m.name, {})
            # The manifest first, alone: from here on the backup is unlisted, whatever happens next.
            delete([m.key])
            rest = sorted((set(objects) | {m.object_key(o) for o in m.objects}) - {m.key})
            delete(rest)
            size = sum(info.size for info in objects.values())
            verify_key = f"{VERIFY_PREFIX}{m.name}.json"
            if verify_key in verified:
                delete([verify_key])
                size += verified[verify_key].size
            result.removed_backups.append(RemovedBackup(m.name, m.kind, m.stop_time, size))

    # Oldest first, in chunks, so the counts are true even if a later chunk fails.
    doomed = [(name, info) for name in plan.wal_delete for info in wal_objects[name]]
    for start in range(0, len(doomed), DELETE_CHUNK):
        chunk = doomed[start : start + DELETE_CHUNK]
        delete([info.key for _, info in chunk])
        for name, info in chunk:
            result.wal_bytes += info.size
            if wal_kind(name) is WalKind.SEGMENT:
                result.wal_segments += 1
                result.wal_first = result.wal_first or name
                result.wal_last = name
            else:
                result.wal_other_files += 1

    if plan.keep_all_wal:
        return
    # Index entries by the same rule (not by what was just deleted), so earlier leftovers go too.
    stale = []
    for info in repo.list(WALINDEX_PREFIX):
        base = info.key.rsplit("/", 1)[-1].removesuffix(".json").removesuffix(".partial")
        position = _position(base, plan.segment_size)
        if position is not None and not plan.keeps_segment(*position):
            stale.append(info)
    for start in range(0, len(stale), DELETE_CHUNK):
        batch = stale[start : start + DELETE_CHUNK]
        delete([info.key for info in batch])
        result.index_entries += len(batch)
        result.wal_bytes += sum(info.size for info in batch)


def _group_backups(listing: Iterable[ObjectInfo]) -> dict[str, dict[str, ObjectInfo]]:
    grouped: dict[str, dict[str, ObjectInfo]] = defaultdict(dict)
    for info in listing:
        parts = info.key.split("/")
        if len(parts) >= 3 and parts[1]:
            grouped[parts[1]][info.key] = info
    return grouped


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


# --- the S3 lifecycle backstop --------------------------------------------------------------------

#: The Memecoin deployment's S3 lifecycle rule: Glacier after 30 days, deleted after a year.
GLACIER_AFTER_DAYS = 30
EXPIRE_AFTER_DAYS = 365
#: Glacier bills at least 90 days of storage per object: the backstop never deletes sooner than that.
GLACIER_MINIMUM_DAYS = 90
ABORT_MULTIPART_AFTER_DAYS = 7


def s3_root_prefix(prefix: str, cluster: str) -> str:
    """``<prefix>/<cluster>/`` without empty parts, exactly as the S3 repository builds its root."""
    parts = [p for p in f"{prefix}/{cluster}".split("/") if p]
    return "/".join(parts) + "/"


def lifecycle_policy(cfg: Config) -> dict[str, Any]:
    """The bucket lifecycle configuration for ``aws s3api put-bucket-lifecycle-configuration``.

    The Memecoin deployment's rule (Glacier after 30 days, deleted after 365), limited to this cluster's prefix, plus
    AbortIncompleteMultipartUpload after 7 days. Why it is safe beside pgdr's own retention:

    * pgdr deletes first. ``pgdr expire`` removes S3 backups once they are ``s3.retention_days`` old
      (30 by default) and the WAL only they needed, so the transition normally reaches only objects
      pgdr is about to delete, and the expiration is a backstop for a cluster pgdr no longer runs
      for. To keep that true when ``s3.retention_days`` is raised, the transition comes no earlier
      than the retention, and the expiration no earlier than the transition plus Glacier's 90-day
      minimum: the rule never moves away or deletes a backup pgdr still counts on as online.
    * What pgdr keeps past the retention on purpose (the newest backup when backups have stopped for
      a month, and the WAL after it) does move to Glacier: a restore from S3 then needs an S3
      RestoreObject first. The local repository keeps its own copy by the same rule.
    * Small objects pgdr reads all the time (``repo.json``, ``.history`` files, WAL index entries)
      stay readable: under the bucket's default TransitionDefaultMinimumObjectSize
      (``all_storage_classes_128K``) S3 transitions nothing under 128 KB. A bucket set to
      ``varies_by_storage_class`` would move them to Glacier too, where a plain GET fails: keep the
      default. After a year the expiration removes them; ``repo.json`` is written again by the next
      ``wal-push``, and the ``.history`` files a kept backup needs are younger than that backup.
    * An incomplete multipart upload is never a visible object, and a backup is listed only once its
      manifest is written after every upload completed; no upload of pgdr's runs for days. Aborting
      uploads older than 7 days only reclaims the storage of those a crash left behind.
    """
    s3 = cfg.s3
    if not s3.bucket:
        raise ConfigError(f"s3.bucket is not set in {cfg.where()}: the lifecycle rule is for an S3 repository")
    glacier = max(GLACIER_AFTER_DAYS, s3.retention_days)
    expiration = max(EXPIRE_AFTER_DAYS, glacier + GLACIER_MINIMUM_DAYS)
    return {
        "Rules": [
            {
                "ID": f"pgdr-{cfg.cluster.name}",
                "Status": "Enabled",
                "Filter": {"Prefix": s3_root_prefix(s3.prefix, cfg.cluster.name)},
                "Transitions": [{"Days": glacier, "StorageClass": "GLACIER"}],
                "Expiration": {"Days": expiration},
                "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": ABORT_MULTIPART_AFTER_DAYS},
            }
        ]
    }
