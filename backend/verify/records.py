"""What verify leaves in each repository for later: the record of each backup's last verify
(``verify/<name>.json``), the memory of the objects read and found intact (``verify/objects.json.zst``,
``Memory``) and the WAL objects found corrupt (``verify/corrupt-wal.json``, ``corrupt_wal``).

The catalog (when each backup was last verified, and how) and a restore plan (which copies to avoid,
``backend.restore.copies``) read these without running a verify, so this module imports only low ones:
the repository, the WAL codec, the report types; never the checks nor the restore machinery, which import
the catalog themselves.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from backend.archive.walfile import decode, encode
from backend.errors import ObjectNotFound, PgdrError, RepositoryError
from backend.repository import ObjectInfo, Repository
from backend.verify.report import VerifyReport

if TYPE_CHECKING:
    from backend.verify.scan import Scan


VERIFY_PREFIX = "verify/"
RECORD_FORMAT = 1
#: Per repository: the objects read and found intact, and when (``Memory``).
MEMORY_KEY = f"{VERIFY_PREFIX}objects.json.zst"
MEMORY_FORMAT = 1
#: Per repository: the WAL objects the last verify that read them found corrupt (``corrupt_wal``).
CORRUPT_WAL_KEY = f"{VERIFY_PREFIX}corrupt-wal.json"
#: How often a long run stores what it found intact so far: a first read of a year's history takes
#: hours, and one killed near its end should not have to start over.
MEMORY_CHECKPOINT_S = 600.0
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


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


def store_results(report: VerifyReport, repos: dict[str, Repository], when: datetime) -> None:
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


class Memory:
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
    def load(cls, scan: Scan, *, now: datetime, reread_days: int) -> Memory:
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
