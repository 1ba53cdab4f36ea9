"""``pgdr verify``: prove the stored backups and WAL are what was written, and (``--deep``) that they restore.

A backup that was written correctly can still rot: a disk flips a bit, an operator deletes a folder, an
upload is cut short, a lifecycle rule removes WAL. Nobody notices until the restore, which is the worst
moment. So verify reads every stored byte back and compares it with what the manifests and the WAL
object names promise, and says which copy (which repository) is bad, because the other copy is
usually fine and is what the operator restores from.

Levels:

* checksums (default): every object of every backup and every archived WAL object, in every
  repository that holds it, is streamed (1 MiB at a time, never a whole object in memory) and its
  size and sha256 compared with what the manifest or the WAL object's name promises; compressed
  objects are also decompressed on the fly, which catches a stream that hashes right but cannot be
  unpacked, and the original bytes' sha256 compared where the manifest records it (a tar PostgreSQL
  compressed itself has none: ``pg_verifybackup`` checks its files, in deep). A ``.dump`` must pass
  ``pg_restore --list``. The archive of every repository is checked for holes. A year of history is
  too much to read every day, so each repository remembers what was read and found intact (see
  ``_Memory``): a run reads what is new or changed, and each remembered object again at its own turn,
  once every ``[verify] reread_days`` days, so a daily run reads about 1/reread_days of the old ones.
  Anything found damaged is never remembered, so it is read (and reported) again on every run.
* full (``--full``): the same checks of every object now, whatever is remembered.
* deep: full, plus a restore rehearsal: the newest physical backup (or the named one) is restored
  into a scratch directory (an incremental one combined with its chain by ``pg_combinebackup``, as a
  restore does), checked with ``pg_verifybackup``, started as a real server that replays to its
  consistency point through the real ``restore_command``, and queried; the scratch directory is
  removed whatever happens. A rehearsal this host cannot hold (no room or no permission for the
  scratch directory, too few open files, shared memory) proves nothing about the backup: it is an
  error of the run, "could not rehearse", never a BAD backup.

A named backup (``pgdr verify NAME``) is read whole, with the WAL it needs to become consistent
(deep: all the WAL it can replay), whatever is remembered: the operator asked about it now. A named
incremental is read with every backup down its chain, which it cannot be restored without.

An incremental backup is only as good as its chain: in each repository, every backup it builds on,
down to the full one, must be there and sound. A link missing (expired, deleted) or found damaged in
a repository is the incremental's problem there (``_check_chains``), so it shows as BAD; a restore
plan judges each backup of the chain by its own record, and refuses a chain one of whose backups
has no intact copy left (``backend.restore.copies``).

WAL holes are classified so that normal archive lag never raises a data-loss alarm: a hole that is
queued for upload to that repository (and held by another one) is "uploading"; a hole in a repository
``wal-push`` does not wait for, held by another repository and younger than ``DELAY_GRACE``, is
"delayed"; everything else is "lost" (from that repository, or, when no repository holds it, from the
archive: point-in-time recovery cannot cross it). Segments after a repository's newest one that
another repository holds are judged the same way, the age being that of the other copy: lag is
queued, so an unqueued segment the other copy has held for long never arrives.

Each repository is also compared with the others as a whole, since a hole is only visible between
segments the repository still holds: one emptied (or swapped for another, empty one, by a changed
endpoint or bucket) holds nothing to have holes between. A repository lacking segments that another
holds, is not owed by the upload queue, that its own retention keeps, and that are older than
anything it still holds (or that holds no backup at all though it has WAL from before the others'
backups) lost them: that is a ``RepositoryLoss``, reported at once, without the grace of a hole.

Each result is recorded as ``verify/<backup name>.json`` in every repository holding the backup, so
the catalog and the console can say when each backup was last verified and how (``last_verified``);
the WAL objects found corrupt in a repository are recorded in its ``verify/corrupt-wal.json``
(``corrupt_wal``). A restore plan reads both to take another repository's copy
(``backend.restore.copies``).

A verify that finds problems (or fails) is sent to Telegram by ``verify`` itself, so the CLI, the
console and the daemon all alert alike; a full run that passes after a failure says so once.
"""

from __future__ import annotations

import bisect
import contextlib
import difflib
import gzip
import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any, cast

from backend import notify as tg
from backend.archive import queue
from backend.archive.walfile import WalObject, decode, encode
from backend.audit import state_dir
from backend.config import Config
from backend.errors import ConfigError, ObjectNotFound, PgdrError, RepositoryError
from backend.manifest import BACKUPS_PREFIX, MANIFEST_NAME, BackupManifest, BrokenChain, StoredObject, chain
from backend.postgres import chown_tree, own_folder, owner_of, program, run_server_program
from backend.progress import Cancelled, Progress, ProgressCallback, check_cancel, no_progress
from backend.repository import ObjectInfo, Repository, open_repositories, read_identity
from backend.tablespaces import TABLESPACE_MAP, recorded
from backend.timeline import History, estimate_restore_seconds, timeline_path
from backend.walnames import DEFAULT_SEGMENT_SIZE, SegmentName, WalKind, wal_kind

CHUNK = 1 << 20
VERIFY_PREFIX = "verify/"
RECORD_FORMAT = 1
#: Per repository: the objects read and found intact, and when (``_Memory``).
MEMORY_KEY = f"{VERIFY_PREFIX}objects.json.zst"
MEMORY_FORMAT = 1
#: Per repository: the WAL objects the last verify that read them found corrupt (``corrupt_wal``).
CORRUPT_WAL_KEY = f"{VERIFY_PREFIX}corrupt-wal.json"
#: How often a long run stores what it found intact so far: a first read of a year's history takes
#: hours, and one killed near its end should not have to start over.
MEMORY_CHECKPOINT_S = 600.0
#: Backup problems that mean the stored bytes of that copy are damaged (not absent, not unreadable).
CORRUPT_KINDS = frozenset({"size", "checksum", "undecodable", "content", "pg_restore", "manifest"})
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
#: How long a hole in a repository that ``wal-push`` does not wait for may be the uploader catching
#: up (retrying after an outage) before it counts as lost.
DELAY_GRACE = timedelta(minutes=10)
#: A segment stored in a repository ``wal-push`` waits for gets its queue entries a moment later; one
#: this much older that is neither queued for another repository nor in it is not on its way there.
IN_FLIGHT = timedelta(seconds=5)
#: A backup folder without a manifest younger than this is probably a backup being written right now
#: (objects appear one by one, the manifest last), not debris of a crashed one.
DEBRIS_GRACE = timedelta(hours=1)
#: Problems of a backup an incremental builds on that leave the incremental restorable from that
#: repository: the WAL the link itself needs to become consistent (a restore of the incremental replays
#: from the incremental's own start), and the link's own chain (judged for each backup on its own).
_NOT_LINK_DAMAGE = frozenset({"wal", "chain"})
#: How a broken chain problem ends: what it means for the incremental.
_UNRESTORABLE = "this backup cannot be restored from it"
#: WAL statuses that are a real problem; "uploading" and "delayed" are normal lag.
PROBLEM_STATUSES = frozenset({"lost", "corrupt"})
#: What a rehearsal server's log says when the host, not the backup, kept it from starting.
HOST_FAILURES = re.compile(
    r"shared memory|semaphore|could not create lock file|could not bind|Address already in use"
    r"|No space left on device|Too many open files|Cannot allocate memory|out of memory|Permission denied"
    r"|wrong ownership|invalid permissions",
    re.IGNORECASE,
)
#: Settings that make the rehearsal server a private, throwaway copy beside the production server: no
#: archiving (it must never push a divergent history), no TCP, a socket only its owner can use, its own
#: client authentication (production's pg_hba.conf may only allow peers it cannot match), and modest
#: memory (it may run on the production host).
REHEARSAL_SETTINGS = {
    "archive_mode": "off",
    "listen_addresses": "",
    "unix_socket_permissions": "0700",
    "ssl": "off",
    "logging_collector": "off",
    "shared_buffers": "64MB",
    "huge_pages": "off",
    "cluster_name": "pgdr-verify",
}


