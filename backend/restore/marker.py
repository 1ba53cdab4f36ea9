"""The note an in-place restore leaves beside the data directory until it has reported.

Written before anything is touched and removed when the restore reports: if it is still there, a
restore died half-way (killed, the host rebooted), the data directory may be half-restored, and the
operator must be told where the real data is, by every command that looks at the cluster (restore,
list, status, check, the console), until the roll-back is done.
"""

from __future__ import annotations

import contextlib
import json
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from backend.durable import replace_file


def marker_path(data_dir: Path) -> Path:
    return data_dir.with_name(f".{data_dir.name}.pgdr-restore.json")


@dataclass(frozen=True)
class Unfinished:
    """A restore that started and never reported."""

    data_dir: Path
    backup: str
    started: str
    #: The data directory as it was before the first unfinished restore: the real data.
    safety_copy: Path | None
    #: Each tablespace version folder it replaces, and where its real contents are.
    tablespaces: dict[Path, Path] = field(default_factory=dict)

    def describe(self) -> str:
        spaces = "".join(f"; {command}" for command in roll_back_commands(self.tablespaces))
        back = (
            f"to roll back: pg_ctl stop -D {self.data_dir}; mv {self.data_dir} {self.data_dir}.failed; "
            f"mv {self.safety_copy} {self.data_dir}{spaces}"
            if self.safety_copy
            else "there was no data directory before it"
        )
        kept = f"the previous data directory is intact at {self.safety_copy}; " if self.safety_copy else ""
        return (
            f"a restore from backup {self.backup} started {self.started} did not finish: {self.data_dir} may be "
            f"half-restored; {kept}{back}"
        )


def unfinished_restore(data_dir: Path) -> Unfinished | None:
    """The unfinished restore of ``data_dir``, or None; a note the operator's roll-back made stale is removed.

    The roll-back puts the safety copy back in place: once it is gone from where the note says and a
    cluster is in the data directory again, nothing is half-done any more.
    """
    marker = marker_path(data_dir)
    try:
        info = json.loads(marker.read_text())
    except (OSError, ValueError):
        return None
    safety = Path(info["safety_copy"]) if info.get("safety_copy") else None
    if safety is not None and not safety.exists() and (data_dir / "PG_VERSION").exists():
        with contextlib.suppress(OSError):
            marker.unlink()
        return None
    spaces = {Path(folder): Path(copy) for folder, copy in (info.get("tablespaces") or {}).items()}
    return Unfinished(data_dir, str(info.get("backup")), str(info.get("started")), safety, spaces)


def cluster_unfinished_restore(data_dir: str) -> str | None:
    """What to tell the operator about the configured data directory's unfinished restore, or None."""
    unfinished = unfinished_restore(Path(data_dir).absolute()) if data_dir else None
    return f"UNFINISHED RESTORE: {unfinished.describe()}" if unfinished is not None else None


def write_marker(
    data_dir: Path, backup: str, safety_copy: Path | None, tablespaces: Mapping[Path, Path] | None = None
) -> Path | None:
    """Note a restore that is about to replace ``data_dir``; returns the safety copy with the real data.

    When an unfinished restore is forced over, the data directory is half-restored, and the note keeps
    pointing at the copy made before the first one: that is the data, not what is moved aside now.
    ``tablespaces``: the version folders it replaces, and their real copies (the plan's, which already
    carry an unfinished restore's forward).
    """
    earlier = unfinished_restore(data_dir)
    real = earlier.safety_copy if earlier is not None else safety_copy
    note: dict[str, Any] = {
        "started": datetime.now(UTC).isoformat(),
        "backup": backup,
        "safety_copy": str(real) if real else None,
        "tablespaces": {str(folder): str(copy) for folder, copy in (tablespaces or {}).items()},
    }
    if earlier is not None and safety_copy is not None:
        note["half_restored_copy"] = str(safety_copy)
    replace_file(marker_path(data_dir), json.dumps(note))  # whole or not at all: a torn note would hide the warning
    return real


def roll_back_commands(copies: Mapping[Path, Path]) -> list[str]:
    """The shell commands that put version folders back (``copies``: folder -> its real copy)."""
    return [
        f"mv {shlex.quote(str(folder))} {shlex.quote(f'{folder}.failed')}; "
        f"mv {shlex.quote(str(copy))} {shlex.quote(str(folder))}"
        for folder, copy in copies.items()
    ]


def clear_marker(data_dir: Path) -> None:
    marker_path(data_dir).unlink(missing_ok=True)
