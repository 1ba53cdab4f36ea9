"""``pgdr demo``: a real sandbox cluster with backups, events and a live workload; ``--clean`` removes it."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from backend import demo
from backend.progress import Progress
from backend.recovery import load_view
from backend.walnames import SegmentName
from tests.harness.cluster import make_shared_dir


def test_demo_builds_a_live_sandbox_and_cleans_it(monkeypatch: pytest.MonkeyPatch) -> None:
    root = make_shared_dir("pgdr-demo-test-") / "demo"
    monkeypatch.setenv("PGDR_DEMO_DIR", str(root))
    started = time.monotonic()
    try:
        said: list[Progress] = []
        cfg = demo.build(on_progress=said.append)
        steps = [p.message for p in said]
        assert cfg.source == root / "pgdr.toml" and cfg.cluster.name == "demo"
        assert any("initdb" in s for s in steps)
        # Each backup's bytes count up on one line: not another object's count after it (a line that
        # jumps back), so a terminal shows one line per backup.
        for n in (1, 2, 3):
            counts = [p.done for p in said if p.message == f"base backup {n}"]
            assert counts and counts == sorted(counts), (n, counts)
        view = load_view(cfg)
        physical = [b for b in view.catalog.backups if b.manifest.kind == "physical"]
        assert len(physical) == 3
        kinds = {(e.kind, e.name) for e in view.events}
        assert ("restore_point", "before_migration") in kinds
        assert any(kind == "drop" for kind, _ in kinds)
        assert view.timeline.windows and not view.timeline.gaps
        pid = int((root / "workload.pid").read_text())
        os.kill(pid, 0)
        # The workload keeps WAL coming: a newer segment gets archived within a few switches.
        newest = max(s.segment.number for s in view.catalog.segments)
        deadline = time.monotonic() + 30
        while True:
            from backend.catalog import read_catalog

            again = read_catalog(view.repositories)
            if max(s.segment.number for s in again.segments) > newest:
                break
            assert time.monotonic() < deadline, "the workload archived no new WAL"
            time.sleep(1)
        assert isinstance(SegmentName.parse(again.segments[-1].segment.name, 1 << 20), SegmentName)
        # Building again reuses the running sandbox.
        assert demo.build().source == cfg.source
    finally:
        message = demo.clean()
    assert "removed" in message and not root.exists()
    assert time.monotonic() - started < 60
    assert gone(pid), "the workload still runs"
    assert "nothing to remove" in demo.clean()
    Path(root.parent).rmdir()


def gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state in ("Z", "X")