# --- results -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BackupProblem:
    """One thing wrong with one backup: which copy (``repository``), which object, what is wrong.

    ``kind`` is one of: missing, size, checksum, undecodable, content (decompresses to other bytes),
    unreadable, manifest, incomplete, debris, pg_restore, wal, chain (an incremental's chain is
    broken in that repository: a backup it builds on is missing or damaged there; the incremental's
    own bytes may be sound, see ``_check_chains``).
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


# --- the stored record ---------------------------------------------------------------------------


def record_key(name: str) -> str:
    return f"{VERIFY_PREFIX}{name}.json"


def last_verified(repos: Repository | Iterable[Repository], name: str) -> dict[str, Any] | None:
    """The newest stored verify result of backup ``name`` in these repositories, or None.

    The dict is the stored record: ``time`` (ISO 8601, UTC), ``level`` ("checksums" or "deep"),
    ``ok`` (the whole backup), ``copy_ok`` (this repository's copy), ``problems`` (one line each),
    ``repository``, and ``last_deep`` (``{"time", "ok"}`` of the newest rehearsal, carried forward by
    quicker runs, or None). A repository that cannot be read is skipped: the console asks this
    for every backup it shows and must not fail because S3 is briefly away.
    """
    candidates = [repos] if isinstance(repos, Repository) else list(repos)
    best: dict[str, Any] | None = None
    for repo in candidates:
        record = read_record(repo, name)
        if record is not None and (best is None or record_time(record) > record_time(best)):
            best = record
    return best


def read_record(repo: Repository, name: str) -> dict[str, Any] | None:
    """One repository's stored verify result of backup ``name``; None when absent, unreadable or damaged."""
    try:
        record = json.loads(repo.get(record_key(name)))
        datetime.fromisoformat(record["time"])
    except (RepositoryError, ValueError, KeyError, TypeError):
        return None
    if not isinstance(record, dict) or not isinstance(record.get("ok"), bool):
        return None
    record.setdefault("repository", repo.name)
    return record


def record_time(record: dict[str, Any]) -> datetime:
    """When a record's verify ran (records from ``read_record`` always have a valid ``time``)."""
    return datetime.fromisoformat(record["time"])


def _store_results(report: VerifyReport, repos: dict[str, Repository], when: datetime) -> None:
    """Write ``verify/<name>.json`` into every verified repository holding each backup."""
    for result in report.backups:
        if result.kind not in ("physical", "logical"):
            continue  # debris is not a backup: there is nothing to say "last verified" about
        for name in result.repositories:
            repo = repos.get(name)
            if repo is None:
                continue
            record: dict[str, Any] = {
                "format": RECORD_FORMAT,
                "backup": result.name,
                "time": when.isoformat(),
                "level": result.level,
                "ok": result.ok,
                "repository": name,
                "copy_ok": result.copy_ok(name),
                # This copy's own problems, whole, so a restore plan can tell damaged bytes from WAL
                # missing here (``backend.restore.copies``).
                "copy_problems": [p.to_json() for p in result.problems if p.repository == name],
                "problems": result.problem_lines(),
                "last_deep": None,
            }
            if result.level == "deep":
                record["last_deep"] = {"time": when.isoformat(), "ok": result.ok}
            else:
                # A quick run (or a rehearsal the host could not hold) must not erase when the backup
                # was last proven restorable.
                previous = last_verified(repo, result.name)
                if previous is not None:
                    record["last_deep"] = previous.get("last_deep")
            try:
                repo.put(record_key(result.name), json.dumps(record, indent=2).encode() + b"\n")
            except PgdrError as exc:
                report.notes.append(f"could not record the result of {result.name} in {name}: {exc}")


# --- what was verified before --------------------------------------------------------------------


def reread_due(key: str, verified: datetime, now: datetime, reread_days: int) -> bool:
    """Whether an object found intact at ``verified`` is to be read again at ``now``.

    Each key has a turn once every ``reread_days`` days, at an offset within the period fixed by a
    hash of the key (the same on every host): the object is due once a turn of its has come since it
    was last read. The turns of many objects are spread evenly over the period, so a daily run reads
    about 1/reread_days of them, and not everything at once a period after the first run read it
    all; an object is read again at the first run after its turn, so never much more than a period
    after its last read.
    """
    if reread_days <= 0:
        return True
    period = reread_days * 86400
    offset = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2**64 * period
    return (now.timestamp() - offset) // period > (verified.timestamp() - offset) // period


def _identity(info: ObjectInfo) -> tuple[int, int]:
    """What tells a rewritten object from the one verified: its size and modification time (µs).

    S3 sets LastModified on every write, a local rewrite sets the mtime; these are what the listings
    give, so knowing an object costs no request beyond the listing verify makes anyway.
    """
    return info.size, (info.modified - _EPOCH) // _MICROSECOND


class _Memory:
    """One repository's memory of the objects verify read and found intact, and of the WAL found corrupt.

    Kept in the repository itself (``verify/objects.json.zst``, ``verify/corrupt-wal.json``, beside
    the backups' ``verify/<name>.json``), not in a host's state dir: every host verifying the
    repository shares what the others read, a host rebuilt after a disaster finds it, and a restore
    plan on any host sees which copies were found corrupt. An entry holds the object's identity in
    the listing (``_identity``) and when it was read; a rewritten object no longer matches, so it is
    read again.
    """

    def __init__(self, repo: Repository, listing: dict[str, ObjectInfo], *, now: datetime, reread_days: int) -> None:
        self.repo, self.listing, self.now, self.reread_days = repo, listing, now, reread_days
        #: Whether this run may skip what it remembers (not --full, --deep, nor a named backup).
        self.active = False
        #: key -> (size, modified in µs, read at in s): objects found intact.
        self.intact: dict[str, tuple[int, int, int]] = {}
        #: key -> its corrupt-wal.json entry: the WAL objects this run found corrupt.
        self.corrupt: dict[str, dict[str, Any]] = {}
        #: Keys read by this run, and those of them found damaged (never remembered as intact).
        self.read: set[str] = set()
        self.bad: set[str] = set()
        self.problem: str | None = None
        self._saved = time.monotonic()

    @classmethod
    def load(cls, scan: _Scan, *, now: datetime, reread_days: int) -> _Memory:
        listing = {info.key: info for objects in scan.folders.values() for info in objects.values()}
        listing.update((info.key, info) for _obj, info in scan.wal)
        memory = cls(scan.repo, listing, now=now, reread_days=reread_days)
        try:
            memory.intact = read_memory(scan.repo)
        except (PgdrError, ValueError) as exc:
            memory.problem = f"what verify found intact in {scan.repo.name} before cannot be read ({exc}): all is read"
        return memory

    def skips(self, info: ObjectInfo | None) -> bool:
        """Whether this run leaves the object unread: found intact, unchanged since, its turn not come."""
        if not self.active or info is None:
            return False
        known = self.intact.get(info.key)
        return (
            known is not None
            and known[:2] == _identity(info)
            and not reread_due(info.key, datetime.fromtimestamp(known[2], UTC), self.now, self.reread_days)
        )

    def found_intact(self, info: ObjectInfo) -> None:
        self.read.add(info.key)
        self.intact[info.key] = (*_identity(info), int(self.now.timestamp()))
        if time.monotonic() - self._saved > MEMORY_CHECKPOINT_S:
            with contextlib.suppress(PgdrError):  # the save at the end of the run says why
                self.save()

    def found_damaged(self, info: ObjectInfo, *, wal_file: str | None = None, detail: str = "") -> None:
        """Never remembered as intact; a WAL object is also recorded for restore plans to avoid."""
        self.read.add(info.key)
        self.bad.add(info.key)
        self.intact.pop(info.key, None)
        if wal_file is not None:
            size, modified = _identity(info)
            self.corrupt[info.key] = {
                "key": info.key,
                "file": wal_file,
                "size": size,
                "modified": modified,
                "time": self.now.isoformat(),
                "detail": detail,
            }

    def save(self) -> None:
        """Store what is known now; raises PgdrError.

        Another host may have stored its findings since this run loaded: for what this run did not
        read, what is stored now is what counts (an object another host just found damaged must not be
        remembered as intact again from this run's older knowledge); for what it read, its own finding,
        or a newer read of another host's. A corrupt WAL object stays recorded until a run reads it
        intact, or it is gone or rewritten; entries of objects no longer listed are dropped.
        """
        self._saved = time.monotonic()
        readable = True
        try:
            stored = read_memory(self.repo)
        except (PgdrError, ValueError):
            stored, readable = self.intact, False  # none to merge with: what this run knows
        recorded = {entry["key"]: entry for entry in corrupt_wal(self.repo)}
        corrupt = {key: entry for key, entry in recorded.items() if key not in self.read} | self.corrupt
        corrupt = {
            key: entry
            for key, entry in corrupt.items()
            if key in self.listing and [entry["size"], entry["modified"]] == list(_identity(self.listing[key]))
        }
        merged: dict[str, tuple[int, int, int]] = {}
        for key, info in self.listing.items():
            if key in self.bad or key in corrupt:
                continue
            mine = self.intact.get(key) if key in self.read else None
            known = [e for e in (stored.get(key), mine) if e is not None and e[:2] == _identity(info)]
            if known:
                merged[key] = max(known, key=lambda e: e[2])
        if merged != stored or not readable:  # a run that learnt nothing new writes nothing
            body = json.dumps({"format": MEMORY_FORMAT, "objects": merged}, separators=(",", ":")).encode()
            self.repo.put(MEMORY_KEY, encode(body, "zstd", 3))
        if corrupt != recorded:
            record = {
                "format": MEMORY_FORMAT,
                "repository": self.repo.name,
                "time": self.now.isoformat(),
                "objects": sorted(corrupt.values(), key=lambda e: str(e["key"])),
            }
            self.repo.put(CORRUPT_WAL_KEY, json.dumps(record, indent=2).encode() + b"\n")


def read_memory(repo: Repository) -> dict[str, tuple[int, int, int]]:
    """The objects a repository remembers as found intact: key -> (size, modified µs, read at s).

    Empty when none is stored yet; raises PgdrError or ValueError when it cannot be read or parsed.
    """
    try:
        blob = repo.get(MEMORY_KEY)
    except ObjectNotFound:
        return {}
    try:
        raw = json.loads(decode(blob, "zstd"))
        if raw.get("format") != MEMORY_FORMAT:
            raise ValueError(f"format {raw.get('format')!r}, not {MEMORY_FORMAT}")
        return {str(key): (int(e[0]), int(e[1]), int(e[2])) for key, e in raw["objects"].items()}
    except (ValueError, TypeError, KeyError, IndexError, AttributeError) as exc:
        raise ValueError(f"{MEMORY_KEY} is damaged: {exc}") from None


def corrupt_wal(repo: Repository) -> list[dict[str, Any]]:
    """The WAL objects of this repository its last verify found corrupt (the newest finding for each).

    Each is a dict: ``key``, ``file`` (the WAL file name), ``size``, ``modified`` (what the object was
    in the listing then), ``time`` (ISO 8601, when it was found) and ``detail``. Empty when none was
    recorded, or the record cannot be read: like ``last_verified``, a reader (a restore plan) must not
    fail because S3 is briefly away.
    """
    try:
        record = json.loads(repo.get(CORRUPT_WAL_KEY))
        objects = record["objects"]
    except (PgdrError, ValueError, KeyError, TypeError):
        return []
    if not isinstance(objects, list):
        return []
    return [
        e
        for e in objects
        if isinstance(e, dict)
        and all(isinstance(e.get(k), str) for k in ("key", "file", "time", "detail"))
        and all(isinstance(e.get(k), int) for k in ("size", "modified"))
        and _is_instant(e["time"])
    ]


def _is_instant(text: str) -> bool:
    try:
        return datetime.fromisoformat(text).tzinfo is not None
    except ValueError:
        return False


# --- reading repositories ------------------------------------------------------------------------


@dataclass
class _Scan:
    """One listing of a repository: its backup folders and its WAL objects."""

    repo: Repository
    folders: dict[str, dict[str, ObjectInfo]] = field(default_factory=dict)
    manifests: dict[str, BackupManifest] = field(default_factory=dict)
    manifest_errors: dict[str, str] = field(default_factory=dict)
    wal: list[tuple[WalObject, ObjectInfo]] = field(default_factory=list)
    segments: dict[tuple[int, int], tuple[WalObject, ObjectInfo]] = field(default_factory=dict)
    segment_size: int | None = None
    has_identity: bool = False


def _scan(repo: Repository, *, backups: bool) -> _Scan:
    scan = _Scan(repo)
    identity = read_identity(repo)
    scan.has_identity = identity is not None
    scan.segment_size = identity.segment_size if identity and identity.segment_size else None
    if backups:
        for info in repo.list(BACKUPS_PREFIX):
            parts = info.key.split("/", 2)
            if len(parts) == 3 and parts[1] and parts[2]:
                scan.folders.setdefault(parts[1], {})[parts[2]] = info
        for name, objects in scan.folders.items():
            if MANIFEST_NAME not in objects:
                continue
            key = f"{BACKUPS_PREFIX}{name}/{MANIFEST_NAME}"
            try:
                manifest = BackupManifest.from_json(repo.get(key), f"{repo.name}:{key}")
            except ObjectNotFound:
                continue  # removed since the listing (expire): treated as absent
            except RepositoryError:
                raise
            except PgdrError as exc:
                scan.manifest_errors[name] = str(exc)
                continue
            if manifest.name != name:
                scan.manifest_errors[name] = f"the manifest in folder {name} names backup {manifest.name}"
                continue
            scan.manifests[name] = manifest
    for info in repo.list("wal/"):
        obj = WalObject.parse_key(info.key)
        if obj is None:
            continue
        scan.wal.append((obj, info))
    return scan


def _index_segments(scan: _Scan, segment_size: int) -> None:
    for obj, info in scan.wal:
        with contextlib.suppress(ValueError):
            if wal_kind(obj.filename) is WalKind.SEGMENT:
                seg = SegmentName.parse(obj.filename, segment_size)
                scan.segments[(seg.timeline, seg.number)] = (obj, info)


class _Meter:
    """Progress in bytes read, reported at most five times a second."""

    def __init__(self, on_progress: ProgressCallback, total: int | None) -> None:
        self.on_progress, self.total, self.done, self._last = on_progress, total, 0, 0.0

    def add(self, n: int, message: str) -> None:
        self.done += n
        now = time.monotonic()
        if now - self._last > 0.2:
            self._last = now
            self.on_progress(Progress("verify", self.done, self.total, message))

    def finish(self, message: str) -> None:
        """The last report, complete, so a progress line on a terminal ends before the report prints."""
        self.on_progress(Progress("verify", self.done, self.done, message))


class _TeeReader:
    """Reads the stored object, hashing (and optionally copying) every byte that passes.

    An error of the repository itself (a dropped connection) is kept, so it is not mistaken for a
    stream that cannot be decompressed.
    """

    def __init__(
        self,
        raw: IO[bytes],
        sink: IO[bytes] | None,
        cancel: threading.Event | None,
        meter: _Meter | None,
        what: str,
    ) -> None:
        self.raw, self.sink, self.cancel, self.meter, self.what = raw, sink, cancel, meter, what
        self.hash = hashlib.sha256()
        self.size = 0
        self.error: BaseException | None = None

    def read(self, n: int = CHUNK) -> bytes:
        check_cancel(self.cancel, "verify")
        try:
            data = self.raw.read(n if n and n > 0 else CHUNK)
        except BaseException as exc:
            self.error = exc
            raise
        self.hash.update(data)
        self.size += len(data)
        if self.sink is not None:
            self.sink.write(data)
        if self.meter is not None:
            self.meter.add(len(data), self.what)
        return data

    def readable(self) -> bool:
        return True


@dataclass
class _Readout:
    size: int
    sha256: str
    raw_size: int
    raw_sha256: str
    decode_error: str | None = None


def _read_through(
    repo: Repository,
    key: str,
    compression: str,
    *,
    stored_sink: IO[bytes] | None = None,
    raw_sink: IO[bytes] | None = None,
    cancel: threading.Event | None = None,
    meter: _Meter | None = None,
) -> _Readout:
    """Stream one object, hashing the stored bytes and (decompressed on the fly) the original bytes.

    Raises ObjectNotFound / RepositoryError; a stream that does not decompress is not an exception
    but ``decode_error``, since every stored byte is still read and hashed.
    """
    import zstandard

    with repo.open(key) as stored:
        tee = _TeeReader(cast(IO[bytes], stored), stored_sink, cancel, meter, key)
        if compression == "none":
            while data := tee.read(CHUNK):
                if raw_sink is not None:
                    raw_sink.write(data)
            digest = tee.hash.hexdigest()
            return _Readout(tee.size, digest, tee.size, digest)
        raw_hash = hashlib.sha256()
        raw_size = 0
        error: str | None = None
        reader: IO[bytes]
        if compression == "zstd":
            reader = cast(
                IO[bytes],
                zstandard.ZstdDecompressor().stream_reader(
                    cast(IO[bytes], tee), read_size=CHUNK, read_across_frames=True
                ),
            )
        elif compression == "gzip":
            reader = cast(IO[bytes], gzip.GzipFile(fileobj=cast(IO[bytes], tee), mode="rb"))
        else:
            raise PgdrError(f"{key}: unknown compression {compression!r} in the manifest")
        try:
            while data := reader.read(CHUNK):
                raw_hash.update(data)
                raw_size += len(data)
                if raw_sink is not None:
                    raw_sink.write(data)
        except (zstandard.ZstdError, OSError, EOFError, zlib.error) as exc:
            if tee.error is not None:
                raise
            error = f"{compression} stream is damaged ({exc})"
        while tee.read(CHUNK):
            pass  # the rest of the stored bytes: the sha256 must cover every one of them
        return _Readout(tee.size, tee.hash.hexdigest(), raw_size, raw_hash.hexdigest(), error)


# --- backups -------------------------------------------------------------------------------------


def _check_object(
    cfg: Config,
    repo: Repository,
    manifest: BackupManifest,
    obj: StoredObject,
    *,
    thorough_dump: bool,
    cancel: threading.Event | None,
    meter: _Meter,
) -> tuple[list[BackupProblem], int]:
    """Check one stored object of a backup; returns its problems and the bytes read.

    A ``.dump`` is copied to a temporary file as it streams past (pg_restore wants a file it can
    seek in), so it is downloaded once for both checks.
    """
    key = manifest.object_key(obj)
    is_dump = obj.key.endswith(".dump") and obj.compression == "none"
    with contextlib.ExitStack() as stack:
        dump_path = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="pgdr-verify-"))) / obj.key
        try:
            with contextlib.ExitStack() as sink_stack:
                sink = sink_stack.enter_context(dump_path.open("wb")) if is_dump else None
                readout = _read_through(repo, key, obj.compression, raw_sink=sink, cancel=cancel, meter=meter)
        except ObjectNotFound:
            return [BackupProblem(repo.name, obj.key, "missing", f"not in the repository ({key})")], 0
        except RepositoryError as exc:
            return [BackupProblem(repo.name, obj.key, "unreadable", str(exc))], 0
        problems = _compare(repo.name, obj, readout)
        if is_dump:
            problems += _check_dump(cfg, repo.name, manifest, obj, dump_path, thorough=thorough_dump)
        return problems, readout.size


