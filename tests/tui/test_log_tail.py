"""A progress screen's log keeps its newest line in view when the lines above it grow."""

from __future__ import annotations

from textual.app import App, ComposeResult
from textual.widgets import Static

from pgdr_tui.widgets.tail import LogTail
from tests.tui.conftest import run_async


class _Progress(App[None]):
    """A step line above a log, as the backup and restore screens lay them out."""

    CSS = "#step { height: auto; } LogTail { height: 1fr; }"

    def compose(self) -> ComposeResult:
        yield Static("step", id="step")
        yield LogTail(wrap=True)


@run_async
async def test_the_newest_line_stays_in_view_when_the_step_line_grows() -> None:
    app = _Progress()
    async with app.run_test(size=(40, 12)) as pilot:
        log = app.query_one(LogTail)
        for number in range(30):
            log.write(f"line {number}")
        await pilot.pause()
        await pilot.pause()
        assert log.scroll_y == log.max_scroll_y > 0
        app.query_one("#step", Static).update("step\nwrapped onto\nthree lines")  # the log loses two lines
        await pilot.pause()
        await pilot.pause()
        assert log.scroll_y == log.max_scroll_y, "the newest line went out of view"
