"""The jobs the operator and the daemon both run, with the lock (and, later, the notifications) around them."""

from __future__ import annotations

import threading

from backend.config import Config
from backend.locks import job_lock
from backend.manifest import BackupManifest
from backend.progress import ProgressCallback, no_progress
from backend.repository import open_repositories


def backup_job(
    cfg: Config,
    *,
    logical: bool = False,
    only: str | None = None,
    on_progress: ProgressCallback = no_progress,
    cancel: threading.Event | None = None,
) -> BackupManifest:
    """One base backup (or logical dump) under the repository lock: never two at once, never during expire."""
    repos = open_repositories(cfg, only)
    with job_lock(cfg, "logical dump" if logical else "base backup"):
        if logical:
            from backend.backup.logical import take_logical_dump

            return take_logical_dump(cfg, repos, on_progress=on_progress, cancel=cancel)
        from backend.backup.physical import take_base_backup

        return take_base_backup(cfg, repos, on_progress=on_progress, cancel=cancel)
