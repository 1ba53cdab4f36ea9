"""How one WAL file is stored: compressed, named by its checksum, and tied to its cluster.

Object key: ``wal/<folder>/<file name>.<sha256 of the original bytes>.<zst|raw>``. With the checksum
in the name, a listing alone tells whether a segment is archived and with which content, so a
duplicate push is settled without downloading anything, and ``wal-fetch`` verifies every byte it
hands PostgreSQL.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from pathlib import Path

from backend.errors import PgdrError
from backend.repository import ENCRYPTED_MAGIC, ClusterIdentity, Repository, ensure_identity
from backend.walnames import SegmentName, WalKind, format_lsn, wal_directory

WAL_PREFIX = "wal/"
XLOG_PAGE_MAGIC_MIN = 0xD100  # every PostgreSQL release since 9.x stamps 0xD1xx
XLP_LONG_HEADER = 0x0002
_LONG_HEADER = struct.Struct("<HHIQI4xQII")
#: A WAL file's bytes: wal-push reads into a buffer its thread reuses (backend/archive/push.py).
Buffer = bytes | memoryview


@dataclass(frozen=True)
class WalObject:
    filename: str
    checksum: str
    compression: str

    @property
    def key(self) -> str:
        ext = "zst" if self.compression == "zstd" else "raw"
        return f"{WAL_PREFIX}{wal_directory(self.filename)}/{self.filename}.{self.checksum}.{ext}"

    @classmethod
    def parse_key(cls, key: str) -> WalObject | None:
        """The object a key names, or None for anything that is not a WAL object."""
        if not key.startswith(WAL_PREFIX):
            return None
        base = key.rsplit("/", 1)[-1]
        parts = base.rsplit(".", 2)
        if len(parts) != 3 or parts[2] not in ("zst", "raw") or len(parts[1]) != 64:
            return None
        return cls(parts[0], parts[1], "zstd" if parts[2] == "zst" else "none")


def find_archived(repo: Repository, filename: str) -> list[WalObject]:
    """Every stored version of ``filename`` in ``repo`` (normally zero or one)."""
    return archived_under(repo, f"{WAL_PREFIX}{wal_directory(filename)}/{filename}.").get(filename, [])


def archived_under(repo: Repository, prefix: str) -> dict[str, list[WalObject]]:
    """The WAL objects whose keys start with ``prefix``, by file name: one listing for many files."""
    found: dict[str, list[WalObject]] = {}
    for info in repo.list(prefix):
        obj = WalObject.parse_key(info.key)
        if obj is not None:
            found.setdefault(obj.filename, []).append(obj)
    return found


def checksum(data: Buffer) -> str:
    return hashlib.sha256(data).hexdigest()


def encode(data: Buffer, compression: str, level: int) -> bytes:
    if compression == "none":
        return bytes(data)  # no copy when it is bytes already
    import zstandard

    return zstandard.ZstdCompressor(level=level).compress(data)


def decode(blob: bytes, compression: str) -> bytes:
    if blob.startswith(ENCRYPTED_MAGIC):
        raise ValueError("it is encrypted: set the repository's encryption and its passphrase or key file")
    if compression == "none":
        return blob
    import zstandard

    try:
        return zstandard.ZstdDecompressor().decompress(blob)
    except zstandard.ZstdError as exc:
        raise ValueError(f"not a valid zstd frame: {exc}") from exc


def identity_of(data: Buffer, kind: WalKind, filename: str, data_dir: Path | None) -> ClusterIdentity | None:
    """The cluster a WAL file belongs to: from a segment's long page header, else from pg_control.

    Reading the segment itself (not the config) is what lets ``wal-push`` refuse a segment of
    another cluster even when both are configured with the same repository by mistake.
    """
    if kind in (WalKind.SEGMENT, WalKind.PARTIAL):
        if len(data) < _LONG_HEADER.size:
            raise PgdrError(f"{filename} is too short to be a WAL segment ({len(data)} bytes): refusing to archive it")
        magic, info, _tli, pageaddr, _rem, sysid, seg_size, _blcksz = _LONG_HEADER.unpack_from(data)
        if magic & 0xFF00 != XLOG_PAGE_MAGIC_MIN or not info & XLP_LONG_HEADER:
            raise PgdrError(f"{filename} does not start with a WAL page header: refusing to archive it")
        if not (1 << 20 <= seg_size <= 1 << 30 and seg_size & (seg_size - 1) == 0):
            raise PgdrError(f"{filename}'s header gives a segment size of {seg_size} bytes: not a WAL segment")
        try:
            named = SegmentName.parse(filename[:24], seg_size).start_lsn
        except ValueError as exc:
            raise PgdrError(f"{exc}: refusing to archive it") from None
        if pageaddr != named:
            # Stored under this name, it would take the place of the real segment for good: a later
            # push of the real one, with other bytes, is refused.
            raise PgdrError(
                f"{filename} holds the WAL of {format_lsn(pageaddr)}, not of {format_lsn(named)} that its name says "
                "(a recycled or copied file?): refusing to archive it; PostgreSQL retries with the real segment"
            )
        if kind is WalKind.SEGMENT and len(data) != seg_size:
            raise PgdrError(
                f"{filename} is {len(data)} bytes but its header says segments are {seg_size}: "
                "refusing to archive a truncated segment"
            )
        return ClusterIdentity(sysid, seg_size)
    if data_dir is not None:
        control = data_dir / "global" / "pg_control"
        try:
            with control.open("rb") as fh:
                (sysid,) = struct.unpack("<Q", fh.read(8))
        except OSError:
            return None
        return ClusterIdentity(sysid, 0)
    return None


def store(repo: Repository, obj: WalObject, blob: bytes, identity: ClusterIdentity | None, cluster: str) -> bool:
    """Store one WAL object; False when the identical file is already there.

    The same name with other content is refused and nothing is written: after a restore that
    forgot to start a new timeline, overwriting would destroy the WAL of the history being replaced.
    """
    if identity is not None:
        ensure_identity(repo, identity, cluster)
    existing = find_archived(repo, obj.filename)
    if any(e.checksum == obj.checksum for e in existing):
        return False
    if existing:
        raise PgdrError(
            f"{obj.filename} is already archived in the {repo.name} repository with different content "
            f"(sha256 {existing[0].checksum[:12]}..., this file {obj.checksum[:12]}...): refusing to overwrite; "
            "if this cluster was restored or re-created, give it a new [cluster] name or move the old archive aside"
        )
    repo.put(obj.key, blob)
    return True
