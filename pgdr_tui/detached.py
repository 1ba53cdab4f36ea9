"""``python -m pgdr_tui.detached --job-dir DIR [--config PATH]``: the restore the console started.

Runs in its own session, with no terminal, so closing the SSH session that started it does not stop
it. It plans the request again (the same ``plan_restore`` the dry run used, so the plan the operator
confirmed is the one executed; if the archive changed so that the plan differs, the log shows the
plan actually run), restores with ``perform_restore`` (audit log, job lock, safety copy: all the
backend's), appends each progress step to ``progress.jsonl`` and writes ``result.json`` last.
No Textual is imported here.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
import traceback
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from backend.errors import PgdrError
from backend.progress import Progress
from pgdr_tui.request import RestoreRequest
from pgdr_tui.restorejob import REPORT_FOLLOWS, command_line, write_json


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pgdr-restore-job")
    parser.add_argument("--job-dir", required=True)
    parser.add_argument("--config")
    args = parser.parse_args(argv)
    folder = Path(args.job_dir)
    cancel = threading.Event()
    # SIGTERM asks the backend to stop at its next check (it removes what it started); SIGHUP is ignored.
    signal.signal(signal.SIGTERM, lambda *_: cancel.set())
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    progress = (folder / "progress.jsonl").open("a", buffering=1)
    last = 0.0

    def on_progress(p: Progress) -> None:
        nonlocal last
        now = time.monotonic()
        final = p.total is not None and p.done >= p.total
        if now - last < 0.2 and not final:
            return
        last = now
        line = {
            "time": datetime.now(UTC).isoformat(),
            "step": p.step,
            "done": p.done,
            "total": p.total,
            "message": p.message,
        }
        progress.write(json.dumps(line) + "\n")

    result: dict[str, Any]
    try:
        from backend.config import load_config
        from backend.recovery import perform_restore, plan_restore

        request = RestoreRequest.from_json(json.loads((folder / "request.json").read_text()))
        cfg = load_config(args.config)
        print(f"pgdr restore job {folder.name}: {request.describe()}", flush=True)
        print("equivalent command: " + command_line(request, "--yes", config=args.config), flush=True)
        on_progress(Progress("plan", 0, 1, "planning"))
        view, plan = plan_restore(
            cfg,
            request.target(cfg.restore.timezone),
            backup=request.backup,
            target_dir=request.target_dir or None,
            port=request.port,
        )
        print(plan.render(), flush=True)
        report = perform_restore(cfg, view, plan, on_progress=on_progress, cancel=cancel)
        text = report.render()
        print(f"{REPORT_FOLLOWS}\n{text}", flush=True)
        _notify(cfg, text, report.reached_target)
        result = {"ok": report.reached_target, "report": report.to_json(), "text": text, "error": None}
    except PgdrError as exc:
        print(f"pgdr: error: {exc}", flush=True)
        result = {"ok": False, "report": None, "text": "", "error": str(exc)}
    except Exception as exc:  # the console must learn of any failure, not find a silent dead pid
        traceback.print_exc()
        result = {"ok": False, "report": None, "text": "", "error": f"{type(exc).__name__}: {exc}"}
    result["finished"] = datetime.now(UTC).isoformat()
    progress.close()
    write_json(folder / "result.json", result)
    return 0 if result["ok"] else 3


def _notify(cfg: Any, text: str, ok: bool) -> None:
    """Telegram hears of the restore, as it does of the CLI's (when the jobs module offers it)."""
    try:
        from backend.notify import notify_restore
    except ImportError:
        return
    try:
        notify_restore(cfg, text, ok)
    except Exception:  # a notification never fails a restore
        return


if __name__ == "__main__":
    sys.exit(main())
