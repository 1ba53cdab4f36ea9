"""The widgets' own drawing in plain ASCII, for terminals that cannot draw box and block characters.

``pgdr_tui.glyphs`` covers what the console draws itself (the timeline, marks, ok/bad). Textual's
widgets draw their own characters: borders (box drawing), the progress bar (heavy lines), checkboxes
(half blocks), the select arrow (a triangle). With ``Glyphs.plain`` the app carries the CSS class
``-ascii`` (its rules in ``pgdr.tcss`` switch every border to Textual's ``ascii`` border type and
cut text with ``...``), progress bars use ``AsciiBar``, and ``plain(screen)`` swaps the characters
the other widgets keep in attributes. Nothing here changes Textual globally: a Unicode console in
the same process (the tests run both) is untouched.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console, ConsoleOptions, RenderResult
from rich.text import Text
from textual.renderables.bar import Bar as BarRenderable
from textual.screen import Screen
from textual.widgets import Checkbox, ProgressBar, Static


class AsciiBar(BarRenderable):
    """``####------``: done in ``#``, to do in ``-``, readable even without colour."""

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        width = self.width or options.max_width
        start, end = self.highlight_range
        first = max(0, min(round(start), width))
        last = max(first, min(round(end), width))
        highlight = console.get_style(self.highlight_style)
        background = console.get_style(self.background_style)
        yield Text.assemble(
            ("-" * first, background), ("#" * (last - first), highlight), ("-" * (width - last), background), end=""
        )


def progress_bar(plain_ascii: bool, *, hidden: bool = False, **kwargs: Any) -> ProgressBar:
    """A progress bar without a percentage's ETA, drawn in ASCII when asked; ``hidden`` until a job
    shows it (an empty bar animates, which beside "No backup running." says the opposite)."""
    bar = ProgressBar(show_eta=False, **kwargs)
    bar.display = not hidden
    if plain_ascii:
        bar.BAR_RENDERABLE = AsciiBar  # read when the bar composes its parts, after this
    return bar


def plain(screen: Screen[Any]) -> None:
    """Swap the characters widgets keep in attributes for ASCII ones (when the app is in ASCII mode)."""
    glyphs = getattr(screen.app, "glyphs", None)
    if glyphs is None or not glyphs.plain:
        return
    for box in screen.query(Checkbox):
        box.BUTTON_LEFT, box.BUTTON_RIGHT = "[", "]"
        box.refresh()
    for arrow in screen.query("SelectCurrent .down-arrow").results(Static):
        arrow.update("v")
    for arrow in screen.query("SelectCurrent .up-arrow").results(Static):
        arrow.update("^")
