"""Starting pgdr's own background helpers (uploader, pusher, prefetcher, push server) detached from the caller.

They run in a new session with no terminal and no pipes, so PostgreSQL's archive_command or
restore_command returns at once, and the helper outlives it.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from backend.config import Config


def spawn_pgdr(cfg: Config, *args: str, cwd: str | os.PathLike[str] | None = None) -> None:
    """``pgdr [--config <the file cfg was read from>] <args>``, detached."""
    spawn_detached(*(["--config", str(cfg.source)] if cfg.source is not None else []), *args, cwd=cwd)


def spawn_detached(*args: str, cwd: str | os.PathLike[str] | None = None) -> None:
    """``pgdr <args>`` as given: the push server is named by the config path as the caller spelled it."""
    import subprocess  # only when a helper is actually started: wal-push's start-up stays light

    subprocess.Popen(
        [sys.executable, "-m", "pgdr_tui", *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        close_fds=True,
        cwd=cwd,
    )
