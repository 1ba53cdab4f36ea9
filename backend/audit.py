"""The audit log: one JSON line per restore, expire and config change, appended and never rewritten."""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import socket
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from backend.config import Config


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


def note_config(cfg: Config, **details: Any) -> None:
    """Append a "config change" entry when the effective configuration differs from the last one seen.

    Configs are edited by hand, so a change is noticed by the next command that loads it: the entry
    names the keys that changed (never their values), the file's modification time and who noticed.
    Secrets are compared by salted fingerprints, kept in the state dir beside the log.
    """
    import hashlib
    import secrets as random

    seen_path = state_dir() / "config-seen.json"
    try:
        seen = json.loads(seen_path.read_text())
        salt = str(seen["salt"])
        before: dict[str, str] = dict(seen["values"])
    except (OSError, ValueError, KeyError, TypeError):
        seen, salt, before = None, random.token_hex(16), {}
    from backend.config import SECRET_KEYS

    now: dict[str, str] = {}
    for section, values in cfg.to_dict(redact=False).items():
        for key, value in values.items():
            shown = json.dumps(value, default=str)
            if (section, key) in SECRET_KEYS:
                shown = hashlib.sha256(f"{salt}:{shown}".encode()).hexdigest()
            now[f"{section}.{key}"] = shown
    if seen is not None and before == now:
        return
    details["source"] = cfg.where()
    if cfg.source is not None:
        with contextlib.suppress(OSError):
            details["file_modified"] = datetime.fromtimestamp(cfg.source.stat().st_mtime, UTC).isoformat()
    if seen is None:
        record("config first seen", cfg.cluster.name, "recorded", **details)
    else:
        changed = sorted(k for k in before.keys() | now.keys() if before.get(k) != now.get(k))
        record("config change", cfg.cluster.name, "recorded", changed=changed, **details)
    temp = seen_path.with_name(f".config-seen.{os.getpid()}")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump({"salt": salt, "values": now}, fh)
    os.rename(temp, seen_path)
