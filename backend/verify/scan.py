"""Reading repositories: one listing of each (its backup folders, their manifests, its WAL objects), what
the listings say together (the segment size, the timelines' histories, who holds which segment), and the
streaming read-back every check of stored bytes goes through (``read_through``).
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import threading
import time
import zlib
from dataclasses import dataclass, field
from datetime import datetime
from typing import IO, cast

from backend.archive.walfile import WalObject, decode
from backend.errors import ObjectNotFound, PgdrError, RepositoryError
from backend.manifest import BACKUPS_PREFIX, MANIFEST_NAME, BackupManifest
from backend.progress import Progress, ProgressCallback, check_cancel
from backend.repository import ObjectInfo, Repository, read_identity
from backend.timeline import History
from backend.walnames import DEFAULT_SEGMENT_SIZE, SegmentName, WalKind, wal_kind

CHUNK = 1 << 20


@dataclass
class Scan:
    """One listing of a repository: its backup folders and its WAL objects."""

    repo: Repository
    folders: dict[str, dict[str, ObjectInfo]] = field(default_factory=dict)
    manifests: dict[str, BackupManifest] = field(default_factory=dict)
    manifest_errors: dict[str, str] = field(default_factory=dict)
    wal: list[tuple[WalObject, ObjectInfo]] = field(default_factory=list)
    segments: dict[tuple[int, int], tuple[WalObject, ObjectInfo]] = field(default_factory=dict)
    segment_size: int | None = None
    has_identity: bool = False


def scan_repository(repo: Repository, *, backups: bool) -> Scan:
    scan = Scan(repo)
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


def index_segments(scan: Scan, segment_size: int) -> None:
    for obj, info in scan.wal:
        with contextlib.suppress(ValueError):
            if wal_kind(obj.filename) is WalKind.SEGMENT:
                seg = SegmentName.parse(obj.filename, segment_size)
                scan.segments[(seg.timeline, seg.number)] = (obj, info)


def segment_size_of(scans: dict[str, Scan]) -> int:
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


def histories_of(scans: list[Scan]) -> dict[int, History]:
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


def holdings_of(scans: dict[str, Scan]) -> dict[str, dict[tuple[int, int], datetime]]:
    """Per repository, the segments it holds and when each was archived there."""
    return {repo: {key: info.modified for key, (_obj, info) in scan.segments.items()} for repo, scan in scans.items()}


class Meter:
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
        meter: Meter | None,
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
class Readout:
    size: int
    sha256: str
    raw_size: int
    raw_sha256: str
    decode_error: str | None = None


def read_through(
    repo: Repository,
    key: str,
    compression: str,
    *,
    stored_sink: IO[bytes] | None = None,
    raw_sink: IO[bytes] | None = None,
    cancel: threading.Event | None = None,
    meter: Meter | None = None,
) -> Readout:
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
            return Readout(tee.size, digest, tee.size, digest)
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
        return Readout(tee.size, tee.hash.hexdigest(), raw_size, raw_hash.hexdigest(), error)
