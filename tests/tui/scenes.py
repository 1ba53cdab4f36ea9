"""The console's screens as scenes: keys pressed on the fixture repository, for snapshots and screenshots.

The snapshot tests and ``scripts/export_screenshots.py`` use the same scenes, so what the README shows
is what the tests pin.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from textual.pilot import Pilot

from tests.tui.fixture_repo import Story

SIZES = ((80, 24), (120, 40))


@dataclass(frozen=True)
class Scene:
    name: str
    keys: Callable[[Story], list[str | datetime]]

    def run_before(self, story: Story) -> Callable[[Pilot[Any]], Awaitable[None]]:
        async def run(pilot: Pilot[Any]) -> None:
            await settle(pilot)
            for key in self.keys(story):
                if isinstance(key, datetime):  # "go to" this instant
                    await pilot.press("g")
                    await settle(pilot)
                    await pilot.press(*key.strftime("%Y-%m-%d %H:%M:%S UTC"), "enter")
                else:
                    await pilot.press(key)
                await settle(pilot)
            await settle(pilot)

        return run


async def settle(pilot: Pilot[Any]) -> None:
    await pilot.app.workers.wait_for_complete()
    await pilot.pause()


SCENES = (
    Scene("timeline", lambda s: []),
    Scene("timeline-drop", lambda s: [s.drop]),
    Scene("timeline-gap", lambda s: [s.gap_start + timedelta(minutes=40), "plus", "plus"]),
    Scene("plan", lambda s: [s.drop, "d"]),
    Scene("confirm", lambda s: [s.drop, "d", "r"]),
    Scene("backups", lambda s: ["b", "down", "down"]),
    Scene("backup", lambda s: ["n"]),
    Scene("verify", lambda s: ["v"]),
    Scene("daemon", lambda s: ["s"]),
    Scene("settings", lambda s: ["c"]),
    Scene("help", lambda s: ["question_mark"]),
)