def _compare(repository: str, obj: StoredObject, readout: _Readout) -> list[BackupProblem]:
    """The one most telling problem of a read-back object: size, then checksum, then decoding."""
    also = f"; {readout.decode_error}" if readout.decode_error else ""
    if readout.size != obj.size:
        return [
            BackupProblem(
                repository,
                obj.key,
                "size",
                f"{readout.size} bytes stored, the manifest says {obj.size} (truncated or overwritten){also}",
            )
        ]
    if readout.sha256 != obj.sha256:
        return [
            BackupProblem(
                repository,
                obj.key,
                "checksum",
                f"sha256 of the stored bytes is {readout.sha256[:16]}..., the manifest says "
                f"{obj.sha256[:16]}... (the bytes changed after the backup){also}",
            )
        ]
    if readout.decode_error:
        return [BackupProblem(repository, obj.key, "undecodable", readout.decode_error)]
    # raw_sha256 "" is a tar PostgreSQL compressed: no sha256 of its original bytes was recorded, and
    # raw_size then counts its files' bytes, not the tar's (pg_verifybackup checks those files).
    if obj.raw_sha256 and (readout.raw_size != obj.raw_size or readout.raw_sha256 != obj.raw_sha256):
        return [
            BackupProblem(
                repository,
                obj.key,
                "content",
                f"decompresses to {readout.raw_size} bytes with sha256 {readout.raw_sha256[:16]}..., "
                f"not the {obj.raw_size} bytes backed up ({obj.raw_sha256[:16]}...)",
            )
        ]
    return []


