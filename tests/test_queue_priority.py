"""The background WAL indexer yields the CPU to the server and the archiver; uploaders do not."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(("target", "niceness", "policy"), [("index", 19, "SCHED_IDLE"), ("s3", 0, "SCHED_OTHER")])
def test_only_the_indexer_runs_at_the_lowest_priority(tmp_path: Path, target: str, niceness: int, policy: str) -> None:
    config = tmp_path / "pgdr.toml"
    config.write_text(f'[cluster]\nname = "main"\n[local]\npath = "{tmp_path}"\n')
    probe = (
        "import os; from backend.config import load_config; from backend.archive.queue import drain_in_background; "
        f"drain_in_background(load_config({str(config)!r}), {target!r}); print(os.nice(0), os.sched_getscheduler(0))"
    )
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.split() == [str(niceness), str(getattr(os, policy))]
