"""The audit log: one JSON line per restore, expire and config change, appended and never rewritten."""

from __future__ import annotations

import contextlib
import getpass
import hashlib
import json
import logging
import os
import socket
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from backend.statedir import state_dir

if TYPE_CHECKING:
    from backend.config import Config


log = logging.getLogger("pgdr")

#: Where ``[audit] copy_to_repositories`` keeps one object per entry (objects are never appended to).
AUDIT_PREFIX = "audit/"


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


#: The secrets in config-seen.json are kept as scrypt fingerprints, as costly per guess as the key
#: check of a passphrase-encrypted repository (backend.repository.crypt), which often lies on the same
#: volume: a fast hash there (version 1: salted SHA-256) would make it the cheapest way to the passphrase.
SEEN_VERSION = 2
SCRYPT_N, SCRYPT_R, SCRYPT_P = 1 << 15, 8, 1
#: How an unset secret is shown (and kept): nothing to hide, no scrypt to pay.
UNSET = '""'


def note_config(cfg: Config, **details: Any) -> None:
    """Append a "config change" entry when the effective configuration differs from the last one seen.

    Configs are edited by hand, so a change is noticed by the next command that loads it: the entry
    names the keys that changed (never their values), the file's modification time and who noticed.
    A rotated secret (passphrase, S3 key, token) is a change worth an entry too, so secrets are kept
    as salted scrypt fingerprints: one over all of them, checked by every command (one scrypt), and
    one per secret, computed only when that one no longer matches, to name what changed. A file of
    version 1 is compared the old way once and rewritten.
    """
    import secrets as random

    from backend.config import SECRET_KEYS

    seen_path = state_dir() / "config-seen.json"
    seen = _read_seen(seen_path)
    current = seen is not None and seen.get("version") == SEEN_VERSION
    salt = str(seen["salt"]) if seen is not None and current else random.token_hex(16)
    before: dict[str, str] = dict(seen["values"]) if seen is not None else {}
    plain: dict[str, str] = {}
    secret: dict[str, str] = {}
    for section, values in cfg.to_dict(redact=False).items():
        for key, value in values.items():
            shown = json.dumps(value, default=str)
            (secret if (section, key) in SECRET_KEYS else plain)[f"{section}.{key}"] = shown
    held = {name: shown for name, shown in secret.items() if shown != UNSET}
    combined = _fingerprint(salt, json.dumps(held, sort_keys=True)) if held else ""
    if seen is not None and current and seen.get("secrets") == combined:
        kept = {name: before.get(name, "") for name in secret}
    else:
        kept = {
            name: shown if shown == UNSET else _fingerprint(salt, f"{name}={shown}") for name, shown in secret.items()
        }
    now = plain | kept
    if seen is not None and not current:  # version 1: its secrets compare only with its own hash
        old = {name: hashlib.sha256(f"{seen['salt']}:{shown}".encode()).hexdigest() for name, shown in secret.items()}
        changed = _changed(before, plain | old)
    else:
        changed = _changed(before, now)
    if seen is not None and current and not changed:
        return
    if seen is None or changed:
        details["source"] = cfg.where()
        if cfg.source is not None:
            with contextlib.suppress(OSError):
                details["file_modified"] = datetime.fromtimestamp(cfg.source.stat().st_mtime, UTC).isoformat()
        if seen is None:
            record(cfg, "config first seen", "recorded", **details)
        else:
            record(cfg, "config change", "recorded", changed=changed, **details)
    temp = seen_path.with_name(f".config-seen.{os.getpid()}")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump({"version": SEEN_VERSION, "salt": salt, "secrets": combined, "values": now}, fh)
    os.rename(temp, seen_path)


def _read_seen(path: Path) -> dict[str, Any] | None:
    """The configuration last seen; None when there is none or it is unreadable (then it is seen afresh)."""
    try:
        seen = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if isinstance(seen, dict) and isinstance(seen.get("salt"), str) and isinstance(seen.get("values"), dict):
        return seen
    return None


def _fingerprint(salt: str, text: str) -> str:
    return hashlib.scrypt(
        text.encode(), salt=salt.encode(), n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, maxmem=64 << 20, dklen=32
    ).hex()


def _changed(before: dict[str, str], now: dict[str, str]) -> list[str]:
    return sorted(key for key in before.keys() | now.keys() if before.get(key) != now.get(key))
