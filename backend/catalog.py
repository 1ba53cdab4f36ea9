"""The catalog: what the repositories hold, read from the repositories themselves.

A backup is listed only when its manifest is present and parses; the WAL archive is summarised as
contiguous ranges of segments per timeline, so a gap is visible at a glance.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from backend.archive.walfile import WalObject
from backend.errors import PgdrError
from backend.manifest import BACKUPS_PREFIX, MANIFEST_NAME, BackupManifest
from backend.repository import Repository, read_identity
from backend.timeline import History, RecoveryTimeline, SegmentInfo, build_timeline
from backend.walnames import DEFAULT_SEGMENT_SIZE, SegmentName, WalKind, wal_kind


@dataclass
class CatalogBackup:
    manifest: BackupManifest
    repositories: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        m = self.manifest
        return {
            "name": m.name,
            "kind": m.kind,
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


@dataclass
class Catalog:
    backups: list[CatalogBackup]
    wal: list[WalRange]
    history_files: dict[str, list[str]]
    segments: list[ArchivedSegment] = field(default_factory=list)
    histories: dict[int, str] = field(default_factory=dict)
    #: When each timeline's .history file was archived: the promotion that began it, to the second.
    history_times: dict[int, datetime] = field(default_factory=dict)
    segment_size: int = DEFAULT_SEGMENT_SIZE

    def to_json(self) -> dict[str, Any]:
        return {
            "backups": [b.to_json() for b in self.backups],
            "wal": [r.to_json() for r in self.wal],
            "history_files": self.history_files,
        }


def read_catalog(repos: list[Repository]) -> Catalog:
    backups: dict[str, CatalogBackup] = {}
    ranges: list[WalRange] = []
    history: dict[str, list[str]] = defaultdict(list)
    histories: dict[int, str] = {}
    history_times: dict[int, datetime] = {}
    every_segment: list[ArchivedSegment] = []
    segment_size = DEFAULT_SEGMENT_SIZE
    for repo in repos:
        identity = read_identity(repo)
        segment_size = identity.segment_size if identity else segment_size
        for manifest in _manifests(repo):
            entry = backups.setdefault(manifest.name, CatalogBackup(manifest))
            entry.repositories.append(repo.name)
        segments = []
        for info in repo.list("wal/"):
            obj = WalObject.parse_key(info.key)
            if obj is None:
                continue
            try:
                # Segments are nearly every object: one regex (in SegmentName.parse) for them, not five.
                kind = WalKind.SEGMENT if len(obj.filename) == 24 else wal_kind(obj.filename)
            except ValueError:
                continue
            if kind is WalKind.SEGMENT:
                try:
                    name = SegmentName.parse(obj.filename, segment_size)
                except ValueError:
                    continue  # not a WAL segment name after all: not pgdr's object
                segments.append(ArchivedSegment(name, repo.name, info.size, info.modified, obj.checksum))
            elif kind is WalKind.HISTORY:
                history[repo.name].append(obj.filename)
                timeline = int(obj.filename[:8], 16)
                if timeline not in histories:
                    histories[timeline] = _history_text(repo, info.key, obj)
                history_times[timeline] = min(info.modified, history_times.get(timeline, info.modified))
        ranges.extend(contiguous_ranges(segments))
        every_segment.extend(segments)
    ordered = sorted(backups.values(), key=lambda b: b.manifest.name)
    return Catalog(ordered, ranges, dict(history), every_segment, histories, history_times, segment_size)


def _history_text(repo: Repository, key: str, obj: WalObject) -> str:
    from backend.archive.walfile import decode

    return decode(repo.get(key), obj.compression).decode("utf-8", errors="replace")


def _manifests(repo: Repository) -> list[BackupManifest]:
    found = []
    for info in repo.list(BACKUPS_PREFIX):
        if info.key.endswith("/" + MANIFEST_NAME) and info.key.count("/") == 2:
            try:
                found.append(BackupManifest.from_json(repo.get(info.key), f"{repo.name}:{info.key}"))
            except PgdrError:
                continue  # a damaged manifest is not a backup; `pgdr verify` names it
    return found


def contiguous_ranges(segments: list[ArchivedSegment]) -> list[WalRange]:
    """Group segments (of one repository) into runs without gaps, per timeline."""
    by_timeline: dict[tuple[str, int], list[ArchivedSegment]] = defaultdict(list)
    for seg in segments:
        by_timeline[(seg.repository, seg.segment.timeline)].append(seg)
    ranges = []
    for (repo, timeline), segs in sorted(by_timeline.items()):
        segs.sort(key=lambda s: s.segment.number)
        run = [segs[0]]
        for seg in segs[1:]:
            if seg.segment.number == run[-1].segment.number + 1:
                run.append(seg)
            elif seg.segment.number != run[-1].segment.number:
                ranges.append(_range(repo, timeline, run))
                run = [seg]
        ranges.append(_range(repo, timeline, run))
    return ranges


def _range(repo: str, timeline: int, run: list[ArchivedSegment]) -> WalRange:
    return WalRange(
        repository=repo,
        timeline=timeline,
        first=run[0].segment,
        last=run[-1].segment,
        segments=len(run),
        stored_bytes=sum(s.size for s in run),
        first_archived_at=min(s.archived_at for s in run),
        last_archived_at=max(s.archived_at for s in run),
    )


def recovery_timeline(
    catalog: Catalog, commit_times: dict[str, tuple[datetime | None, datetime | None]] | None = None
) -> RecoveryTimeline:
    """Merge every repository's WAL into one timeline; ``commit_times`` (from the WAL index) sharpens it.

    A segment counts as archived when any repository holds it; the repositories are listed local
    first, the order a restore reads from.
    """
    merged: dict[tuple[int, int], list[ArchivedSegment]] = defaultdict(list)
    for seg in catalog.segments:
        merged[(seg.segment.timeline, seg.segment.number)].append(seg)
    infos = []
    times = commit_times or {}
    for copies in merged.values():
        first = copies[0]
        indexed = first.segment.name in times
        first_commit, last_commit = times.get(first.segment.name, (None, None))
        infos.append(
            SegmentInfo(
                segment=first.segment,
                repositories=tuple(c.repository for c in copies),
                stored_bytes=first.size,
                archived_at=max(c.archived_at for c in copies),
                first_commit=first_commit,
                last_commit=last_commit,
                indexed=indexed,
            )
        )
    histories = {
        tli: History.parse(tli, text, created=catalog.history_times.get(tli)) for tli, text in catalog.histories.items()
    }
    return build_timeline((b.manifest for b in catalog.backups), infos, histories, catalog.segment_size)
