"""Named points where the fault-injection tests freeze a pgdr process, to kill it exactly there.

``PGDR_FAULT_STOP=<point>`` makes the process stop itself (SIGSTOP) the first time it reaches that
point; the test then delivers SIGKILL, or SIGCONT to let it finish. Only the first time, so a point
inside a loop (``repository-delete`` is reached once per batch an expire removes) freezes the
process once and a continued process runs to its end. Unset, a check costs one dictionary lookup.
"""

from __future__ import annotations

import os
import signal
import threading

_reached: set[str] = set()
_lock = threading.Lock()


def point(name: str) -> None:
    if os.environ.get("PGDR_FAULT_STOP") != name:
        return
    with _lock:  # two threads at the point at once (the spool's pushers) stop the process once
        if name in _reached:
            return
        _reached.add(name)
    os.kill(os.getpid(), signal.SIGSTOP)
