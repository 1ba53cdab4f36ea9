"""Fixtures for the console's tests: a repository the backend wrote, and the app on it with a frozen clock."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from backend.config import load_config
from pgdr_tui.app import PgdrApp
from pgdr_tui.source import Source
from tests.tui.fixture_repo import NOW, Story, write_fixture

ZONE = ZoneInfo("Europe/Berlin")


@pytest.fixture(scope="session")
def story(tmp_path_factory: pytest.TempPathFactory) -> Story:
    return write_fixture(tmp_path_factory.mktemp("tui-fixture"))


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
