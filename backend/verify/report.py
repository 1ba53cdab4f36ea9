"""What a verify run found, as plain data: each backup, each repository's WAL archive, each repository
compared with the others, and the report that renders them all.

These are what ``pgdr verify --json`` prints, what the console shows and what the stored records are made
of (``backend.verify.records``). They hold none of the rules of how verify decides, so any layer can read
them without loading the checks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from backend.manifest import BACKUPS_PREFIX

#: WAL statuses that are a real problem; "uploading" and "delayed" are normal lag.
PROBLEM_STATUSES = frozenset({"lost", "corrupt"})
#: Backup problems that mean the stored bytes of that copy are damaged (not absent, not unreadable).
CORRUPT_KINDS = frozenset({"size", "checksum", "undecodable", "content", "pg_restore", "manifest"})


@dataclass(frozen=True)
class BackupProblem:
    """One thing wrong with one backup: which copy (``repository``), which object, what is wrong.

    ``kind`` is one of: missing, size, checksum, undecodable, content (decompresses to other bytes),
    unreadable, manifest, incomplete, debris, pg_restore, wal, chain (an incremental's chain is
    broken in that repository: a backup it builds on is missing or damaged there; the incremental's
    own bytes may be sound, see ``objects.check_chains``).
    """

    repository: str | None
    object: str | None
    kind: str
    detail: str

    def describe(self) -> str:
        where = f"{self.repository}: " if self.repository else ""
        if self.kind == "chain":  # its detail says "chain broken: ..." itself
            return f"{where}{self.detail}"
        what = f"{self.object}: " if self.object else ""
        return f"{where}{what}{self.kind}: {self.detail}"

    def to_json(self) -> dict[str, Any]:
        return {"repository": self.repository, "object": self.object, "kind": self.kind, "detail": self.detail}


@dataclass
class Rehearsal:
    """What the restore rehearsal of one physical backup found."""

    restored_from: str | None = None
    verifybackup: str = ""
    consistent_lsn: str | None = None
    databases: list[str] = field(default_factory=list)
    relations: int = 0
    seconds: float = 0.0
    problems: list[str] = field(default_factory=list)
    #: Why this host could not hold the rehearsal: it says nothing of the backup, which is neither
    #: proven restorable nor failed (the run is incomplete instead).
    could_not: str | None = None

    @property
    def ok(self) -> bool:
        return not self.problems and self.could_not is None and self.restored_from is not None

    @property
    def failed(self) -> bool:
        """Whether the backup failed its rehearsal (and is BAD)."""
        return not self.ok and self.could_not is None

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "restored_from": self.restored_from,
            "pg_verifybackup": self.verifybackup,
            "consistent_lsn": self.consistent_lsn,
            "databases": self.databases,
            "relations": self.relations,
            "seconds": round(self.seconds, 1),
            "problems": self.problems,
            "could_not": self.could_not,
        }


@dataclass
class BackupResult:
    """Everything verify found about one backup folder, across the repositories holding it."""

    name: str
    kind: str  # "physical" | "logical" | "debris" | "damaged" (no manifest parses)
    repositories: list[str] = field(default_factory=list)
    objects_checked: int = 0
    bytes_checked: int = 0
    #: Objects not read in this run: found intact before, unchanged since, and their turn not come.
    objects_remembered: int = 0
    problems: list[BackupProblem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    rehearsal: Rehearsal | None = None

    @property
    def ok(self) -> bool:
        return not self.problems and not (self.rehearsal is not None and self.rehearsal.failed)

    @property
    def level(self) -> str:
        """How far the backup was proven: a rehearsal that could not be held leaves it at checksums."""
        return "deep" if self.rehearsal is not None and self.rehearsal.could_not is None else "checksums"

    def copy_ok(self, repository: str) -> bool:
        """Whether this repository's copy is sound on its own (the rehearsal is judged separately)."""
        return not any(p.repository == repository for p in self.problems)

    def problem_lines(self) -> list[str]:
        lines = [p.describe() for p in self.problems]
        if self.rehearsal is not None:
            lines += [f"rehearsal: {p}" for p in self.rehearsal.problems]
        return lines

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "ok": self.ok,
            "level": self.level,
            "repositories": self.repositories,
            "objects_checked": self.objects_checked,
            "bytes_checked": self.bytes_checked,
            "objects_remembered": self.objects_remembered,
            "problems": [p.to_json() for p in self.problems],
            "notes": self.notes,
            "rehearsal": self.rehearsal.to_json() if self.rehearsal else None,
        }


