"""Progress reporting and cancellation shared by the CLI, the TUI and the daemon.

Long operations take ``on_progress`` (a plain callback) and ``cancel`` (a ``threading.Event``), so
the backend never knows who is watching: the CLI draws a line, the TUI posts a message, the daemon logs.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

from backend.errors import PgdrError


@dataclass(frozen=True)
class Progress:
    step: str
    done: int
    total: int | None = None
    message: str = ""


ProgressCallback = Callable[[Progress], None]


def no_progress(_: Progress) -> None:
    """The default callback: nobody is watching."""


class Cancelled(PgdrError):
    """The operation was cancelled; everything it had started writing was removed."""

    exit_code = 130


def check_cancel(cancel: threading.Event | None, what: str) -> None:
    if cancel is not None and cancel.is_set():
        raise Cancelled(f"{what} cancelled: nothing was listed, partial objects were removed")
