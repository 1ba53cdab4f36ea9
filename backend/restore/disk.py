"""Where a restore would make a directory: the one path question plan, pre-flight and tablespaces share."""

from __future__ import annotations

from pathlib import Path


def existing_parent(path: Path) -> Path:
    """``path``, or its nearest ancestor that exists: where a directory to be made would be made."""
    probe = path
    while not probe.exists():
        probe = probe.parent
    return probe
