"""``pgdr wal-push %p``: PostgreSQL's archive_command.

Exit 0 means the file is durably stored in every repository ``archive.sync`` names; anything less is
a non-zero exit and PostgreSQL keeps the segment and retries. Repositories outside ``archive.sync``
get a queue entry, written before the acknowledgement, that ``pgdr wal-upload`` drains.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
from dataclasses import dataclass
from pathlib import Path

from backend.archive import queue
from backend.archive.walfile import WalObject, checksum, encode, identity_of, store
from backend.config import Config
from backend.errors import PgdrError
from backend.repository import Repository, open_repository
from backend.walnames import WalKind, wal_kind

#: The queue target that builds the WAL index; not a repository.
#: Files up to this size are read into a buffer each thread keeps (see read_wal).
REUSED_BUFFER_MAX = 64 << 20
_buffers = threading.local()


@dataclass(frozen=True)
class PushResult:
    filename: str
    stored: list[str]
    already_archived: list[str]
    queued: list[str]


def push(
    cfg: Config,
    wal_path: str | os.PathLike[str],
    *,
    ahead: bool = True,
    repositories: dict[str, Repository] | None = None,
) -> PushResult:
    """Store one WAL file; with ``ahead``, also start pushing the segments queued behind it.

    ``repositories`` keeps the repositories opened across calls: the push server passes the same dict
    to every push, so S3's client is built once rather than per segment.
    """
    path = Path(wal_path)
    filename = path.name
    try:
        kind = wal_kind(filename)
    except ValueError as exc:
        raise PgdrError(str(exc)) from None
    pushing_ahead = ahead and kind is WalKind.SEGMENT and cfg.archive.push_ahead > 0
    if pushing_ahead and _spool_confirms(cfg, path):
        return PushResult(filename, [], list(cfg.sync_repositories), [])
    try:
        data = read_wal(path)
    except OSError as exc:
        raise PgdrError(f"cannot read {path}: {exc.strerror} (archive_command runs in the data directory)") from None
    data_dir = Path(cfg.postgres.data_dir) if cfg.postgres.data_dir else Path.cwd()
    identity = identity_of(data, kind, filename, data_dir)
    obj, blob = _checksum_and_encode(data, filename, cfg)

    opened = open_sync_repositories(cfg, {} if repositories is None else repositories)
    stored, already = [], []
    for name in cfg.sync_repositories:
        repo = opened[name]
        if store(repo, obj, blob, identity, cfg.cluster.name):
            stored.append(name)
        else:
            already.append(name)

    queued = [name for name in cfg.repository_names if name not in cfg.sync_repositories]
    if cfg.local.path and kind is WalKind.SEGMENT:
        queued.append(queue.INDEX_TARGET)  # commit times, restore points, drops: built in the background
    if queued:
        for name in queued:
            queue.enqueue(cfg, name, filename)
        queue.ensure_uploader(cfg, queued)
    if pushing_ahead:
        _spool_kick(cfg, path)
    return PushResult(filename, stored, already, queued)


def _spool_confirms(cfg: Config, path: Path) -> bool:
    """The push-ahead fast path; any trouble with the spool just means "push it the normal way"."""
    from backend.archive import spool

    try:
        if spool.confirm(cfg, path):
            _spool_kick(cfg, path)
            return True
    except OSError:
        pass
    return False


def _spool_kick(cfg: Config, path: Path) -> None:
    """Start the background pusher; failing to start it must never fail the push that was stored."""
    from backend.archive import spool

    with contextlib.suppress(OSError):
        spool.kick(cfg, path)


def open_sync_repositories(cfg: Config, opened: dict[str, Repository]) -> dict[str, Repository]:
    """``opened`` with every ``archive.sync`` repository in it, opening those it lacks (kept across pushes)."""
    for name in cfg.sync_repositories:
        if name not in opened:
            opened[name] = open_repository(cfg, name)
    return opened


def read_wal(path: Path) -> memoryview:
    """The whole file, in this thread's buffer: valid until the thread's next push.

    In the push server a fresh 16 MB bytes object per segment costs about 6 ms of page faults (the
    allocator hands the memory back between requests), a sixth of the push; a buffer kept per
    thread is faulted in once. Larger files (a 1 GB wal_segment_size) get a buffer of their own."""
    with open(path, "rb", buffering=0) as fh:
        size = os.fstat(fh.fileno()).st_size
        buffer: bytearray | None = getattr(_buffers, "buffer", None)
        if buffer is None or len(buffer) < size + 1:
            buffer = bytearray(size + 1)  # one byte more: a file that grew since the stat fills it
            if size < REUSED_BUFFER_MAX:
                _buffers.buffer = buffer
        view = memoryview(buffer)
        filled = 0
        while filled < len(buffer):
            n = fh.readinto(view[filled:])
            if not n:
                break
            filled += n
        if filled == len(buffer):
            return memoryview(bytes(view) + fh.read())
        return view[:filled]


def _checksum_and_encode(data: memoryview, filename: str, cfg: Config) -> tuple[WalObject, bytes]:
    """sha256 in a second thread while zstd compresses: both release the GIL on large buffers."""
    if cfg.archive.compression == "none":
        raw = bytes(data)  # stored as it is: it must outlive this thread's buffer
        return WalObject(filename, checksum(raw), "none"), raw
    if len(data) < 1 << 20:
        return WalObject(filename, checksum(data), cfg.archive.compression), encode(
            data, cfg.archive.compression, cfg.archive.compression_level
        )
    digest: list[str] = []
    hasher = threading.Thread(target=lambda: digest.append(checksum(data)))
    hasher.start()
    blob = encode(data, cfg.archive.compression, cfg.archive.compression_level)
    hasher.join()
    return WalObject(filename, digest[0], cfg.archive.compression), blob


def push_ahead(cfg: Config, pg_wal: Path, after: str = "") -> list[str]:
    """Store waiting segments (past ``after``, which the archiver has in hand) until none is left."""
    from concurrent.futures import ThreadPoolExecutor

    from backend import faults
    from backend.archive import spool

    folder = spool.spool_dir(cfg)
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(folder / spool.PUSHER_LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    stored: list[str] = []
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return stored
        spool.forget_stale_notes(folder, pg_wal)

        failed: set[str] = set()

        def one(name: str) -> str | None:
            path = pg_wal / name
            try:
                push(cfg, path, ahead=False)
            except PgdrError:
                failed.add(name)  # gone (archived meanwhile) or unwritable: the archiver's own push decides
                return None
            faults.point("spool-stored")
            spool.write_note(cfg, folder, path)  # only now, with the segment durable everywhere it must be
            return name

        with ThreadPoolExecutor(max_workers=max(1, cfg.archive.workers)) as pool:
            while True:
                todo = [
                    n
                    for n in spool.ready_segments(pg_wal)
                    if n > after and n not in failed and not (folder / (n + spool.NOTE)).exists()
                ]
                if not todo:
                    break
                stored += [n for n in pool.map(one, todo[: cfg.archive.push_ahead]) if n]
    finally:
        os.close(fd)
    return stored
