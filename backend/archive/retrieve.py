"""The first intact copy of an archived WAL file, written where it is wanted: what ``wal-fetch`` and the
prefetcher both do with a file once they know where it is stored.

Each stored copy is decoded into a temporary file beside the destination, hashed as it is written, and
renamed into place only when its sha256 is the one it was archived with; a copy that is damaged (another
checksum, not a valid zstd frame, encrypted without the key) is named in the error and the next one tried.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path

from backend.archive.walfile import WalObject, decode, find_archived
from backend.errors import ObjectNotFound, PgdrError, RepositoryError
from backend.repository import ENCRYPTED_MAGIC, Repository

TEMP_MARK = ".pgdr-fetch."  # a file being fetched: ``.<name>.pgdr-fetch.<pid>.<thread>``, beside where it goes


def fetch_from(
    repos: list[Repository],
    filename: str,
    destination: Path,
    find: Callable[[Repository, str], list[WalObject]] = find_archived,
    *,
    owner: tuple[int, int] | None = None,
    sync: bool = True,
    gate: AbstractContextManager[object] | None = None,
) -> str:
    """Write the first intact copy in ``repos`` to ``destination``; returns the repository's name.

    ``find`` lists a file's stored versions (the prefetcher passes one that lists a folder once);
    ``owner`` gets the file (pgdr as root writing for the server, which must own its WAL); without
    ``sync`` it is not fsynced (the prefetcher's answer to a request, taken at once). ``gate`` is held
    while the file is decoded, hashed and written (the prefetcher's: one such at a time for the window).
    """
    problems: list[str] = []
    for repo in repos:
        try:
            for obj in find(repo, filename):
                if not _write_verified(destination, repo.get(obj.key), obj, owner, sync=sync, gate=gate):
                    problems.append(f"{repo.name} copy fails its sha256 check")
                    continue
                return repo.name
        except ValueError as exc:
            problems.append(f"{repo.name} copy is corrupt ({exc})")
        except RepositoryError as exc:
            problems.append(str(exc))
    if problems:
        raise PgdrError(f"{filename}: no intact copy could be fetched: {'; '.join(problems)}", exit_code=2)
    raise ObjectNotFound(f"{filename} is not in any repository")


#: Decoded, hashed and written this much at a time: a whole segment decoded at once would be a fresh
#: 16 MB buffer per file, whose page faults cost about as much as decoding it.
CHUNK = 1 << 20


def _write_verified(
    path: Path,
    blob: bytes,
    obj: WalObject,
    owner: tuple[int, int] | None = None,
    *,
    sync: bool = True,
    gate: AbstractContextManager[object] | None = None,
) -> bool:
    """Decode ``blob`` into a temporary file beside ``path``, hashing as it goes, and rename it into place
    only when its sha256 is the one ``obj`` was archived with: True. False on another checksum (nothing
    is left behind); ValueError on a blob that is not what ``obj`` says (encrypted, not zstd)."""
    if blob.startswith(ENCRYPTED_MAGIC):
        decode(blob, obj.compression)  # raises, saying why
    digest = hashlib.sha256()
    temp = path.with_name(f".{path.name}{TEMP_MARK}{os.getpid()}.{threading.get_ident()}")
    try:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            if owner is not None:
                os.fchown(fd, *owner)
            with gate or contextlib.nullcontext():
                for chunk in _decoded(blob, obj.compression):
                    digest.update(chunk)
                    os.write(fd, chunk)
            if digest.hexdigest() != obj.checksum:
                os.close(fd)
                fd = -1
                temp.unlink()
                return False
            if sync:
                os.fsync(fd)
        finally:
            if fd >= 0:
                os.close(fd)
        os.rename(temp, path)
    except OSError as exc:
        temp.unlink(missing_ok=True)
        raise PgdrError(f"cannot write {path}: {exc.strerror}") from None
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return True


def _decoded(blob: bytes, compression: str) -> Iterator[memoryview]:
    """``blob`` decoded, CHUNK bytes at a time (each view valid until the next one is asked for)."""
    if compression == "none":
        view = memoryview(blob)
        for start in range(0, len(view), CHUNK):
            yield view[start : start + CHUNK]
        return
    import zstandard

    buffer = bytearray(CHUNK)
    view = memoryview(buffer)
    try:
        reader = zstandard.ZstdDecompressor().stream_reader(blob)
        while size := reader.readinto(buffer):
            yield view[:size]
    except zstandard.ZstdError as exc:
        raise ValueError(f"not a valid zstd frame: {exc}") from exc
