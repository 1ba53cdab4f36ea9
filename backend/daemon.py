"""``pgdr --daemon``: one long-running process that runs the backup jobs on cron schedules.

Jobs: physical base backups, incremental ones between them (PostgreSQL 17+), logical dumps,
verification (daily checksums, weekly restore rehearsal), retention (on its own schedule and after
every scheduled backup) and the RPO check.
Each schedule is a cron expression (``[schedule]``, read in ``schedule.timezone``); "" disables
the job. Five fields as usual, or six with a leading seconds field (``*/5 * * * * *``: every five
seconds; for tests and demos).

The loop is deliberately simple: compute the next due time across the jobs, sleep on the stop event
until then, run the due jobs one after another (so jobs never overlap each other; the repository
lock keeps a manual ``pgdr backup`` and a scheduled one apart, and a scheduled run that finds the
lock held is skipped and logged). A run missed while the daemon was down (the status file's last
run is older than the schedule's previous fire time) runs once at start. When the full and the
incremental base backup fall due together (a weekly full at the hour of a six-hourly incremental),
the full one runs and that incremental is skipped: taken right after the full it would hold next to
nothing, and it would only lengthen the chain the next ones build on.

SIGTERM or SIGINT stops it: the running job is cancelled (a cancelled backup removes what it had
written, so nothing is half listed) and the daemon exits 0. The cancel event is only seen between
chunks of data, and pg_basebackup can sit for minutes waiting for a spread checkpoint (pg_dump for a
lock) without sending a byte, so on stop the daemon also ends its own pg_basebackup and pg_dump
children: the backup then fails over to the same cleanup, and is recorded as cancelled.

Beside the schedule, a thread drains the upload queues of the repositories ``wal-push`` does not
wait for (every ``UPLOAD_POLL`` seconds, backing off to ``UPLOAD_RETRY_MAX`` while a repository
refuses): the uploader a push starts is the only other thing that drains them, and one that died
would leave its segments out of S3 until the next push, hours away on an idle database.

Logs go to stdout, one line per event: text, or JSON objects (time, level, job, message, fields).
The status file (``daemon-<cluster>.json`` in the state dir, replaced atomically) records per job
the last run's start, end, result (ok, failed, skipped, cancelled), error, duration and the next
run; ``pgdr status`` reads it. Prometheus gauges go to a textfile and, if configured, to /metrics.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo
from pathlib import Path
from types import FrameType
from typing import Any

from backend import jobs, pids
from backend.config import MASK, Config
from backend.durable import replace_file
from backend.errors import ConfigError, PgdrError
from backend.metrics import Metrics, MetricsServer
from backend.progress import Cancelled, Progress, ProgressCallback

log = logging.getLogger("pgdr")

#: Every job the daemon knows, in the order due jobs run when several are due at once.
JOBS: tuple[str, ...] = (
    "base_backup",
    "incremental_backup",
    "logical_dump",
    "expire",
    "verify",
    "verify_deep",
    "rpo_check",
    "wal_index",
)
BACKUP_JOBS = ("base_backup", "incremental_backup", "logical_dump")
#: One wal_index run's share of pg_waldump work; what is left waits for the next run.
WAL_INDEX_BUDGET_S = 600.0

#: Longest single sleep: the schedule is recomputed at least this often (clock changes, suspend).
MAX_SLEEP = 60.0
PROGRESS_EVERY = 10.0
#: Seconds between looks at the upload queues: how long a queued segment can wait on an idle database.
UPLOAD_POLL = 5.0
#: Longest wait between upload attempts while a repository fails (the queue entries wait durably).
UPLOAD_RETRY_MAX = 60.0
#: How long stopping waits for an upload in flight (one file) before leaving it to the next start.
UPLOAD_JOIN = 10.0


# --- schedules -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Schedule:
    job: str
    expr: str
    zone: tzinfo

    @property
    def _seconds(self) -> bool:
        return len(self.expr.split()) == 6

    def next_after(self, when: datetime) -> datetime:
        from croniter import croniter

        nxt: datetime = croniter(self.expr, when.astimezone(self.zone), second_at_beginning=self._seconds).get_next(
            datetime
        )
        return nxt

    def prev_before(self, when: datetime) -> datetime:
        from croniter import croniter

        prev: datetime = croniter(self.expr, when.astimezone(self.zone), second_at_beginning=self._seconds).get_prev(
            datetime
        )
        return prev


def parse_schedules(cfg: Config) -> dict[str, Schedule]:
    """The enabled jobs' schedules; a bad expression or zone is a ConfigError naming the key."""
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    from croniter import croniter

    try:
        zone = ZoneInfo(cfg.schedule.timezone or "UTC")
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(
            f"schedule.timezone in {cfg.where()} is not a known time zone (got {cfg.schedule.timezone!r}): "
            'use an IANA name such as "UTC" or "Europe/Berlin"'
        ) from None
    schedules = {}
    for job in JOBS:
        expr = " ".join(str(getattr(cfg.schedule, job)).split())
        if not expr:
            continue
        fields = len(expr.split())
        valid = expr.startswith("@") or fields in (5, 6)
        if valid:
            valid = croniter.is_valid(expr, second_at_beginning=fields == 6)
        if not valid:
            raise ConfigError(
                f"schedule.{job} in {cfg.where()} is not a cron expression (got {expr!r}): use five fields "
                '"minute hour day month weekday" (or six with a leading seconds field), or "" to disable it'
            )
        schedules[job] = Schedule(job, expr, zone)
    if "incremental_backup" in schedules and "base_backup" not in schedules:
        raise ConfigError(
            f'schedule.incremental_backup in {cfg.where()} is set but schedule.base_backup is "": each incremental '
            "builds on the one before, so without scheduled full backups the chain never ends (a restore combines "
            'all of it, retention can expire none of it); schedule full ones too, e.g. base_backup = "0 1 * * 0"'
        )
    return schedules


