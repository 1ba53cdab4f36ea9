"""pgdr's state dir: the push server's socket, the push-ahead spool, caches, the audit log.

Standard library only (``os``, ``sys``): ``wal-push`` finds its push server's socket here before it
imports anything else, so the usual Linux case is worked out directly rather than by importing
platformdirs (a few ms on every segment); any other case is left to platformdirs.
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False  # not typing's: wal-push's hot path imports this module, and nothing more
if TYPE_CHECKING:
    from pathlib import Path


def user_state_dir() -> str:
    """``platformdirs.user_state_dir("pgdr")``: $XDG_STATE_HOME/pgdr when absolute, else ~/.local/state/pgdr."""
    if sys.platform == "linux":
        xdg = os.environ.get("XDG_STATE_HOME", "")
        if os.path.isabs(xdg):
            return os.path.join(xdg, "pgdr")
        if os.path.isabs(os.environ.get("HOME", "")):
            return os.path.join(os.path.expanduser("~/.local/state"), "pgdr")
    import platformdirs

    return platformdirs.user_state_dir("pgdr")


def state_base() -> str:
    """``$PGDR_STATE_DIR``, else the user's state dir."""
    return os.environ.get("PGDR_STATE_DIR") or user_state_dir()


def state_dir() -> Path:
    """The state dir as a path: what everything kept there (caches, spool, audit log, scratch) is under."""
    from pathlib import Path

    return Path(state_base())
