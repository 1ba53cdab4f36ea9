"""Incremental backups in the console: their own mark on the timeline (a full backup's wins a shared
column), the legend naming it only when there is one, the details of an instant restored through a
chain (and of a broken one), the backups table, and a dry run from the console planning the chain.

On the fixture repository, whose day before ``NOW`` has a full backup and three incrementals on it.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from textual.pilot import Pilot
from textual.widgets import DataTable, Static

from backend.config import load_config
from backend.recovery import load_view
from backend.timeline import estimate_restore_seconds
from pgdr_tui.app import PgdrApp
from pgdr_tui.glyphs import ASCII, UNICODE
from pgdr_tui.model import Mark, TimelineModel
from pgdr_tui.screens.backups import BackupsScreen
from pgdr_tui.screens.restore import RestorePlanScreen
from pgdr_tui.screens.timeline import TimelineScreen
from pgdr_tui.timescale import Viewport, level_named
from pgdr_tui.widgets.details import details_text
from pgdr_tui.widgets.timeline import TimelineView
from tests.tui.conftest import ZONE, run_async
from tests.tui.fixture_repo import NOW, Story


@pytest.fixture(scope="module")
def model(story: Story) -> TimelineModel:
    return TimelineModel(load_view(load_config(story.config)))


def taken(name: str) -> datetime:
    return datetime.strptime(name[:16], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)


def test_incrementals_have_their_own_mark_and_a_full_backup_wins_a_shared_column(
    model: TimelineModel, story: Story
) -> None:
    first = story.incrementals[0]
    full = model.backups[first].manifest.parent
    assert full is not None and model.backups[full].manifest.parent is None
    assert model.has_incremental
    kinds = dict(zip((b.manifest.name for b in model.backup_order), model.backup_kinds, strict=True))
    assert [kinds[name] for name in story.incrementals] == [Mark.INCREMENTAL] * 3
    assert kinds[full] is Mark.BACKUP

    hourly = model.columns(Viewport(level=level_named("1 h"), left=taken(full).timestamp(), width=24))
    marked = {i: m for i, m in enumerate(hourly.backups) if m is not Mark.NONE}
    assert list(marked.values()) == [Mark.BACKUP, Mark.INCREMENTAL, Mark.INCREMENTAL, Mark.INCREMENTAL]
    # Half a day per column: the full backup and the first incremental share one, which shows the full one.
    coarse = model.columns(Viewport(level=level_named("12 h"), left=taken(full).timestamp() - 3600, width=2))
    assert coarse.backups == [Mark.BACKUP, Mark.INCREMENTAL]


def test_details_of_an_instant_restored_through_a_chain(model: TimelineModel, story: Story) -> None:
    first, second, _ = story.incrementals
    d = model.details(taken(second) + timedelta(hours=1))
    assert d.recoverable and d.backup is not None and d.backup.manifest.name == second
    full = model.backups[first].manifest.parent
    assert d.chain == (full, first, second) and d.broken_chain == ""
    # The estimate counts what a restore combines: the whole chain, not the incremental alone.
    chain_bytes = sum(model.backups[name].manifest.size_bytes for name in d.chain)
    assert d.estimated_seconds == estimate_restore_seconds(chain_bytes, d.wal_bytes)
    assert d.estimated_seconds > estimate_restore_seconds(d.backup.manifest.size_bytes, d.wal_bytes)

    text = details_text(d, zone=ZONE, now=NOW, glyphs=UNICODE, zoom="1 h").plain
    assert f"incremental on {first}, chain of 3" in text.splitlines()[3]
    full_backup = model.details(taken(first) - timedelta(hours=1))
    assert full_backup.chain == (full,)
    assert "incremental on" not in details_text(full_backup, zone=ZONE, now=NOW, glyphs=UNICODE, zoom="1 h").plain

    # The first incremental gone from the catalog (expired while the console was open): the second's chain
    # is broken, and the details say so.
    view = load_view(load_config(story.config))
    view.catalog.backups[:] = [b for b in view.catalog.backups if b.manifest.name != first]
    broken = TimelineModel(view).details(taken(second) + timedelta(hours=1))
    assert broken.backup is not None and broken.backup.manifest.name == second
    assert (broken.chain, broken.broken_chain) == ((), first)
    text = details_text(broken, zone=ZONE, now=NOW, glyphs=ASCII, zoom="1 h").plain
    assert f"incremental on {first}, {ASCII.bad} chain broken: {first} is gone" in text


async def settle(pilot: Pilot[Any]) -> None:
    await pilot.app.workers.wait_for_complete()
    await pilot.pause()


def legend(app: PgdrApp) -> str:
    return str(app.screen.query_one("#legend", Static).render())


@run_async
async def test_the_legend_names_the_incremental_mark_in_words_that_fit(story: Story, make_app: Any) -> None:
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        assert isinstance(app.screen, TimelineScreen)
        short = legend(app)
        assert short.endswith("▼ drop") and len(short) <= 78  # every symbol explained at 80 columns
        assert "▲ full  ∆ incr  ○ dump" in short
        await pilot.resize_terminal(140, 40)
        await settle(pilot)
        assert "▲ full backup  ∆ incremental  ○ dump" in legend(app) and legend(app).endswith("▼ drop/truncate")

        view = app.screen.query_one(TimelineView)  # a catalog without incrementals: no word of them
        assert "∆" not in view.legend(200).plain and "▲ backup  ○ dump" in view.legend(200).plain
        assert view.legend(78).plain.endswith("▼ drop") and len(view.legend(78).plain) <= 78


@run_async
async def test_backups_table_and_a_dry_run_of_an_incremental(
    story: Story, make_app: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    first, second, _ = story.incrementals
    app = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        await pilot.press("b")
        await settle(pilot)
        screen = app.screen
        assert isinstance(screen, BackupsScreen)
        table = screen.query_one(DataTable)
        kinds = {str(table.get_row(name)[0]): str(table.get_row(name)[1]) for name in story.incrementals}
        assert kinds == dict.fromkeys(story.incrementals, "incr")
        table.move_cursor(row=[b.manifest.name for b in screen.shown].index(second))
        await settle(pilot)
        details = str(screen.query_one("#backup-details", Static).render())
        assert f" Backup        {second} (incremental on {first}, chain of 3) of main" in details

        # The timeline at an instant the incremental restores: the dry run plans its chain.
        await pilot.press("t")
        await settle(pilot)
        assert isinstance(app.screen, TimelineScreen)
        app.screen.jump_to(taken(second) + timedelta(hours=1))
        await settle(pilot)
        assert app.screen.details is not None and app.screen.details.chain[-1] == second
        await pilot.press("d")
        await settle(pilot)
        plan_screen = app.screen
        assert isinstance(plan_screen, RestorePlanScreen)
        assert plan_screen.plan is not None, plan_screen.error
        assert app.model is not None
        assert [m.name for m in plan_screen.plan.chain] == list(app.model.chain_of(app.model.backups[second])[0])
