"""The characters the console draws, in Unicode and in plain ASCII.

An operator on a serial console, a Windows SSH client with a bitmap font or a ``LANG=C`` session
must still read the timeline, so every glyph has an ASCII twin. ASCII is used when ``PGDR_ASCII=1``,
or automatically when the terminal's encoding is not UTF-8. Unicode glyphs are limited to the WGL4
set that nearly every terminal font has.

In ASCII mode the widgets' own drawing goes plain too (``pgdr_tui.widgets.plain``): box borders
become ``+-|``, progress bars ``###---``, checkboxes ``[X]``, the list arrow ``v``, and cut text
ends in ``...``. What stays Unicode is drawn by Textual itself and cannot be replaced per app:
scrollbar thumbs (block elements, shown only when a view overflows) and the mouse-only
"maximize"/tooltip decorations. Neither carries information the keyboard user needs.
"""

from __future__ import annotations

import locale
import os
import sys
from dataclasses import dataclass


@dataclass(frozen=True)
class Glyphs:
    full: str
    partial: str
    wal_only: str
    gap: str
    empty: str
    backup: str
    #: An incremental backup (PostgreSQL 17+): the full backup's mark, hollow (an increment on it).
    incremental: str
    logical: str
    restore_point: str
    destructive: str
    axis: str
    tick: str
    cursor_label: str
    cursor: str
    ok: str
    bad: str
    dot: str
    ellipsis: str
    #: Plain ASCII everywhere: also borders, progress bars, checkboxes and list arrows (``pgdr_tui.widgets.plain``).
    plain: bool = False
    #: Between two parts of the header.
    sep: str = "│"


UNICODE = Glyphs(
    full="█",
    partial="▌",
    wal_only="░",
    gap="!",
    empty=" ",
    backup="▲",
    incremental="∆",
    logical="○",
    restore_point="◆",
    destructive="▼",
    axis="─",
    tick="┬",
    cursor_label="▲",
    cursor="┃",
    ok="✓",
    bad="✗",
    dot="·",
    ellipsis="…",
)

ASCII = Glyphs(
    full="#",
    partial="+",
    wal_only=".",
    gap="!",
    empty=" ",
    backup="^",
    incremental="i",
    logical="o",
    restore_point="R",
    destructive="X",
    axis="-",
    tick="+",
    cursor_label="^",
    cursor="|",
    ok="ok",
    bad="X",
    dot="-",
    ellipsis="...",
    plain=True,
    sep="|",
)


def wants_ascii(environ: dict[str, str] | None = None, encoding: str | None = None) -> bool:
    """ASCII when asked (``PGDR_ASCII``) or when the terminal cannot be assumed to draw UTF-8."""
    env = os.environ if environ is None else environ
    flag = env.get("PGDR_ASCII", "").strip().lower()
    if flag in ("1", "yes", "true", "on"):
        return True
    if flag in ("0", "no", "false", "off"):
        return False
    enc = encoding or getattr(sys.stdout, "encoding", None) or locale.getpreferredencoding(False) or ""
    return enc.lower().replace("-", "").replace("_", "") not in ("utf8", "utf8mb4")


def choose(ascii_only: bool | None = None) -> Glyphs:
    return ASCII if (wants_ascii() if ascii_only is None else ascii_only) else UNICODE
