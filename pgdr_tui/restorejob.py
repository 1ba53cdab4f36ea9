"""Restores that outlive the console: started detached, watched through files, re-attached on reopen.

A restore can take an hour; the SSH session that started it may drop at minute five. So the console
never runs a restore in its own process: it starts ``python -m pgdr_tui.detached`` in a new session
(``start_new_session``: no controlling terminal, no SIGHUP when the terminal goes), with stdin closed
and stdout/stderr in a log file, and watches files in the job folder
``<state dir>/restore/<UTC stamp>/``:

* ``request.json``  what to restore (written before the start, read by the child);
* ``job.json``      ``{pid, argv, log, started, cluster, config, request}`` (written by the console);
* ``progress.jsonl`` one JSON line per progress step (appended by the child);
* ``restore.log``   the child's output: the plan, then ``REPORT_FOLLOWS`` and the report;
* ``result.json``   the outcome (written last by the child, atomically);
* ``seen``          written by the console that showed the outcome to the operator.

A console opened later finds the newest job without ``result.json`` whose pid still runs that
module, and shows it. If instead the newest job finished while no console watched it (the SSH
session dropped mid-restore), the console shows its final report once, so the operator learns where
recovery actually stopped without hunting for the log. No Textual here: plain files and processes.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from backend import pids
from backend.config import Config
from pgdr_tui.request import RestoreRequest

MODULE = "pgdr_tui.detached"
#: The line before the report in ``restore.log``: the console shows the report from ``result.json``,
#: under the log and in the colour of the outcome, so it shows the log only up to here.
REPORT_FOLLOWS = "--- the restore's report ---"


def jobs_dir(state_dir: Path) -> Path:
    return state_dir / "restore"


def command_line(request: RestoreRequest, *extra: str, config: str | Path | None = None) -> str:
    """``pgdr restore ...`` for ``request``, quoted for a POSIX shell: pasted, it runs this same restore.

    A timestamp holds a space, and a directory or config path may hold anything.
    """
    where = ["--config", str(config)] if config is not None else []
    return shlex.join(["pgdr", *where, "restore", *request.cli_args(), *extra])


@dataclass
class RestoreJob:
    folder: Path
    pid: int
    argv: list[str]
    started: datetime
    cluster: str
    request: RestoreRequest
    #: The config file the console that started it read (None: the environment only).
    config: str | None = None
    _proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    _offset: int = field(default=0, repr=False)

    @property
    def log(self) -> Path:
        return self.folder / "restore.log"

    @property
    def progress_file(self) -> Path:
        return self.folder / "progress.jsonl"

    @property
    def result_file(self) -> Path:
        return self.folder / "result.json"

    @property
    def seen_file(self) -> Path:
        return self.folder / "seen"

    # --- starting --------------------------------------------------------------------------------

    @classmethod
    def start(cls, cfg: Config, request: RestoreRequest, state_dir: Path, *, now: datetime | None = None) -> RestoreJob:
        started = now or datetime.now(UTC)
        base = jobs_dir(state_dir)
        base.mkdir(mode=0o700, parents=True, exist_ok=True)
        folder = base / started.strftime("%Y%m%dT%H%M%S%fZ")
        folder.mkdir(mode=0o700)
        _write_json(folder / "request.json", request.to_json())
        argv = [sys.executable, "-m", MODULE, "--job-dir", str(folder)]
        if cfg.source is not None:
            argv += ["--config", str(cfg.source)]
        with (folder / "restore.log").open("ab") as log:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                close_fds=True,
                cwd="/",
            )
        config = str(cfg.source) if cfg.source else None
        job = cls(folder, proc.pid, argv, started, cfg.cluster.name, request, config, proc)
        _write_json(
            folder / "job.json",
            {
                "pid": proc.pid,
                "argv": argv,
                "log": str(job.log),
                "started": started.isoformat(),
                "cluster": cfg.cluster.name,
                "config": str(cfg.source) if cfg.source else None,
                "request": request.to_json(),
            },
        )
        return job

    # --- finding -------------------------------------------------------------------------------------

    @classmethod
    def load(cls, folder: Path) -> RestoreJob | None:
        try:
            data = json.loads((folder / "job.json").read_text())
            return cls(
                folder,
                int(data["pid"]),
                [str(a) for a in data["argv"]],
                datetime.fromisoformat(data["started"]),
                str(data["cluster"]),
                RestoreRequest.from_json(data["request"]),
                str(data["config"]) if data.get("config") else None,
            )
        except (OSError, ValueError, KeyError, TypeError):
            return None

    @classmethod
    def all(cls, state_dir: Path, cluster: str | None) -> list[RestoreJob]:
        """The restore jobs of ``cluster`` (None: of every cluster) on this host, newest first (folder
        names are UTC stamps)."""
        base = jobs_dir(state_dir)
        if not base.is_dir():
            return []
        jobs = []
        for folder in sorted(base.iterdir(), reverse=True):
            job = cls.load(folder)
            if job is not None and cluster in (None, job.cluster):
                jobs.append(job)
        return jobs

    @classmethod
    def to_reattach(cls, state_dir: Path) -> RestoreJob | None:
        """For ``pgdr`` with no config file to read: the newest restore of any cluster still running, else
        the newest one that finished while no console watched it (the SSH session of a ``pgdr demo``
        or ``pgdr --config ...`` console dropped), so the console opens on it instead of failing."""
        jobs = cls.all(state_dir, None)
        running = next((job for job in jobs if job.result() is None and job.alive()), None)
        if running is not None:
            return running
        newest = jobs[0] if jobs else None
        if newest is not None and not newest.seen_file.exists() and newest.result() is not None:
            return newest
        return None

    @classmethod
    def active(cls, state_dir: Path, cluster: str) -> RestoreJob | None:
        """The newest restore of ``cluster`` still running (a console reopened during a restore finds it)."""
        for job in cls.all(state_dir, cluster):
            if job.result() is None and job.alive():
                return job
        return None

    @classmethod
    def latest(cls, state_dir: Path, cluster: str) -> RestoreJob | None:
        """The newest restore of ``cluster``, running or not (the palette's "show the last restore")."""
        jobs = cls.all(state_dir, cluster)
        return jobs[0] if jobs else None

    @classmethod
    def unseen(cls, state_dir: Path, cluster: str) -> RestoreJob | None:
        """The newest restore, if it finished while no console showed its outcome; else None.

        Only the newest counts: an older unseen outcome has been overtaken by a later restore, and
        showing it on open would mislead more than help.
        """
        job = cls.latest(state_dir, cluster)
        if job is None or job.seen_file.exists() or job.result() is None:
            return None
        return job

    # --- watching ----------------------------------------------------------------------------------

    def alive(self) -> bool:
        """Whether the restore process still runs (a reused pid running something else does not count)."""
        if self._proc is not None:
            return self._proc.poll() is None
        if not pids.alive(self.pid):
            return False
        try:
            cmdline = Path(f"/proc/{self.pid}/cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            return True  # no /proc: trust the pid
        return MODULE.encode() in cmdline and str(self.folder).encode() in cmdline

    def new_progress(self) -> list[dict[str, Any]]:
        """Progress lines appended since the last call."""
        try:
            with self.progress_file.open("rb") as fh:
                fh.seek(self._offset)
                data = fh.read()
        except OSError:
            return []
        end = data.rfind(b"\n") + 1
        self._offset += end
        out = []
        for line in data[:end].splitlines():
            with contextlib.suppress(ValueError):
                item = json.loads(line)
                if isinstance(item, dict):
                    out.append(item)
        return out

    def log_tail(self, lines: int = 200) -> list[str]:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return []
        return text.splitlines()[-lines:]

    def result(self) -> dict[str, Any] | None:
        try:
            data = json.loads(self.result_file.read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def mark_seen(self) -> None:
        """Note that a console showed the outcome, so the next console does not show it again."""
        with contextlib.suppress(OSError):  # a read-only job folder only means it is shown again
            self.seen_file.touch()

    def finished_without_result(self) -> bool:
        """The process is gone and said nothing: killed, or crashed before writing its result."""
        return not self.alive() and self.result() is None


def _write_json(path: Path, data: dict[str, Any]) -> None:
    temp = path.with_name(path.name + ".tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh, indent=2)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(temp, path)


write_json = _write_json
