"""The fast path of ``pgdr backup``: PostgreSQL compresses, pg_basebackup writes the archives into a folder.

The streaming path pipes an uncompressed tar through pgdr and compresses it in Python, so the whole
database crosses a pipe and one process does the work. With a local repository that stores objects
as given (not encrypted) and PostgreSQL 15 or later, pgdr instead asks the server to compress with
zstd on every core (``--compress=server-zstd``) and lets pg_basebackup write ``base.tar.zst``, one
``<oid>.tar.zst`` per tablespace and PostgreSQL's ``backup_manifest`` into a staging folder inside
the local repository, on the same file system as the backup's folder. While each archive grows,
pgdr reads it back from the page cache once, to hash the stored bytes and to upload them to the
other repositories (S3): no second copy, no raw bytes in Python, memory flat whatever the size.

A cluster with tablespaces and no such local repository cannot use the streaming path
(pg_basebackup writes a single tablespace to stdout, not several), so pg_basebackup writes into a
scratch folder in pgdr's state dir instead, and the archives are uploaded from there as they grow.
Disk use stays bounded: what has been uploaded is given back to the file system as it goes (hole
punching), and pg_basebackup is paused (SIGSTOP) while it is more than ``AHEAD_LIMIT`` bytes ahead
of the upload, so a slow S3 link holds the server back instead of filling the disk.

pg_basebackup writes one archive at a time: it creates the next only once it has closed the one
before. An archive is complete when pg_basebackup has not held it open (its descriptors are read in
``/proc``) on two looks in a row (``open`` makes the file a moment before its descriptor shows), or
has exited; until then pgdr follows it as it grows.

The sha256 recorded is that of the stored bytes; the original (uncompressed) bytes' sha256 is not
recorded (``raw_sha256`` is ""): restore and verify check the stored bytes, the zstd stream, and
``pg_verifybackup`` checks every file against PostgreSQL's ``backup_manifest``.

Run as root into a repository another user (postgres) owns, pg_basebackup writes as root: its
staging folder stays root's (mode 0700), so that owner cannot plant a link for pg_basebackup to
write through, and pg_basebackup is given the folder as ``/proc/<pgdr>/fd/<n>``, the descriptor
pgdr opened it with, so renaming the folder or putting a link in its place changes nothing. Each
archive is handed to the repository's owner with ``fchown`` on a descriptor, then renamed between
folder descriptors: no path the owner could swap is ever followed.

Durability and crash safety: pg_basebackup fsyncs what it wrote before it exits 0; the archives are
then renamed into ``backups/<name>/`` and that folder fsynced; the caller writes the manifest last.
The staging folder is hidden (``backups/.tmp.staging.<name>``): no listing shows it, so nothing can
take it for a backup, and a run killed at any point leaves it (and at most a folder without a
manifest) for the next backup to remove (a root-owned staging folder: the next one run as root).
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from backend import faults
from backend.backup import pgbasebackup
from backend.backup.fanout import FanOut, fan_out
from backend.config import Config
from backend.errors import PgdrError, RepositoryError
from backend.manifest import BACKUPS_PREFIX, StoredObject
from backend.postgres import ServerInfo, libpq_env
from backend.progress import Progress, ProgressCallback, check_cancel
from backend.repository import Repository
from backend.repository.local import FOLDER_FLAGS, TEMP_PREFIX, LocalRepository
from backend.statedir import state_base
from backend.tablespaces import Tablespace, archive_name, oid_of

STAGING_PREFIX = f"{TEMP_PREFIX}staging."
#: Where the scratch folders are, in pgdr's state dir: one folder per cluster, one scratch folder per backup.
SCRATCH_FOLDER = "backup-scratch"
#: How often pgdr looks at pg_basebackup and at the growing archives (seconds).
POLL = 0.05
#: How often, writing into a scratch folder, pgdr checks how far ahead pg_basebackup is (a server writes
#: a few MB in that time: what it may overshoot ``AHEAD_LIMIT`` by).
SPILL_POLL = 0.005
CHUNK = 1 << 20
#: server-side zstd came with PostgreSQL 15.
SERVER_ZSTD = 150000
#: How long pg_basebackup's descriptors may stay unreadable (seconds) before the backup gives up.
UNREADABLE_FOR = 5.0
#: How far pg_basebackup may write ahead of the upload into a scratch folder before it is paused.
AHEAD_LIMIT = 256 << 20
#: How much uploaded data a scratch archive holds before it is given back to the file system.
PUNCH_STEP = 32 << 20
_PUNCH_HOLE = 0x02 | 0x01  # FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE


def staging_repository(repos: Sequence[Repository], info: ServerInfo) -> LocalRepository | None:
    """The local repository when the server-compressed path can write into it, else None."""
    if info.version_num < SERVER_ZSTD or not info.zstd:
        return None
    return next((r for r in repos if isinstance(r, LocalRepository) and r.encryption == ""), None)


def clean_staging(repos: Sequence[Repository]) -> None:
    """Remove staging folders a killed backup left (callers hold the repository lock)."""
    for repo in repos:
        if isinstance(repo, LocalRepository):
            for folder in (repo.root / BACKUPS_PREFIX).glob(f"{STAGING_PREFIX}*"):
                shutil.rmtree(folder, ignore_errors=True)


def take(
    *,
    cfg: Config,
    local: LocalRepository | None,
    repos: Sequence[Repository],
    info: ServerInfo,
    name: str,
    tablespaces: Sequence[Tablespace],
    estimate: int | None,
    on_progress: ProgressCallback,
    cancel: threading.Event | None,
    parent_manifest: Path | None = None,
) -> tuple[list[StoredObject], bytes]:
    """Back up into ``local`` (and, from its copy, the other ``repos``): the archives' records and backup_manifest.

    Without ``local``, pg_basebackup writes into a scratch folder and every repository gets its copy
    from there. backup_manifest is returned, not stored: the caller stores it in every repository.
    """
    run = _Run(
        cfg,
        info,
        name,
        tablespaces,
        estimate=estimate,
        on_progress=on_progress,
        cancel=cancel,
        parent_manifest=parent_manifest,
    )
    if local is None:
        return run.through_scratch(repos)
    backups = local.open_folder(local.root / BACKUPS_PREFIX)
    try:
        try:
            os.mkdir(f"{STAGING_PREFIX}{name}", 0o700, dir_fd=backups)  # root's, when pgdr runs as root
        except OSError as exc:
            raise RepositoryError(
                f"cannot create the staging folder {STAGING_PREFIX}{name} in {local.root / BACKUPS_PREFIX}: "
                f"{exc.strerror}; check the repository's permissions and free space"
            ) from None
        folder = os.open(f"{STAGING_PREFIX}{name}", FOLDER_FLAGS, dir_fd=backups)
        try:
            sinks = run.into(folder, [r for r in repos if r is not local], spill=False)
            pg_manifest = _read(folder, pgbasebackup.MANIFEST)
            _store(local, folder, list(sinks), local.root / BACKUPS_PREFIX / name)
            faults.point("backup-mid-upload")
        finally:
            os.close(folder)
            shutil.rmtree(f"{STAGING_PREFIX}{name}", dir_fd=backups, ignore_errors=True)
    finally:
        os.close(backups)
    return _records(sinks, pg_manifest), pg_manifest


def _read(folder: int, name: str) -> bytes:
    fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=folder)
    with io.FileIO(fd, "rb") as f:
        return f.readall()


def _store(local: LocalRepository, staging: int, archives: list[str], folder: Path) -> None:
    """Move the archives from the staging folder into the backup's, given to the repository's owner."""
    for archive in archives:
        fd = os.open(archive, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=staging)
        try:
            local.give(fd)
        finally:
            os.close(fd)
    target = local.open_folder(folder)
    try:
        for archive in archives:
            os.rename(archive, archive, src_dir_fd=staging, dst_dir_fd=target)
        os.fsync(target)
    finally:
        os.close(target)


def _files(pg_manifest: bytes) -> list[dict[str, Any]]:
    return list(json.loads(pg_manifest).get("Files", []))


def _records(sinks: dict[str, FanOut], pg_manifest: bytes) -> list[StoredObject]:
    """Each archive's record; its ``raw_size`` is the bytes of the files PostgreSQL's manifest puts in it."""
    data: dict[str, int] = {}
    for entry in _files(pg_manifest):
        oid = oid_of(str(entry.get("Path", "")))
        archive = pgbasebackup.TAR_OBJECT if oid is None else archive_name(oid)
        data[archive] = data.get(archive, 0) + int(entry.get("Size", 0))
    return [StoredObject(a, s.size, s.sha256, data.get(a, 0), "", "zstd") for a, s in sinks.items()]


class _Run:
    """One pg_basebackup writing its archives into a folder while followers hash (and upload) them."""

    def __init__(
        self,
        cfg: Config,
        info: ServerInfo,
        name: str,
        tablespaces: Sequence[Tablespace],
        *,
        estimate: int | None,
        on_progress: ProgressCallback,
        cancel: threading.Event | None,
        parent_manifest: Path | None,
    ) -> None:
        self.cfg, self.info, self.name, self.parent_manifest = cfg, info, name, parent_manifest
        self.expected = [pgbasebackup.TAR_OBJECT, *(t.archive for t in tablespaces)]
        self.estimate, self.on_progress, self.cancel = estimate, on_progress, cancel

    def through_scratch(self, repos: Sequence[Repository]) -> tuple[list[StoredObject], bytes]:
        """Into a scratch folder in the state dir, uploaded to every repository as the archives grow."""
        root = Path(state_base()) / SCRATCH_FOLDER / self.cfg.cluster.name
        try:
            root.mkdir(mode=0o700, parents=True, exist_ok=True)
            for stale in root.iterdir():
                shutil.rmtree(stale, ignore_errors=True)  # a killed backup's (callers hold the repository lock)
            scratch = tempfile.mkdtemp(prefix=f"{self.name}.", dir=root)
        except OSError as exc:
            raise PgdrError(
                f"cannot make a scratch folder for the tablespaces' archives in {root}: {exc.strerror}; "
                "set PGDR_STATE_DIR to a writable directory, or configure a local repository"
            ) from None
        try:
            folder = os.open(scratch, FOLDER_FLAGS)
            try:
                sinks = self.into(folder, repos, spill=True)
                pg_manifest = _read(folder, pgbasebackup.MANIFEST)
                return _records(sinks, pg_manifest), pg_manifest
            finally:
                os.close(folder)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    def into(self, folder: int, repos: Sequence[Repository], *, spill: bool) -> dict[str, FanOut]:
        """pg_basebackup into ``folder``: each archive's sink (base first), once every one is complete."""
        argv = [
            *pgbasebackup.base_argv(self.cfg, self.info, self.name, self.parent_manifest),
            f"--pgdata=/proc/{os.getpid()}/fd/{folder}",
            f"--compress=server-zstd:level={self.cfg.backup.compression_level},workers={os.cpu_count() or 1}",
            "--progress",
        ]
        self.on_progress(Progress("backup", 0, self.estimate, f"starting {self.name}"))
        archives = _Archives(folder, repos, f"{BACKUPS_PREFIX}{self.name}/", spill=spill)
        proc, stderr = pgbasebackup.start(argv, libpq_env(self.cfg), stdout=subprocess.DEVNULL)
        reported = 0.0
        try:
            while True:
                try:
                    proc.wait(SPILL_POLL if spill else POLL)
                    break
                except subprocess.TimeoutExpired:
                    pass
                check_cancel(self.cancel, f"backup {self.name}")
                faults.point("backup-during-pg-basebackup")
                try:
                    archives.follow(proc.pid)
                except PgdrError:
                    if proc.poll() is None:
                        raise  # else it has exited (a zombie's descriptors cannot be read): its own outcome counts
                if time.monotonic() - reported >= POLL:
                    total = stderr.total_bytes or self.estimate
                    self.on_progress(Progress("backup", stderr.done_bytes, total, f"{self.name}: streaming"))
                    reported = time.monotonic()
            if proc.returncode != 0:
                raise stderr.failure(proc.returncode)
            stderr.join()
            return archives.finish(self.expected, self.name, self.on_progress, self.cancel)
        except BaseException:
            pgbasebackup.stop(proc)
            archives.abort()
            raise


