"""The confirmed restore: safety copy, base backup, recovery settings, replay, and the honest report.

Order matters for "loses nothing": the server is stopped and the current data directory is moved
aside (never deleted) before anything is written; the base backup is checksum-verified as it is
unpacked, and a bad copy is replaced by the other repository's (the report names the bad one); with
no intact copy anywhere, the old data directory is put back and nothing is started. Only then is the
server started to replay WAL. If recovery stops short of the target, the report says so and the exit
is non-zero.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from backend import faults, server
from backend.archive import prefetch
from backend.config import Config
from backend.errors import PgdrError
from backend.postgres import chown_tree, connect_params, own_folder, program, run_server_program
from backend.progress import Cancelled, Progress, ProgressCallback, check_cancel, no_progress
from backend.repository import Repository
from backend.restore import marker, preflight, tablespaces
from backend.restore import settings as recovery_settings
from backend.restore.combine import restore_chain
from backend.restore.plan import RestorePlan
from backend.walnames import SegmentName, format_lsn, parse_lsn


@dataclass
class RestoreReport:
    reached_target: bool
    #: The last transaction recovery replayed: what the restored data contains, at most.
    last_commit_time: datetime | None = None
    last_commit_xid: int | None = None
    #: The transaction recovery stopped at without replaying it (a time or an exclusive xid target).
    stopped_before: str = ""
    stopped_at_lsn: str | None = None
    stop_reason: str = ""
    new_timeline: int | None = None
    server_state: str = ""
    log_file: Path | None = None
    safety_copy: Path | None = None
    data_dir: Path | None = None
    problems: list[str] = field(default_factory=list)
    base_backup_from: str = ""
    # Copies of the base backup that failed their checks and were passed over for another repository's:
    # the restore is sound, but a damaged copy is waiting to fail the next restore that has no other.
    refused_copies: list[str] = field(default_factory=list)
    #: Each tablespace version folder replaced in place, and where its contents from before are.
    tablespace_copies: dict[Path, Path] = field(default_factory=dict)

    def render(self) -> str:
        lines = ["Restore finished" if self.reached_target else "Restore did NOT reach its target"]
        if self.stop_reason:
            lines.append(f"  recovery stopped: {self.stop_reason}")
        if self.last_commit_time:
            xid = f" (transaction {self.last_commit_xid})" if self.last_commit_xid is not None else ""
            lines.append(f"  last replayed commit: {self.last_commit_time:%Y-%m-%d %H:%M:%S.%f} UTC{xid}")
        if self.stopped_before:
            lines.append(f"  stopped before: {self.stopped_before}")
        if self.stopped_at_lsn:
            lines.append(f"  last replayed LSN: {self.stopped_at_lsn}")
        if self.new_timeline:
            lines.append(f"  new timeline: {self.new_timeline}")
        if self.base_backup_from:
            lines.append(f"  base backup: from the {self.base_backup_from} repository")
        for refused in self.refused_copies:
            lines.append(f"  damaged copy not restored: {refused} (`pgdr verify` reports it; take a new backup)")
        lines.append(f"  server: {self.server_state}; log {self.log_file}")
        if self.safety_copy:
            lines.append(f"  safety copy: {self.safety_copy}")
        for folder, copy in self.tablespace_copies.items():
            lines.append(f"  tablespace safety copy: {copy} (of {folder})")
        for problem in dict.fromkeys(self.problems):
            lines.append(f"  problem: {problem}")
        if not self.reached_target and self.safety_copy and self.data_dir:
            spaces = "".join(f"; {command}" for command in marker.roll_back_commands(self.tablespace_copies))
            lines.append(
                f"  to roll back: pg_ctl stop -D {self.data_dir}; mv {self.data_dir} {self.data_dir}.failed; "
                f"mv {self.safety_copy} {self.data_dir}{spaces}"
            )
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        return {
            "reached_target": self.reached_target,
            "last_commit_time": self.last_commit_time.isoformat() if self.last_commit_time else None,
            "last_commit_xid": self.last_commit_xid,
            "stopped_before": self.stopped_before or None,
            "stopped_at_lsn": self.stopped_at_lsn,
            "stop_reason": self.stop_reason,
            "new_timeline": self.new_timeline,
            "server_state": self.server_state,
            "log_file": str(self.log_file) if self.log_file else None,
            "safety_copy": str(self.safety_copy) if self.safety_copy else None,
            "problems": list(dict.fromkeys(self.problems)),
            "base_backup_from": self.base_backup_from or None,
            "refused_copies": self.refused_copies,
            "tablespace_safety_copies": {str(f): str(c) for f, c in self.tablespace_copies.items()},
        }


def execute(
    cfg: Config,
    plan: RestorePlan,
    repos: list[Repository],
    *,
    on_progress: ProgressCallback = no_progress,
    cancel: threading.Event | None = None,
) -> RestoreReport:
    data_dir = plan.data_dir
    preflight.refuse_unless_ready(cfg, plan)
    owner = preflight.server_owner(cfg, plan)
    if plan.in_place and server.is_running(cfg, data_dir):
        on_progress(Progress("stop", 0, 1, f"stopping the server on {data_dir}"))
        server.stop(cfg, data_dir)
    # From here on the server is stopped: whatever fails, the operator is told how things stand and
    # how to put them back, in one line and never as a traceback (so everything is caught).
    laid = _Laid()
    try:
        _lay_down(cfg, plan, repos, owner, laid, on_progress=on_progress, cancel=cancel)
    except (Cancelled, KeyboardInterrupt) as exc:
        raise Cancelled(f"{str(exc) or 'restore interrupted'}; {_untouched(plan, laid)}") from None
    except PgdrError as exc:
        raise PgdrError(f"{exc}; {_untouched(plan, laid)}", exit_code=exc.exit_code) from None
    except Exception as exc:
        why = f"{exc.strerror}: {exc.filename}" if isinstance(exc, OSError) and exc.strerror else repr(exc)
        raise PgdrError(f"the restore failed after the server was stopped ({why}); {_untouched(plan, laid)}") from None
    try:
        report = _replay(cfg, plan, repos, owner, laid, on_progress=on_progress)
    except Exception as exc:
        raise PgdrError(
            f"the restored server could not be started or followed: {exc}; {_roll_back(plan, laid)}"
        ) from None
    marker.clear_marker(data_dir)
    if "promoted" in report.server_state:
        try:
            recovery_settings.strip_recovery_settings(data_dir)
        except OSError as exc:
            report.problems.append(
                f"the recovery settings could not be removed from {data_dir / recovery_settings.AUTO_CONF} "
                f"({exc.strerror}): remove the block pgdr added before the next base backup"
            )
    report.safety_copy = laid.real_copy or plan.safety_copy
    if laid.real_copy and laid.real_copy != plan.safety_copy:
        report.problems.append(
            f"the half-restored directory an unfinished restore left was moved aside to {plan.safety_copy}: "
            "remove it once this restore is what you want"
        )
    report.data_dir = data_dir
    report.base_backup_from = laid.source
    report.refused_copies = laid.refused
    report.tablespace_copies = tablespaces.real_copies(plan.tablespaces)
    return report


@dataclass
class _Laid:
    """How far a restore got in laying down the new data directory: what a roll-back must undo."""

    moved_aside: bool = False
    source: str = ""
    refused: list[str] = field(default_factory=list)
    quick_fetch: bool = False
    #: The tablespaces' destinations were being written (their moves are undone with the data directory's).
    tablespaces: bool = False
    #: Where the data directory as it was before any unfinished restore is (None: there was none).
    real_copy: Path | None = None


def _lay_down(
    cfg: Config,
    plan: RestorePlan,
    repos: list[Repository],
    owner: tuple[int, int] | None,
    laid: _Laid,
    *,
    on_progress: ProgressCallback,
    cancel: threading.Event | None,
) -> None:
    """Move the old data directory aside, unpack the base backup, and write the recovery settings."""
    data_dir = plan.data_dir
    if plan.in_place:  # from here on the old data directory is being replaced
        laid.real_copy = marker.write_marker(
            data_dir, plan.backup.name, plan.safety_copy, tablespaces.real_copies(plan.tablespaces)
        )
    if plan.safety_copy is not None:
        on_progress(Progress("safety", 0, 1, f"moving {data_dir} aside to {plan.safety_copy}"))
        os.rename(data_dir, plan.safety_copy)
        laid.moved_aside = True
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    laid.tablespaces = True
    tablespaces.make_room(plan.tablespaces, owner)
    own_folder(data_dir, 0o700, owner)  # already: the server's user tries the quick restore_command in the unpack
    check_cancel(cancel, "restore")
    faults.point("restore-after-safety-copy")
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="pgdr-probe") as beside:
        quick_fetch_runs = beside.submit(_quick_fetch_runs, cfg, data_dir)
        laid.source = restore_chain(
            cfg,
            plan.chain,
            sorted(repos, key=lambda repo: repo.name != plan.backup_repository),  # the plan's choice first
            data_dir,
            tablespaces={p.tablespace.oid: p.destination for p in plan.tablespaces},
            on_progress=on_progress,
            cancel=cancel,
            refused=laid.refused,
        )
    laid.quick_fetch = quick_fetch_runs.result()
    write_recovery_settings(cfg, plan, data_dir)
    if owner is not None:
        chown_tree(data_dir, owner)
        for placement in plan.tablespaces:
            chown_tree(placement.folder, owner)


def _replay(
    cfg: Config,
    plan: RestorePlan,
    repos: list[Repository],
    owner: tuple[int, int] | None,
    laid: _Laid,
    *,
    on_progress: ProgressCallback,
) -> RestoreReport:
    """Start the server on the restored directory and follow its recovery to the end."""
    data_dir = plan.data_dir
    log_file = data_dir / "log" / f"pgdr-restore-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.log"
    log_file.parent.mkdir(mode=0o700, exist_ok=True)
    own_folder(log_file.parent, 0o700, owner)
    serving = _serve_wal(cfg, plan, repos, owner)
    try:
        settings = {}
        quick = prefetch.restore_command(cfg, recovery_command(cfg, data_dir))
        if serving is not None and not set(quick) & UNQUOTABLE and laid.quick_fetch:
            settings["restore_command"] = quick
        on_progress(Progress("start", 0, 1, "starting the server to replay WAL"))
        threading.Thread(target=_load_psycopg, name="pgdr-import", daemon=True).start()
        server.start(cfg, data_dir, log_file, settings)
        return follow_recovery(cfg, plan, log_file, on_progress=on_progress)
    finally:
        prefetch.clean(data_dir)  # returns once the prefetcher let go of its folder


#: What postmaster.opts cannot carry: it puts each argument in double quotes, and ``pg_ctl restart``
#: hands them to a shell as they are.
UNQUOTABLE = frozenset('"\\$`')


def _serve_wal(
    cfg: Config, plan: RestorePlan, repos: list[Repository], owner: tuple[int, int] | None
) -> threading.Thread | None:
    """This process's prefetcher for the recovery, from the backup's first segment (None: prefetch is off).

    By the time the server asks, the backup's WAL is fetched and verified, and every later request
    is answered by a process that has the repositories open; it fetches from every configured
    repository, as ``wal-fetch`` does.
    """
    if cfg.restore.prefetch <= 0 or not plan.wal:
        return None
    if [repo.name for repo in repos] != cfg.repository_names:  # the plan read one repository (--repo)
        from backend.repository import open_repositories

        repos = open_repositories(cfg)
    order = {s.segment.name: s.repositories for s in plan.wal}  # the plan's: sound copies first
    return prefetch.serve_restore(cfg, repos, plan.data_dir / "pg_wal", plan.wal[0].segment, owner, order=order)


def _quick_fetch_runs(cfg: Config, data_dir: Path) -> bool:
    """Whether the server's user can run the quick restore_command, as PostgreSQL will (in the data directory).

    Tried once (it asks for no WAL file and ends in ``true``) before the server depends on it: a
    restore_command that fails to start at all would tell PostgreSQL the archive ends there.
    """
    probe = ["/bin/sh", "-c", prefetch.restore_command(cfg, "true")]
    try:
        return run_server_program(probe, data_dir, check=False, cwd=data_dir).returncode == 0
    except (OSError, PgdrError):
        return False


def _load_psycopg() -> None:
    """Imported while the server starts, rather than on the way to the first look at its recovery."""
    import psycopg  # noqa: F401


def _untouched(plan: RestorePlan, laid: _Laid) -> str:
    """After the base backup could not be laid down: put things back, and say how they are now.

    No server was started on it, and nothing was written but the new data directory. A restore
    beside removes the directory it created, so a retry starts clean; in place, the old data
    directory goes back where it was (left stopped: the operator asked to replace it, and decides
    whether it should run again), so a failed restore changes nothing at all. The tablespaces go
    back with it; what could not be put back is said, and the unfinished-restore note stays.
    """
    left = tablespaces.undo(plan.tablespaces) if laid.tablespaces else []
    said = _put_back(plan, laid, done=not left)
    return f"{said}; put the tablespaces back by hand first: {'; '.join(left)}" if left else said


def _put_back(plan: RestorePlan, laid: _Laid, *, done: bool) -> str:
    """``_untouched`` for the data directory; ``done``: nothing else is left to put back (the note may go)."""
    data_dir, safety = plan.data_dir, plan.safety_copy
    start = f"start it again with pg_ctl start -D {data_dir} (or the service manager) if it should run"
    if not plan.in_place:
        shutil.rmtree(data_dir, ignore_errors=True)
        return f"no server was started and {data_dir} was removed"
    earlier = laid.real_copy is not None and laid.real_copy != safety  # a forced restore over an unfinished one
    if safety is None:
        if done:
            marker.clear_marker(data_dir)
        return f"no server was started; {data_dir} is left empty"
    if not laid.moved_aside:
        if not earlier and done:
            marker.clear_marker(data_dir)
        return f"nothing was changed: {data_dir} was not moved, and its server is stopped: {start}"
    try:
        if data_dir.exists():
            shutil.rmtree(data_dir)  # only what this restore wrote: the old directory is the safety copy
        os.rename(safety, data_dir)
    except OSError as exc:
        return (
            f"no server was started; the previous data directory is intact at {safety} (putting it back "
            f"failed: {exc.strerror}): to roll back, rm -r {data_dir}; mv {safety} {data_dir}"
        )
    if earlier:
        return f"{data_dir} is back as it was, half-restored by the unfinished restore: {_roll_back(plan, laid)}"
    if done:
        marker.clear_marker(data_dir)
    return f"nothing was changed: {data_dir} is back in place, and its server is stopped: {start}"


def _roll_back(plan: RestorePlan, laid: _Laid) -> str:
    """The exact commands that put the previous data directory back, once a server may run on the new one."""
    data_dir, safety = plan.data_dir, laid.real_copy or plan.safety_copy
    if safety is None:
        return f"the server on {data_dir} may be running: see its log in {data_dir / 'log'}"
    spaces = "".join(f"; {command}" for command in marker.roll_back_commands(tablespaces.real_copies(plan.tablespaces)))
    return f"to roll back: pg_ctl stop -D {data_dir}; mv {data_dir} {data_dir}.failed; mv {safety} {data_dir}{spaces}"


def recovery_command(cfg: Config, data_dir: Path) -> str:
    """The restore_command: the pgdr the archive_command runs (the server's user can run it), reading the
    config this restore was given, which may not be the one the backup's archive_command named."""
    program = _archiving_pgdr(data_dir) or shutil.which("pgdr") or str(Path(sys.executable).parent / "pgdr")
    config = f" --config {shlex.quote(str(cfg.source))}" if cfg.source else ""
    return f"{program}{config} wal-fetch %f %p"


def _archiving_pgdr(data_dir: Path) -> str | None:
    """The pgdr (and any wrapper before it) of the archive_command in the data directory, minus its --config."""
    archive = ""
    for conf in ("postgresql.conf", "postgresql.auto.conf"):
        path = data_dir / conf
        if path.exists():
            for line in path.read_text(errors="replace").splitlines():
                match = re.match(r"\s*archive_command\s*=\s*'(.*)'\s*(#.*)?$", line)
                if match:
                    archive = match.group(1).replace("''", "'")
    if " wal-push" not in archive:
        return None
    try:
        words = shlex.split(archive.split(" wal-push", 1)[0])
    except ValueError:
        return None
    while "--config" in words[:-1]:
        at = words.index("--config")
        del words[at : at + 2]
    return shlex.join(words) if words else None


def write_recovery_settings(cfg: Config, plan: RestorePlan, data_dir: Path) -> None:
    settings = {"restore_command": recovery_command(cfg, data_dir), **plan.target.recovery_settings()}
    if not plan.in_place:
        settings["archive_mode"] = "off"  # an inspection copy must not push a divergent history into the archive
        if plan.port is not None:
            settings["port"] = str(plan.port)
    heading = f"restore {datetime.now(UTC):%Y-%m-%d %H:%M:%S} UTC, backup {plan.backup.name}"
    recovery_settings.write_recovery_settings(data_dir, settings, heading)


LOG_PATTERNS = {
    "stop": re.compile(r"recovery stopping (?P<what>.*?)(?:, time (?P<time>[\d-]+ [\d:.]+[+-]\d+))?$"),
    "last": re.compile(r"last completed transaction was at log time (?P<time>[\d-]+ [\d:.]+[+-]\d+)"),
    "timeline": re.compile(r"selected new timeline ID: (?P<tli>\d+)"),
    "redo": re.compile(r"redo done at (?P<lsn>[0-9A-F]+/[0-9A-F]+)"),
    "short": re.compile(r"recovery ended before configured recovery target was reached"),
    "fatal": re.compile(r"(FATAL|PANIC):\s+(?P<msg>.*)"),
    "auth": re.compile(r"authentication failed for user", re.IGNORECASE),
    "fetch": re.compile(r"pgdr: error: (?P<msg>.*no intact copy.*)"),
}


#: How often postmaster.pid and pg_control are read while recovery runs: the end of the wait shows there.
WATCH_EVERY = 0.005
#: How often the server itself is asked how far replay got, and whether it paused at the target.
PROBE_EVERY = 0.5
#: How long pg_control may say "in production" while the server refuses pgdr's connections (a socket
#: directory the config does not name): then pg_control's word is taken, as ``pg_ctl promote -w`` does.
UNREACHABLE_GRACE = 10.0


def follow_recovery(
    cfg: Config,
    plan: RestorePlan,
    log_file: Path,
    *,
    on_progress: ProgressCallback = no_progress,
    timeout: float | None = None,
) -> RestoreReport:
    """Watch replay until the server promotes, pauses or stops; then read where it really stopped.

    Whether the server still runs (postmaster.pid) and whether recovery is over (pg_control's state)
    are read every WATCH_EVERY from two small files, with no process or connection. The server is
    asked (pg_is_in_recovery, replay position, pause state) once pg_control says so, and every
    PROBE_EVERY in between: "promoted" is its own pg_is_in_recovery() = false, or pg_control's state
    when the server cannot be reached for UNREACHABLE_GRACE (the report then says why).
    """
    deadline = time.monotonic() + (timeout or max(600.0, plan.estimated_seconds * 10))
    first = plan.wal[0].segment.number if plan.wal else 0
    total = len(plan.wal) or None
    state = "stopped"
    lsn: str | None = None
    replay_time: datetime | None = None
    probed = float("-inf")
    produced: float | None = None  # when pg_control first said recovery is over
    problem = ""
    while time.monotonic() < deadline:
        if not server.postmaster_running(plan.data_dir) and not server.is_running(cfg, plan.data_dir):
            state = "stopped"  # (on pg_ctl's word too)
            break
        if produced is None and server.in_production(plan.data_dir):
            produced = time.monotonic()
        due = produced is not None or time.monotonic() - probed >= PROBE_EVERY
        row = _probe(cfg, plan) if due else None
        if due:
            probed = time.monotonic()
        if isinstance(row, str):
            if produced is not None and time.monotonic() - produced >= UNREACHABLE_GRACE:
                state = "running (promoted, by pg_control; pgdr cannot connect to it)"
                problem = _unreachable_problem(cfg, plan, row)
                break
            time.sleep(PROBE_EVERY if produced is not None else WATCH_EVERY)
            continue
        if row is not None:
            in_recovery, lsn, replay_time, pause = row
            if lsn:
                done = parse_lsn(lsn) // (plan.backup.wal_segment_size or 1) - first + 1
                when = f", replayed up to {replay_time:%Y-%m-%d %H:%M:%S} UTC" if replay_time else ""
                on_progress(Progress("replay", max(done, 0), total, f"replaying WAL at {lsn}{when}"))
            if not in_recovery:
                state = "running (promoted)"
                break
            if pause == "paused":
                state = "running, recovery paused at the target"
                break
        time.sleep(WATCH_EVERY)
    else:
        state = "still recovering (pgdr stopped waiting)"
    report = _report(plan, log_file, state, lsn, replay_time)
    if problem:
        report.problems.append(problem)
    if report.last_commit_xid is None and report.new_timeline and report.stopped_at_lsn:
        report.last_commit_xid = _last_commit_xid(cfg, plan.data_dir, report.new_timeline, report.stopped_at_lsn)
    return report


_COMMIT_RECORD = re.compile(r"\btx:\s+(?P<xid>\d+), lsn: (?P<lsn>[0-9A-F]+/[0-9A-F]+),.*desc: COMMIT\b")


def _last_commit_xid(cfg: Config, data_dir: Path, new_timeline: int, redo_done: str) -> int | None:
    """The transaction of the last commit replayed, read from the new timeline's first segment.

    At promotion PostgreSQL copies the WAL it replayed, up to where it stopped, into the new
    timeline's first segment in pg_wal: the last COMMIT in it at or before "redo done" is the last
    transaction the restored data holds. None when that segment holds no commit (the last one is in
    an earlier segment) or cannot be read: the report then gives the commit's time alone.
    """
    lsn = parse_lsn(redo_done)
    segment_size = 0
    try:
        first = next(
            p for p in sorted((data_dir / "pg_wal").glob(f"{new_timeline:08X}" + "[0-9A-F]" * 16)) if p.is_file()
        )
        segment_size = first.stat().st_size
        start = SegmentName.parse(first.name, segment_size).start_lsn
        argv = [program(cfg, "pg_waldump"), "--rmgr=Transaction", f"--start={format_lsn(start)}"]
        argv += [f"--end={format_lsn(lsn + 1)}", str(first)]
        dumped = subprocess.run(
            argv, capture_output=True, text=True, check=False, timeout=60, env={**os.environ, "LC_ALL": "C"}
        )
    except (StopIteration, OSError, ValueError, PgdrError, subprocess.TimeoutExpired):
        return None
    commits = [m for m in map(_COMMIT_RECORD.search, dumped.stdout.splitlines()) if m]
    return int(commits[-1].group("xid")) if commits and segment_size else None


def _probe(cfg: Config, plan: RestorePlan) -> tuple[bool, str | None, datetime | None, str] | str | None:
    """The server's answer, or why it could not be asked (a string)."""
    import psycopg

    params = connect_params(cfg, port=plan.port, timeout=3, application="pgdr-restore")
    try:
        with psycopg.connect(**params) as conn:
            row = conn.execute(
                "SELECT pg_is_in_recovery(), pg_last_wal_replay_lsn()::text, pg_last_xact_replay_timestamp(),"
                " CASE WHEN pg_is_in_recovery() THEN pg_get_wal_replay_pause_state() ELSE '' END"
            ).fetchone()
    except psycopg.Error as exc:
        return next(iter(str(exc).strip().splitlines()), type(exc).__name__)
    if row is None:
        return None
    return bool(row[0]), row[1], row[2], str(row[3])


def _report(
    plan: RestorePlan, log_file: Path, state: str, lsn: str | None, replay_time: datetime | None
) -> RestoreReport:
    report = RestoreReport(
        reached_target=False, server_state=state, log_file=log_file, stopped_at_lsn=lsn, last_commit_time=replay_time
    )
    text = log_file.read_text(errors="replace") if log_file.exists() else ""
    short = False
    for line in text.splitlines():
        if m := LOG_PATTERNS["stop"].search(line):
            _read_stop(report, m.group("what"), _pg_time(m.group("time")) if m.group("time") else None)
        elif m := LOG_PATTERNS["last"].search(line):
            report.last_commit_time = report.last_commit_time or _pg_time(m.group("time"))
        elif m := LOG_PATTERNS["timeline"].search(line):
            report.new_timeline = int(m.group("tli"))
        elif m := LOG_PATTERNS["redo"].search(line):
            report.stopped_at_lsn = report.stopped_at_lsn or m.group("lsn")
        elif LOG_PATTERNS["short"].search(line):
            short = True
        elif m := LOG_PATTERNS["fetch"].search(line):
            report.problems.append(m.group("msg"))
        elif (m := LOG_PATTERNS["fatal"].search(line)) and not LOG_PATTERNS["auth"].search(line):
            # pgdr's own probes refused by pg_hba.conf: said once, with the fix, by follow_recovery
            report.problems.append(m.group("msg").strip())
    if short:
        report.problems.insert(0, "recovery ended before the target was reached: the archived WAL stops earlier")
    target = plan.target
    if target.kind == "latest":
        early = _ended_early(plan, report) or plan.cut_short
        if early:
            report.problems.insert(0, early)
        report.reached_target = not short and not early and "promoted" in state
        report.stop_reason = report.stop_reason or "end of the archived WAL"
    else:
        expected = {"promote": "promoted", "pause": "paused", "shutdown": "stopped"}[target.action]
        report.reached_target = bool(report.stop_reason) and not short and expected in state
    if not report.reached_target and not report.problems:
        report.problems.append(f"the server is {state}; see {log_file}")
    report.problems = list(dict.fromkeys(report.problems))
    return report


def _ended_early(plan: RestorePlan, report: RestoreReport) -> str:
    """Why a recovery to the latest instant ended before the end of the archive the plan promised, or "".

    PostgreSQL takes any restore_command failure for the end of the archive and promotes: a segment
    damaged in every repository ends replay there, silently, with the later commits lost. Where replay
    really ended (the last record replayed) is compared with the last segment the plan counted.
    """
    if not plan.wal or not report.stopped_at_lsn or not plan.backup.wal_segment_size:
        return ""
    promised = plan.wal[-1].segment
    ended = parse_lsn(report.stopped_at_lsn) // plan.backup.wal_segment_size
    if ended >= promised.number:
        return ""
    reached = (
        f"; the restored data holds commits up to {report.last_commit_time:%Y-%m-%d %H:%M:%S.%f} UTC"
        if report.last_commit_time
        else ""
    )
    blocked = any("no intact copy" in p for p in report.problems)
    why = " (the problem below)" if blocked else f" (see {report.log_file})"
    return (
        f"recovery ended at {report.stopped_at_lsn}, in segment {ended - plan.wal[0].segment.number + 1} of the "
        f"{len(plan.wal)} the plan counted (up to {promised.name}): a segment could not be fetched{why}{reached}; "
        "commits after it are NOT in the restored data"
    )


_STOP_XACT = re.compile(r"(?P<side>before|after) (?P<kind>commit|abort) of transaction (?P<xid>\d+)")


def _read_stop(report: RestoreReport, what: str, when: datetime | None) -> None:
    """PostgreSQL's "recovery stopping ..." line: stopping *after* a commit replayed it; *before* did not."""
    report.stop_reason = what
    m = _STOP_XACT.match(what)
    if m is None:
        return
    at = f" at {when:%Y-%m-%d %H:%M:%S.%f} UTC" if when else ""
    if m.group("side") == "after" and m.group("kind") == "commit":
        report.last_commit_xid = int(m.group("xid"))
        report.last_commit_time = when or report.last_commit_time
    else:
        report.stopped_before = f"{m.group('kind')} of transaction {m.group('xid')}{at}"


def _unreachable_problem(cfg: Config, plan: RestorePlan, reason: str) -> str:
    """Why the restored server, promoted by pg_control's word, could not be asked: with the fix."""
    if LOG_PATTERNS["auth"].search(reason):
        return f"pgdr cannot ask the restored server how far it got: {preflight.connection_problem(cfg, reason)}"
    where = cfg.postgres.host or "the default socket directory"
    return (
        f"pgdr cannot connect to the restored server at {where}, port {plan.port or cfg.postgres.port} ({reason}); "
        "its unix_socket_directories or listen_addresses differ from the config's [postgres] host"
    )


def _pg_time(text: str) -> datetime:
    value = re.sub(r"([+-]\d{2})$", r"\1:00", text.strip())
    return datetime.fromisoformat(value).astimezone(UTC)