@dataclass(frozen=True)
class WalFinding:
    """A run of segments (``first`` .. ``last``) missing from, or corrupt in, one repository."""

    repository: str
    timeline: int
    first: str
    last: str
    count: int
    status: str  # "lost" | "uploading" | "delayed" | "corrupt"
    detail: str
    #: The stored object, for a corrupt one (a missing segment has none).
    key: str | None = None

    @property
    def problem(self) -> bool:
        return self.status in PROBLEM_STATUSES

    @property
    def segments(self) -> str:
        return self.first if self.first == self.last else f"{self.first} .. {self.last}"

    def to_json(self) -> dict[str, Any]:
        return {
            "repository": self.repository,
            "timeline": self.timeline,
            "first": self.first,
            "last": self.last,
            "count": self.count,
            "status": self.status,
            "problem": self.problem,
            "detail": self.detail,
            "key": self.key,
        }


@dataclass(frozen=True)
class WalSpan:
    """The stretch of one timeline checked for holes in one repository."""

    timeline: int
    first: str
    last: str
    present: int

    def to_json(self) -> dict[str, Any]:
        return {"timeline": self.timeline, "first": self.first, "last": self.last, "present": self.present}


@dataclass
class WalResult:
    """The WAL archive of one repository: the spans checked, objects verified, what is missing."""

    repository: str
    spans: list[WalSpan] = field(default_factory=list)
    #: Objects read in this run, and objects not read because they are remembered as intact.
    verified: int = 0
    remembered: int = 0
    findings: list[WalFinding] = field(default_factory=list)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and not any(f.problem for f in self.findings)

    def to_json(self) -> dict[str, Any]:
        return {
            "repository": self.repository,
            "ok": self.ok,
            "spans": [s.to_json() for s in self.spans],
            "verified_objects": self.verified,
            "remembered_objects": self.remembered,
            "findings": [f.to_json() for f in self.findings],
            "error": self.error,
        }


@dataclass(frozen=True)
class RepositoryLoss:
    """A repository lacking what ``other`` holds, beyond what upload lag and its own retention explain."""

    repository: str
    other: str
    #: Segments ``other`` holds that are missing here (``first`` .. ``last``), and how many it holds.
    segments: int
    first: str | None
    last: str | None
    other_segments: int
    #: Backups ``other`` holds, within this repository's retention, that are missing here; and how many it holds.
    backups: int
    other_backups: int
    #: This repository holds no WAL and no backup at all.
    empty: bool
    #: Its repo.json is gone while ``other`` has one.
    identity_gone: bool

    def describe(self) -> str:
        """What is missing, in one sentence that names both repositories and says what it looks like."""
        here, there = f"the {self.repository} repository", f"the {self.other} repository"
        if self.empty:
            held = " and ".join(
                _count(n, what)
                for n, what in ((self.other_backups, "backup"), (self.other_segments, "WAL segment"))
                if n
            )
            gone = ", and its repo.json is gone" if self.identity_gone else ""
            return f"{here} holds none of the {held} {there} holds{gone}: emptied, or replaced by another (empty) one?"
        if self.segments:
            span = self.first if self.first == self.last else f"{self.first} .. {self.last}"
            also = ""
            if self.backups and self.backups == self.other_backups:
                also = ", and its backup" if self.backups == 1 else f", and all {self.backups} of its backups"
            elif self.backups:
                also = f", and {self.backups} of its {self.other_backups} backups"
            return (
                f"{here} lacks {_count(self.segments, 'WAL segment')} {there} holds ({span}, older than anything "
                f"left in it, which its own retention keeps){also}: emptied and refilled, or replaced by another one?"
            )
        return (
            f"{here} holds none of the {_count(self.backups, 'backup')} {there} holds within its retention, though "
            f"it holds the WAL archived while they were taken: were its backups removed?"
        )

    def fix(self) -> str:
        return (
            f"The {self.other} repository still holds them and restores work from it (`pgdr restore --repo "
            f"{self.other}`): find out what removed them, then take a base backup (`pgdr backup`) so the "
            f"{self.repository} repository can restore on its own again (pgdr does not copy what is already "
            "archived from one repository to another)"
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "repository": self.repository,
            "other": self.other,
            "segments": self.segments,
            "first": self.first,
            "last": self.last,
            "other_segments": self.other_segments,
            "backups": self.backups,
            "other_backups": self.other_backups,
            "empty": self.empty,
            "identity_gone": self.identity_gone,
            "detail": self.describe(),
            "fix": self.fix(),
        }


def _count(n: int, what: str) -> str:
    return f"{n:,} {what}{'' if n == 1 else 's'}"


