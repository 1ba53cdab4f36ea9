"""What every full screen shares: the status header, the footer, and a subscription to the app's data."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

from textual.app import ComposeResult
from textual.screen import Screen
from textual.widgets import Input

from pgdr_tui.widgets.keys import KeysFooter
from pgdr_tui.widgets.statusbar import NavBar, StatusBar

if TYPE_CHECKING:
    from pgdr_tui.app import PgdrApp


class BaseScreen(Screen[None]):
    """A mode screen: header facts on top, keys at the bottom, ``refresh_data`` on every reload."""

    @property
    def pgdr(self) -> PgdrApp:
        return cast("PgdrApp", self.app)

    def compose_header(self) -> ComposeResult:
        yield StatusBar(id="status")
        yield NavBar(self.pgdr.current_mode, id="nav")

    def compose_footer(self) -> ComposeResult:
        yield KeysFooter()

    def on_mount(self) -> None:
        self.pgdr.changed.subscribe(self, self._changed)
        self._changed(None)
        calm(self)

    def _changed(self, _: None) -> None:
        self.show_header()
        self.refresh_data()

    def show_header(self) -> None:
        """The header from the app's facts now (also on the app's live ticks, without ``refresh_data``).

        A live tick can land while the screen is mounted but its widgets are still being composed, or
        already being removed: then there is no header to draw (on_mount draws it once it is there)."""
        for bar in self.query(StatusBar):
            bar.show(self.pgdr.facts, self.pgdr.source.now(), self.pgdr.glyphs.sep)

    def refresh_data(self) -> None:
        """Redraw from ``self.pgdr.model``; screens override."""


def calm(screen: Screen[Any]) -> None:
    """With a frozen clock (tests, screenshots) text cursors do not blink, so every frame is the same.

    Also where a screen's widgets are made plain ASCII when the console is (see ``widgets.plain``):
    every screen, modal or not, calls this once mounted.
    """
    from pgdr_tui.widgets.plain import plain

    plain(screen)
    app = screen.app
    source = getattr(app, "source", None)
    if source is not None and source.frozen:
        for field in screen.query(Input):
            field.cursor_blink = False