def _check_dump(
    cfg: Config, repository: str, manifest: BackupManifest, obj: StoredObject, path: Path, *, thorough: bool
) -> list[BackupProblem]:
    """``pg_restore --list`` reads the dump's table of contents: a dump it refuses cannot be restored.

    Deep also runs a restore into /dev/null, which reads and decompresses every data block.
    """
    try:
        pg_restore = program(cfg, "pg_restore", manifest.version_num)
    except PgdrError as exc:
        return [BackupProblem(repository, obj.key, "pg_restore", f"not checked: {exc}")]
    runs = [("pg_restore --list", [pg_restore, "--list", str(path)])]
    if thorough:
        runs.append(("pg_restore --file=/dev/null", [pg_restore, "--file=/dev/null", str(path)]))
    problems = []
    for label, argv in runs:
        result = subprocess.run(argv, capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL)
        if result.returncode != 0:
            err = result.stderr.strip().splitlines()
            reason = err[-1].removeprefix("pg_restore: ") if err else f"exit {result.returncode}"
            problems.append(BackupProblem(repository, obj.key, "pg_restore", f"{label} fails: {reason}"))
            break
    return problems


def _verify_backup(
    cfg: Config,
    name: str,
    scans: list[_Scan],
    memories: dict[str, _Memory],
    *,
    deep: bool,
    now: datetime,
    cancel: threading.Event | None,
    meter: _Meter,
) -> tuple[BackupResult, BackupManifest | None]:
    holding = [s for s in scans if name in s.folders]
    manifest = next((s.manifests[name] for s in holding if name in s.manifests), None)
    kind = manifest.kind if manifest else ("damaged" if any(name in s.manifest_errors for s in holding) else "debris")
    result = BackupResult(name, kind, [s.repo.name for s in holding])
    for scan in holding:
        objects = scan.folders[name]
        newest = max(info.modified for info in objects.values())
        young = now - newest < DEBRIS_GRACE
        if name in scan.manifest_errors:
            result.problems.append(BackupProblem(scan.repo.name, MANIFEST_NAME, "manifest", scan.manifest_errors[name]))
        elif MANIFEST_NAME not in objects:
            if young:
                result.notes.append(
                    f"{scan.repo.name}: no manifest yet (objects written {newest:%H:%M:%S} UTC): "
                    "probably a backup in progress"
                )
            elif manifest is None:
                keys = ", ".join(sorted(objects))
                result.problems.append(
                    BackupProblem(
                        scan.repo.name,
                        None,
                        "debris",
                        f"a folder without a manifest ({keys}), left by an interrupted backup or expire: not a "
                        f"backup; remove {BACKUPS_PREFIX}{name}/ from {scan.repo.location()}",
                    )
                )
            else:
                result.problems.append(
                    BackupProblem(
                        scan.repo.name,
                        MANIFEST_NAME,
                        "missing",
                        "this copy has no manifest, so it is not listed and cannot be restored from here",
                    )
                )
        if manifest is None:
            continue
        memory = memories[scan.repo.name]
        for obj in manifest.objects:
            info = objects.get(obj.key)
            if memory.skips(info):
                result.objects_remembered += 1
                continue
            problems, read = _check_object(
                cfg, scan.repo, manifest, obj, thorough_dump=deep, cancel=cancel, meter=meter
            )
            if any(p.kind == "missing" for p in problems) and not scan.repo.exists(manifest.key):
                result.notes.append(f"{scan.repo.name}: removed while being verified (expire?)")
                result.problems = [p for p in result.problems if p.repository != scan.repo.name]
                result.repositories.remove(scan.repo.name)
                break
            result.problems += problems
            result.objects_checked += 1
            result.bytes_checked += read
            if info is not None:
                if problems:
                    memory.found_damaged(info)
                else:
                    memory.found_intact(info)
    return result, manifest


