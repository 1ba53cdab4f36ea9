"""The audit log: one JSON line per restore, expire and config change, appended and never rewritten."""

from __future__ import annotations

import contextlib
import getpass
import json
import logging
import os
import socket
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from backend.statedir import state_base

if TYPE_CHECKING:
    from backend.config import Config


log = logging.getLogger("pgdr")

#: Where ``[audit] copy_to_repositories`` keeps one object per entry (objects are never appended to).
AUDIT_PREFIX = "audit/"


def state_dir() -> Path:
    return Path(state_base())


def audit_path() -> Path:
    return state_dir() / "audit.log"


def record(cfg: Config, action: str, result: str, **details: Any) -> None:
    """Append who did what when, and how it ended; fsynced so a crash right after still leaves it.

    With ``[audit] copy_to_repositories`` the entry is also stored in every repository, where it
    outlives the host; a repository that cannot take it gets a warning, never a failed restore.
    """
    entry = {
        "time": datetime.now(UTC).isoformat(),
        "user": os.environ.get("SUDO_USER") or getpass.getuser(),
        "host": socket.gethostname(),
        "action": action,
        "cluster": cfg.cluster.name,
        "result": result,
        **details,
    }
    line = json.dumps(entry, default=str)
    path = audit_path()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, (line + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    if cfg.audit.copy_to_repositories:
        _copy_to_repositories(cfg, entry, line)


def _copy_to_repositories(cfg: Config, entry: dict[str, Any], line: str) -> None:
    from backend.errors import PgdrError
    from backend.repository import open_repositories

    stamp = datetime.fromisoformat(entry["time"]).strftime("%Y%m%dT%H%M%S.%fZ")
    slug = "".join(c if c.isalnum() else "-" for c in f"{entry['action']}-{entry['result']}")
    key = f"{AUDIT_PREFIX}{stamp}-{entry['host']}-{os.getpid()}-{slug}.json"
    try:
        repos = open_repositories(cfg)
    except PgdrError as exc:
        log.warning("the audit entry was not copied to the repositories: %s", exc)
        return
    for repo in repos:
        try:
            repo.put(key, line.encode() + b"\n")
        except PgdrError as exc:
            log.warning("the audit entry was not copied to the %s repository: %s", repo.name, exc)


def read_entries(cfg: Config, repository: str | None = None) -> list[dict[str, Any]]:
    """The audit entries, oldest first: this host's log, or the copies kept in a repository."""
    if repository is None:
        try:
            lines = audit_path().read_text().splitlines()
        except FileNotFoundError:
            return []
        return [json.loads(line) for line in lines if line.strip()]
    from backend.repository import open_repository

    repo = open_repository(cfg, repository)
    return [json.loads(repo.get(info.key)) for info in repo.list(AUDIT_PREFIX)]


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
        record(cfg, "config first seen", "recorded", **details)
    else:
        changed = sorted(k for k in before.keys() | now.keys() if before.get(k) != now.get(k))
        record(cfg, "config change", "recorded", changed=changed, **details)
    temp = seen_path.with_name(f".config-seen.{os.getpid()}")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump({"salt": salt, "values": now}, fh)
    os.rename(temp, seen_path)
