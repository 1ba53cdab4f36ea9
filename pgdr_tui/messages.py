"""Messages workers post to the UI: threads never touch widgets, they describe what happened.

Progress messages replace each other in the queue (``can_replace``), so a chatty backend callback
costs one redraw per frame, not one per callback.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from textual.message import Message

if TYPE_CHECKING:
    from backend.progress import Progress
    from pgdr_tui.live import LiveState
    from pgdr_tui.model import TimelineModel
    from pgdr_tui.source import ServerState, Verified


class ModelLoaded(Message):
    """A catalog to show; ``final`` False while the WAL index is still being read (archive times)."""

    def __init__(self, model: TimelineModel, *, final: bool = True) -> None:
        super().__init__()
        self.model = model
        self.final = final


class VerifyResults(Message):
    """The newest verify result of each backup that has one."""

    def __init__(self, verified: dict[str, Verified]) -> None:
        super().__init__()
        self.verified = verified


class LoadProgress(Message):
    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, LoadProgress)


class ServerChecked(Message):
    def __init__(self, state: ServerState) -> None:
        super().__init__()
        self.state = state


class LiveChanged(Message):
    """What a look at the server, the daemon and this host's restores found (``pgdr_tui.live``)."""

    def __init__(self, state: LiveState) -> None:
        super().__init__()
        self.state = state


class JobProgress(Message):
    """Progress of a backup or verify running in a worker of the screen that receives it."""

    def __init__(self, progress: Progress, at: float) -> None:
        super().__init__()
        self.progress = progress
        self.at = at

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, JobProgress)


class JobLog(Message):
    """A line for a screen's live log (never coalesced: every line is kept).

    ``when`` is when the job said it, stamped in the worker: the UI may draw a burst of lines later,
    and the log must show when each thing happened, not when it was drawn.
    """

    def __init__(self, line: str, when: datetime | None = None) -> None:
        super().__init__()
        self.line = line
        self.when = when


class JobFinished(Message):
    def __init__(self, result: Any = None, *, error: str | None = None, cancelled: bool = False) -> None:
        super().__init__()
        self.result = result
        self.error = error
        self.cancelled = cancelled