class _Archives:
    """The archives pg_basebackup writes into a folder, each read by its own follower as it appears."""

    def __init__(self, folder: int, repos: Sequence[Repository], prefix: str, *, spill: bool) -> None:
        self._folder, self._repos, self._prefix, self._spill = folder, repos, prefix, spill
        self._followers: dict[str, _Follower] = {}
        self._paused: int | None = None  # the pid of a pg_basebackup paused to let the upload catch up
        self._unreadable = 0.0  # since when pg_basebackup's descriptors could not be read (0: they could)

    def _discover(self) -> list[_Follower]:
        for archive in sorted(os.listdir(self._folder)):
            if archive.endswith(".tar.zst") and archive not in self._followers:
                follower = _Follower(self._folder, archive, self._repos, self._prefix + archive, punch=self._spill)
                follower.start()
                self._followers[archive] = follower
        return list(self._followers.values())

    def follow(self, pid: int) -> None:
        """Start following new archives; tell those pg_basebackup has closed that they are complete."""
        followers = self._discover()
        for follower in followers:
            if follower.error is not None:
                raise follower.error
        held = _held_open(pid)  # read after the listing: an archive listed and not held is closed for good
        if held is None:  # for a moment: pg_basebackup is being started (setpriv execs it)
            self._unreadable = self._unreadable or time.monotonic()
            if time.monotonic() - self._unreadable > UNREADABLE_FOR:
                raise PgdrError(
                    f"cannot see which files pg_basebackup has open (/proc/{pid}/fd: permission denied): "
                    "run pgdr as the user pg_basebackup runs as"
                )
            held = {f.identity for f in followers}  # nothing is released on a look that saw nothing
        else:
            self._unreadable = 0.0
        for follower in followers:
            follower.released = follower.released + 1 if follower.identity not in held else 0
            if follower.released >= 2:
                follower.complete()
            elif not follower.is_alive() and follower.behind():
                raise PgdrError(
                    f"{follower.archive} grew after pgdr had read it to the end: the backup was not listed; retry it"
                )
        if self._spill:
            behind = sum(f.behind() for f in followers)
            if self._paused is None and behind > AHEAD_LIMIT:
                os.kill(pid, signal.SIGSTOP)
                self._paused = pid
            elif self._paused is not None and behind < AHEAD_LIMIT // 2:
                self._resume()

    def _resume(self) -> None:
        if self._paused is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._paused, signal.SIGCONT)
            self._paused = None

    def finish(
        self, expected: list[str], name: str, on_progress: ProgressCallback, cancel: threading.Event | None
    ) -> dict[str, FanOut]:
        """pg_basebackup has exited 0: every archive is complete; read the rest of each."""
        followers = self._discover()
        written = sorted(self._followers)
        if written != sorted(expected):
            raise PgdrError(
                f"pg_basebackup wrote {', '.join(written) or 'no archive'} where pgdr expected "
                f"{', '.join(expected)}: a tablespace was created or dropped during the backup; "
                "the backup was not listed; retry it"
            )
        for follower in followers:
            follower.complete()
        return {archive: self._followers[archive].finish(name, on_progress, cancel) for archive in expected}

    def abort(self) -> None:
        self._resume()
        for follower in self._followers.values():
            follower.abort()


