"""Small files replaced whole: a reader sees the old content or the new, never half of either.

Status files, notes and settings are read by other processes (the console, the next command, the
server) at any moment and must survive a crash right after they were written. Each is written to a
temporary file beside it, fsynced, renamed over the old one, and the folder fsynced. The rename also
means a file another user left (a root restore's note, in a folder the cluster's owner may write) is
replaced rather than refused: opening it for writing would need its owner's permission.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path


def replace_file(path: Path, content: str | bytes, *, mode: int = 0o644, keep_owner: bool = False) -> None:
    """Put ``content`` at ``path`` atomically and durably.

    ``mode`` is for a new file; with ``keep_owner`` a file that exists keeps its mode and, when pgdr runs
    as root, its owner (a setting file of the server's, which must stay readable by it).
    """
    data = content.encode() if isinstance(content, str) else content
    existing = None
    if keep_owner:
        with contextlib.suppress(FileNotFoundError):
            existing = path.stat()
    # Not tempfile's: it imports random and shutil, and wal-push's path reaches some of these writers.
    temp = path.with_name(f".{path.name}.{os.getpid()}.{time.monotonic_ns()}")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        try:
            # By the descriptor: another user who may write in the folder could swap the path.
            os.fchmod(fd, existing.st_mode & 0o7777 if existing is not None else mode)
            if existing is not None and os.geteuid() == 0:
                os.fchown(fd, existing.st_uid, existing.st_gid)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def fsync_dir(path: Path) -> None:
    """Make a rename or a new name in ``path`` survive a crash."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