class Superseded(PgdrError):
    """A scheduled run another job due at the same time stands in for: recorded as skipped, not failed."""


# --- the status file -------------------------------------------------------------------------------


def status_path(cfg: Config) -> Path:
    from backend.statedir import state_dir

    return state_dir() / f"daemon-{cfg.cluster.name}.json"


def _lock_path(cfg: Config) -> Path:
    return status_path(cfg).with_suffix(".lock")


def metrics_textfile(cfg: Config) -> Path:
    from backend.statedir import state_dir

    return Path(cfg.daemon.metrics_textfile) if cfg.daemon.metrics_textfile else state_dir() / "pgdr.prom"


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    replace_file(path, json.dumps(data, indent=2, default=str))


def _iso(when: datetime | None) -> str | None:
    return when.astimezone(UTC).isoformat(timespec="seconds") if when else None


def _parse(value: object) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None


def _daemon_alive(cfg: Config, pid: object) -> bool:
    """The daemon holds an flock on its lock file for its whole life: a free lock means it is gone."""
    try:
        fd = os.open(_lock_path(cfg), os.O_RDONLY)
    except FileNotFoundError:
        return False
    except OSError:
        return pids.alive(pid)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return pids.alive(pid)
    finally:
        os.close(fd)
    return False


@dataclass
class DaemonStatus:
    """What ``pgdr status`` shows: the status file, and whether its daemon is alive."""

    cluster: str
    running: bool
    path: Path
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def jobs(self) -> dict[str, dict[str, Any]]:
        found = self.data.get("jobs")
        return found if isinstance(found, dict) else {}

    @property
    def problems(self) -> list[str]:
        problems = []
        if not self.data:
            problems.append(f"the daemon has never run for cluster {self.cluster} (start it with `pgdr --daemon`)")
        elif not self.running:
            problems.append("the daemon is not running")
        for name, job in self.jobs.items():
            if job.get("result") == "failed":
                problems.append(f"{name}: the last run failed: {job.get('error') or 'no error recorded'}")
        return problems

    @property
    def healthy(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        return {
            "cluster": self.cluster,
            "running": self.running,
            "healthy": self.healthy,
            "problems": self.problems,
            "pid": self.data.get("pid") if self.running else None,
            "started": self.data.get("started"),
            "stopped": self.data.get("stopped"),
            "updated": self.data.get("updated"),
            "status_file": str(self.path),
            "jobs": self.jobs,
            "backups": self.data.get("backups", {}),
            "rpo": self.data.get("rpo"),
        }

    def render(self) -> str:
        if not self.data:
            return f"pgdr daemon for cluster {self.cluster}: never run (no {self.path}): start it with `pgdr --daemon`"
        if self.running:
            state = f"running (pid {self.data.get('pid')}, since {_show(self.data.get('started'))} UTC)"
        else:
            state = f"NOT running (last stopped {_show(self.data.get('stopped'))} UTC)"
        lines = [f"pgdr daemon for cluster {self.cluster}: {state}"]
        rows = [["JOB", "SCHEDULE", "LAST RUN (UTC)", "RESULT", "TOOK", "NEXT RUN (UTC)"]]
        for name in JOBS:
            job = self.jobs.get(name)
            if job is None:
                continue
            result = "running" if job.get("running_since") else str(job.get("result") or "-")
            took = job.get("duration_seconds")
            rows.append(
                [
                    name,
                    job.get("schedule") or "disabled",
                    _show(job.get("last_start")),
                    result,
                    f"{took:.1f} s" if isinstance(took, int | float) else "-",
                    _show(job.get("next_run")) if self.running else "-",
                ]
            )
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        lines += ["  " + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows]
        for name in JOBS:
            job = self.jobs.get(name) or {}
            if job.get("error") and job.get("result") in ("failed", "skipped", "cancelled"):
                lines.append(f"  {name}: {job['result']}: {job['error']}")
        lines.append("healthy" if self.healthy else "UNHEALTHY: " + "; ".join(self.problems))
        return "\n".join(lines)


def _show(value: object) -> str:
    when = _parse(value)
    return when.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S") if when else "-"


def read_status(cfg: Config) -> DaemonStatus:
    path = status_path(cfg)
    data: dict[str, Any] = {}
    with contextlib.suppress(OSError, ValueError):
        loaded = json.loads(path.read_text())
        if isinstance(loaded, dict):
            data = loaded
    return DaemonStatus(cfg.cluster.name, bool(data) and _daemon_alive(cfg, data.get("pid")), path, data)


# --- logging ---------------------------------------------------------------------------------------


class _Formatter(logging.Formatter):
    def __init__(self, fmt: str, secret: str) -> None:
        super().__init__()
        self.json = fmt == "json"
        self.secret = secret

    def format(self, record: logging.LogRecord) -> str:
        when = datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        job = str(getattr(record, "job", "") or "")
        fields = dict(getattr(record, "fields", {}) or {})
        if record.exc_info:
            fields["traceback"] = self.formatException(record.exc_info)
        message = record.getMessage()
        if self.json:
            line = json.dumps(
                {"time": when, "level": record.levelname, "job": job, "message": message, "fields": fields},
                default=str,
                ensure_ascii=False,
            )
        else:
            shown = " ".join(f"{k}={_field(v)}" for k, v in fields.items() if k != "traceback")
            line = f"{when} {record.levelname:<7} {f'[{job}] ' if job else ''}{message}{f' {shown}' if shown else ''}"
            if "traceback" in fields:
                line += "\n" + str(fields["traceback"])
        return line.replace(self.secret, MASK) if self.secret else line


def _field(value: object) -> str:
    if not isinstance(value, str):
        return json.dumps(value, default=str, separators=(",", ":"), ensure_ascii=False)
    return json.dumps(value, ensure_ascii=False) if (not value or any(c in value for c in ' "=\n')) else value


@contextlib.contextmanager
def _logging(cfg: Config, log_format: str) -> Iterator[None]:
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(_Formatter(log_format, cfg.telegram.bot_token))
    saved = (log.level, log.propagate)
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    try:
        yield
    finally:
        log.removeHandler(handler)
        log.setLevel(saved[0])
        log.propagate = saved[1]


def _event(job: str = "", **fields: Any) -> dict[str, Any]:
    return {"extra": {"job": job, "fields": fields}}


# --- the daemon ------------------------------------------------------------------------------------


@contextlib.contextmanager
def _single_instance(cfg: Config) -> Iterator[None]:
    path = _lock_path(cfg)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 100, 0).decode(errors="replace").strip() or "?"
            raise PgdrError(
                f"another pgdr daemon (pid {holder}) is running for cluster {cfg.cluster.name}: "
                "stop it first (`pgdr status` shows it)"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)