# --- WAL -----------------------------------------------------------------------------------------


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


def _verify_wal_object(
    repo: Repository,
    obj: WalObject,
    segment_size: int,
    *,
    sink: IO[bytes] | None = None,
    cancel: threading.Event | None,
    meter: _Meter,
) -> str | None:
    """Decode one WAL object and compare with the sha256 in its name; the problem, or None."""
    try:
        readout = _read_through(repo, obj.key, obj.compression, raw_sink=sink, cancel=cancel, meter=meter)
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


def _queued(cfg: Config, names: list[str]) -> dict[str, set[str]]:
    """WAL files queued for each repository (the queue lives in the local repository)."""
    out: dict[str, set[str]] = {}
    for name in names:
        try:
            out[name] = set(queue.pending(cfg, name)) if cfg.local.path else set()
        except PgdrError:
            out[name] = set()
    return out


# --- repositories compared ----------------------------------------------------------------------


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
    """What ``repository`` lost that another still holds, or None; pure logic, like ``wal_continuity``.

    Only what nothing normal explains counts: a segment queued for upload is lag; a segment or
    backup its own retention (``plan_expiry`` over what it holds now, so it may only expect less than
    it kept) would have removed is not owed; a segment another repository got within ``IN_FLIGHT``
    may be a push between storing and queueing. Segments newer than its oldest are holes or its
    tail, which ``wal_continuity`` judges with their grace; the ones older than anything it holds (or
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
    queued = _queued(cfg, [r.name for r in repos])  # before the listings: see _verify
    scans = {repo.name: _scan(repo, backups=True) for repo in repos}
    segment_size = _segment_size(scans)
    for scan in scans.values():
        _index_segments(scan, segment_size)
    histories = _histories(list(scans.values()))
    return _losses(cfg, scans, list(scans), queued=queued, histories=histories, segment_size=segment_size, now=now)


def _losses(
    cfg: Config,
    scans: dict[str, _Scan],
    names: list[str],
    *,
    queued: dict[str, set[str]],
    histories: dict[int, History],
    segment_size: int,
    now: datetime,
) -> list[RepositoryLoss]:
    from backend.retention import retention_days

    holdings = _holdings(scans)
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


def _holdings(scans: dict[str, _Scan]) -> dict[str, dict[tuple[int, int], datetime]]:
    """Per repository, the segments it holds and when each was archived there."""
    return {repo: {key: info.modified for key, (_obj, info) in scan.segments.items()} for repo, scan in scans.items()}


def _check_against_postgres(
    report: VerifyReport, physical: list[BackupManifest], scans: list[_Scan], memories: dict[str, _Memory]
) -> None:
    """pgdr's manifest must name the WAL range PostgreSQL's own ``backup_manifest`` records.

    PostgreSQL seals its manifest with a sha256 of its own text, so a changed start or stop LSN (or
    timeline) in ``manifest.json``, which would send a restore to the wrong WAL, shows here even when
    every copy was changed alike. A copy whose two manifests agreed before, neither rewritten since
    nor ``manifest.json``'s turn come, is not compared again (nor its ``backup_manifest`` fetched).
    """
    for manifest in physical:
        stored = next((o for o in manifest.objects if o.key == "backup_manifest"), None)
        if stored is None:
            continue
        result = next(b for b in report.backups if b.name == manifest.name)
        for scan in scans:
            if manifest.name not in scan.manifests or not result.copy_ok(scan.repo.name):
                continue
            memory = memories[scan.repo.name]
            own = scan.folders[manifest.name][MANIFEST_NAME]
            if memory.skips(own) and manifest.object_key(stored) not in memory.read:
                continue
            try:
                raw = scan.repo.get(manifest.object_key(stored))
            except PgdrError:
                continue  # the object check above reports what cannot be read
            why = _disagreement(manifest, raw)
            if why:
                result.problems.append(BackupProblem(scan.repo.name, MANIFEST_NAME, "manifest", why))
                memory.found_damaged(own)
            else:
                memory.found_intact(own)


def _disagreement(manifest: BackupManifest, raw: bytes) -> str:
    sealed = raw.rfind(b'"Manifest-Checksum"')
    try:
        pg = json.loads(raw)
        ranges = pg["WAL-Ranges"]
        seal = pg["Manifest-Checksum"]
    except (ValueError, KeyError, TypeError):
        return "PostgreSQL's backup_manifest cannot be read as one"
    if sealed < 0 or hashlib.sha256(raw[:sealed]).hexdigest() != seal:
        return "PostgreSQL's backup_manifest fails its own checksum"
    said = (manifest.timeline, manifest.start_lsn, manifest.stop_lsn)
    found = (ranges[0].get("Timeline"), ranges[0].get("Start-LSN"), ranges[0].get("End-LSN"))
    if said != found:
        return (
            f"the manifest says timeline {said[0]}, LSN {said[1]} .. {said[2]}, and PostgreSQL's backup_manifest "
            f"{found[0]}, {found[1]} .. {found[2]}: the manifest was changed; take a new backup"
        )
    return ""


def _check_against_wal(cfg: Config, report: VerifyReport, physical: list[BackupManifest]) -> None:
    """A manifest changed in every copy passes every checksum: the WAL itself must agree with it.

    The recovery timeline disowns a backup whose recorded stop time lies before commits its WAL
    holds (``timeline._contradicted_stop``): the same judgement the planner makes, reported here as
    the backup's problem, so the alarm goes off before a restore needs it. The timeline also disowns
    an incremental whose chain is broken in every repository: that is no contradicted manifest, and
    ``_check_chains`` says where each link is missing.
    """
    if not physical:
        return
    from backend.recovery import VIEW_INDEX_BUDGET_S, load_view

    try:
        view = load_view(cfg, index_budget_s=VIEW_INDEX_BUDGET_S)
    except PgdrError as exc:
        report.notes.append(f"the manifests were not compared with the WAL: {exc}")
        return
    catalog = {b.manifest.name: b.manifest for b in view.catalog.backups}
    for manifest in physical:
        why = view.timeline.disowned.get(manifest.name)
        if why is not None and not _chain_broken(manifest, catalog):
            result = next(b for b in report.backups if b.name == manifest.name)
            result.problems.append(BackupProblem(None, MANIFEST_NAME, "manifest", why))


def _chain_broken(manifest: BackupManifest, backups: dict[str, BackupManifest]) -> bool:
    try:
        chain(manifest, backups)
    except BrokenChain:
        return True
    return False


# --- the restore rehearsal -----------------------------------------------------------------------


def _scratch_parent(cfg: Config) -> Path:
    """Beside the data directory (same disk, a path the server user can reach), else the state dir."""
    if cfg.postgres.data_dir:
        parent = Path(cfg.postgres.data_dir).absolute().parent
        if parent.is_dir():
            return parent
    folder = state_dir()
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _server_owner(cfg: Config) -> tuple[int, int] | None:
    """Who the rehearsal server runs as when pgdr is root: the data directory's owner, else postgres."""
    if os.geteuid() != 0:
        return None
    for candidate in (cfg.postgres.data_dir, cfg.local.path):
        if candidate and Path(candidate).exists() and owner_of(Path(candidate))[0] != 0:
            return owner_of(Path(candidate))
    import pwd

    try:
        user = pwd.getpwnam("postgres")
    except KeyError:
        raise PgdrError("pgdr runs as root and there is no postgres user to run the rehearsal server as") from None
    return user.pw_uid, user.pw_gid


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _rehearse(
    cfg: Config,
    manifest: BackupManifest,
    repos: list[Repository],
    scans: dict[str, _Scan],
    segment_size: int,
    *,
    backups: dict[str, BackupManifest],
    on_progress: ProgressCallback,
    cancel: threading.Event | None,
) -> Rehearsal:
    """Restore ``manifest`` into a scratch directory, prove it with pg_verifybackup, start it, query it.

    An incremental is restored as a restore does it: its chain (from ``backups``, every manifest the
    repositories hold) is unpacked and combined with pg_combinebackup (``restore_chain``), whose
    ``backup_manifest`` of the combined directory is what pg_verifybackup checks; so the rehearsal
    proves the chain, not the incremental alone (which no server could start on). What the backup's
    content causes is a problem (a BAD backup); what this host causes is ``could_not`` (see the
    module docstring).
    """
    from backend.restore.combine import combined_peak, restore_chain
    from backend.restore.run import recovery_command
    from backend.restore.settings import write_recovery_settings
    from backend.restore.target import RecoveryTarget
    from backend.restore.unpack import TargetFailed

    result = Rehearsal()
    began = time.monotonic()
    try:
        members = chain(manifest, backups)
    except BrokenChain as exc:
        result.problems.append(str(exc))
        return result
    assert manifest.wal_start and manifest.wal_stop
    first = SegmentName.parse(manifest.wal_start, segment_size)
    last = SegmentName.parse(manifest.wal_stop, segment_size)
    wal_segments = [SegmentName(first.timeline, n, segment_size) for n in range(first.number, last.number + 1)]
    parent = _scratch_parent(cfg)
    restored = sum(m.size_bytes for m in members)
    needed = (combined_peak(members) if len(members) > 1 else restored) + 2 * len(wal_segments) * segment_size
    version = manifest.version_num
    what = manifest.name if len(members) == 1 else f"{manifest.name} with its chain of {len(members)} backups"
    try:
        owner = _server_owner(cfg)
        if needed > (free := shutil.disk_usage(parent).free):
            result.could_not = f"it needs about {needed} bytes in {parent}, {free} are free"
            return result
        scratch = Path(tempfile.mkdtemp(prefix="pgdr-verify-", dir=parent))
    except PgdrError as exc:
        result.could_not = str(exc)
        return result
    except OSError as exc:
        result.could_not = f"cannot make a scratch directory in {parent}: {exc}"
        return result
    data_dir = scratch / "data"
    started = False
    try:
        own_folder(scratch, 0o755, owner)
        data_dir.mkdir(mode=0o700)
        on_progress(Progress("rehearsal", 0, restored, f"restoring {what} into {scratch}"))
        # Never the tablespaces' own locations: those are the running cluster's.
        spaces = {t.oid: scratch / "tablespaces" / str(t.oid) for t in recorded(manifest)}
        try:
            result.restored_from = restore_chain(
                cfg, members, repos, data_dir, tablespaces=spaces, on_progress=on_progress, cancel=cancel
            )
        except PgdrError as exc:
            # pg_combinebackup writing into a full or unwritable scratch directory says nothing of the chain.
            if str(exc).startswith("pg_combinebackup") and HOST_FAILURES.search(str(exc)):
                result.could_not = f"the scratch directory cannot take the combined backup: {exc}"
                return result
            raise

        # pg_verifybackup checks every file against PostgreSQL's own backup_manifest, and parses the WAL
        # range the backup needs; it must see the directory exactly as unpacked, so it runs first.
        wal_dir = scratch / "wal"
        wal_dir.mkdir()
        have_wal = _fetch_wal(wal_segments, repos, scans, wal_dir, segment_size, cancel=cancel)
        argv = [program(cfg, "pg_verifybackup", version)]
        argv += [f"--ignore={TABLESPACE_MAP}"] if spaces else []  # removed: it names the original locations
        argv += [f"--wal-directory={wal_dir}"] if have_wal else ["--no-parse-wal"]
        checked = subprocess.run([*argv, str(data_dir)], capture_output=True, text=True, check=False)
        if checked.returncode != 0:
            errors = [line.removeprefix("pg_verifybackup: ") for line in checked.stderr.strip().splitlines()]
            more = f" (and {len(errors) - 3} more)" if len(errors) > 3 else ""
            result.problems.append(f"pg_verifybackup fails: {'; '.join(errors[:3]) or 'no output'}{more}")
            return result
        result.verifybackup = checked.stdout.strip() or "verified"
        if not have_wal:
            result.verifybackup += " (WAL not parsed: no intact copy of it could be fetched)"
        shutil.rmtree(wal_dir)

        port = _free_port()
        if not (data_dir / "postgresql.conf").exists():
            (data_dir / "postgresql.conf").write_text("")  # Debian keeps it in /etc/postgresql
        (scratch / "pg_hba.conf").write_text("local all all trust\n")
        (scratch / "pg_ident.conf").write_text("")
        target = RecoveryTarget("immediate", timeline="current", action="promote")
        settings = {
            "restore_command": recovery_command(cfg, data_dir),
            **target.recovery_settings(),
            **REHEARSAL_SETTINGS,
            "port": str(port),
            "unix_socket_directories": str(scratch),
            "hba_file": str(scratch / "pg_hba.conf"),
            "ident_file": str(scratch / "pg_ident.conf"),
        }
        write_recovery_settings(data_dir, settings, f"verify --deep: a throwaway rehearsal of backup {manifest.name}")
        log_file = scratch / "server.log"
        if owner is not None:
            chown_tree(scratch, owner)

        pg_ctl = program(cfg, "pg_ctl", version)
        wait = int(max(300.0, estimate_restore_seconds(restored, len(wal_segments) * segment_size) * 5))
        on_progress(Progress("rehearsal", 0, None, f"starting {manifest.name} in {scratch} on port {port}"))
        started = True
        run_server_program(
            [pg_ctl, "start", "-D", str(data_dir), "-l", str(log_file), "-w", "-t", str(wait)], data_dir, check=False
        )
        _query_rehearsal(
            cfg,
            result,
            pg_ctl=pg_ctl,
            data_dir=data_dir,
            scratch=scratch,
            port=port,
            owner=owner,
            log_file=log_file,
            wait=wait,
            cancel=cancel,
        )
    except TargetFailed as exc:  # too few open files, a full disk, a permission
        result.could_not = f"the scratch directory cannot take the backup's files: {exc}"
    except ConfigError as exc:  # a PostgreSQL program missing
        result.could_not = str(exc)
    except PgdrError as exc:
        if exc.exit_code == 130:
            raise
        result.problems.append(str(exc))
    except OSError as exc:  # the scratch directory: a full disk, a permission
        result.could_not = f"the rehearsal failed in {scratch}: {exc}"
    finally:
        if started:
            stopped = run_server_program(
                [program(cfg, "pg_ctl", version), "stop", "-D", str(data_dir), "-m", "immediate", "-w", "-t", "60"],
                data_dir,
                check=False,
            )
            if stopped.returncode != 0 and (data_dir / "postmaster.pid").exists():
                result.problems.append(f"the rehearsal server in {scratch} did not stop: {stopped.stderr.strip()}")
        if (result.problems or result.could_not) and (scratch / "server.log").exists():
            _keep_log(scratch / "server.log", manifest.name, result)
        shutil.rmtree(scratch, ignore_errors=True)
        result.seconds = time.monotonic() - began
    return result


