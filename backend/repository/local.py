"""A repository in a local directory (a disk, an NFS mount, a Docker volume).

Durability: data goes to a hidden temporary file in the target folder, is fsynced, renamed over the
real name and the folder is fsynced, so after ``put`` returns the object survives a power cut and a
crash before that leaves only a temporary file, which readers never see.

When pgdr runs as root, new files and folders are handed to the owner of the repository root, so a
root-run ``pgdr backup`` never leaves anything PostgreSQL's archive_command (running as postgres)
cannot write next to. That owner can change the repository while root writes into it, so root never
writes through a link there: folders are opened one component at a time with ``O_NOFOLLOW``, files
are created and renamed relative to their folder's descriptor, and ownership is given with
``fchown`` on the descriptor that was written, never by a path that could have been swapped for a
link. An object that is itself a link is not read either.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

from backend import faults
from backend.durable import fsync_dir
from backend.errors import ObjectNotFound, RepositoryError
from backend.repository.base import ObjectInfo, Repository

TEMP_PREFIX = ".tmp."
#: Folders whose emptied subfolders are removed: nothing writes into an emptied one again (expired
#: backups and old WAL). Not queue/ or locks/, where a writer may be creating the folder right now.
PRUNABLE = frozenset({"backups", "wal", "walindex", "verify"})
#: How a folder inside the repository is opened: never through a link the repository's owner made.
FOLDER_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class LocalRepository(Repository):
    name = "local"

    def __init__(self, path: str | os.PathLike[str], cluster: str) -> None:
        self.base = Path(path)
        self.root = self.base / cluster
        self._owner: tuple[int, int] | None = None
        if os.geteuid() == 0 and self.base.exists():
            st = self.base.stat()
            if st.st_uid != 0:
                self._owner = (st.st_uid, st.st_gid)

    def location(self) -> str:
        return str(self.root)

    def local_root(self) -> Path:
        return self.root

    def _path(self, key: str) -> Path:
        if not key or key.startswith("/") or ".." in key.split("/"):
            raise RepositoryError(f"invalid object key {key!r}")
        return self.root / key

    def lock_file(self, key: str) -> int:
        """Open (creating) a lock file below the root, usable by whoever owns the repository."""
        path = self._path(key)
        folder = self.open_folder(path.parent)
        try:
            fd = os.open(path.name, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=folder)
        except OSError as exc:
            raise _refused(path, "open", exc) from None
        finally:
            os.close(folder)
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
            os.close(fd)  # a hard link to another file, whose content the lock's holder line would replace
            raise RepositoryError(
                f"{path} is not a plain lock file (a hard link or a special file): remove it and retry"
            )
        self.give(fd)
        return fd

    def open_folder(self, folder: Path) -> int:
        """A descriptor of ``folder`` (below the repository), created with its parents (mode 0700) when missing.

        Each component is opened relative to the one before with ``O_NOFOLLOW``: a link the
        repository's owner put anywhere on the way is refused, not followed out of the repository.
        """
        if not self.base.exists():
            try:
                os.makedirs(self.base, mode=0o700, exist_ok=True)
            except OSError as exc:
                raise _refused(self.base, "create", exc) from None
        fd = os.open(self.base, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)  # the configured path: links allowed
        here = self.base
        for name in folder.relative_to(self.base).parts:
            here = here / name
            try:
                child = self._child_folder(fd, name, here)
            finally:
                os.close(fd)
            fd = child
        return fd

    def _child_folder(self, parent: int, name: str, path: Path) -> int:
        """Open folder ``name`` of ``parent``, creating it (given to the owner, parent fsynced) when missing."""
        try:
            try:
                return os.open(name, FOLDER_FLAGS, dir_fd=parent)
            except FileNotFoundError:
                pass
            with contextlib.suppress(FileExistsError):  # another writer may create it first
                os.mkdir(name, 0o700, dir_fd=parent)
            child = os.open(name, FOLDER_FLAGS, dir_fd=parent)
            self.give(child)
            os.fsync(parent)
            return child
        except OSError as exc:
            raise _refused(path, "create", exc) from None

    def give(self, fd: int) -> None:
        """Hand what ``fd`` is open on to the repository's owner (when root writes into another's repository)."""
        if self._owner is not None:
            os.fchown(fd, *self._owner)

    def put(self, key: str, data: bytes) -> None:
        with self.writer(key) as out:
            out.write(data)

    @contextlib.contextmanager
    def writer(self, key: str) -> Iterator[BinaryIO]:
        target = self._path(key)
        folder = self.open_folder(target.parent)
        temp = f"{TEMP_PREFIX}{target.name}.{os.getpid()}.{secrets.token_hex(4)}"
        try:
            try:
                fd = os.open(
                    temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=folder
                )
            except OSError as exc:
                raise RepositoryError(f"cannot write {target} in the local repository: {exc.strerror}") from exc
            try:
                with os.fdopen(fd, "wb", buffering=1 << 20) as out:
                    yield out
                    out.flush()
                    self.give(out.fileno())
                    os.fsync(out.fileno())
                os.rename(temp, target.name, src_dir_fd=folder, dst_dir_fd=folder)
                os.fsync(folder)
            except OSError as exc:
                _unlink(temp, folder)
                raise RepositoryError(f"cannot write {target} in the local repository: {exc.strerror}") from exc
            except BaseException:
                _unlink(temp, folder)
                raise
        finally:
            os.close(folder)

    def get(self, key: str) -> bytes:
        with self.open(key) as fh:
            return fh.read()

    @contextlib.contextmanager
    def open(self, key: str) -> Iterator[BinaryIO]:
        path = self._path(key)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            raise ObjectNotFound(f"{key} is not in the local repository {self.root}") from None
        except OSError as exc:
            raise _refused(path, "read", exc) from exc
        with os.fdopen(fd, "rb") as fh:
            yield fh

    def list(self, prefix: str = "", *, start_after: str = "") -> Iterator[ObjectInfo]:
        """Walk only the folders that can hold keys with ``prefix`` (after ``start_after``), in key order."""
        folder, _, _ = prefix.rpartition("/")
        start = self.root / folder if folder else self.root
        yield from self._walk(start, f"{folder}/" if folder else "", prefix, start_after)

    def folders(self, prefix: str) -> tuple[str, ...]:
        try:
            entries = list(os.scandir(self._path(prefix.rstrip("/")) if prefix else self.root))
        except (FileNotFoundError, NotADirectoryError):
            return ()
        except OSError as exc:
            raise RepositoryError(f"cannot list {self.root / prefix}: {exc.strerror}") from exc
        # In key order: a folder's keys sort as "name/...".
        names = (e.name for e in entries if not e.name.startswith(".") and e.is_dir(follow_symlinks=False))
        return tuple(sorted(names, key=lambda n: n + "/"))

    def _walk(self, folder: Path, rel: str, prefix: str, after: str) -> Iterator[ObjectInfo]:
        try:
            # A folder sorts as "name/": its keys come after "name-x" and "name.x", as in S3's key order.
            entries = sorted(
                os.scandir(folder), key=lambda e: e.name + "/" if e.is_dir(follow_symlinks=False) else e.name
            )
        except (FileNotFoundError, NotADirectoryError):
            return
        except OSError as exc:
            raise RepositoryError(f"cannot list {folder}: {exc.strerror}") from exc
        for entry in entries:
            if entry.name.startswith("."):
                continue
            key = rel + entry.name
            if entry.is_dir(follow_symlinks=False):
                inside = key + "/"
                if after > inside and not after.startswith(inside):
                    continue  # every key in it sorts before ``after``
                if prefix.startswith(inside) or key.startswith(prefix) or inside.startswith(prefix):
                    yield from self._walk(Path(entry.path), inside, prefix, after)
            elif key.startswith(prefix) and key > after:
                try:
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue  # removed since the folder was read (a queue entry uploaded): not there now
                yield ObjectInfo(key, st.st_size, datetime.fromtimestamp(st.st_mtime, UTC))

    def cleanup_temporary(self, prefix: str) -> int:
        removed = 0
        base = self.root / prefix
        if not base.is_dir():
            return 0
        for folder, _, files in os.walk(base):
            for name in files:
                if name.startswith(TEMP_PREFIX):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(os.path.join(folder, name))
                        removed += 1
        return removed

    def delete(self, keys: Iterable[str]) -> None:
        faults.point("repository-delete")  # expire, holding the lock, about to remove what it planned
        folders: dict[Path, bool] = {}
        for key in keys:
            path = self._path(key)
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                folders[path.parent] = key.split("/", 1)[0] in PRUNABLE
        for folder in sorted(folders, key=lambda f: len(f.parts), reverse=True):
            fsync_dir(folder)
            if folders[folder]:
                self._prune(folder)

    def _prune(self, folder: Path) -> None:
        """Remove folders a delete left empty (an expired backup's), up to the cluster root."""
        while folder != self.root and self.root in folder.parents:
            try:
                folder.rmdir()
            except OSError:
                return  # not empty (or busy): it still holds objects
            fsync_dir(folder.parent)
            folder = folder.parent


def _refused(path: Path, action: str, exc: OSError) -> RepositoryError:
    if exc.errno == errno.ELOOP or (exc.errno == errno.ENOTDIR and path.is_symlink()):  # O_NOFOLLOW met a link
        return RepositoryError(
            f"{path} in the local repository is a symbolic link: pgdr follows none there; "
            "replace it with the folder or file it points to"
        )
    return RepositoryError(f"cannot {action} {path} in the local repository: {exc.strerror}")


def _unlink(name: str, folder: int) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(name, dir_fd=folder)
