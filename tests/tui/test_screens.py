"""The verify, settings and palette screens driven by keys (Pilot) on the fixture repository the backend wrote."""

from __future__ import annotations

import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from textual.pilot import Pilot
from textual.widgets import DataTable, Input, Static

from backend.config import MASK, load_config
from pgdr_tui.app import PgdrApp
from pgdr_tui.commands import PgdrCommands
from pgdr_tui.screens.dialogs import HelpScreen
from pgdr_tui.screens.restore import RestorePlanScreen, RestoreProgressScreen
from pgdr_tui.screens.settings import EditValueModal, SettingsScreen
from pgdr_tui.screens.timeline import TimelineScreen
from pgdr_tui.screens.verify import VerifyScreen
from pgdr_tui.source import Source
from tests.tui.conftest import ZONE, run_async
from tests.tui.fixture_repo import NOW, Story
from tests.tui.scenes import pinned, restore_finished, settle, verify_record_removed

MakeApp = Callable[..., PgdrApp]


def cells(table: DataTable[Any], row: int) -> list[str]:
    return [str(cell) for cell in table.get_row_at(row)]


def palette(app: PgdrApp) -> list[str]:
    return [text for text, _, _ in PgdrCommands(app.screen)._actions()]


async def open_verify(pilot: Pilot[Any]) -> VerifyScreen:
    await settle(pilot)
    await pilot.press("v")
    await settle(pilot)
    screen = pilot.app.screen
    assert isinstance(screen, VerifyScreen)
    return screen


@run_async
async def test_a_verify_run_fills_the_table_and_names_the_damaged_object(make_app: MakeApp, story: Story) -> None:
    app = make_app()
    with verify_record_removed(story):
        async with app.run_test(size=(80, 24)) as pilot:
            screen = await open_verify(pilot)
            table = screen.query_one(DataTable)
            assert table.row_count == 0
            # Pick the newest backup in the list (the first entry after "all") and run checksums on it.
            await pilot.press("enter", "down", "enter")
            await settle(pilot)
            assert screen.query_one("#verify-what").value == story.whole  # type: ignore[attr-defined]
            await pilot.press("r")
            await settle(pilot)
            state = str(screen.query_one("#verify-state", Static).render())
            assert "found PROBLEMS" in state and "1 of 1 backup BAD" in state and "WAL ok" in state
            assert table.row_count == 2
            backup, wal = cells(table, 0), cells(table, 1)
            assert backup[:4] == [story.whole, "physical", f"{app.glyphs.bad} BAD", "base.tar.zst checksum"]
            assert wal[0] == "WAL local" and wal[2] == f"{app.glyphs.ok} ok"
            # The highlighted row's problems, in full: which copy, which object, what is wrong.
            details = str(screen.query_one("#verify-details", Static).render())
            assert "local: base.tar.zst: checksum: sha256 of the stored bytes is" in details
            # The result is recorded as the backend records it, at the console's clock, and the header shows it.
            assert app.verified[story.whole].time == NOW and not app.verified[story.whole].ok
            assert "verify now" in str(screen.query_one("#status").render())


@run_async
async def test_a_lost_repository_is_a_row_of_its_own_with_the_fix(make_app: MakeApp) -> None:
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await open_verify(pilot)
        loss = {"repository": "s3", "detail": "the s3 repository holds none of the 3 backups", "fix": "take a backup"}
        screen._fill({"losses": [loss], "backups": [], "wal": []})
        await pilot.pause()
        assert cells(screen.query_one(DataTable), 0)[:4] == ["s3", "repo", f"{app.glyphs.bad} LOST", loss["detail"]]
        details = str(screen.query_one("#verify-details", Static).render())
        assert loss["detail"] in details and "take a backup" in details


def settings_app(story: Story, tmp_path: Path) -> tuple[PgdrApp, Path]:
    """The fixture's cluster with a config file of its own (holding a secret) that the test may write."""
    path = tmp_path / "pgdr.toml"
    text = story.config.read_text().replace('user = "postgres"\n', 'user = "postgres"\npassword = "s3cret"\n')
    path.write_text("# the operator's comment\n" + text)
    path.chmod(0o600)  # it holds a secret: the backend refuses a file others can read
    source = Source(load_config(path), clock=lambda: NOW, zone=ZONE, probe_server=False)
    return PgdrApp(source, ascii_only=False), path