def _keep_log(log: Path, name: str, result: Rehearsal) -> None:
    """The scratch directory goes, but the server log of a failed rehearsal is what explains it."""
    kept = state_dir() / "verify" / f"{name}-rehearsal-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.log"
    try:
        kept.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        shutil.copyfile(log, kept)
    except OSError:
        return
    if result.could_not is not None:
        result.could_not += f" (server log kept at {kept})"
    else:
        result.problems[-1] += f" (server log kept at {kept})"


def _fetch_wal(
    segments: list[SegmentName],
    repos: list[Repository],
    scans: dict[str, _Scan],
    folder: Path,
    segment_size: int,
    *,
    cancel: threading.Event | None,
) -> bool:
    """Write the first intact copy of each segment into ``folder``; False when one has none."""
    meter = _Meter(no_progress, None)
    for seg in segments:
        for repo in repos:
            scan = scans.get(repo.name)
            found = scan.segments.get((seg.timeline, seg.number)) if scan else None
            if found is None:
                continue
            target = folder / seg.name
            with target.open("wb") as out:
                problem = _verify_wal_object(repo, found[0], segment_size, sink=out, cancel=cancel, meter=meter)
            if problem is None:
                break
            target.unlink()
        else:
            return False
    return True


def _query_rehearsal(
    cfg: Config,
    result: Rehearsal,
    *,
    pg_ctl: str,
    data_dir: Path,
    scratch: Path,
    port: int,
    owner: tuple[int, int] | None,
    log_file: Path,
    wait: int,
    cancel: threading.Event | None,
) -> None:
    """Wait for the promotion that ends replay at consistency, then read the system catalogs."""
    import psycopg

    user = cfg.postgres.user
    if not user:
        import pwd

        user = pwd.getpwuid(owner[0] if owner else os.geteuid()).pw_name
    params: dict[str, Any] = {"host": str(scratch), "port": port, "user": user, "connect_timeout": 5}
    deadline = time.monotonic() + wait
    promoted = False
    while time.monotonic() < deadline:
        check_cancel(cancel, "verify")
        try:
            with psycopg.connect(dbname=cfg.postgres.dbname or "postgres", autocommit=True, **params) as conn:
                row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
                if row is not None and not row[0]:
                    promoted = True
                    break
        except psycopg.OperationalError:
            status = run_server_program([pg_ctl, "status", "-D", str(data_dir)], data_dir, check=False)
            if status.returncode != 0:
                break
        time.sleep(0.25)
    log = log_file.read_text(errors="replace") if log_file.exists() else ""
    if match := re.search(r"consistent recovery state reached at ([0-9A-F]+/[0-9A-F]+)", log):
        result.consistent_lsn = match.group(1)
    if not promoted:
        fatal = [m.group(1).strip() for m in re.finditer(r"(?:FATAL|PANIC):\s+(.*)", log)]
        reason = "; ".join(dict.fromkeys(fatal)) or f"no promotion within {wait} s"
        if HOST_FAILURES.search(reason):
            result.could_not = f"the rehearsal server cannot start on this host: {reason}"
        else:
            result.problems.append(f"the restored backup did not start and reach consistency: {reason}")
        return
    try:
        with psycopg.connect(dbname=cfg.postgres.dbname or "postgres", autocommit=True, **params) as conn:
            rows = conn.execute("SELECT datname FROM pg_database WHERE datallowconn ORDER BY datname").fetchall()
        result.databases = [str(r[0]) for r in rows]
        for database in result.databases:
            with psycopg.connect(dbname=database, autocommit=True, **params) as conn:
                row = conn.execute("SELECT count(*) FROM pg_class").fetchone()
                result.relations += int(row[0]) if row else 0
    except psycopg.Error as exc:
        result.problems.append(f"the restored server answers, but a catalog query fails: {str(exc).strip()}")


