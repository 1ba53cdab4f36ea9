"""Word wrapping for the console's own text: whole sentences at 80 columns, never an ellipsis.

Rich wraps a ``Text`` only through a console; these helpers are pure (a panel rebuilt on every scrub
step must not measure through one) and keep every span's style. Widths are in cells: the console's
text is ASCII or single-width glyphs (``pgdr_tui.glyphs``).
"""

from __future__ import annotations

import re

from rich.text import Text


def wrap(text: Text, width: int) -> list[Text]:
    """``text`` (one line) broken at spaces into lines of at most ``width`` cells; a word longer than a
    line (a path, a WAL file name) is cut where the line ends and goes on on the next."""
    width = max(1, width)
    plain = text.plain
    if len(plain) <= width:
        return [text]
    lines: list[Text] = []
    start = 0
    while len(plain) - start > width:
        limit = start + width
        space = plain.rfind(" ", start + 1, limit + 1)
        if space <= start:  # no space to break at: cut the word
            lines.append(text[start:limit])
            start = limit
        else:
            lines.append(text[start:space])
            start = space + 1
    lines.append(text[start:])
    return lines


def labelled(label: str, value: Text, *, label_width: int, width: int, label_style: str = "bold") -> list[Text]:
    """A ``label`` column and ``value`` wrapped beside it, continuation lines indented under the value."""
    room = max(8, width - label_width)
    out = []
    for i, part in enumerate(wrap(value, room)):
        line = Text((label if i == 0 else "").ljust(label_width), style=label_style)
        line.append_text(part)
        out.append(line)
    return out


def lines_of(parts: list[Text], width: int, *, separator: Text, indent: str = "") -> list[Text]:
    """Parts placed on as few lines as ``width`` allows, ``separator`` between two on a line, each line
    after the first starting with ``indent``; a part is never split (one longer than a line is wrapped
    on its own)."""
    lines: list[Text] = []
    current: Text | None = None
    for part in parts:
        if current is not None and len(current.plain) + len(separator.plain) + len(part.plain) <= width:
            current.append_text(separator)
            current.append_text(part)
            continue
        if current is not None:
            lines.append(current)
        start = Text(indent) + part if current is not None else part.copy()
        if len(start.plain) > width:
            *whole, current = wrap(start, width)
            lines.extend(whole)
        else:
            current = start
    if current is not None:
        lines.append(current)
    return lines


def hang_indent(line: str) -> int:
    """Where a line's continuation goes: under the value of a ``label:  value`` line (the plan's and the
    report's layout), else two columns in from the line's own indent."""
    match = re.match(r"^(\s*[^:]{1,32}:\s{2,})\S", line)
    if match:
        return len(match[1])
    return len(line) - len(line.lstrip(" ")) + 2


def hanging(text: Text, width: int) -> list[Text]:
    """Each line of ``text`` wrapped to ``width``, its continuation indented by ``hang_indent``."""
    out: list[Text] = []
    for line in text.split("\n", allow_blank=True):
        first, *more = wrap(line, width)
        out.append(first)
        if not more:
            continue
        indent = min(hang_indent(line.plain), width // 2)
        rest = line[len(first.plain) :]
        while rest.plain.startswith(" "):
            rest = rest[1:]
        out.extend(Text(" " * indent) + part for part in wrap(rest, width - indent))
    return out
