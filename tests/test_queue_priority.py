"""The background WAL indexer yields the CPU to the server and the archiver; uploaders do not."""

from __future__ import annotations

import os
import subprocess
import sys
import time
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


def test_the_indexer_waits_for_a_pause_in_archiving(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every push queues its segment for indexing; while they keep coming, pg_waldump stays off the cores."""
    from backend.archive import index, queue
    from backend.config import load_config

    config = tmp_path / "pgdr.toml"
    config.write_text(f'[cluster]\nname = "main"\n[local]\npath = "{tmp_path / "repo"}"\n')
    cfg = load_config(config)
    segment = "000000010000000000000007"
    queue.enqueue(cfg, "index", segment)
    (entry,) = (tmp_path / "repo").rglob(segment)
    assert queue.archiver_busy(cfg), "a segment was just queued: the archiver is at work"
    queued_at = entry.stat().st_mtime

    indexed_at: list[float] = []
    monkeypatch.setattr(index, "index_one", lambda *args: indexed_at.append(time.time()))
    assert queue.drain(cfg, "index", defer_to_archiver=True) == [segment]
    assert indexed_at[0] - queued_at >= queue.ARCHIVER_QUIET_S

    queue.enqueue(cfg, "index", segment)
    ahead = time.time() + 3600  # the clock was set back after it was queued
    os.utime(entry, (ahead, ahead))
    assert not queue.archiver_busy(cfg), "an entry from the future must not hold the indexer off for an hour"