# --- the command ---------------------------------------------------------------------------------


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
    """Verify every backup (or the one named) and the WAL archive; see the module docstring.

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
    queued = _queued(cfg, selected_names)

    scans: dict[str, _Scan] = {}
    for repo in every:
        on_progress(Progress("verify", 0, None, f"listing the {repo.name} repository"))
        try:
            scans[repo.name] = _scan(repo, backups=repo.name in selected_names)
        except PgdrError as exc:
            if repo.name in selected_names:
                report.errors.append(f"the {repo.name} repository cannot be read: {exc}")
    segment_size = _segment_size(scans)
    for scan in scans.values():
        _index_segments(scan, segment_size)
    verified_scans = [scans[n] for n in selected_names if n in scans]
    histories = _histories(list(scans.values()))
    if name is None:
        selected_scans = [n for n in selected_names if n in scans]
        report.losses = _losses(
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

    memories: dict[str, _Memory] = {}
    for scan in verified_scans:
        memory = _Memory.load(scan, now=now, reread_days=cfg.verify.reread_days)
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
    _store_results(report, {s.repo.name: s.repo for s in verified_scans}, now)
    return report


def _verify_stored(
    cfg: Config,
    report: VerifyReport,
    name: str | None,
    chosen: list[str],
    *,
    verified_scans: list[_Scan],
    scans: dict[str, _Scan],
    memories: dict[str, _Memory],
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
    meter = _Meter(on_progress, total or None)
    manifests: dict[str, BackupManifest] = {}
    for folder in chosen:
        check_cancel(cancel, "verify")
        result, manifest = _verify_backup(
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
        _verify_wal(
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
            meter=_Meter(on_progress, None),
        )

    _check_against_postgres(report, physical, verified_scans, memories)
    _check_against_wal(cfg, report, physical)
    _check_chains(report, manifests, verified_scans)

    if deep:
        targets = anchors if name is not None else sorted(physical, key=lambda m: m.stop_time)[-1:]
        known = {n: m for s in verified_scans for n, m in s.manifests.items()}
        for manifest in targets:
            result = next(b for b in report.backups if b.name == manifest.name)
            # Every repository holding a backup of the chain; those whose copy of it (and, for an
            # incremental, of its chain: ``_check_chains``) is sound first.
            holding = [
                s.repo for s in verified_scans if manifest.name in s.manifests or _holds_link(s, manifest, known)
            ]
            holding.sort(key=lambda r: not result.copy_ok(r.name))
            result.rehearsal = _rehearse(
                cfg, manifest, holding, scans, segment_size, backups=known, on_progress=on_progress, cancel=cancel
            )
            if result.rehearsal.could_not is not None:
                report.errors.append(f"could not rehearse backup {manifest.name}: {result.rehearsal.could_not}")
        if not targets and name is None:
            report.notes.append("no physical backup to rehearse a restore of: take one with `pgdr backup`")
        elif not targets:
            report.notes.append(f"{name} is a logical dump: deep ran a full pg_restore of it into /dev/null")


def _holds_link(scan: _Scan, manifest: BackupManifest, known: dict[str, BackupManifest]) -> bool:
    """Whether the repository holds a backup ``manifest`` builds on (so a rehearsal may fetch it there)."""
    parent = manifest.parent
    seen: set[str] = set()
    while parent is not None and parent not in seen:
        if parent in scan.manifests:
            return True
        seen.add(parent)
        parent = known[parent].parent if parent in known else None
    return False


def _with_chain(name: str, scans: list[_Scan]) -> list[str]:
    """A named backup and, for an incremental, the backups down its chain any repository holds (full first).

    An incremental restores only together with them, so asking about it asks about them too: each is
    read whole, and ``_check_chains`` judges the named one by what they were found to be.
    """
    known = {n: m for s in scans for n, m in s.manifests.items()}
    names = [name]
    manifest = known.get(name)
    while manifest is not None and manifest.parent in known and manifest.parent not in names:
        names.append(manifest.parent)
        manifest = known[manifest.parent]
    return names[::-1]


def _check_chains(report: VerifyReport, manifests: dict[str, BackupManifest], scans: list[_Scan]) -> None:
    """Each incremental's chain, link by link, in every repository holding it: where one is broken, it is
    the incremental's problem there (kind "chain").

    A restore of an incremental needs every backup down to the full one, and a repository's copy of it
    is only worth something with that repository's links (a restore can mix repositories, but an
    operator reading "ok" for one must be able to restore from it alone, as from a full backup's copy).
    A link is broken when it is missing there (expired or deleted, its manifest gone) or this run
    found its copy there damaged; its WAL is not its successors' concern (``_NOT_LINK_DAMAGE``). Runs
    after the other checks of the links' copies (``_check_against_postgres``), so they all count.
    """
    results = {b.name: b for b in report.backups}
    for name, manifest in manifests.items():
        if manifest.kind != "physical" or not manifest.incremental:
            continue
        result = results[name]
        for scan in scans:
            repository = scan.repo.name
            if name not in scan.manifests or repository not in result.repositories:
                continue
            try:
                links = chain(manifest, scan.manifests)[:-1]
            except BrokenChain as exc:
                result.problems.append(BackupProblem(repository, None, "chain", _broken_link(exc, scan)))
                continue
            for link in links:
                found = results.get(link.name)
                if found is None:
                    continue  # not read by this run (cannot happen: a named backup is read with its chain)
                if repository not in found.repositories:
                    gone = f"{link.name} was removed from the {repository} repository while it was verified"
                    result.problems.append(
                        BackupProblem(repository, None, "chain", f"chain broken: {gone}: {_UNRESTORABLE}")
                    )
                    continue
                damage = [p for p in found.problems if p.repository == repository and p.kind not in _NOT_LINK_DAMAGE]
                if damage:
                    what = "; ".join(f"{p.object or 'the copy'}: {p.kind}" for p in damage[:3])
                    result.problems.append(
                        BackupProblem(
                            repository,
                            None,
                            "chain",
                            f"chain broken: {link.name}, a backup it builds on, is damaged in the {repository} "
                            f"repository ({what}): {_UNRESTORABLE}",
                        )
                    )


def _broken_link(exc: BrokenChain, scan: _Scan) -> str:
    """Why ``exc.missing`` breaks the chain in this repository, in one line."""
    where = f"the {scan.repo.name} repository"
    if exc.missing in scan.manifests:  # there, but not an earlier physical backup: only a damaged manifest says so
        why = f"{exc.missing}, named as the backup {exc.backup} builds on, is no earlier backup in {where}"
    elif exc.missing in scan.folders:
        why = f"{exc.missing} has no readable manifest in {where}"
    else:
        why = f"{exc.missing} is missing in {where} (expired or deleted)"
    return f"chain broken: {why}: {_UNRESTORABLE}"


def _segment_size(scans: dict[str, _Scan]) -> int:
    """The cluster's WAL segment size, from a repo.json, else a manifest, else PostgreSQL's default."""
    return (
        next(
            (s.segment_size for s in scans.values() if s.segment_size),
            next(
                (m.wal_segment_size for s in scans.values() for m in s.manifests.values() if m.wal_segment_size), None
            ),
        )
        or DEFAULT_SEGMENT_SIZE
    )


def _histories(scans: list[_Scan]) -> dict[int, History]:
    """Every timeline's history (from the first repository whose copy decodes)."""
    out: dict[int, History] = {}
    for scan in scans:
        for obj, _info in scan.wal:
            with contextlib.suppress(ValueError, PgdrError):
                if wal_kind(obj.filename) is WalKind.HISTORY:
                    tli = int(obj.filename[:8], 16)
                    if tli not in out:
                        text = decode(scan.repo.get(obj.key), obj.compression).decode("utf-8", errors="replace")
                        out[tli] = History.parse(tli, text)
    return out


def _verify_wal(
    cfg: Config,
    report: VerifyReport,
    *,
    verified_scans: list[_Scan],
    scans: dict[str, _Scan],
    physical: list[BackupManifest],
    queued: dict[str, set[str]],
    histories: dict[int, History],
    lost: set[str],
    memories: dict[str, _Memory],
    segment_size: int,
    deep: bool,
    named: bool,
    now: datetime,
    cancel: threading.Event | None,
    meter: _Meter,
) -> None:
    """Holes per repository, then the content of its WAL objects (``_wal_to_read``; the memory skips some).

    In a repository found to have ``lost`` what another holds, no hole gets the grace of a delay.
    """
    holdings = _holdings(scans)
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
            problem = _verify_wal_object(scan.repo, obj, segment_size, cancel=cancel, meter=meter)
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
    scan: _Scan, anchors: list[BackupManifest], segment_size: int, *, deep: bool, named: bool
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
