"""A Static whose text wraps under its first character: a paragraph, not a line cut at the edge.

The screens write their one-line texts with a leading space (the margin every line of the console
keeps). Wrapped by the terminal's width, the lines after the first would start at the edge; here the
margin is padding instead (``pgdr.tcss``), so every wrapped line keeps it.
"""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual.widgets import Static


def _unindent(content: Any) -> Any:
    """``content`` without the one leading space of each of its lines (the padding keeps the margin)."""
    if isinstance(content, str):
        content = Text(content)
    if not isinstance(content, Text):
        return content
    lines = content.split("\n", allow_blank=True)
    out = Text("\n").join(line[1:] if line.plain.startswith(" ") else line for line in lines)
    out.style = content.style
    return out


class Para(Static):
    DEFAULT_CSS = """
    Para { padding: 0 1; }
    """

    def __init__(self, content: Any = "", **kwargs: Any) -> None:
        super().__init__(_unindent(content), **kwargs)

    def update(self, content: Any = "", *, layout: bool = True) -> None:
        super().update(_unindent(content), layout=layout)
