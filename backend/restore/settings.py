"""Recovery settings in ``postgresql.auto.conf``: written for one recovery, never left for the next.

A restore must put its recovery target where a restart finds it (a server paused at its target and
restarted by systemd would otherwise replay to the end of the WAL), so it goes into
``postgresql.auto.conf``. But pg_basebackup copies that file into every later base backup, and a
``recovery_target_time`` carried over from an earlier restore silently stops the next restore at the
old instant (or makes PostgreSQL refuse "multiple recovery targets"). So, as pgBackRest does, every
recovery setting a restored file carries (from pgdr's earlier restores, verify's rehearsals, or
another tool) is removed before pgdr writes its own, and pgdr removes them again once the server has
promoted, and before a base backup copies the file.
"""

from __future__ import annotations

import re
from pathlib import Path

from backend.durable import replace_file

AUTO_CONF = "postgresql.auto.conf"
#: The comment that opens each block pgdr appends; the block's settings follow it.
MARK = "# added by pgdr"
#: Settings that only mean something during archive recovery, and must never outlive it.
_RECOVERY_KEY = re.compile(
    r"^\s*(recovery_target\w*|restore_command|recovery_end_command|archive_cleanup_command|recovery_min_apply_delay)"
    r"\s*=",
    re.IGNORECASE,
)


def recovery_lines(data_dir: Path) -> list[str]:
    """The recovery settings ``postgresql.auto.conf`` holds (empty when there is none, or no file)."""
    try:
        text = (data_dir / AUTO_CONF).read_text(errors="replace")
    except FileNotFoundError:
        return []
    return [line.strip() for line in text.splitlines() if _RECOVERY_KEY.match(line)]


def strip_recovery_settings(data_dir: Path) -> list[str]:
    """Remove every recovery setting from ``postgresql.auto.conf``; returns the lines removed.

    pgdr's own block comments go with them when nothing else of the block is left (a restore beside
    keeps its ``port`` and ``archive_mode``). The file is replaced atomically, keeping its owner and
    mode: the server may read it at any moment, and ALTER SYSTEM rewrites it the same way.
    """
    path = data_dir / AUTO_CONF
    try:
        lines = path.read_text(errors="replace").splitlines(keepends=True)
    except FileNotFoundError:
        return []
    removed = [line.strip() for line in lines if _RECOVERY_KEY.match(line)]
    if not removed:
        return []
    kept = [line for line in lines if not _RECOVERY_KEY.match(line)]
    kept = [line for i, line in enumerate(kept) if not (line.startswith(MARK) and not _block_has_settings(kept, i))]
    while kept and not kept[-1].strip():
        kept.pop()
    replace_file(path, "".join(kept), mode=0o600, keep_owner=True)
    return removed


def _block_has_settings(lines: list[str], mark: int) -> bool:
    following = lines[mark + 1].strip() if mark + 1 < len(lines) else ""
    return bool(following) and not following.startswith("#")


def write_recovery_settings(data_dir: Path, settings: dict[str, str], heading: str) -> None:
    """Replace whatever recovery settings the data directory carries with ``settings``, and ask for recovery.

    ``heading`` follows the mark in the block's comment: who wrote it, when, for which backup.
    """
    strip_recovery_settings(data_dir)
    path = data_dir / AUTO_CONF
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        text = ""
    if text and not text.endswith("\n"):
        text += "\n"
    text += f"\n{MARK} {heading}\n"
    text += "".join(f"{key} = '{value.replace(chr(39), chr(39) * 2)}'\n" for key, value in settings.items())
    replace_file(path, text, mode=0o600, keep_owner=True)
    (data_dir / "recovery.signal").touch()
    (data_dir / "standby.signal").unlink(missing_ok=True)
