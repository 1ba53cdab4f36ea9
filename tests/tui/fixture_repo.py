"""A realistic repository written by the backend's own code, for the console's tests and screenshots.

Weeks of base backups (every 6 hours) and daily logical dumps of a PostgreSQL 18 cluster, a WAL
segment every 10 minutes with commit times in its SegmentIndex, a gap of missing segments, a restore
point and a DROP TABLE, and a promotion to timeline 2 near the end. On the day before ``NOW`` the
backups after the first are incremental, each on the one before (a chain of four), so the console
has incrementals to mark. Everything is stored through ``LocalRepository``,
``BackupManifest.to_json``, ``WalObject`` keys and ``SegmentIndex`` JSON, so the catalog and the
recovery timeline the console shows are computed by the real backend, from a clock frozen at ``NOW``.

Most backups are manifests only (gigabytes of real objects per backup would make the fixture
unusable), but the newest physical backup is whole: its objects and the WAL segment it needs to
become consistent hold real bytes, so ``backend.verify`` can read it back. One bit of its
``base.tar.zst`` is then flipped by hand, as a failing disk would, so verify has damage to name.
The cluster's data directory exists (a stand-in with a ``PG_VERSION``), so an in-place restore plan
names where the safety copy goes.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from unittest import mock

from backend.archive.index import index_key
from backend.archive.walfile import WalObject, encode
from backend.manifest import BackupManifest, StoredObject
from backend.repository import IDENTITY_KEY, REPOSITORY_FORMAT
from backend.repository.local import LocalRepository
from backend.walindex import SegmentIndex, WalEvent
from backend.walnames import SegmentName, format_lsn

NOW = datetime(2026, 11, 24, 15, 30, tzinfo=UTC)
SEGMENT_SIZE = 16 * 1024 * 1024
SYSTEM_ID = 7_300_000_000_000_000_001
FIRST_SEGMENT = 0x100
PG_VERSION = "18.1"


@dataclass(frozen=True)
class Story:
    """The instants a test needs to know: where the gap, the events and the backups are."""

    config: Path
    start: datetime
    gap_start: datetime
    gap_end: datetime
    restore_point: datetime
    drop: datetime
    drop_xid: int
    promotion: datetime
    backups: list[str]
    #: The newest physical backup: the one with real objects, one of them damaged.
    whole: str = ""
    #: The key of the damaged object (``backups/<whole>/base.tar.zst``).
    damaged: str = ""
    #: The incremental backups, oldest first: each builds on the physical backup before it.
    incrementals: tuple[str, ...] = ()


def write_fixture(
    root: Path,
    *,
    now: datetime = NOW,
    days: int = 21,
    segment_minutes: int = 10,
    backup_hours: int = 6,
    events_per_day: int = 0,
    history_delay: timedelta = timedelta(0),
) -> Story:
    """Write the repository and a config file under ``root``; returns the story's landmarks.

    ``history_delay``: timeline 2's ``.history`` is archived that long after the promotion (as after a
    restore: its first segment holds the parent's records up to the switch, archived before it).

    fsync is skipped while writing (a test fixture needs no durability, and thousands of fsyncs
    would dominate the suite's time); everything else is the backend's own write path.
    """
    with mock.patch("os.fsync"):
        return _write(
            root,
            now=now,
            days=days,
            segment_minutes=segment_minutes,
            backup_hours=backup_hours,
            events_per_day=events_per_day,
            history_delay=history_delay,
        )


def _write(
    root: Path,
    *,
    now: datetime,
    days: int,
    segment_minutes: int,
    backup_hours: int,
    events_per_day: int,
    history_delay: timedelta,
) -> Story:
    root.mkdir(parents=True, exist_ok=True)
    repo_path = root / "repo"
    repo = LocalRepository(repo_path, "main")
    repo.put(
        IDENTITY_KEY,
        json.dumps(
            {
                "format": REPOSITORY_FORMAT,
                "cluster": "main",
                "system_identifier": str(SYSTEM_ID),
                "wal_segment_size": SEGMENT_SIZE,
            }
        ).encode(),
    )
    step = timedelta(minutes=segment_minutes)
    start = (now - timedelta(days=days)).replace(minute=0, second=0, microsecond=0)
    count = int((now - timedelta(minutes=3) - start) / step)
    gap_start = start + timedelta(days=days * 10 // 21, hours=8)
    gap_end = gap_start + timedelta(hours=3)
    restore_point = start + timedelta(days=days * 15 // 21, hours=14)
    drop = restore_point + timedelta(minutes=23, seconds=17)
    drop_xid = 48123
    promotion = start + timedelta(days=days - 2, hours=9, minutes=30)
    config = root / "pgdr.toml"
    data_dir = root / "data"
    data_dir.mkdir(exist_ok=True)
    # The running cluster's directory, for the safety copy.
    (data_dir / "PG_VERSION").write_text(PG_VERSION.partition(".")[0] + "\n")
    config.write_text(
        f'[cluster]\nname = "main"\n\n[postgres]\nhost = "{root / "no-server"}"\nport = 5432\nuser = "postgres"\n'
        f'data_dir = "{root / "data"}"\n\n[local]\npath = "{repo_path}"\n'
    )

    # Timeline 2 starts at the promotion: segments from then on are on timeline 2.
    switch_number: int | None = None
    segments: list[tuple[SegmentName, datetime]] = []
    for i in range(count):
        t = start + i * step
        number = FIRST_SEGMENT + i
        if gap_start <= t < gap_end:
            continue
        if t >= promotion and switch_number is None:
            switch_number = number
        tli = 2 if switch_number is not None else 1
        segments.append((SegmentName(tli, number, SEGMENT_SIZE), t))
    assert switch_number is not None
    history = f"1\t{format_lsn(switch_number * SEGMENT_SIZE)}\tno recovery target specified\n".encode()
    history_key = WalObject("00000002.history", hashlib.sha256(history).hexdigest(), "none").key
    repo.put(history_key, history)
    history_archived = (promotion + history_delay).timestamp()
    os.utime(repo_path / "main" / history_key, (history_archived, history_archived))  # archived then

    def events_for(t: datetime, number: int) -> list[WalEvent]:
        found = []
        end = t + step
        if t <= restore_point < end:
            found.append(
                WalEvent(
                    "restore_point",
                    number * SEGMENT_SIZE + 4096,
                    restore_point,
                    None,
                    "before_migration",
                    time_source="record",
                )
            )
        if t <= drop < end:
            found.append(
                WalEvent(
                    "drop", number * SEGMENT_SIZE + 8192, drop, drop_xid, None, ["base/5/16384"], [16384], "commit"
                )
            )
        if events_per_day:
            every = timedelta(days=1) / events_per_day
            k = int((t - start) / every)
            while start + k * every < end:
                when = start + k * every
                if when >= t:
                    found.append(
                        WalEvent(
                            "truncate",
                            number * SEGMENT_SIZE + 12288 + k % 1000,
                            when,
                            10_000 + k,
                            None,
                            [f"base/5/{20000 + k % 50}"],
                            [],
                            "commit",
                        )
                    )
                k += 1
        return found

    by_number = {n.number: (n, t) for n, t in segments}
    schedule = _backup_schedule(start, now, step, backup_hours, by_number)
    whole_number = max((number for _, number, _ in schedule if number is not None), default=None)

    for name, t in segments:
        if name.number == whole_number:
            # The WAL the whole backup needs: a real segment, stored as wal-push stores one.
            data = name.name.encode().ljust(SEGMENT_SIZE, b"\0")
            obj = WalObject(name.name, hashlib.sha256(data).hexdigest(), "zstd")
            repo.put(obj.key, encode(data, "zstd", 3))
        else:
            data = name.name.encode() * 8
            obj = WalObject(name.name, hashlib.sha256(data).hexdigest(), "none")
            repo.put(obj.key, data)
        archived = (t + step).timestamp()
        os.utime(repo_path / "main" / obj.key, (archived, archived))
        index = SegmentIndex(
            segment=name.name,
            first_commit=t + timedelta(seconds=5),
            last_commit=t + step - timedelta(seconds=5),
            commits=120,
            first_lsn=name.start_lsn + 200,
            last_lsn=name.start_lsn + SEGMENT_SIZE - 200,
            events=events_for(t, name.number),
            records=4000,
            last_record_lsn=name.start_lsn + SEGMENT_SIZE - 100,
            tail_complete=True,
        )
        repo.put(index_key(name.name), json.dumps(index.to_json(), sort_keys=True).encode())

    names: list[str] = []
    incrementals: list[str] = []
    whole = damaged = ""
    previous = ""  # the newest physical backup so far: what an incremental builds on
    chained_day = (now - timedelta(days=1)).date()
    for serial, (backup_at, first, logical) in enumerate(schedule):
        if first is not None:
            seg, _ = by_number[first]
            size = 1_200_000_000 + serial * 9_000_000
            chained = backup_at.date() == chained_day and previous.startswith(f"{chained_day:%Y%m%d}")
            parent = previous if chained else None
            backup = _physical(repo, backup_at, seg, size, whole=first == whole_number, parent=parent)
            names.append(backup)
            previous = backup
            if parent is not None:
                incrementals.append(backup)
            if first == whole_number:
                whole, damaged = backup, _damage(repo_path / "main", backup)
        if logical:
            names.append(_logical(repo, backup_at + timedelta(minutes=30), 310_000_000 + serial * 1_000_000))
    _verified(repo, names, now)
    return Story(
        config,
        start,
        gap_start,
        gap_end,
        restore_point,
        drop,
        drop_xid,
        promotion,
        sorted(names),
        whole,
        damaged,
        tuple(incrementals),
    )


def _backup_schedule(
    start: datetime,
    now: datetime,
    step: timedelta,
    backup_hours: int,
    by_number: dict[int, tuple[SegmentName, datetime]],
) -> list[tuple[datetime, int | None, bool]]:
    """When each backup ran: (time, first WAL segment number of a physical backup or None, logical dump too)."""
    out = []
    backup_at = start + timedelta(hours=1, minutes=2)
    while backup_at < now - timedelta(minutes=20):
        number = FIRST_SEGMENT + int((backup_at - start) / step)
        physical = number if number in by_number and number + 1 in by_number else None
        out.append((backup_at, physical, backup_at.hour < backup_hours))
        backup_at += timedelta(hours=backup_hours)
    return out


def _damage(repo_root: Path, name: str) -> str:
    """Flip one bit in the middle of the whole backup's tar, by hand, as a failing disk would."""
    key = f"backups/{name}/base.tar.zst"
    path = repo_root / key
    blob = bytearray(path.read_bytes())
    blob[len(blob) // 2] ^= 0x01
    path.write_bytes(bytes(blob))
    return key


def _object(key: str, raw: int, stored: int, compression: str = "zstd") -> StoredObject:
    digest = hashlib.sha256(key.encode() + str(raw).encode()).hexdigest()
    return StoredObject(key, stored, digest, raw, digest, compression)


def _real_object(
    repo: LocalRepository, name: str, key: str, data: bytes, *, raw_size: int, compression: str
) -> StoredObject:
    """Store ``data`` as the backend stores a backup object and describe it as its manifest does.

    A tar PostgreSQL compressed itself has no sha256 of its original bytes (``raw_sha256`` empty),
    and its ``raw_size`` counts the files in it, which is what the catalog shows.
    """
    blob = encode(data, compression, 3) if compression != "none" else data
    repo.put(f"backups/{name}/{key}", blob)
    digest = hashlib.sha256(blob).hexdigest()
    raw_digest = "" if compression != "none" else digest
    return StoredObject(key, len(blob), digest, raw_size, raw_digest, compression)


def _physical(
    repo: LocalRepository,
    started: datetime,
    seg: SegmentName,
    size: int,
    *,
    whole: bool = False,
    parent: str | None = None,
) -> str:
    """A physical backup's manifest; with ``parent``, an incremental on it: only the changed blocks,
    a few percent of a full backup."""
    name = started.strftime("%Y%m%dT%H%M%SZ")
    if parent is not None:
        size //= 16
    stop = started + timedelta(minutes=2, seconds=10)
    start_lsn = seg.start_lsn + 0x28
    stop_lsn = seg.start_lsn + 0x1000
    if whole:
        # Incompressible bytes, so the stored tar has a size worth reading back (a few megabytes).
        tar = random.Random(name).randbytes(6 << 20)
        manifest_file = json.dumps({"PostgreSQL-Backup-Manifest-Version": 1, "Files": []}).encode().ljust(180_000)
        objects = [
            _real_object(repo, name, "base.tar.zst", tar, raw_size=size, compression="zstd"),
            _real_object(repo, name, "backup_manifest", manifest_file, raw_size=len(manifest_file), compression="none"),
        ]
    else:
        objects = [_object("base.tar.zst", size, size // 9), _object("backup_manifest", 180_000, 180_000, "none")]
    manifest = BackupManifest(
        name=name,
        kind="physical",
        cluster="main",
        system_identifier=SYSTEM_ID,
        pg_version=PG_VERSION,
        start_time=started,
        stop_time=stop,
        objects=objects,
        timeline=seg.timeline,
        start_lsn=format_lsn(start_lsn),
        stop_lsn=format_lsn(stop_lsn),
        wal_start=seg.name,
        wal_stop=seg.name,
        wal_segment_size=SEGMENT_SIZE,
        file_count=1843,
        pgdr_version="0.1.0",
        extra={"label": f"pgdr {name}", "data_directory": "/var/lib/postgresql/18/main"},
        parent=parent,
    )
    repo.put(manifest.key, manifest.to_json())
    return name


def _logical(repo: LocalRepository, started: datetime, size: int) -> str:
    name = started.strftime("%Y%m%dT%H%M%SZ") + "-logical"
    manifest = BackupManifest(
        name=name,
        kind="logical",
        cluster="main",
        system_identifier=SYSTEM_ID,
        pg_version=PG_VERSION,
        start_time=started,
        stop_time=started + timedelta(minutes=4),
        objects=[_object("app.dump", size, size // 5, "none"), _object("app.sql.gz", size, size // 6, "none")],
        database="app",
        pgdr_version="0.1.0",
    )
    repo.put(manifest.key, manifest.to_json())
    return name


def _verified(repo: LocalRepository, names: list[str], now: datetime) -> None:
    """Verify records as ``backend.verify`` stores them: every backup older than a day, checked that night."""
    for name in names:
        taken = datetime.strptime(name[:16], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
        if now - taken < timedelta(days=1):
            continue
        night = (taken + timedelta(days=1)).replace(hour=3, minute=15, second=0)
        deep = night.weekday() == 6 and "logical" not in name
        record = {
            "format": 1,
            "backup": name,
            "time": night.isoformat(),
            "level": "deep" if deep else "checksums",
            "ok": True,
            "repository": "local",
            "copy_ok": True,
            "problems": [],
            "last_deep": {"time": night.isoformat(), "ok": True} if deep else None,
        }
        repo.put(f"verify/{name}.json", json.dumps(record, indent=2).encode() + b"\n")
