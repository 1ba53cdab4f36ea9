"""A log that keeps its last line in view when the screen around it changes."""

from __future__ import annotations

from textual import events
from textual.widgets import RichLog


class LogTail(RichLog):
    """RichLog scrolls to its end when a line is written, not when it shrinks: a progress screen whose
    header or step line grows a line after the log was written (a second header line, a wrapped step)
    hid the newest log line, the one the operator is watching."""

    def on_resize(self, event: events.Resize) -> None:
        super().on_resize(event)
        if self.auto_scroll:
            self.scroll_end(animate=False, immediate=False, x_axis=False)
