"""Snapshots (pytest-textual-snapshot) of every screen at 80x24 and 120x40, frozen clock, no blinking.

Update baselines only after looking at the report: ``pytest tests/tui/test_snapshots.py --snapshot-update``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from pgdr_tui.app import PgdrApp
from tests.tui.fixture_repo import Story
from tests.tui.scenes import SCENES, SIZES, Scene


@pytest.fixture(autouse=True)
def fixed_disk_space(monkeypatch: pytest.MonkeyPatch) -> None:
    """The plan prints free disk space; pin it so the plan's screenshot is stable."""
    import shutil

    from backend.restore import plan

    monkeypatch.setattr(plan.shutil, "disk_usage", lambda _: shutil._ntuple_diskusage(500 << 30, 120 << 30, 380 << 30))  # type: ignore[attr-defined]


@pytest.mark.parametrize("size", SIZES, ids=[f"{w}x{h}" for w, h in SIZES])
@pytest.mark.parametrize("scene", SCENES, ids=[s.name for s in SCENES])
def test_screen(
    scene: Scene, size: tuple[int, int], snap_compare: Any, make_app: Callable[..., PgdrApp], story: Story
) -> None:
    assert snap_compare(make_app(ascii_only=False), terminal_size=size, run_before=scene.run_before(story))
