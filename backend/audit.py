"""The audit log: one JSON line per restore (and later expire and config change), never rewritten."""

from __future__ import annotations

import getpass
import json
import os
import socket
from datetime import UTC, datetime
from pathlib import Path
from typing import Any


def state_dir() -> Path:
    import platformdirs

    return Path(os.environ.get("PGDR_STATE_DIR") or platformdirs.user_state_dir("pgdr"))


def audit_path() -> Path:
    return state_dir() / "audit.log"


def record(action: str, cluster: str, result: str, **details: Any) -> None:
    """Append who did what when, and how it ended; fsynced so a crash right after still leaves it."""
    entry = {
        "time": datetime.now(UTC).isoformat(),
        "user": os.environ.get("SUDO_USER") or getpass.getuser(),
        "host": socket.gethostname(),
        "action": action,
        "cluster": cluster,
        "result": result,
        **details,
    }
    path = audit_path()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, (json.dumps(entry, default=str) + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)