async def edit(pilot: Pilot[Any], screen: SettingsScreen, key: tuple[str, str], typed: str) -> None:
    """Move the cursor to ``key``'s row with the arrow keys, press e, replace the value, press enter."""
    table = screen.query_one(DataTable)
    target = screen.keys.index(key)
    while table.cursor_row != target:
        await pilot.press("down" if table.cursor_row < target else "up")
    await pilot.press("e")
    await pilot.pause()
    modal = pilot.app.screen
    assert isinstance(modal, EditValueModal)
    field = modal.query_one(Input)
    await pilot.press(*["backspace"] * len(field.value), *typed, "enter")
    await pilot.pause()


@run_async
async def test_settings_edit_and_write_with_tomli_w_never_writes_a_masked_secret(story: Story, tmp_path: Path) -> None:
    app, path = settings_app(story, tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press("c")
        await settle(pilot)
        screen = app.screen
        assert isinstance(screen, SettingsScreen)
        table = screen.query_one(DataTable)
        password_row = screen.keys.index(("postgres", "password"))
        assert cells(table, password_row)[1] == MASK  # shown masked
        assert screen.check_action("write", ()) is None  # nothing to write yet

        await edit(pilot, screen, ("postgres", "port"), "5433")
        assert cells(table, screen.keys.index(("postgres", "port")))[1:] == ["5433", "edited"]
        # The secret: its field starts empty, and leaving it empty keeps the current value.
        await edit(pilot, screen, ("postgres", "password"), "")
        assert ("postgres", "password") not in screen.edits
        assert "1 change(s) not written" in str(screen.query_one("#settings-note", Static).render())
        assert "Settings: write the changes to the config file (tomli-w)" in palette(app)

        await pilot.press("w")
        await pilot.pause()
        text = path.read_text()
        written = tomllib.loads(text)
        assert written["postgres"]["port"] == 5433 and written["postgres"]["password"] == "s3cret"
        assert MASK not in text and text.startswith("# written by the pgdr console")
        assert "the operator's comment" in next(tmp_path.glob("pgdr.toml.bak-*")).read_text()  # the old file is kept
        assert app.source.cfg.postgres.port == 5433 and not screen.edits
        assert cells(table, password_row)[1] == MASK and screen.check_action("write", ()) is None


@run_async
async def test_the_palette_offers_each_screens_actions_where_they_apply(make_app: MakeApp, story: Story) -> None:
    app = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        names = palette(app)
        for wanted in (
            "Timeline: cursor to the previous backup or event",
            "Timeline: cursor to the next backup or event",
            "Restore: show the last restore (progress and report)",
            "Daemon: read the status file again",
        ):
            assert wanted in names
        assert not any(n.startswith(("Restore plan:", "Backup: cancel", "Settings: write")) for n in names)

        await pilot.press("end")
        before = app.screen.query_one("TimelineView").cursor  # type: ignore[attr-defined]
        hits = [cb for text, cb, _ in PgdrCommands(app.screen)._actions() if text.endswith("previous backup or event")]
        hits[0]()
        await pilot.pause()
        assert app.screen.query_one("TimelineView").cursor < before  # type: ignore[attr-defined]

        await pilot.press("d")
        await settle(pilot)
        assert isinstance(app.screen, RestorePlanScreen)
        names = palette(app)
        assert "Restore plan: restore in place (replace the data directory)" in names
        assert "Restore plan: restore beside (new directory and port)" in names
        assert "Restore plan: restore (type the cluster name to confirm)" in names  # the dry run succeeded
        await pilot.press("escape", "b")
        await settle(pilot)
        assert "Backups: dry run of the selected backup as it was taken" in palette(app)
        await pilot.press("n")
        await settle(pilot)
        assert not any(n.startswith("Backup: cancel") for n in palette(app))  # no backup runs
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)


@run_async
async def test_a_restore_that_finished_unwatched_is_shown_once(make_app: MakeApp, story: Story) -> None:
    with pinned(story), restore_finished(story):
        app = make_app()
        async with app.run_test(size=(80, 24)) as pilot:
            await settle(pilot)
            screen = app.screen
            assert isinstance(screen, RestoreProgressScreen) and screen.finished
            assert "recovery stopped: before commit of transaction 48123" in str(
                screen.query_one("#restore-result").render()
            )
        again = make_app()
        async with again.run_test(size=(80, 24)) as pilot:
            await settle(pilot)
            assert isinstance(again.screen, TimelineScreen)  # seen once: the next console opens as usual
            hits = [cb for text, cb, _ in PgdrCommands(again.screen)._actions() if text.startswith("Restore: show the")]
            hits[0]()
            await settle(pilot)
            assert isinstance(again.screen, RestoreProgressScreen) and again.screen.finished
