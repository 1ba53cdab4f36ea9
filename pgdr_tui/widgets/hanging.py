"""A block of text whose long lines wrap under their value: the plan and the report, read at 80 columns.

``pgdr restore --dry-run`` prints ``label:  value`` lines made for a wide terminal. Wrapped by the
terminal, a value's second line starts at the left edge, under the labels; here it starts under the
value (``pgdr_tui.widgets.wrap.hanging``), made for the widget's width when it is drawn.
"""

from __future__ import annotations

from rich.text import Text
from textual.geometry import Size
from textual.widget import Widget

from pgdr_tui.widgets.wrap import hanging


class Hanging(Widget):
    DEFAULT_CSS = """
    Hanging { height: auto; }
    """

    def __init__(self, text: Text | str = "", *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self._text = Text(text) if isinstance(text, str) else text
        self._made: tuple[int, list[Text]] | None = None

    @property
    def text(self) -> Text:
        return self._text

    def update(self, text: Text | str) -> None:
        self._text = Text(text) if isinstance(text, str) else text
        self._made = None
        self.refresh(layout=True)

    def _lines(self, width: int) -> list[Text]:
        if self._made is None or self._made[0] != width:
            self._made = (width, hanging(self._text, max(10, width)))
        return self._made[1]

    def get_content_height(self, container: Size, viewport: Size, width: int) -> int:
        return len(self._lines(width))

    def render(self) -> Text:
        text = Text("\n").join(self._lines(self.content_region.width or 80))
        text.no_wrap = True
        return text
