"""Open the console on a repository as an operator would, headless; print open time and scrub steps.

Run in a fresh interpreter by ``bench/ops/tui.py``: ``python -m bench.tui_probe CONFIG [STEPS]``.
The clock starts before pgdr_tui is imported and stops when the timeline widget has its model and
has drawn. Until the model is there the probe only sleeps: Pilot's ``pause`` sends a message through
every widget's queue, and doing that every 10 ms took the app a tenth of its CPU while it loaded. A
scrub step is one key press until the screen has processed and redrawn it, counted in CPU time:
Pilot's own waits for idleness (about 90 ms of a wall-clock step here) are not the app's. Scrubbing
starts once the catalog is fully loaded (``loaded_s``): on a cold open the console first draws the
timeline from archive times (``early``) and goes on reading the WAL index.
"""

from __future__ import annotations

import time

STARTED = time.perf_counter()

import asyncio  # noqa: E402 - the clock starts before any import
import json  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402


async def probe(config: str, steps: int) -> dict[str, float]:
    from backend.config import load_config
    from pgdr_tui.app import PgdrApp
    from pgdr_tui.source import Source
    from pgdr_tui.widgets.timeline import TimelineView

    app = PgdrApp(Source(load_config(config), probe_server=False), ascii_only=False)
    async with app.run_test(size=(120, 40)) as pilot:
        while app.model is None:
            await asyncio.sleep(0.005)
        await pilot.pause()
        opened = time.perf_counter() - STARTED
        early = bool(app.load_status)  # drawn from archive times while the WAL index is still read
        await app.workers.wait_for_complete()
        await pilot.pause()
        loaded = time.perf_counter() - STARTED
        app.screen.query_one(TimelineView).focus()
        samples = []
        for i in range(steps):
            began = time.process_time()
            await pilot.press("left" if i % 2 == 0 else "shift+left")
            await pilot.pause()
            samples.append(time.process_time() - began)
    ordered = sorted(samples)
    return {
        "open_s": opened,
        "early": early,
        "loaded_s": loaded,
        "scrub_median_ms": statistics.median(samples) * 1000,
        "scrub_p95_ms": ordered[int(len(ordered) * 0.95) - 1] * 1000,
    }


if __name__ == "__main__":
    print(json.dumps(asyncio.run(probe(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 40))))
