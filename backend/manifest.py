"""A backup's manifest: the record that makes a set of stored objects a backup.

It is written last, after every object it names is complete in the repository; a backup folder
without it is debris from an interrupted run, never a backup.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from backend.errors import PgdrError
from backend.repository import ENCRYPTED_MAGIC

MANIFEST_FORMAT = 1
MANIFEST_NAME = "manifest.json"
BACKUPS_PREFIX = "backups/"


@dataclass(frozen=True)
class StoredObject:
    """One object of a backup: ``sha256``/``size`` of the stored bytes, ``raw_*`` of the original.

    ``raw_sha256`` is "" when the original bytes never passed through pgdr (the server compressed
    them): ``raw_size`` is then the data bytes PostgreSQL's ``backup_manifest`` lists, and every file
    is checked against that manifest instead.
    """

    key: str
    size: int
    sha256: str
    raw_size: int
    raw_sha256: str
    compression: str


@dataclass(frozen=True)
class BackupManifest:
    name: str
    kind: str  # "physical" | "logical"
    cluster: str
    system_identifier: int
    pg_version: str
    start_time: datetime
    stop_time: datetime
    objects: list[StoredObject]
    timeline: int | None = None
    start_lsn: str | None = None
    stop_lsn: str | None = None
    wal_start: str | None = None
    wal_stop: str | None = None
    wal_segment_size: int | None = None
    file_count: int | None = None
    database: str | None = None
    pgdr_version: str = ""
    #: How this repository stores the objects: "" as listed, else the client-side cipher
    #: (sizes and checksums above are of the plaintext either way).
    encryption: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    #: The backup an incremental backup builds on (its changed blocks are relative to that one's);
    #: None for a full backup. Restoring it needs every backup down the chain to the full one.
    parent: str | None = None

    @property
    def incremental(self) -> bool:
        return self.parent is not None

    @property
    def version_num(self) -> int | None:
        """The server's major version as ``server_version_num`` counts it (170000): which programs to run."""
        major = self.pg_version.split(".")[0]
        return int(major) * 10000 if major.isdigit() else None

    @property
    def size_bytes(self) -> int:
        """The size of what was backed up (uncompressed)."""
        return sum(o.raw_size for o in self.objects)

    @property
    def stored_bytes(self) -> int:
        return sum(o.size for o in self.objects)

    def object_key(self, obj: StoredObject) -> str:
        return f"{BACKUPS_PREFIX}{self.name}/{obj.key}"

    @property
    def key(self) -> str:
        return f"{BACKUPS_PREFIX}{self.name}/{MANIFEST_NAME}"

    def to_json(self) -> bytes:
        data = asdict(self)
        data["format"] = MANIFEST_FORMAT
        data["system_identifier"] = str(self.system_identifier)
        data["start_time"] = self.start_time.isoformat()
        data["stop_time"] = self.stop_time.isoformat()
        data["size_bytes"] = self.size_bytes
        data["stored_bytes"] = self.stored_bytes
        return json.dumps(data, indent=2, sort_keys=True).encode() + b"\n"

    @classmethod
    def from_json(cls, raw: bytes, where: str) -> BackupManifest:
        """Parse and type-check; a damaged manifest is one clear error, never a half-read backup."""
        if raw.startswith(ENCRYPTED_MAGIC):
            raise PgdrError(
                f"backup manifest {where} is encrypted: set that repository's encryption and its passphrase "
                "or key file in the config"
            )
        try:
            data = json.loads(raw)
            if data.get("format") != MANIFEST_FORMAT:
                raise ValueError(f"unknown manifest format {data.get('format')!r}")
            objects = [StoredObject(**o) for o in data["objects"]]
            for o in objects:
                ints, strs = (o.size, o.raw_size), (o.key, o.sha256, o.raw_sha256, o.compression)
                if not all(isinstance(v, int) for v in ints) or not all(isinstance(v, str) for v in strs):
                    raise ValueError(f"object {o.key!r} has wrong types")
            for name in ("name", "cluster", "pg_version"):
                if not isinstance(data[name], str):
                    raise ValueError(f"{name} must be a string")
            for name in ("start_lsn", "stop_lsn", "wal_start", "wal_stop", "database", "encryption", "parent"):
                if data.get(name) is not None and not isinstance(data[name], str):
                    raise ValueError(f"{name} must be a string")
            optional_int = ("timeline", "wal_segment_size", "file_count")
            for name in optional_int:
                if data.get(name) is not None and not isinstance(data[name], int):
                    raise ValueError(f"{name} must be an integer")
            return cls(
                name=str(data["name"]),
                kind=_choice(data["kind"], ("physical", "logical")),
                cluster=str(data["cluster"]),
                system_identifier=int(data["system_identifier"]),
                pg_version=str(data["pg_version"]),
                start_time=datetime.fromisoformat(data["start_time"]),
                stop_time=datetime.fromisoformat(data["stop_time"]),
                objects=objects,
                timeline=data.get("timeline"),
                start_lsn=data.get("start_lsn"),
                stop_lsn=data.get("stop_lsn"),
                wal_start=data.get("wal_start"),
                wal_stop=data.get("wal_stop"),
                wal_segment_size=data.get("wal_segment_size"),
                file_count=data.get("file_count"),
                database=data.get("database"),
                pgdr_version=str(data.get("pgdr_version", "")),
                encryption=data.get("encryption") or "",
                extra=dict(data.get("extra") or {}),
                parent=data.get("parent"),
            )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise PgdrError(
                f"backup manifest {where} is damaged ({exc}): run `pgdr verify` and take a new backup"
            ) from None


class BrokenChain(PgdrError):
    """An incremental backup whose chain down to its full backup is not whole: it cannot be restored."""

    def __init__(self, backup: str, missing: str) -> None:
        self.backup, self.missing = backup, missing
        super().__init__(
            f"backup {backup} is incremental and the backup it builds on, {missing}, is gone (expired or "
            "deleted): its chain is broken; restore an older backup, and take a full backup (`pgdr backup`)"
        )


def chain(manifest: BackupManifest, backups: Mapping[str, BackupManifest]) -> list[BackupManifest]:
    """The backups a restore of ``manifest`` combines, the full one first and ``manifest`` last.

    Raises ``BrokenChain`` when a backup down the chain is not in ``backups`` (or names itself or a
    later backup as its parent, which only a damaged manifest can).
    """
    members = [manifest]
    while members[-1].parent is not None:
        parent = backups.get(members[-1].parent)
        if parent is None or parent.kind != "physical" or parent.name >= members[-1].name:
            raise BrokenChain(manifest.name, members[-1].parent)
        members.append(parent)
    return members[::-1]


def _choice(value: Any, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ValueError(f"kind must be one of {allowed}, not {value!r}")
    return str(value)
