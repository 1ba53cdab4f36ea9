"""Fixtures for the console's tests: a repository the backend wrote, and the app on it with a frozen clock."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import functools
import shutil
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from backend.config import ENVIRONMENT, load_config
from pgdr_tui.app import PgdrApp
from pgdr_tui.source import Source
from tests.tui.fixture_repo import NOW, Story, write_fixture

ZONE = ZoneInfo("Europe/Berlin")


#: A fixed place, so paths shown on screen (settings, plans, restore logs) are the same in every run's
#: snapshots and screenshots, whoever runs them and whatever TMPDIR says.
FIXTURE_ROOT = Path("/tmp/pgdr-tui-fixture")


@contextlib.contextmanager
def fixture_root_held() -> Iterator[Path]:
    """Hold the fixed fixture root for as long as a session uses it.

    The path cannot differ between runs (it is on screen), so two runs at once (a test session and
    ``scripts/export_screenshots.py``, or two engineers' sessions) take turns on a lock instead of
    writing over each other's repository.
    """
    with open(f"{FIXTURE_ROOT}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            shutil.rmtree(FIXTURE_ROOT, ignore_errors=True)
            if FIXTURE_ROOT.exists():
                raise RuntimeError(f"{FIXTURE_ROOT} is left over and cannot be removed (another user's?)")
            yield FIXTURE_ROOT
        finally:
            shutil.rmtree(FIXTURE_ROOT, ignore_errors=True)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test on the fixture repository runs in one xdist worker: a worker holds the fixed root's
    lock for its whole session, so a second worker wanting it would wait for the first to finish."""
    for item in items:
        if "story" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.xdist_group("tui-fixture"))


@pytest.fixture(scope="session")
def story() -> Iterator[Story]:
    with fixture_root_held() as root:
        yield write_fixture(root)


@pytest.fixture(autouse=True)
def no_operator_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The developer's PGHOST, AWS_* etc. must not leak into what the console shows."""
    for var in ENVIRONMENT:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.delenv("PGDR_ASCII", raising=False)


def fixture_app(story: Story, *, ascii_only: bool = False) -> PgdrApp:
    cfg = load_config(story.config)
    return PgdrApp(Source(cfg, clock=lambda: NOW, zone=ZONE, probe_server=False), ascii_only=ascii_only)


@pytest.fixture
def make_app(story: Story) -> Callable[..., PgdrApp]:
    def make(**kwargs: object) -> PgdrApp:
        return fixture_app(story, **kwargs)  # type: ignore[arg-type]

    return make


@pytest.fixture
def fixture_root(story: Story) -> Path:
    return story.config.parent


def run_async(fn: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """Run an ``async def`` test in a fresh event loop (no pytest async plugin is needed for Pilot)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        asyncio.run(fn(*args, **kwargs))

    return wrapper


def screen_lines(app: PgdrApp) -> list[str]:
    """What the terminal shows now, line by line (the text of the app's SVG screenshot, by position)."""
    import html
    import re

    svg = app.export_screenshot()
    rows: dict[float, list[tuple[float, str]]] = {}
    for match in re.finditer(r"<text([^>]*)>(.*?)</text>", svg, re.S):
        x, y = re.search(r'\bx="([\d.]+)"', match[1]), re.search(r'\by="([\d.]+)"', match[1])
        if x and y and "clip-path" in match[1]:
            rows.setdefault(float(y[1]), []).append((float(x[1]), html.unescape(match[2]).replace("\xa0", " ")))
    lines = []
    for y in sorted(rows):
        line = ""
        for x, text in sorted(rows[y]):
            column = round(x / 12.2)  # the width of a cell in Textual's SVG
            line = line.ljust(column)[:column] + text
        lines.append(line.rstrip())
    return lines
