"""Named points where the fault-injection tests freeze a pgdr process, to kill it exactly there.

``PGDR_FAULT_STOP=<point>`` makes the process stop itself (SIGSTOP) when it reaches that point;
the test then delivers SIGKILL. Unset, a check costs one dictionary lookup.
"""

from __future__ import annotations

import os
import signal


def point(name: str) -> None:
    if os.environ.get("PGDR_FAULT_STOP") == name:
        os.kill(os.getpid(), signal.SIGSTOP)
