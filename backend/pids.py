"""Whether a process id names a live process: for pid files (the postmaster's, the daemon's, a restore job's)."""

from __future__ import annotations

import os


def alive(pid: object) -> bool:
    """Signal 0 checks existence without touching the process; another user's process is alive too.

    ``pid`` is whatever a pid file or a status file held: anything but a positive int is no process.
    """
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, and is another user's
    return True
