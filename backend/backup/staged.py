"""The fast path of ``pgdr backup``: PostgreSQL compresses, pg_basebackup writes into the local repository.

The streaming path pipes an uncompressed tar through pgdr and compresses it in Python, so the whole
database crosses a pipe and one process does the work. With a local repository that stores objects
as given (not encrypted) and PostgreSQL 15 or later, pgdr instead asks the server to compress with
zstd on every core (``--compress=server-zstd``) and lets pg_basebackup write ``base.tar.zst`` and
PostgreSQL's ``backup_manifest`` into a staging folder inside the local repository, on the same file
system as the backup's folder. While the file grows, pgdr reads it back from the page cache once, to
hash the stored bytes and to upload them to the other repositories (S3): no second copy, no raw
bytes in Python, memory flat whatever the database's size.

The sha256 recorded is that of the stored bytes; the original (uncompressed) bytes' sha256 is not
recorded (``raw_sha256`` is ""): restore and verify check the stored bytes, the zstd stream, and
``pg_verifybackup`` checks every file against PostgreSQL's ``backup_manifest``.

Run as root into a repository another user (postgres) owns, pg_basebackup writes as root: its
staging folder stays root's (mode 0700), so that owner cannot plant a link for pg_basebackup to
write through, and pg_basebackup is given the folder as ``/proc/<pgdr>/fd/<n>``, the descriptor
pgdr opened it with, so renaming the folder or putting a link in its place changes nothing. The tar
is handed to the repository's owner with ``fchown`` on a descriptor, then renamed between folder
descriptors: no path the owner could swap is ever followed.

Durability and crash safety: pg_basebackup fsyncs what it wrote before it exits 0; the tar is then
renamed into ``backups/<name>/`` and that folder fsynced; the caller writes the manifest last. The
staging folder is hidden (``backups/.tmp.staging.<name>``): no listing shows it, so nothing can take
it for a backup, and a run killed at any point leaves it (and at most a folder without a manifest)
for the next backup to remove (a root-owned staging folder: the next one run as root).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import threading
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

STAGING_PREFIX = f"{TEMP_PREFIX}staging."
#: How often pgdr looks at pg_basebackup and at the growing file (seconds).
POLL = 0.05
CHUNK = 1 << 20
#: server-side zstd came with PostgreSQL 15.
SERVER_ZSTD = 150000


def staging_repository(repos: Sequence[Repository], info: ServerInfo) -> LocalRepository | None:
    """The local repository when the server-compressed path can write into it, else None."""
    if info.version_num < SERVER_ZSTD:
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
    local: LocalRepository,
    repos: Sequence[Repository],
    info: ServerInfo,
    name: str,
    estimate: int | None,
    on_progress: ProgressCallback,
    cancel: threading.Event | None,
) -> tuple[StoredObject, bytes]:
    """Back up into ``local`` (and, from its copy, the other ``repos``): the tar's record and backup_manifest.

    backup_manifest is returned, not stored: the caller stores it in every repository.
    """
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
            staging = Path(f"/proc/{os.getpid()}/fd/{folder}")
            others = [r for r in repos if r is not local]
            tar = _run(
                cfg, info, name, staging, others=others, estimate=estimate, on_progress=on_progress, cancel=cancel
            )
            unexpected = sorted(set(os.listdir(folder)) - {pgbasebackup.TAR_OBJECT, pgbasebackup.MANIFEST})
            if unexpected:
                raise PgdrError(
                    f"pg_basebackup wrote {', '.join(unexpected)} besides {pgbasebackup.TAR_OBJECT}: the cluster has "
                    "tablespaces outside its data directory, which pgdr does not back up; the backup was not listed"
                )
            pg_manifest = (staging / pgbasebackup.MANIFEST).read_bytes()
            _store(local, folder, local.root / BACKUPS_PREFIX / name)
            faults.point("backup-mid-upload")
        finally:
            os.close(folder)
            shutil.rmtree(f"{STAGING_PREFIX}{name}", dir_fd=backups, ignore_errors=True)
    finally:
        os.close(backups)
    data_bytes = sum(int(f.get("Size", 0)) for f in _files(pg_manifest))
    return StoredObject(pgbasebackup.TAR_OBJECT, tar.size, tar.sha256, data_bytes, "", "zstd"), pg_manifest


def _store(local: LocalRepository, staging: int, folder: Path) -> None:
    """Move the tar from the staging folder into the backup's, given to the repository's owner."""
    tar = os.open(pgbasebackup.TAR_OBJECT, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=staging)
    try:
        local.give(tar)
    finally:
        os.close(tar)
    target = local.open_folder(folder)
    try:
        os.rename(pgbasebackup.TAR_OBJECT, pgbasebackup.TAR_OBJECT, src_dir_fd=staging, dst_dir_fd=target)
        os.fsync(target)
    finally:
        os.close(target)


def _files(pg_manifest: bytes) -> list[dict[str, Any]]:
    return list(json.loads(pg_manifest).get("Files", []))


def _run(
    cfg: Config,
    info: ServerInfo,
    name: str,
    staging: Path,
    *,
    others: Sequence[Repository],
    estimate: int | None,
    on_progress: ProgressCallback,
    cancel: threading.Event | None,
) -> FanOut:
    """pg_basebackup into ``staging`` while a follower hashes (and uploads) the tar as it grows."""
    argv = [
        *pgbasebackup.base_argv(cfg, info, name),
        f"--pgdata={staging}",
        f"--compress=server-zstd:level={cfg.backup.compression_level},workers={os.cpu_count() or 1}",
        "--progress",
    ]
    on_progress(Progress("backup", 0, estimate, f"starting {name}"))
    follower = _Follower(staging / pgbasebackup.TAR_OBJECT, others, f"{BACKUPS_PREFIX}{name}/{pgbasebackup.TAR_OBJECT}")
    proc, stderr = pgbasebackup.start(argv, libpq_env(cfg), stdout=subprocess.DEVNULL)
    try:
        follower.start()
        while True:
            try:
                proc.wait(POLL)
                break
            except subprocess.TimeoutExpired:
                pass
            check_cancel(cancel, f"backup {name}")
            faults.point("backup-during-pg-basebackup")
            if follower.error is not None:
                raise follower.error
            on_progress(Progress("backup", stderr.done_bytes, stderr.total_bytes or estimate, f"{name}: streaming"))
        if proc.returncode != 0:
            raise stderr.failure(proc.returncode)
        stderr.join()
        return follower.finish(name, on_progress, cancel)
    except BaseException:
        pgbasebackup.stop(proc)
        follower.abort()
        raise


class _Follower(threading.Thread):
    """Reads a file while pg_basebackup appends to it: every byte hashed, and copied to ``repos``, once.

    pg_basebackup only appends to its tar (it never seeks back), so what the follower has read when
    pg_basebackup has exited and the file gives no more is exactly what is stored.
    """

    def __init__(self, path: Path, repos: Sequence[Repository], key: str) -> None:
        super().__init__(name="pgdr-backup-follower", daemon=True)
        self._path, self._repos, self._key = path, repos, key
        self._exited = threading.Event()  # pg_basebackup exited 0 (or the backup failed): wake up
        self._aborted = threading.Event()
        self._sink: FanOut | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with fan_out(self._repos, self._key) as sink, self._open() as stored:
                self._sink = sink
                while True:
                    complete = self._exited.is_set()
                    if self._aborted.is_set():
                        raise PgdrError("the backup failed: the copy of its tar was abandoned")
                    if chunk := stored.read(CHUNK):
                        sink.write(chunk)
                    elif complete:
                        break
                    else:
                        self._exited.wait(POLL)
        except BaseException as exc:
            self.error = exc

    def _open(self) -> io.FileIO:
        """The tar, once pg_basebackup has created it (after the checkpoint)."""
        while True:
            complete = self._exited.is_set()
            if self._aborted.is_set():
                raise PgdrError("the backup failed before its tar was written")
            with contextlib.suppress(FileNotFoundError):
                return io.FileIO(self._path, "rb")
            if complete:
                raise PgdrError(f"pg_basebackup exited without writing {self._path.name}")
            self._exited.wait(POLL)

    @property
    def copied(self) -> int:
        return self._sink.size if self._sink is not None else 0

    def finish(self, name: str, on_progress: ProgressCallback, cancel: threading.Event | None) -> FanOut:
        """pg_basebackup has exited 0: copy the rest of the tar; its size and sha256 are what is stored."""
        self._exited.set()
        while self.is_alive():
            self.join(POLL)
            check_cancel(cancel, f"backup {name}")
            on_progress(Progress("upload", self.copied, self._path.stat().st_size, f"{name}: uploading"))
        if self.error is not None:
            raise self.error
        assert self._sink is not None
        stored_size = self._path.stat().st_size
        if self._sink.size != stored_size:
            raise PgdrError(
                f"{self._path.name} is {stored_size} bytes but {self._sink.size} were read while it was written: "
                "the backup was not listed; retry it"
            )
        return self._sink

    def abort(self) -> None:
        self._aborted.set()
        self._exited.set()  # wakes it
        if self.is_alive():
            self.join()
