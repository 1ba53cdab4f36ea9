"""Restore plans for tests that drive a restore step by hand, without planning against a catalog."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from backend.manifest import BackupManifest
from backend.restore.plan import RestorePlan
from backend.restore.target import RecoveryTarget


def immediate_plan(backup: BackupManifest, data_dir: Path, **changes: Any) -> RestorePlan:
    """A plan to restore ``backup`` into ``data_dir`` up to consistency, from the local repository, no WAL."""
    plan = RestorePlan(
        cluster="main",
        target=RecoveryTarget("immediate"),
        backup=backup,
        backup_repository="local",
        timeline=1,
        wal=[],
        wal_complete=True,
        data_dir=data_dir,
        in_place=False,
        port=None,
        safety_copy=None,
        space_needed=0,
        space_free=0,
        estimated_seconds=1.0,
    )
    return dataclasses.replace(plan, **changes)
