"""Starting pgdr's own background helpers (uploader, pusher, prefetcher) detached from the caller.

They run in a new session with no terminal and no pipes, so PostgreSQL's archive_command or
restore_command returns at once, and the helper outlives it.
"""

from __future__ import annotations

import sys
from pathlib import Path

from backend.config import Config


def spawn_pgdr(cfg: Config, *args: str, cwd: Path | None = None) -> None:
    import subprocess  # only when a helper is actually started: wal-push's start-up stays light

    argv = [sys.executable, "-m", "pgdr_tui"]
    if cfg.source is not None:
        argv += ["--config", str(cfg.source)]
    subprocess.Popen(
        [*argv, *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        close_fds=True,
        cwd=cwd,
    )
