"""Job locks: one backup (or expire, or restore) per cluster at a time, daemon and operator alike.

The lock lives in the local repository when there is one (so root's ``pgdr backup`` and the daemon
running as postgres see the same lock), else in the state dir. It is an flock: a killed holder
releases it, so a crash never leaves a stale lock behind.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Iterator

from backend.config import Config
from backend.errors import PgdrError

#: Jobs that must not run together: a backup during an expire could lose the WAL it needs.
EXCLUSIVE = "repository"


def _open_lock(cfg: Config, name: str) -> int:
    if cfg.local.path:
        from backend.repository.local import LocalRepository

        return LocalRepository(cfg.local.path, cfg.cluster.name).lock_file(f"locks/{name}.lock")
    from backend.audit import state_dir

    folder = state_dir() / "locks" / cfg.cluster.name
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    return os.open(folder / f"{name}.lock", os.O_RDWR | os.O_CREAT, 0o600)


@contextlib.contextmanager
def job_lock(cfg: Config, job: str, *, name: str = EXCLUSIVE, wait: float = 0.0) -> Iterator[None]:
    """Hold the lock ``name`` for ``job``; wait up to ``wait`` seconds, then refuse clearly."""
    fd = _open_lock(cfg, name)
    try:
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another pgdr process"
                    raise PgdrError(
                        f"cannot start {job}: {holder} holds the {cfg.cluster.name} {name} lock; "
                        "wait for it to finish (pgdr status) and retry"
                    ) from None
                time.sleep(0.2)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{job} (pid {os.getpid()}, since {time.strftime('%Y-%m-%d %H:%M:%S %Z')})".encode(), 0)
        yield
    finally:
        os.close(fd)
