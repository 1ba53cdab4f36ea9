"""Pushing ahead: archive the next ``.ready`` segments in parallel before PostgreSQL asks for them.

PostgreSQL's archiver calls ``archive_command`` for one segment at a time and waits. When WAL comes
faster than one push, the ``.ready`` files pile up in ``pg_wal/archive_status``. With the push server
off (``[archive] server = false``; the server pushes ahead itself, see pushahead.py), after each push pgdr
starts (at most one) background pusher that stores the next ``archive.push_ahead`` segments with
``archive.workers`` threads, exactly as ``wal-push`` would (durably, in every ``archive.sync``
repository), and only then leaves a ``<segment>.ok`` note in the spool. When the archiver then asks
for that segment, ``wal-push`` finds the note, checks it describes this very file (size and cluster
system identifier from the segment header) and answers at once. A note is written only after the
segment is durably stored, so every acknowledgement still means "stored"; a crash of the pusher
loses nothing, since an unstored segment simply has no note and is pushed the normal way.

The spool lives in the state dir of the user running the server (outside the data directory, so no
base backup carries it into a restored cluster).
"""

from __future__ import annotations

import fcntl
import json
import os
import struct
from pathlib import Path
from typing import TYPE_CHECKING

from backend.spawn import spawn_pgdr
from backend.statedir import state_base
from backend.walnames import SEGMENT_RE

if TYPE_CHECKING:
    from backend.config import Config


_HEADER = struct.Struct("<HHIQI4xQ")
NOTE = ".ok"
#: Held by the one background pusher (``backend.archive.push.push_ahead``) while it works.
PUSHER_LOCK = ".pusher.lock"


def spool_dir(cfg: Config) -> Path:
    if cfg.archive.spool_path:
        return Path(cfg.archive.spool_path) / cfg.cluster.name
    return Path(state_base()) / "spool" / cfg.cluster.name


def _system_identifier(path: Path) -> int | None:
    try:
        with path.open("rb") as fh:
            head = fh.read(_HEADER.size)
    except OSError:
        return None
    if len(head) < _HEADER.size:
        return None
    return int(_HEADER.unpack(head)[5])


def confirm(cfg: Config, wal_path: Path) -> bool:
    """True when the pusher already stored exactly this file; the note is consumed."""
    note = spool_dir(cfg) / (wal_path.name + NOTE)
    try:
        recorded = json.loads(note.read_text())
    except (OSError, ValueError):
        return False
    if recorded != _describe(cfg, wal_path):
        note.unlink(missing_ok=True)  # stale: another file of that name; push it the normal way
        return False
    note.unlink(missing_ok=True)
    return True


def _describe(cfg: Config, path: Path) -> dict[str, object] | None:
    """What a note vouches for: this very file (where it is, its size, its cluster) stored where this
    config sends WAL. The spool is shared by everything the user archives under one cluster name, so
    a copy of the cluster (same system identifier) archiving elsewhere, or a config pointed at other
    repositories, must never take another's note for its own segment."""
    try:
        size = path.stat().st_size
    except OSError:
        return None
    return {
        "path": os.path.abspath(path),
        "size": size,
        "system_identifier": _system_identifier(path),
        "destination": [
            cfg.sync_repositories,
            cfg.local.path,
            [cfg.s3.endpoint_url, cfg.s3.bucket, cfg.s3.prefix],
        ],
    }


def ready_segments(pg_wal: Path) -> list[str]:
    status = pg_wal / "archive_status"
    try:
        names = [n[: -len(".ready")] for n in os.listdir(status) if n.endswith(".ready")]
    except OSError:
        return []
    return sorted(n for n in names if SEGMENT_RE.match(n))


def kick(cfg: Config, wal_path: Path) -> None:
    """Start a background pusher when segments are waiting and none is running."""
    if cfg.archive.push_ahead <= 0:
        return
    pg_wal = wal_path.absolute().parent
    waiting = [n for n in ready_segments(pg_wal) if n > wal_path.name]
    if not waiting:
        return
    folder = spool_dir(cfg)
    if all((folder / (n + NOTE)).exists() for n in waiting[: cfg.archive.push_ahead]):
        return
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(folder / PUSHER_LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return  # a pusher is at work; it looks for new .ready files before it exits
    finally:
        os.close(fd)
    spawn_pgdr(cfg, "wal-spool", str(pg_wal), "--after", wal_path.name, cwd=pg_wal.parent)


def write_note(cfg: Config, folder: Path, path: Path) -> None:
    note = folder / (path.name + NOTE)
    temp = folder / f".{path.name}.{os.getpid()}"
    temp.write_text(json.dumps(_describe(cfg, path)))
    os.rename(temp, note)


def forget_stale_notes(folder: Path, pg_wal: Path) -> None:
    """Notes for segments PostgreSQL no longer has (archived by another path, or recycled) go."""
    ready = set(ready_segments(pg_wal))
    for entry in os.listdir(folder):
        if entry.endswith(NOTE) and entry[: -len(NOTE)] not in ready:
            (folder / entry).unlink(missing_ok=True)