@dataclass
class VerifyReport:
    cluster: str
    level: str  # "checksums" | "deep"
    started: datetime
    finished: datetime
    backups: list[BackupResult] = field(default_factory=list)
    wal: list[WalResult] = field(default_factory=list)
    losses: list[RepositoryLoss] = field(default_factory=list)
    #: What left verification incomplete, rather than found damage (a repository that cannot be read,
    #: a PostgreSQL program that is missing, a rehearsal this host could not hold): so not ok.
    errors: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    #: Whether every object was read now (``--full``, ``--deep``, a named backup), rather than only
    #: the new, the changed and those whose turn came (``[verify] reread_days``).
    full: bool = False

    @property
    def ok(self) -> bool:
        """True only when everything checked is sound and nothing could not be checked."""
        return not self.errors and not self.losses and all(b.ok for b in self.backups) and all(w.ok for w in self.wal)

    @property
    def objects_read(self) -> int:
        return sum(b.objects_checked for b in self.backups) + sum(w.verified for w in self.wal)

    @property
    def objects_remembered(self) -> int:
        return sum(b.objects_remembered for b in self.backups) + sum(w.remembered for w in self.wal)

    def corrupt(self) -> list[tuple[str, str, str]]:
        """Every stored object found damaged: (repository, key, what is wrong), so each can be named."""
        found = [
            (p.repository, f"{BACKUPS_PREFIX}{b.name}/{p.object}", f"{p.kind}: {p.detail}")
            for b in self.backups
            for p in b.problems
            if p.repository is not None and p.object is not None and p.kind in CORRUPT_KINDS
        ]
        found += [
            (f.repository, f.key, f.detail) for w in self.wal for f in w.findings if f.status == "corrupt" and f.key
        ]
        return found

    def render(self) -> str:
        import humanize

        verdict = "OK" if self.ok else "PROBLEMS FOUND"
        took = (self.finished - self.started).total_seconds()
        lines = [
            f"Verify of cluster {self.cluster} ({self.level}), {self.started:%Y-%m-%d %H:%M:%S} UTC, "
            f"{took:.1f} s: {verdict}"
        ]
        for error in self.errors:
            lines.append(f"  ERROR  {error}")
        for loss in self.losses:
            lines += [f"  LOST   {loss.describe()}", f"           {loss.fix()}"]
        for repository, key, _what in self.corrupt():
            lines.append(f"  CORRUPT {repository}: {key}")
        if not self.backups:
            lines.append("  no backups to verify: take one with `pgdr backup`")
        for b in self.backups:
            held = ", ".join(b.repositories) or "no repository"
            size = humanize.naturalsize(b.bytes_checked)
            if b.ok:
                deep = ""
                if b.rehearsal is not None and b.rehearsal.could_not is not None:
                    deep = "; not rehearsed (the ERROR above)"
                elif b.rehearsal is not None:
                    r = b.rehearsal
                    deep = (
                        f"; rehearsal ok from {r.restored_from}: consistent at {r.consistent_lsn or '?'}, "
                        f"{len(r.databases)} databases, {r.relations} relations, {r.seconds:.1f} s"
                    )
                kept = f", {b.objects_remembered} remembered as intact" if b.objects_remembered else ""
                lines.append(
                    f"  ok     backup {b.name} ({b.kind}) in {held}: {b.objects_checked} objects, {size} read"
                    f"{kept}{deep}"
                )
            else:
                lines.append(f"  BAD    backup {b.name} ({b.kind}) in {held}:")
                lines += [f"           {line}" for line in b.problem_lines()]
                for repo in b.repositories:
                    if b.copy_ok(repo):
                        lines.append(f"           {repo}: copy ok")
            lines += [f"           note: {note}" for note in b.notes]
        for w in self.wal:
            if w.error is not None:
                lines.append(f"  ERROR  WAL in {w.repository}: {w.error}")
                continue
            spans = "; ".join(f"timeline {s.timeline} {s.first} .. {s.last} ({s.present} segments)" for s in w.spans)
            head = "ok   " if w.ok else "BAD  "
            verified = f"{w.verified} object{'' if w.verified == 1 else 's'} verified"
            if w.remembered:
                verified += f", {w.remembered} remembered as intact"
            lines.append(f"  {head}  WAL in {w.repository}: {spans or 'nothing a backup needs'}; {verified}")
            for f in w.findings:
                count = f" ({f.count} segments)" if f.count > 1 else ""
                lines.append(
                    f"           {f.status.upper() if f.problem else f.status}: {f.segments}{count}: {f.detail}"
                )
        lines += [f"  note: {note}" for note in self.notes]
        read = f"{self.objects_read:,} object{'' if self.objects_read == 1 else 's'} read"
        if self.full:
            lines.append(f"  {read}: every object asked about, whatever was remembered")
        else:
            lines.append(
                f"  {read}; {self.objects_remembered:,} remembered as intact and unchanged, read again at their "
                "turn ([verify] reread_days; `--full` reads them now)"
            )
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        return {
            "cluster": self.cluster,
            "level": self.level,
            "ok": self.ok,
            "started": self.started.isoformat(),
            "finished": self.finished.isoformat(),
            "backups": [b.to_json() for b in self.backups],
            "wal": [w.to_json() for w in self.wal],
            "losses": [loss.to_json() for loss in self.losses],
            "errors": self.errors,
            "notes": self.notes,
            "full": self.full,
            "objects_read": self.objects_read,
            "objects_remembered": self.objects_remembered,
            "corrupt": [{"repository": r, "key": k, "detail": d} for r, k, d in self.corrupt()],
        }
