"""Unpack a base backup into a data directory: checked as it streams, durable when it returns.

The work is decompressing zstd (which releases the GIL), writing files, and making them durable.
Done naively these happen in series: a 1 GB relation segment sits in the page cache until its
fsync, then the disk writes it back while the CPU idles (this machine keeps 2 GB of dirty pages
before the kernel starts on its own). So the writer asks for writeback every ``WRITEBACK_STEP`` bytes
of a file, on two sync threads, and the disk works beside zstd; each file is fsynced as soon as it is
complete, and the unpack returns once every one is. PostgreSQL also syncs the whole data directory
when it starts on a base backup, and then finds nothing left to write.

A cluster holds thousands of small files, written far faster than the disk syncs them: the writer
waits while ``MAX_OPEN_FILES`` are open, else their fds pile up in the sync queue past the 1024 open
files runuser, sudo and systemd allow, and the restore fails with "Too many open files".
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import tarfile
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, cast

from backend.backup.pgbasebackup import MANIFEST, TAR_OBJECT
from backend.errors import PgdrError
from backend.manifest import BackupManifest, StoredObject
from backend.progress import Progress, ProgressCallback, check_cancel, no_progress
from backend.repository import Repository
from backend.tablespaces import TABLESPACE_MAP, recorded
from backend.tarstream import MemberSink, TarStream

READ_SIZE = 4 << 20  # decompressed bytes per read: member data passes on as slices of it
WRITEBACK_STEP = 32 << 20  # bytes written to a file between writeback requests
MAX_OPEN_FILES = 32  # the file being written and those queued for sync: ample to keep two sync threads busy


def restore_base_backup(
    manifest: BackupManifest,
    repos: list[Repository],
    target: Path,
    *,
    tablespaces: Mapping[int, Path] | None = None,
    on_progress: ProgressCallback = no_progress,
    cancel: threading.Event | None = None,
    refused: list[str] | None = None,
) -> str:
    """Unpack the base backup into ``target``, each archive from the first repository whose copy verifies.

    ``tablespaces`` gives each tablespace's destination (by oid): its archive is unpacked there and
    ``pg_tblspc/<oid>`` linked to it (see ``backend.tablespaces``). Returns the repository the data
    directory came from. A copy that fails its checks is removed and described in ``refused``
    (repository, object, what is wrong), so the caller can tell the operator which copy is damaged
    even when another repository's copy saved the restore.
    """
    places = dict(tablespaces or {})
    spaces = recorded(manifest)
    missing = [t.name for t in spaces if t.oid not in places]
    if missing:
        raise PgdrError(f"backup {manifest.name} holds tablespaces {', '.join(missing)}: no destination was given")
    objects = {o.key: o for o in manifest.objects}
    absent = [key for key in (TAR_OBJECT, *(t.archive for t in spaces)) if key not in objects]
    if absent:
        raise PgdrError(
            f"backup manifest {manifest.key} names no object {', '.join(absent)}: it is damaged; "
            "run `pgdr verify` and restore another backup"
        )
    archives = [(objects[TAR_OBJECT], target, target)]
    archives += [(objects[t.archive], places[t.oid], places[t.oid] / t.version_dir) for t in spaces]
    # Never written, so no moment exists at which a started server would link the tablespaces to their
    # original locations (the running cluster's, for a restore beside) and replay WAL into them.
    skip = frozenset({TABLESPACE_MAP}) if spaces else frozenset()
    total = sum(obj.raw_size for obj, _, _ in archives)
    done = 0
    source = ""
    for obj, where, written in archives:
        repo = _unpack_copy(
            manifest,
            obj,
            repos,
            where,
            written,
            refused=refused,
            skip=skip if where == target else frozenset(),
            progress=Counted(on_progress, done, total),
            cancel=cancel,
        )
        source = source or repo
        done += obj.raw_size
    for space in spaces:
        os.symlink(places[space.oid], target / "pg_tblspc" / str(space.oid))
    if spaces:
        fd = os.open(target / "pg_tblspc", os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    return source


class Counted:
    """Progress of one part (an archive, a backup of a chain), counted as part of all of them."""

    def __init__(self, on_progress: ProgressCallback, before: int, total: int, prefix: str = "") -> None:
        self._on_progress, self._before, self._total, self._prefix = on_progress, before, total, prefix

    def __call__(self, p: Progress) -> None:
        self._on_progress(Progress(p.step, self._before + p.done, self._total, self._prefix + p.message))


def _unpack_copy(
    manifest: BackupManifest,
    obj: StoredObject,
    repos: list[Repository],
    where: Path,
    written: Path,
    *,
    refused: list[str] | None,
    skip: frozenset[str],
    progress: ProgressCallback,
    cancel: threading.Event | None,
) -> str:
    """Unpack ``obj`` into ``where`` from the first repository whose copy verifies.

    After a bad copy, ``written`` (the data directory, or a tablespace's version folder) is removed.
    """
    problems = []
    for repo in repos:
        try:
            _unpack(manifest=manifest, obj=obj, repo=repo, target=where, skip=skip, on_progress=progress, cancel=cancel)
            if obj.key == TAR_OBJECT:
                _place_pg_manifest(manifest, repo, where)
        except (_CorruptCopy, PgdrError) as exc:
            if isinstance(exc, PgdrError) and (exc.exit_code == 130 or isinstance(exc, TargetFailed)):
                raise
            problems.append(f"{repo.name}: {exc}")
            if written == where:
                _empty(written)
            else:
                shutil.rmtree(written, ignore_errors=True)
            continue
        if problems:
            progress(Progress("base backup", 1, 1, f"{obj.key}: restored from the {repo.name} repository instead"))
        if refused is not None:
            refused.extend(problems)
        return repo.name
    raise PgdrError(f"no intact copy of backup {manifest.name} could be restored ({'; '.join(problems)})")


class _CorruptCopy(Exception):
    pass


class TargetFailed(PgdrError):
    """The target cannot take the files (full, failing, not writable): another repository's copy would not help."""


class _HashingReader:
    """A read-through wrapper that hashes what passes: the stored bytes are checked without a second read."""

    def __init__(self, raw: IO[bytes]) -> None:
        self.raw = raw
        self.hash = hashlib.sha256()
        self.size = 0

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(n)
        self.hash.update(data)
        self.size += len(data)
        return data

    def readable(self) -> bool:
        return True


def _unpack(
    *,
    manifest: BackupManifest,
    obj: StoredObject,
    repo: Repository,
    target: Path,
    skip: frozenset[str] = frozenset(),
    on_progress: ProgressCallback,
    cancel: threading.Event | None,
) -> None:
    import zstandard

    key = manifest.object_key(obj)
    # A backup PostgreSQL compressed records no sha256 of its tar (raw_sha256 ""): its stored bytes
    # are checked here, every file's checksum by pg_verifybackup (pgdr verify --deep).
    raw_hash = hashlib.sha256() if obj.raw_sha256 else None
    raw_size = 0
    buffer = bytearray(READ_SIZE)
    view = memoryview(buffer)
    with repo.open(key) as stored, ThreadPoolExecutor(max_workers=2, thread_name_prefix="pgdr-fsync") as syncer:
        hashed = _HashingReader(stored)
        writer = _Writer(key, target, syncer, skip)
        tar = TarStream(writer.open)
        try:
            reader = zstandard.ZstdDecompressor().stream_reader(cast(IO[bytes], hashed), read_size=1 << 20)
            # Past the end-of-archive blocks the rest (padding, the end of the zstd frame) is still
            # read, so both checksums cover every byte that was stored.
            while n := reader.readinto(buffer):
                check_cancel(cancel, "restore")
                if raw_hash is not None:
                    raw_hash.update(view[:n])
                raw_size += n
                tar.feed(view[:n])
                on_progress(Progress("base backup", raw_size, obj.raw_size, f"unpacking {writer.current}"))
            while hashed.read(1 << 20):
                pass
        except (tarfile.TarError, zstandard.ZstdError) as exc:
            raise _CorruptCopy(f"{key} is damaged and fails to unpack ({exc})") from None
        finally:
            writer.abandon()
        if not tar.ended:
            raise _CorruptCopy(f"{key} ends before the end of its tar archive (a truncated copy)")
    if writer.failure is not None:  # every sync has ended: the executor waited for them
        raise writer.failure
    if hashed.size != obj.size or hashed.hash.hexdigest() != obj.sha256:
        raise _CorruptCopy(f"{key} fails its sha256 check")
    if raw_hash is not None and raw_hash.hexdigest() != obj.raw_sha256:
        raise _CorruptCopy(f"{key} unpacks to different bytes than were backed up")


class _Writer:
    """Creates each member under ``target`` as the tar stream reaches it (the TarStream opener)."""

    def __init__(self, key: str, target: Path, syncer: ThreadPoolExecutor, skip: frozenset[str]) -> None:
        self._key = key
        self._skip = skip  # members not written (their bytes are still read and checked)
        self._target = target
        self._syncer = syncer
        self._open_file: _FileWriter | None = None
        self._slots = threading.Semaphore(MAX_OPEN_FILES)
        self.failure: Exception | None = None  # the first a sync thread met
        self.current = ""

    def open(self, info: tarfile.TarInfo) -> MemberSink | None:
        name = info.name
        if name.startswith("/") or ".." in Path(name).parts:
            raise _CorruptCopy(f"{self._key} holds an unsafe path {name!r}")
        self.current = name
        if name in self._skip:
            return None
        path = os.path.join(self._target, name)
        if info.isreg():
            if self.failure is not None:
                raise self.failure  # a full or failing disk: stop writing onto it
            self._open_file = _FileWriter(path, info, self)
            return self._open_file
        try:
            if info.isdir():
                os.makedirs(path, mode=0o700, exist_ok=True)
            elif info.issym():
                os.symlink(info.linkname, path)
            else:
                raise _CorruptCopy(f"{self._key} holds {name!r}, a kind of tar entry pg_basebackup never writes")
        except OSError as exc:
            raise _write_error(path, exc) from None
        return None

    def new_fd(self, make: Callable[[], int]) -> int:
        """The fd ``make`` opens, once fewer than ``MAX_OPEN_FILES`` are open (``sync`` gives it back)."""
        self._slots.acquire()
        try:
            return make()
        except BaseException:
            self._slots.release()
            raise

    def sync(self, fd: int, mtime: float | None) -> None:
        """Hand ``fd`` to a sync thread, which closes it: with ``mtime``, the file is complete."""
        self._syncer.submit(self._sync, fd, mtime)

    def _sync(self, fd: int, mtime: float | None) -> None:
        try:
            _sync_and_close(fd, mtime)
        except Exception as exc:  # raised by the unpacking thread: the next file, or the end
            self.failure = self.failure or exc
        finally:
            self._slots.release()

    def closed(self, file: _FileWriter) -> None:
        if self._open_file is file:
            self._open_file = None

    def abandon(self) -> None:
        """After an error mid-file: close the file being written (the caller empties the directory)."""
        if self._open_file is not None:
            os.close(self._open_file.fd)
            self._slots.release()
            self._open_file = None


class _FileWriter:
    def __init__(self, path: str, info: tarfile.TarInfo, writer: _Writer) -> None:
        self.path = path
        self.mtime = float(info.mtime)
        self.writer = writer
        self.unsynced = 0
        self.fd = writer.new_fd(lambda: _create(path, info.mode & 0o7777))

    def write(self, data: memoryview) -> None:
        self.unsynced += len(data)
        try:
            while data:
                data = data[os.write(self.fd, data) :]
        except OSError as exc:
            raise _write_error(self.path, exc) from None
        if self.unsynced >= WRITEBACK_STEP:
            self.writer.sync(self.writer.new_fd(self._dup), None)
            self.unsynced = 0

    def _dup(self) -> int:
        try:
            return os.dup(self.fd)
        except OSError as exc:
            raise _write_error(self.path, exc) from None

    def close(self) -> None:
        self.writer.closed(self)
        self.writer.sync(self.fd, self.mtime)


def _create(path: str, mode: int) -> int:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        try:
            fd = os.open(path, flags, 0o600)
        except FileNotFoundError:
            os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
            fd = os.open(path, flags, 0o600)
    except OSError as exc:
        raise _write_error(path, exc) from None
    try:
        os.fchmod(fd, mode)  # exactly the backed-up mode, whatever the umask
    except OSError as exc:
        os.close(fd)
        raise _write_error(path, exc) from None
    return fd


def _sync_and_close(fd: int, mtime: float | None) -> None:
    """Writeback of what is written so far (``mtime`` None), or the complete file's mtime and fsync."""
    try:
        if mtime is None:
            os.fdatasync(fd)
        else:
            os.utime(fd, (mtime, mtime))
            os.fsync(fd)
    except OSError as exc:
        raise TargetFailed(f"cannot make a restored file durable: {exc.strerror} (a full or failing disk?)") from None
    finally:
        os.close(fd)


def _write_error(path: str, exc: OSError) -> TargetFailed:
    hint = "free space on that file system" if exc.errno == errno.ENOSPC else "check the target directory"
    return TargetFailed(f"cannot write {path}: {exc.strerror}; {hint}, then restore again")


def _place_pg_manifest(manifest: BackupManifest, repo: Repository, target: Path) -> None:
    """Put backup_manifest in the data directory, as a plain-format pg_basebackup leaves it.

    A tar the server compressed does not carry it (pg_basebackup stores it beside the tar), and
    pg_verifybackup looks for it there.
    """
    obj = next((o for o in manifest.objects if o.key == MANIFEST), None)
    if obj is None or (target / MANIFEST).exists():
        return
    data = repo.get(manifest.object_key(obj))
    if len(data) != obj.size or hashlib.sha256(data).hexdigest() != obj.sha256:
        raise _CorruptCopy(f"{manifest.object_key(obj)} fails its sha256 check")
    (target / MANIFEST).write_bytes(data)


def _empty(folder: Path) -> None:
    for child in folder.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()
