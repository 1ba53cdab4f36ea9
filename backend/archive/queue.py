"""The queue of WAL files still owed to repositories that ``wal-push`` does not wait for.

An entry is an empty file ``queue/<repository>/<wal file name>`` in the local repository, written
durably before ``wal-push`` acknowledges, so a crash of the uploader loses nothing: the next one
finds the entry and copies the file from a repository that has it. One uploader runs per target,
held by an flock; ``wal-push`` starts one when none holds the lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator

from backend.archive.push import INDEX_TARGET, store
from backend.archive.walfile import find_archived
from backend.config import Config
from backend.errors import PgdrError
from backend.repository import open_repository, read_identity
from backend.repository.local import LocalRepository
from backend.spawn import spawn_pgdr
from backend.walnames import DEFAULT_SEGMENT_SIZE

QUEUE_PREFIX = "queue/"


def _local(cfg: Config) -> LocalRepository:
    if not cfg.local.path:
        raise PgdrError(
            "an upload queue needs a local repository: set [local] path, or list every repository in archive.sync"
        )
    return LocalRepository(cfg.local.path, cfg.cluster.name)


def enqueue(cfg: Config, target: str, filename: str) -> None:
    _local(cfg).put(f"{QUEUE_PREFIX}{target}/{filename}", b"")


def pending(cfg: Config, target: str) -> list[str]:
    prefix = f"{QUEUE_PREFIX}{target}/"
    return [info.key[len(prefix) :] for info in _local(cfg).list(prefix)]


@contextlib.contextmanager
def uploader_lock(cfg: Config, target: str, *, wait: bool) -> Iterator[bool]:
    """Held by the one uploader of ``target``; yields False when ``wait`` is off and it is taken."""
    fd = _local(cfg).lock_file(f"queue/.{target}.lock")
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


def ensure_uploader(cfg: Config, targets: list[str]) -> None:
    """Start a detached ``pgdr wal-upload`` for each target no uploader is working on."""
    for target in targets:
        with uploader_lock(cfg, target, wait=False) as free:
            if not free:
                continue
        spawn_pgdr(cfg, "wal-upload", "--repo", target, "--quiet", "--background")


def drain(cfg: Config, target: str, *, wait: bool = True) -> list[str]:
    """Copy every queued file to ``target``; returns what was uploaded.

    After letting go of the lock it looks once more, so an entry written by a ``wal-push`` that saw
    the lock still held is never left behind.
    """
    uploaded: list[str] = []
    while True:
        with uploader_lock(cfg, target, wait=wait) as held:
            if not held:
                return uploaded
            while batch := pending(cfg, target):
                for filename in batch:
                    _upload_one(cfg, target, filename)
                    uploaded.append(filename)
        if not pending(cfg, target):
            return uploaded


def _upload_one(cfg: Config, target: str, filename: str) -> None:
    local = open_repository(cfg, "local")
    if target == INDEX_TARGET:
        from backend.archive.index import index_one
        from backend.repository import open_repositories

        repos = open_repositories(cfg)
        identity = read_identity(local)
        # A failure leaves it unindexed: the next timeline read indexes it (and verify names a bad segment).
        with contextlib.suppress(PgdrError):
            index_one(cfg, repos, filename, identity.segment_size if identity else DEFAULT_SEGMENT_SIZE)
        local.delete([f"{QUEUE_PREFIX}{target}/{filename}"])
        return
    dest = open_repository(cfg, target) if target != "local" else local
    sources = [open_repository(cfg, name) for name in cfg.repository_names if name != target]
    for source in sources:
        found = find_archived(source, filename)
        if not found:
            continue
        store(dest, found[0], source.get(found[0].key), read_identity(source), cfg.cluster.name)
        break
    else:
        raise PgdrError(f"{filename} is queued for the {target} repository but no other repository holds it")
    local.delete([f"{QUEUE_PREFIX}{target}/{filename}"])
