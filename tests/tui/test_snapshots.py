"""Snapshots (pytest-textual-snapshot) of every screen at 80x24 and 120x40, frozen clock, no blinking.

Each scene runs staged (``tests.tui.scenes.staged``): disk space and the plan's clock pinned, a fresh
state directory, and the job or status files the scene shows written as their owners write them.
Update baselines only after looking at the report: ``pytest tests/tui/test_snapshots.py --snapshot-update``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from pgdr_tui.app import PgdrApp
from tests.tui.fixture_repo import Story
from tests.tui.scenes import SCENES, SIZES, Scene, staged


@pytest.mark.parametrize("size", SIZES, ids=[f"{w}x{h}" for w, h in SIZES])
@pytest.mark.parametrize("scene", SCENES, ids=[s.name for s in SCENES])
def test_screen(
    scene: Scene, size: tuple[int, int], snap_compare: Any, make_app: Callable[..., PgdrApp], story: Story
) -> None:
    with staged(scene, story):
        assert snap_compare(
            make_app(ascii_only=scene.ascii_only), terminal_size=size, run_before=scene.run_before(story)
        )
