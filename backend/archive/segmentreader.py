"""Reading archived segments' verified bytes for pg_waldump, which builds the WAL index (``index``).

pg_waldump reads files, not a repository's objects. ``SegmentReader`` keeps verified copies of
archived segments (decompressed, their sha256 checked) as files named after them in one private
folder, the command's temporary directory, where pg_waldump finds a segment and the one after it. A
WAL folder is listed once per repository for all its segments, not once per segment: a year of
segments to read would otherwise list each folder 256 times. When every stored copy of a segment was
read and none is intact, that is ``UnreadableSegment``: a fault of the copies, which only replacing
them mends.

``ReadAhead`` has other threads read the segments in order, a few batches ahead of pg_waldump: from
S3 a read is a round trip, from a disk that has not cached the object a seek; one after another they
would be most of the time, and all of it for segments that turn out unreadable. From a remote store
``REMOTE_READERS`` threads read, since each read mostly waits; from a local disk one.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Container
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import cast

from backend.archive.walfile import WAL_PREFIX, WalObject, archived_under
from backend.archive.walfile import checksum as sha256
from backend.errors import PgdrError
from backend.repository import ENCRYPTED_MAGIC, Repository
from backend.repository.crypt import DamagedObject
from backend.walnames import wal_directory


class UnreadableSegment(PgdrError):
    """Every stored copy of a segment was read and none is intact: a fault of the copies, which only
    replacing them mends."""


class SegmentReader:
    """Verified copies of archived segments, as files named after them in one private folder, where
    pg_waldump finds a segment and the one after it.

    A WAL folder is listed once per repository for all its segments, not once per segment: a year of
    segments to read would otherwise list each folder 256 times.
    """

    def __init__(self, repos: list[Repository], folder: Path) -> None:
        self.repos = repos
        self.folder = folder
        self._files: dict[str, Path] = {}
        self._local = threading.local()
        self._listings: dict[tuple[str, str], dict[str, list[WalObject]] | PgdrError] = {}

    def stored(self, repo: Repository, name: str) -> list[WalObject]:
        """The stored versions of ``name`` in ``repo`` (normally one), from its folder's listing."""
        folder = wal_directory(name)
        listing = self._listings.get((repo.name, folder))
        if listing is None:
            try:
                listing = archived_under(repo, f"{WAL_PREFIX}{folder}/")
            except PgdrError as exc:
                listing = exc
            self._listings[repo.name, folder] = listing
        if isinstance(listing, PgdrError):
            raise listing
        return listing.get(name, [])

    def read(self, name: str, holders: Container[str] | None = None) -> Path:
        """The segment from the first intact copy in the repositories (those named in ``holders``).

        Raises UnreadableSegment when every copy was read and none is intact, PgdrError when one
        could not be read at all (it may be intact).
        """
        path = self._files.get(name)
        if path is not None:
            return path
        damaged: list[str] = []
        unread: list[str] = []
        for repo in self.repos:
            if holders is not None and repo.name not in holders:
                continue
            try:
                for obj in self.stored(repo, name):
                    blob = repo.get(obj.key)
                    if blob.startswith(ENCRYPTED_MAGIC):
                        unread.append(f"the {repo.name} copy is encrypted and the repository's encryption is not set")
                        continue
                    try:
                        data = self._decode(blob, obj.compression)
                    except ValueError as exc:
                        damaged.append(f"the {repo.name} copy is corrupt ({exc})")
                        continue
                    if sha256(data) != obj.checksum:
                        damaged.append(f"the {repo.name} copy fails its sha256 check")
                        continue
                    return self._keep(name, data)
            except DamagedObject as exc:
                damaged.append(str(exc))
            except PgdrError as exc:
                unread.append(str(exc))
        if damaged and not unread:
            raise UnreadableSegment(f"{name}: {'; '.join(damaged)}")
        raise PgdrError(f"{name}: {'; '.join([*damaged, *unread]) or 'no longer archived'}")

    def _decode(self, blob: bytes, compression: str) -> bytes:
        """``walfile.decode`` with one zstd decompressor per thread: making one costs more than
        decompressing a small segment."""
        if compression == "none":
            return blob
        import zstandard

        decompressor = getattr(self._local, "zstd", None)
        if decompressor is None:
            decompressor = self._local.zstd = zstandard.ZstdDecompressor()
        try:
            return cast(bytes, decompressor.decompress(blob))
        except zstandard.ZstdError as exc:
            raise ValueError(f"not a valid zstd frame: {exc}") from exc

    def _keep(self, name: str, data: bytes) -> Path:
        path = self.folder / name
        try:
            path.write_bytes(data)
        except OSError as exc:
            raise PgdrError(f"cannot write {path}: {exc.strerror}") from None
        self._files[name] = path
        return path

    def drop(self, *names: str) -> None:
        for name in names:
            path = self._files.pop(name, None)
            if path is not None:
                path.unlink(missing_ok=True)


#: Threads reading segments ahead of the one pg_waldump reads from a remote store, where each read
#: mostly waits; from a local disk one, since more only contend for the interpreter.
REMOTE_READERS = 8
#: What one hand-over to a reader carries: segments up to this many stored bytes (at least one),
#: at most BATCH_SEGMENTS of them.
BATCH_BYTES = 1 << 20
BATCH_SEGMENTS = 64


class ReadAhead:
    """The ``todo`` segments, read in order by other threads a few batches ahead of pg_waldump.

    From S3 a read is a round trip, from a disk that has not cached the object a seek; one after
    another they would be most of the time, and all of it for segments that turn out unreadable.
    Small objects go to a thread in batches: a hand-over per object would cost more than the read.
    """

    def __init__(
        self, reader: SegmentReader, todo: list[str], holders: dict[str, set[str]], sizes: dict[str, int]
    ) -> None:
        self.reader, self.todo, self.holders = reader, todo, holders
        self.starts: list[int] = []
        carried = 0
        for at, name in enumerate(todo):
            if not self.starts or carried >= BATCH_BYTES or at - self.starts[-1] >= BATCH_SEGMENTS:
                self.starts.append(at)
                carried = 0
            carried += sizes.get(name, 0)
        self.readers = REMOTE_READERS if reader.repos and reader.repos[0].local_root() is None else 1
        self.pool = ThreadPoolExecutor(max_workers=self.readers, thread_name_prefix="pgdr-index")
        self.batches: dict[int, Future[list[Path | PgdrError]]] = {}

    def __enter__(self) -> ReadAhead:
        return self

    def __exit__(self, *exc: object) -> None:
        for batch in self.batches.values():
            batch.cancel()
        self.pool.shutdown(wait=True)

    def read(self, at: int) -> Path:
        """``todo[at]`` as ``SegmentReader.read`` gives it (raising what it raises)."""
        batch = bisect.bisect_right(self.starts, at) - 1
        for later in range(batch, min(batch + 1 + self.readers, len(self.starts))):
            if later not in self.batches:
                self.batches[later] = self.pool.submit(self._read_batch, later)
        found = self.batches[batch].result()[at - self.starts[batch]]
        if at + 1 == self._end(batch):
            del self.batches[batch]
        if isinstance(found, PgdrError):
            raise found
        return found

    def _end(self, batch: int) -> int:
        return self.starts[batch + 1] if batch + 1 < len(self.starts) else len(self.todo)

    def _read_batch(self, batch: int) -> list[Path | PgdrError]:
        found: list[Path | PgdrError] = []
        for name in self.todo[self.starts[batch] : self._end(batch)]:
            try:
                found.append(self.reader.read(name, self.holders.get(name)))
            except PgdrError as exc:
                found.append(exc)
        return found