def _held_open(pid: int) -> set[tuple[int, int]] | None:
    """The files (device, inode) process ``pid`` has open; None when they cannot be read just now.

    While a process execs, the kernel refuses its descriptors even to their owner (it may be
    gaining privileges): the look after a process was started can meet that.
    """
    held = set()
    fds = f"/proc/{pid}/fd"
    try:
        names = os.listdir(fds)
    except PermissionError:
        return None
    except OSError as exc:
        raise PgdrError(f"cannot see which files pg_basebackup has open ({fds}: {exc.strerror})") from None
    for fd in names:
        with contextlib.suppress(OSError):  # closed meanwhile
            st = os.stat(f"{fds}/{fd}")
            held.add((st.st_dev, st.st_ino))
    return held


_libc = ctypes.CDLL(None, use_errno=True)


def _punch(fd: int, length: int) -> bool:
    """Give the first ``length`` bytes of ``fd`` back to the file system (its size stays); False if it cannot."""
    return int(_libc.fallocate(fd, _PUNCH_HOLE, ctypes.c_int64(0), ctypes.c_int64(length))) == 0


class _Follower(threading.Thread):
    """Reads an archive while pg_basebackup appends to it: every byte hashed, and copied to ``repos``, once.

    pg_basebackup only appends to an archive (it never seeks back), so what the follower has read
    when the archive is complete and gives no more is exactly what is stored. With ``punch``, what
    it has read is given back to the file system (a scratch copy, no longer needed).
    """

    def __init__(self, folder: int, archive: str, repos: Sequence[Repository], key: str, *, punch: bool) -> None:
        super().__init__(name=f"pgdr-backup-{archive}", daemon=True)
        self._folder, self.archive, self._repos, self._key, self._punch = folder, archive, repos, key, punch
        access = os.O_RDWR if punch else os.O_RDONLY  # fallocate needs a descriptor open for writing
        self._fd = os.open(archive, access | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=folder)
        st = os.fstat(self._fd)
        self.identity = (st.st_dev, st.st_ino)
        self.released = 0  # looks in a row that found it not held open by pg_basebackup
        self._complete = threading.Event()  # pg_basebackup has closed it (or the backup failed): wake up
        self._aborted = threading.Event()
        self._sink: FanOut | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        punched = 0
        try:
            with fan_out(self._repos, self._key) as sink, io.FileIO(self._fd, "rb", closefd=False) as stored:
                self._sink = sink
                while True:
                    complete = self._complete.is_set()
                    if self._aborted.is_set():
                        raise PgdrError(f"the backup failed: the copy of {self.archive} was abandoned")
                    if chunk := stored.read(CHUNK):
                        sink.write(chunk)
                        if self._punch and sink.size - punched >= PUNCH_STEP:
                            self._punch = _punch(self._fd, sink.size)
                            punched = sink.size
                    elif complete:
                        break
                    else:
                        self._complete.wait(POLL)
        except BaseException as exc:
            self.error = exc

    @property
    def copied(self) -> int:
        return self._sink.size if self._sink is not None else 0

    def size(self) -> int:
        return os.fstat(self._fd).st_size

    def behind(self) -> int:
        """How many bytes pg_basebackup has written that are not uploaded yet."""
        return max(0, self.size() - self.copied)

    def complete(self) -> None:
        self._complete.set()

    def finish(self, name: str, on_progress: ProgressCallback, cancel: threading.Event | None) -> FanOut:
        """The archive is complete: copy the rest; its size and sha256 are what is stored."""
        self._complete.set()
        try:
            while self.is_alive():
                self.join(POLL)
                check_cancel(cancel, f"backup {name}")
                on_progress(Progress("upload", self.copied, self.size(), f"{name}: uploading {self.archive}"))
            if self.error is not None:
                raise self.error
            assert self._sink is not None
            stored_size = self.size()
            if self._sink.size != stored_size:
                raise PgdrError(
                    f"{self.archive} is {stored_size} bytes but {self._sink.size} were read while it was written: "
                    "the backup was not listed; retry it"
                )
            return self._sink
        finally:
            self._close()

    def abort(self) -> None:
        self._aborted.set()
        self._complete.set()  # wakes it
        if self.is_alive():
            self.join()
        self._close()

    def _close(self) -> None:
        if self._fd >= 0 and not self.is_alive():
            os.close(self._fd)
            self._fd = -1