def run_daemon(cfg: Config, *, log_format: str = "text", stop: threading.Event | None = None) -> int:
    """Run the scheduler until ``stop`` is set (or SIGTERM/SIGINT, when run in the main thread); 0 on a clean stop."""
    schedules = parse_schedules(cfg)
    with _logging(cfg, log_format), _single_instance(cfg):
        return _Daemon(cfg, schedules, stop or threading.Event()).run()


class _Daemon:
    def __init__(self, cfg: Config, schedules: dict[str, Schedule], stop: threading.Event) -> None:
        self.cfg = cfg
        self.schedules = schedules
        #: Set by a signal (through the watcher thread) or by the caller; it is also every job's cancel event.
        self.stop = stop
        self.metrics = Metrics(cfg.cluster.name)
        self.status_file = status_path(cfg)
        self.status: dict[str, Any] = read_status(cfg).data
        self.next_due: dict[str, datetime] = {}
        #: Set while no job runs; the stopper thread ends backup programs until it is.
        self.idle = threading.Event()
        self.idle.set()
        self._wake: tuple[int, int] | None = None
        #: The jobs due in the pass of the loop now running (the full base backup beats an incremental).
        self._due_together: set[str] = set()

    # -- lifecycle --

    def run(self) -> int:
        now = datetime.now(UTC)
        previous_start = _parse(self.status.get("first_started"))
        found = self.status.get("jobs")
        jobs_state: dict[str, Any] = found if isinstance(found, dict) else {}
        self.status = {
            "cluster": self.cfg.cluster.name,
            "pid": os.getpid(),
            "config": self.cfg.where(),
            "first_started": _iso(previous_start or now),
            "started": _iso(now),
            "stopped": None,
            "updated": _iso(now),
            "jobs": {},
            "backups": self.status.get("backups", {}),
            "rpo": self.status.get("rpo"),
        }
        missed = []
        for job in JOBS:
            record = dict(jobs_state.get(job) or {})
            record.pop("running_since", None)
            schedule = self.schedules.get(job)
            record["schedule"] = schedule.expr if schedule else ""
            record["next_run"] = None
            self.status["jobs"][job] = record
            if schedule is None:
                continue
            self.next_due[job] = schedule.next_after(now)
            covered = _parse(record.get("completed_start")) or previous_start
            previous_fire = schedule.prev_before(now)
            if covered is not None and covered < previous_fire:
                missed.append(job)
                self.next_due[job] = previous_fire
            record["next_run"] = _iso(self.next_due[job])
        server = None
        if self.cfg.daemon.metrics_port:
            address, port = self.cfg.daemon.metrics_address, self.cfg.daemon.metrics_port
            try:
                server = MetricsServer(self.metrics, address, port)
            except OSError as exc:  # in use, privileged, or an address this host does not have
                raise PgdrError(
                    f"cannot serve metrics on {address} port {port} ({exc.strerror or exc}): change "
                    f"daemon.metrics_port or daemon.metrics_address in {self.cfg.where()} (metrics_port = 0: no HTTP)"
                ) from None
        try:
            with self._signals():
                self._save()
                log.info(
                    "pgdr daemon started for cluster %s",
                    self.cfg.cluster.name,
                    **_event(
                        pid=os.getpid(),
                        config=self.cfg.where(),
                        schedules={j: s.expr for j, s in self.schedules.items()},
                        missed=missed,
                        status_file=str(self.status_file),
                        metrics_textfile=str(metrics_textfile(self.cfg)),
                        metrics_port=server.port if server else 0,
                        upload_queues=self._upload_targets(),
                    ),
                )
                uploader = threading.Thread(target=self._upload_queues, name="pgdr-uploader", daemon=True)
                uploader.start()
                try:
                    self._loop(set(missed))
                finally:
                    self.stop.set()
                    uploader.join(timeout=UPLOAD_JOIN)
        finally:
            self.status["stopped"] = _iso(datetime.now(UTC))
            for record in self.status["jobs"].values():
                record["next_run"] = None
            self._save()
            if server is not None:
                server.close()
        log.info("pgdr daemon stopped", **_event())
        return 0

    def _loop(self, missed: set[str]) -> None:
        while not self.stop.is_set():
            now = datetime.now(UTC)
            due = sorted((when, JOBS.index(job), job) for job, when in self.next_due.items() if when <= now)
            if not due:
                if not self.next_due:
                    self.stop.wait(MAX_SLEEP)
                    continue
                sleep = min(when for when in self.next_due.values()) - now
                self.stop.wait(min(max(sleep.total_seconds(), 0.01), MAX_SLEEP))
                continue
            self._due_together = {job for _, _, job in due}
            for _, _, job in due:
                if self.stop.is_set():
                    break
                result = self.run_job(job, "missed run" if job in missed else "schedule")
                missed.discard(job)
                self._reschedule(job)
                if result == "ok" and job in BACKUP_JOBS and "expire" in self.schedules and not self.stop.is_set():
                    self.run_job("expire", f"after {job}")

    # -- the upload queues --

    def _upload_targets(self) -> list[str]:
        """The repositories with an upload queue: those outside ``archive.sync``, when the local one holds it."""
        if not self.cfg.local.path:
            return []
        return [name for name in self.cfg.repository_names if name not in self.cfg.sync_repositories]

    def _upload_queues(self) -> None:
        """Drain each upload queue until stopped; never raises (a dead thread would drain nothing).

        ``wait=False``: while a background uploader holds a queue's lock it is uploading, and it sees
        every entry before it lets go; the daemon only steps in when nobody does.
        """
        from backend.archive import queue
        from backend.archive.queue import INDEX_TARGET

        targets = self._upload_targets()
        retry_in = dict.fromkeys(targets, 0.0)
        next_try = dict.fromkeys(targets, 0.0)
        failing: dict[str, str] = {}
        while targets and not self.stop.is_set():
            for target in targets:
                if self.stop.is_set() or time.monotonic() < next_try[target]:
                    continue
                try:
                    self._clean_queue(target)
                    pending = queue.pending(self.cfg, target)
                    done = queue.drain(self.cfg, target, wait=False, cancel=self.stop) if pending else []
                except Exception as exc:
                    text = str(exc) if isinstance(exc, PgdrError) else f"{type(exc).__name__}: {exc}"
                    retry_in[target] = min(max(retry_in[target] * 2, UPLOAD_POLL), UPLOAD_RETRY_MAX)
                    next_try[target] = time.monotonic() + retry_in[target]
                    if failing.get(target) != text:
                        log.error(
                            "uploading queued WAL to the %s repository failed: %s",
                            target,
                            text,
                            **_event(repository=target, retry_seconds=retry_in[target]),
                        )
                    failing[target] = text
                    continue
                retry_in[target] = 0.0
                if failing.pop(target, None) is not None:
                    log.info("uploads to the %s repository work again", target, **_event(repository=target))
                if done:
                    log.info(
                        "uploaded %d queued WAL file(s) to the %s repository",
                        len(done),
                        target,
                        **_event(repository=target, first=done[0], last=done[-1]),
                    )
            with contextlib.suppress(Exception):
                self._clean_queue(INDEX_TARGET)  # drained by the indexer wal-push starts, at its own pace
            self.stop.wait(UPLOAD_POLL)

    def _clean_queue(self, target: str) -> None:
        from backend.archive import queue

        removed = queue.remove_stale_temporaries(self.cfg, target)
        if removed:
            log.info(
                "removed %d temporary file(s) a killed process left in the %s upload queue",
                removed,
                target,
                **_event(repository=target),
            )

    def _reschedule(self, job: str) -> None:
        # From now, not from the fire time: runs that fell due while the job ran are coalesced.
        self.next_due[job] = self.schedules[job].next_after(datetime.now(UTC))
        self.status["jobs"][job]["next_run"] = _iso(self.next_due[job])
        self._save()

    # -- signals --

    @contextlib.contextmanager
    def _signals(self) -> Iterator[None]:
        """SIGTERM/SIGINT set ``stop`` through a watcher thread (a handler must not take locks)."""
        threading.Thread(target=self._stopper, name="pgdr-stopper", daemon=True).start()
        if threading.current_thread() is not threading.main_thread():
            try:
                yield
            finally:
                self.stop.set()  # ends the stopper thread, even when the loop died of an error
            return
        read_fd, write_fd = os.pipe()
        self._wake = (read_fd, write_fd)
        watcher = threading.Thread(target=self._watch, args=(read_fd,), name="pgdr-signals", daemon=True)
        watcher.start()
        saved = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            yield
        finally:
            self.stop.set()
            for sig, handler in saved.items():
                signal.signal(sig, handler)
            os.write(write_fd, b"\0")
            watcher.join(timeout=5)
            os.close(read_fd)
            os.close(write_fd)
            self._wake = None

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self._wake is not None:
            os.write(self._wake[1], bytes([signum]))

    def _watch(self, read_fd: int) -> None:
        while True:
            data = os.read(read_fd, 1)
            if not data or data == b"\0":
                return
            name = signal.Signals(data[0]).name
            log.info("%s received: stopping (a running job is cancelled)", name, **_event(signal=name))
            self.stop.set()

    def _stopper(self) -> None:
        """Once stopping, end our pg_basebackup / pg_dump children until the running job is over."""
        self.stop.wait()
        while not self.idle.is_set():
            for pid in backup_children():
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGTERM)
            self.idle.wait(0.2)

    # -- jobs --

    def run_job(self, job: str, trigger: str) -> str:
        record = self.status["jobs"][job]
        started = datetime.now(UTC)
        clock = time.monotonic()
        record["running_since"] = _iso(started)
        self.idle.clear()
        self._save()
        log.info("%s started", job, **_event(job, trigger=trigger))
        result, error, detail = "ok", None, ""
        fields: dict[str, Any] = {}
        try:
            if self.stop.is_set():
                raise Cancelled(f"{job} not started: the daemon is stopping")
            ok, detail, fields, error = self._dispatch(job)
            result = "ok" if ok else "failed"
        except (jobs.LockBusy, Superseded) as exc:
            result, error = "skipped", str(exc)
        except (Cancelled, KeyboardInterrupt) as exc:
            result, error = "cancelled", str(exc) or "interrupted: the daemon is stopping"
            self.stop.set()
        except Exception as exc:
            text = str(exc) if isinstance(exc, PgdrError) else f"{type(exc).__name__}: {exc}"
            if self.stop.is_set():  # failed because we stopped it (its programs were ended)
                result, error = "cancelled", f"the daemon is stopping ({text})"
            else:
                result, error = "failed", text
                if not isinstance(exc, PgdrError):
                    log.error("%s: unexpected error", job, exc_info=True, **_event(job))
        finally:
            self.idle.set()
        ended = datetime.now(UTC)
        took = round(time.monotonic() - clock, 3)
        record.pop("running_since", None)
        record.update(
            last_start=_iso(started),
            last_end=_iso(ended),
            result=result,
            error=error,
            duration_seconds=took,
            detail=detail,
            trigger=trigger,
        )
        if result == "ok":
            record["last_success"] = _iso(ended)
        if result != "cancelled":
            record["completed_start"] = _iso(started)
        self._save()
        fields = {"result": result, "duration_seconds": took, **fields}
        if result == "ok":
            log.info("%s finished: %s", job, detail or "ok", **_event(job, **fields))
        elif result == "skipped":
            log.warning("%s skipped: %s", job, error, **_event(job, **fields))
        elif result == "cancelled":
            log.warning("%s cancelled: %s", job, error, **_event(job, **fields))
        else:
            log.error("%s failed: %s", job, error, **_event(job, **fields))
        return result

    def _dispatch(self, job: str) -> tuple[bool, str, dict[str, Any], str | None]:
        """Run one job: (ok, detail, log fields, error when not ok); raises on errors."""
        cfg = self.cfg
        if job == "incremental_backup" and "base_backup" in self._due_together:
            raise Superseded(
                "the full base backup due at the same time ran instead (an incremental right after it would "
                "hold next to nothing)"
            )
        if job in BACKUP_JOBS:
            return self._backup(job)
        if job in ("verify", "verify_deep"):
            deep = job == "verify_deep"
            report = jobs.verify_job(cfg, deep=deep, on_progress=self._progress(job), cancel=self.stop)
            text = report.render()
            summary = _summary(text, problems=not report.ok)
            fields: dict[str, Any] = {"report": text}
            return bool(report.ok), summary, fields, None if report.ok else f"verify found problems: {summary}"
        if job == "expire":
            report = jobs.expire_job(cfg)
            text = report.render()
            return True, _summary(text, problems=False), {"report": text}, None
        if job == "rpo_check":
            rpo = jobs.rpo_check_job(cfg)
            self.status["rpo"] = {**rpo.to_json(), "checked": _iso(datetime.now(UTC))}
            return rpo.ok, rpo.message, {"lag_seconds": rpo.lag_seconds}, None if rpo.ok else rpo.message
        if job == "wal_index":
            from backend.archive.index import index_archive

            done = index_archive(cfg, budget_s=WAL_INDEX_BUDGET_S, cancel=self.stop)
            detail = f"{done.indexed} segments indexed, {done.pending} waiting, {done.unreadable} unreadable"
            counts = {"indexed": done.indexed, "pending": done.pending, "unreadable": done.unreadable}
            return True, detail, counts, None
        raise AssertionError(f"unknown job {job}")  # pragma: no cover

    def _backup(self, job: str) -> tuple[bool, str, dict[str, Any], str | None]:
        """One scheduled backup; ``incremental_backup`` builds on the newest backup (or takes a full one
        when there is none to build on, which the detail says)."""
        logical, incremental = job == "logical_dump", job == "incremental_backup"
        clock = time.monotonic()
        try:
            manifest = jobs.take_backup(
                self.cfg, logical=logical, incremental=incremental, on_progress=self._progress(job), cancel=self.stop
            )
        except (jobs.LockBusy, Cancelled):
            raise
        except Exception as exc:
            if not self.stop.is_set():  # a backup we stopped is cancelled, not failed: no alarm
                took = time.monotonic() - clock
                jobs.notify_backup(self.cfg, logical=logical, incremental=incremental, error=exc, took=took)
            raise
        jobs.notify_backup(self.cfg, logical=logical, incremental=incremental, manifest=manifest)
        import humanize

        # Keyed "incremental" apart from "physical": an incremental's few changed blocks must not pass for
        # the size of the newest full backup (pgdr_backup_size_bytes{kind=...}).
        kind = "incremental" if manifest.incremental else manifest.kind
        self.status.setdefault("backups", {})[kind] = {
            "name": manifest.name,
            "size_bytes": manifest.size_bytes,
            "stored_bytes": manifest.stored_bytes,
            "stop_time": _iso(manifest.stop_time),
            **({"parent": manifest.parent} if manifest.parent else {}),
        }
        detail = (
            f"{manifest.name}: {humanize.naturalsize(manifest.size_bytes)} "
            f"stored as {humanize.naturalsize(manifest.stored_bytes)}"
        )
        fields: dict[str, Any] = {
            "backup": manifest.name,
            "size_bytes": manifest.size_bytes,
            "stored_bytes": manifest.stored_bytes,
        }
        if incremental:
            fields["parent"] = manifest.parent
            if manifest.parent:
                detail += f", incremental on {manifest.parent}"
            else:
                why = manifest.extra.get("full_because") or "no backup to build on"
                detail += f", taken as a full backup: {why}"
                fields["full_because"] = why
        return True, detail, fields, None

    def _progress(self, job: str) -> ProgressCallback:
        last = [0.0]

        def report(p: Progress) -> None:
            now = time.monotonic()
            if now - last[0] >= PROGRESS_EVERY:
                last[0] = now
                log.info("%s", p.message or p.step, **_event(job, done=p.done, total=p.total))

        return report

    # -- status and metrics --

    def _save(self) -> None:
        self.status["updated"] = _iso(datetime.now(UTC))
        try:
            _write_json(self.status_file, self.status)
        except OSError as exc:
            log.error("cannot write the status file %s: %s", self.status_file, exc, **_event())
        self._refresh_metrics()

    def _refresh_metrics(self) -> None:
        m = self.metrics
        for job, record in self.status["jobs"].items():
            success = _parse(record.get("last_success"))
            if success:
                m.set("pgdr_last_success_timestamp_seconds", success.timestamp(), job=job)
            ended = _parse(record.get("last_end"))
            if ended:
                m.set("pgdr_last_run_timestamp_seconds", ended.timestamp(), job=job)
            if isinstance(record.get("duration_seconds"), int | float):
                m.set("pgdr_job_duration_seconds", record["duration_seconds"], job=job)
            if record.get("result") in ("ok", "failed", "skipped"):
                m.set("pgdr_job_success", 0 if record["result"] == "failed" else 1, job=job)
        for kind, backup in (self.status.get("backups") or {}).items():
            m.set("pgdr_backup_size_bytes", backup.get("size_bytes", 0), kind=kind)
            m.set("pgdr_backup_stored_bytes", backup.get("stored_bytes", 0), kind=kind)
        rpo = self.status.get("rpo") or {}
        if isinstance(rpo.get("lag_seconds"), int | float):
            m.set("pgdr_wal_archive_lag_seconds", rpo["lag_seconds"])
        if "ok" in rpo:
            m.set("pgdr_rpo_alarm", 0 if rpo["ok"] else 1)
        path = metrics_textfile(self.cfg)
        try:
            m.write_textfile(path)
        except OSError as exc:
            log.error("cannot write the metrics textfile %s: %s", path, exc, **_event())


#: The programs a backup job runs that may block without output, so ``stop`` ends them.
BACKUP_PROGRAMS = (b"pg_basebackup", b"pg_dump")


def backup_children() -> list[int]:
    """Our child processes running pg_basebackup or pg_dump (read from /proc; none elsewhere)."""
    me = os.getpid()
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            raw = stat.read_bytes()
        except OSError:
            continue
        head, _, tail = raw.rpartition(b")")
        comm = head.partition(b"(")[2]
        fields = tail.split()
        if len(fields) > 1 and fields[1] == str(me).encode() and comm in BACKUP_PROGRAMS:
            found.append(int(stat.parent.name))
    return found


def _summary(text: str, *, problems: bool) -> str:
    """One line of a report for the status file: with ``problems``, the first line naming one; else the first."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    for line in lines if problems else []:
        lowered = line.lower()
        if any(word in lowered for word in ("fail", "error", "lost", "missing", "mismatch", "corrupt", "gap")):
            return line
    return lines[0] if lines else ""
