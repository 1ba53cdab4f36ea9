"""``pgdr check``: is this server really archiving through pgdr into every configured repository?

Each setting is checked on its own line, and a failing line names the exact setting to change, because
an operator reads this output when archiving is broken and needs the fix, not only the symptom. The
settings can all look right while WAL still never arrives (a wrong ``--config`` in archive_command, a
repository the server user cannot write, an S3 upload that fails), so the last check is end to end:
it forces a WAL switch and waits until that very segment is in every repository.

Incremental backups (PostgreSQL 17+) are checked too, though not archiving: their one server setting,
``summarize_wal``, is reported either way with the fix, and counts as a problem only when the daemon
is told to take them (``[schedule] incremental_backup``), as does a server too old for any.

``run_check`` is a generator so the command line prints each line as soon as it is known; the final
wait can take up to ``timeout`` seconds and the operator should see the settings results before it.
"""

from __future__ import annotations

import shlex
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg

from backend.archive import queue
from backend.archive.walfile import find_archived
from backend.config import Config
from backend.errors import PgdrError
from backend.postgres import ServerInfo, connect, describe_server, server_info
from backend.repository import Repository, open_repository, read_identity
from backend.restore.marker import cluster_unfinished_restore

#: The recovery point objective: at most this much committed work may be missing from the archive, so
#: on a quiet server a segment must be switched out (archive_timeout) at least this often.
RPO_SECONDS = 300
#: The archive_timeout the fixes recommend: well inside the RPO, without switching needlessly often.
RECOMMENDED_ARCHIVE_TIMEOUT = 60
#: PostgreSQL's archiver tries a file this many times in a row before sleeping for a minute
#: (NUM_ARCHIVE_RETRIES in pgarch.c): that many new failures mean waiting longer is pointless.
ARCHIVER_RETRIES = 3
POLL_INTERVAL = 0.2

_REQUIRED = ("wal_level", "archive_mode", "archive_command", "archive_timeout")
_SETTINGS = (*_REQUIRED, "archive_library", "summarize_wal")
#: Incremental base backups (``pg_basebackup --incremental``, and ``summarize_wal``) came with PostgreSQL 17.
INCREMENTAL_SINCE = 170000


@dataclass(frozen=True)
class CheckResult:
    """One line of ``pgdr check`` output: ``message`` says what was found and, on failure, the fix."""

    ok: bool
    message: str


@dataclass(frozen=True)
class _Setting:
    value: str
    #: True when the configuration files hold a new value that only a server restart applies.
    pending_restart: bool


@dataclass(frozen=True)
class _Archiver:
    """A row of pg_stat_archiver."""

    archived_count: int
    last_archived_wal: str | None
    last_archived_time: datetime | None
    failed_count: int
    last_failed_wal: str | None
    last_failed_time: datetime | None

    @property
    def failing(self) -> bool:
        """The last attempt failed: PostgreSQL is retrying a file archive_command rejects."""
        if self.last_failed_time is None:
            return False
        return self.last_archived_time is None or self.last_failed_time > self.last_archived_time

    def archived(self, segment: str) -> bool:
        """PostgreSQL has archived ``segment`` (archiving runs in WAL order, so a later name implies it)."""
        return (self.last_archived_wal or "")[:24] >= segment

    def summary(self) -> str:
        last = f"last {self.last_archived_wal} at {_when(self.last_archived_time)}" if self.last_archived_wal else ""
        text = f"{self.archived_count} archived{', ' + last if last else ''}, {self.failed_count} failed"
        if self.last_failed_wal:
            text += f" (last {self.last_failed_wal} at {_when(self.last_failed_time)})"
        return text


def run_check(cfg: Config, *, timeout: float = 60.0) -> Iterator[CheckResult]:
    """Check the server's archiving settings, the repositories, and that a fresh segment reaches them all.

    Checks that make no sense after an earlier failure are skipped: without a connection nothing can be
    checked, and with archiving off (or not through pgdr) forcing a segment out would only wait for
    ``timeout`` seconds to report what the lines above already say.
    """
    unfinished = cluster_unfinished_restore(cfg.postgres.data_dir)
    if unfinished:  # first: the server may be down because of it, or running on a half-restored copy
        yield CheckResult(False, unfinished)
    try:
        conn = connect(cfg)
    except PgdrError as exc:
        yield CheckResult(False, str(exc))
        return
    with conn:
        try:
            yield from _run(cfg, conn, timeout)
        except psycopg.Error as exc:
            reason = _pg_reason(exc)
            yield CheckResult(False, f"query on {describe_server(cfg)} failed: {reason}")


def _run(cfg: Config, conn: psycopg.Connection[Any], timeout: float) -> Iterator[CheckResult]:
    info = server_info(conn)
    role = str(_one(conn, "SELECT current_user"))
    yield CheckResult(
        True,
        f"connected to {describe_server(cfg)}: PostgreSQL {info.version}, "
        f"system identifier {info.system_identifier}{', in recovery (a standby)' if info.in_recovery else ''}",
    )
    if cfg.postgres.data_dir:
        yield _data_dir(cfg, info)
    yield _tablespaces(conn, info)
    settings = _read_settings(conn)
    unreadable = [name for name in _REQUIRED if name not in settings]
    if unreadable:
        yield CheckResult(
            False,
            f"{role} may not read {', '.join(unreadable)}: run GRANT pg_read_all_settings TO {role}; "
            f"or set [postgres] user in {cfg.where()} to a superuser",
        )
        return
    blocking: list[CheckResult] = []

    for check in (
        _wal_level(settings),
        _archive_mode(settings, standby=info.in_recovery),
        *_archive_command(cfg, settings),
    ):
        yield check
        if not check.ok:
            blocking.append(check)
    yield _archive_timeout(settings)
    recovery = _restore_command(cfg, conn, info)
    if recovery is not None:
        yield recovery
    incremental = _incremental(cfg, info, settings)
    if incremental is not None:
        yield incremental

    repositories: list[Repository] = []
    for name in cfg.repository_names:
        result, repo = _repository(cfg, name, info)
        yield result
        if repo is None or not result.ok:
            blocking.append(result)
        else:
            repositories.append(repo)
    if len(repositories) > 1 and len(repositories) == len(cfg.repository_names):
        yield from _compare_repositories(cfg)

    yield _archiver_health(_read_archiver(conn))

    if blocking:
        yield CheckResult(
            False,
            "end-to-end test skipped (no WAL switch forced): fix the failures above, then run `pgdr check` again",
        )
        return
    if info.in_recovery:
        yield CheckResult(
            False,
            "end-to-end test skipped: this server is a standby and only a primary can force a WAL switch; "
            "run `pgdr check` against the primary",
        )
        return
    yield from _switch_and_wait(cfg, conn, role, repositories, timeout)


def _data_dir(cfg: Config, info: ServerInfo) -> CheckResult:
    """data_dir is what a restore replaces and where wal-push reads pg_control: a wrong one is found here,
    not during a restore. Compared by pg_control's system identifier when this user may read it."""
    path = Path(cfg.postgres.data_dir)
    fix = f"set it in {cfg.where()} to the server's data directory (SHOW data_directory)"
    if not path.is_dir():
        what = "is not a directory" if path.exists() else "does not exist"
        return CheckResult(False, f"postgres.data_dir {path} {what}: {fix}")
    try:
        with (path / "global" / "pg_control").open("rb") as fh:
            sysid = int.from_bytes(fh.read(8), "little")
    except PermissionError:
        return CheckResult(
            True, f"postgres.data_dir {path} exists (not compared with the server: this user may not read it)"
        )
    except OSError:
        return CheckResult(False, f"postgres.data_dir {path} holds no PostgreSQL cluster (no global/pg_control): {fix}")
    if sysid != info.system_identifier:
        return CheckResult(
            False,
            f"postgres.data_dir {path} holds the cluster with system identifier {sysid}, not this server's "
            f"{info.system_identifier}: {fix}",
        )
    return CheckResult(True, f"postgres.data_dir {path} holds this server's cluster")


def _tablespaces(conn: psycopg.Connection[Any], info: ServerInfo) -> CheckResult:
    """The tablespaces every base backup carries, and where a restore puts them back."""
    from backend.backup.staged import SERVER_ZSTD
    from backend.tablespaces import live_tablespaces

    spaces = live_tablespaces(conn)
    if not spaces:
        return CheckResult(True, "tablespaces: none outside the data directory")
    listed = ", ".join(f"{t.name} ({t.location})" for t in spaces)
    if info.version_num < SERVER_ZSTD or not info.zstd:
        why = "from PostgreSQL 15 on" if info.zstd else "with the server's zstd, which this build lacks"
        return CheckResult(False, f"tablespaces {listed}: pgdr backs up tablespaces {why}; base backups fail")
    return CheckResult(
        True,
        f"tablespaces {listed}: in every base backup; a restore puts them back there "
        "(or where --tablespace-map OLD=NEW says)",
    )


def _read_settings(conn: psycopg.Connection[Any]) -> dict[str, _Setting]:
    """The archiving settings from pg_settings (archive_library exists only from PostgreSQL 15 on)."""
    rows = conn.execute(
        "SELECT name, setting, pending_restart FROM pg_settings WHERE name = ANY(%s)", (list(_SETTINGS),)
    ).fetchall()
    return {str(name): _Setting(str(value or ""), bool(pending)) for name, value, pending in rows}


def _restart_note(setting: _Setting) -> str:
    return (
        " (a changed value is already in the config files and waits for a restart)" if setting.pending_restart else ""
    )


def _wal_level(settings: dict[str, _Setting]) -> CheckResult:
    wal_level = settings["wal_level"]
    if wal_level.value in ("replica", "logical"):
        return CheckResult(True, f"wal_level = {wal_level.value}")
    return CheckResult(
        False,
        f"wal_level = {wal_level.value}{_restart_note(wal_level)}: WAL at this level cannot be archived or "
        "restored; run ALTER SYSTEM SET wal_level = replica; then restart PostgreSQL",
    )


def _archive_mode(settings: dict[str, _Setting], *, standby: bool) -> CheckResult:
    """A standby archives nothing while it replays (the primary does), but once promoted it is the primary:
    without archive_mode its new timeline, the one everything is written on from then on, has no PITR."""
    mode = settings["archive_mode"]
    if mode.value in ("on", "always"):
        return CheckResult(True, f"archive_mode = {mode.value}")
    what = "once promoted, this standby archives no WAL" if standby else "PostgreSQL archives no WAL at all"
    return CheckResult(
        False,
        f"archive_mode = {mode.value}{_restart_note(mode)}: {what}; "
        "run ALTER SYSTEM SET archive_mode = on; then restart PostgreSQL",
    )


def _archive_command(cfg: Config, settings: dict[str, _Setting]) -> Iterator[CheckResult]:
    """archive_command must run ``pgdr wal-push %p``; an archive_library would take precedence over it."""
    library = settings.get("archive_library")
    if library is not None and library.value:
        yield CheckResult(
            False,
            f"archive_library = {_sql_literal(library.value)} is set, so PostgreSQL ignores archive_command: "
            "run ALTER SYSTEM RESET archive_library; SELECT pg_reload_conf();",
        )
    command = settings["archive_command"].value
    if all(part in command for part in ("pgdr", "wal-push", "%p")):
        yield CheckResult(True, f"archive_command = {_sql_literal(command)}")
        return
    recommended = recommended_archive_command(cfg)
    found = f"archive_command = {_sql_literal(command)}" if command else "archive_command is empty"
    yield CheckResult(
        False,
        f"{found}, which does not archive through pgdr: run ALTER SYSTEM SET archive_command = "
        f"{_sql_literal(recommended)}; SELECT pg_reload_conf();",
    )


def recommended_archive_command(cfg: Config) -> str:
    """``<pgdr> --config <file> wal-push %p`` with absolute paths: the server's PATH and working
    directory (the data directory) are not the operator's, so nothing may depend on either."""
    parts = [_pgdr_path()]
    if cfg.source is not None:
        parts += ["--config", str(cfg.source.absolute())]
    return " ".join(shlex.quote(p) for p in parts) + " wal-push %p"


def _pgdr_path() -> str:
    """The pgdr executable running now (so the fix names this very installation), else the one on PATH."""
    argv0 = Path(sys.argv[0])
    if argv0.name == "pgdr" and argv0.is_file():
        return str(argv0.absolute())
    beside = Path(sys.executable).parent / "pgdr"
    if beside.is_file():
        return str(beside)
    return shutil.which("pgdr") or "pgdr"


#: What makes PostgreSQL recover at start: a standby (standby.signal), a targeted recovery (recovery.signal).
RECOVERY_SIGNALS = ("standby.signal", "recovery.signal")


def _restore_command(cfg: Config, conn: psycopg.Connection[Any], info: ServerInfo) -> CheckResult | None:
    """On a standby, or a server replaying a restore (in recovery, or a signal file in its data directory):
    the restore_command that fetches the WAL it replays. None on a primary."""
    signals = [name for name in RECOVERY_SIGNALS if _signal_present(cfg, name)]
    if not info.in_recovery and not signals:
        return None
    what = f"in recovery ({', '.join(signals)})" if signals else "in recovery"
    if "standby.signal" in signals:
        what = "a standby (standby.signal)"
    row = conn.execute("SELECT setting FROM pg_settings WHERE name = 'restore_command'").fetchone()
    if row is None:
        role = str(_one(conn, "SELECT current_user"))
        return CheckResult(
            False,
            f"this server is {what}; {role} may not read restore_command: run GRANT pg_read_all_settings TO {role};",
        )
    command = str(row[0] or "")
    if all(part in command for part in ("pgdr", "wal-fetch", "%f", "%p")):
        return CheckResult(
            True,
            f"this server is {what}: restore_command = {_sql_literal(command)} (verified WAL from the "
            "repositories, prefetched ahead of recovery)",
        )
    fix = (
        f"run ALTER SYSTEM SET restore_command = {_sql_literal(recommended_restore_command(cfg))}; "
        "SELECT pg_reload_conf();"
    )
    if not command:
        return CheckResult(
            False,
            f"this server is {what} and restore_command is empty: it replays only what streaming replication "
            f"sends, and cannot catch up from the archive once the primary has recycled WAL it still needs: {fix}",
        )
    return CheckResult(
        False,
        f"this server is {what}: restore_command = {_sql_literal(command)} does not fetch from pgdr's "
        f"repositories: {fix}",
    )


def _signal_present(cfg: Config, name: str) -> bool:
    """Whether the configured data directory holds ``name`` (False when it cannot be looked into)."""
    if not cfg.postgres.data_dir:
        return False
    try:
        return (Path(cfg.postgres.data_dir) / name).is_file()
    except OSError:
        return False


def recommended_restore_command(cfg: Config) -> str:
    """``<pgdr> --config <file> wal-fetch %f %p``, absolute paths, as ``recommended_archive_command``."""
    return recommended_archive_command(cfg).removesuffix(" wal-push %p") + " wal-fetch %f %p"


def _archive_timeout(settings: dict[str, _Setting]) -> CheckResult:
    """A quiet server fills a segment slowly; only archive_timeout bounds how long its writes stay unarchived."""
    raw = settings["archive_timeout"].value
    seconds = int(raw) if raw.isdigit() else 0
    fix = (
        f"run ALTER SYSTEM SET archive_timeout = {RECOMMENDED_ARCHIVE_TIMEOUT}; SELECT pg_reload_conf(); "
        f"(any value from 1 to {RPO_SECONDS} s meets it)"
    )
    if seconds == 0:
        return CheckResult(
            False,
            "archive_timeout = 0 (off): on a quiet server the latest commits can stay unarchived for hours, "
            f"beyond the {RPO_SECONDS // 60}-minute recovery point objective; {fix}",
        )
    if seconds > RPO_SECONDS:
        return CheckResult(
            False,
            f"archive_timeout = {seconds} s is longer than the {RPO_SECONDS // 60}-minute recovery point "
            f"objective; {fix}",
        )
    return CheckResult(
        True,
        f"archive_timeout = {seconds} s: a commit waits at most {seconds} s for its segment to be switched out",
    )


def _incremental(cfg: Config, info: ServerInfo, settings: dict[str, _Setting]) -> CheckResult | None:
    """Can this server take the incremental backups the schedule asks for (or ``pgdr backup --incremental``)?

    On 17+ the answer is ``summarize_wal``: without it the server keeps no record of the blocks each
    stretch of WAL changed, and pg_basebackup refuses an incremental. It is reloadable, so the fix is
    two statements and no restart. Off is a problem only when incrementals are scheduled: a server
    backed up by full backups alone needs nothing here. A server older than 17 gets a line only then.
    """
    expr = cfg.schedule.incremental_backup
    scheduled = bool(expr.strip())
    if info.version_num < INCREMENTAL_SINCE:
        if not scheduled:
            return None
        return CheckResult(
            False,
            f'[schedule] incremental_backup = "{expr}" in {cfg.where()}, but incremental '
            f"backups need PostgreSQL 17 or later and this server runs {info.version}: every scheduled incremental "
            'fails; set incremental_backup = "" (full backups only) until the upgrade',
        )
    summarize = settings.get("summarize_wal")
    if summarize is None:  # every 17+ has it, readable by whoever could read the archiving settings above
        return None
    if summarize.value == "on":
        how = (
            f'scheduled: incremental_backup = "{expr}", each holding only the blocks changed since the backup before'
            if scheduled
            else "`pgdr backup --incremental`, or [schedule] incremental_backup"
        )
        return CheckResult(True, f"summarize_wal = on: incremental backups work ({how})")
    consequence = (
        f'the incremental backups scheduled in {cfg.where()} (incremental_backup = "{expr}") all fail without it'
        if scheduled
        else "incremental backups (`pgdr backup --incremental`, [schedule] incremental_backup) need it"
    )
    return CheckResult(
        not scheduled,
        f"summarize_wal = {summarize.value}: {consequence}; run ALTER SYSTEM SET summarize_wal = on; "
        "SELECT pg_reload_conf(); (no restart), then take a full backup (`pgdr backup`) for them to build on",
    )


def _repository(cfg: Config, name: str, info: ServerInfo) -> tuple[CheckResult, Repository | None]:
    """Reachable, and (once something was archived) holding this server's WAL and no other cluster's."""
    if name == "local" and not Path(cfg.local.path).is_dir():
        return (
            CheckResult(
                False,
                f"local repository path {cfg.local.path} does not exist (an unmounted disk?): create it, owned by "
                f"the PostgreSQL server user, or fix [local] path in {cfg.where()}",
            ),
            None,
        )
    try:
        repo = open_repository(cfg, name)
        identity = read_identity(repo)
    except PgdrError as exc:
        return CheckResult(False, f"{name} repository: {exc}"), None
    where = f"{name} repository {repo.location()}" + (f" (encrypted, {repo.encryption})" if repo.encryption else "")
    if identity is None:
        # No repo.json: a new repository, or one emptied or replaced; with another repository the
        # comparison below tells which.
        return CheckResult(True, f"{where}: reachable, holds no archive of this cluster yet"), repo
    if identity.system_identifier != info.system_identifier:
        return (
            CheckResult(
                False,
                f"{where} belongs to the cluster with system identifier {identity.system_identifier}, not this "
                f"server's {info.system_identifier}: wal-push refuses to mix clusters; give this cluster its own "
                f"[cluster] name in {cfg.where()}",
            ),
            repo,
        )
    if identity.segment_size != info.segment_size:
        return (
            CheckResult(
                False,
                f"{where} holds {identity.segment_size}-byte WAL segments but this server writes "
                f"{info.segment_size}-byte ones: give this cluster its own [cluster] name in {cfg.where()}",
            ),
            repo,
        )
    return CheckResult(True, f"{where}: reachable, belongs to this cluster"), repo


def _compare_repositories(cfg: Config) -> Iterator[CheckResult]:
    """A line per repository lacking what another holds beyond upload lag and its own retention.

    Each repository can look fine alone while one of them was emptied, or swapped for another bucket
    by a changed endpoint: reachable, "holds no archive of this cluster yet", and archiving carries on into it. Only
    the comparison tells (verify's, from listings alone, see ``backend.verify.losses.repository_loss``).
    """
    from backend.verify.losses import find_losses

    try:
        losses = find_losses(cfg)
    except PgdrError as exc:
        yield CheckResult(False, f"cannot compare the repositories: {exc}")
        return
    for loss in losses:
        yield CheckResult(False, f"{loss.describe()} {loss.fix()}")
    if losses:
        return
    queued = [name for name in cfg.repository_names if name not in cfg.sync_repositories]
    lag = ", ".join(
        f"{n} WAL file(s) queued for upload to {name}" for name in queued if (n := len(queue.pending(cfg, name)))
    )
    yield CheckResult(
        True, f"repositories compared: none lacks WAL or backups another holds{f' ({lag})' if lag else ''}"
    )


def _read_archiver(conn: psycopg.Connection[Any]) -> _Archiver:
    row = conn.execute(
        "SELECT archived_count, last_archived_wal, last_archived_time,"
        " failed_count, last_failed_wal, last_failed_time FROM pg_stat_archiver"
    ).fetchone()
    assert row is not None
    return _Archiver(int(row[0]), row[1], row[2], int(row[3]), row[4], row[5])


def _archiver_health(archiver: _Archiver) -> CheckResult:
    """Settings can be right while every attempt fails; pg_stat_archiver is where that shows."""
    if archiver.failing:
        return CheckResult(
            False,
            f"archiving is failing: pg_stat_archiver shows {archiver.failed_count} failed attempt(s), the last for "
            f"{archiver.last_failed_wal} at {_when(archiver.last_failed_time)}, after the last success "
            f"({archiver.last_archived_wal or 'none'}): the archive_command's error is in the server log",
        )
    return CheckResult(True, f"pg_stat_archiver: {archiver.summary()}")


def _switch_and_wait(
    cfg: Config, conn: psycopg.Connection[Any], role: str, repositories: list[Repository], timeout: float
) -> Iterator[CheckResult]:
    """Force the current segment out and wait until every repository holds it.

    pg_switch_wal does nothing when no WAL was written since the last switch (and returns the previous,
    long archived segment), so a WAL-logged message goes first. Queued repositories are drained here
    rather than left to the background uploader, so the result does not depend on its timing.
    """
    before = _read_archiver(conn)
    try:
        conn.execute("SELECT pg_logical_emit_message(false, 'pgdr', 'check')")
        segment = str(_one(conn, "SELECT pg_walfile_name(pg_switch_wal())"))
    except psycopg.errors.InsufficientPrivilege as exc:
        yield CheckResult(
            False,
            f"cannot force a WAL switch as {role} ({_pg_reason(exc)}): set [postgres] user in {cfg.where()} to a "
            f"superuser, or run GRANT EXECUTE ON FUNCTION pg_switch_wal() TO {role};",
        )
        return
    start = time.monotonic()
    deadline = start + timeout
    missing = {repo.name: repo for repo in repositories}
    errors: dict[str, str] = {}
    archiver = before
    while True:
        for name, repo in list(missing.items()):
            try:
                if name not in cfg.sync_repositories:
                    _upload_queued(cfg, name, segment)
                if find_archived(repo, segment):
                    del missing[name]
                errors.pop(name, None)
            except PgdrError as exc:  # S3 may be down only for a moment: keep trying until the deadline
                errors[name] = str(exc)
        if not missing:
            names = ", ".join(repo.name for repo in repositories)
            yield CheckResult(
                True,
                f"forced a WAL switch: segment {segment} reached every repository ({names}) "
                f"in {time.monotonic() - start:.1f} s",
            )
            return
        archiver = _read_archiver(conn)
        gave_up = archiver.failing and archiver.failed_count - before.failed_count >= ARCHIVER_RETRIES
        if gave_up or time.monotonic() >= deadline:
            break
        time.sleep(POLL_INTERVAL)
    yield from _not_arrived(
        cfg, segment, missing=sorted(missing), archiver=archiver, errors=errors, waited=time.monotonic() - start
    )


def _upload_queued(cfg: Config, target: str, segment: str) -> None:
    """Upload the queue for ``target`` once wal-push has queued ``segment``.

    Draining only after wal-push queued the segment means the queue folder and lock already exist,
    created by the server user: a root-run check must not leave root-owned files there. A queue that
    the background uploader holds is left to it (``wait=False``), so the deadline still applies.
    """
    if segment in queue.pending(cfg, target):
        queue.drain(cfg, target, wait=False)


def _not_arrived(
    cfg: Config, segment: str, *, missing: list[str], archiver: _Archiver, errors: dict[str, str], waited: float
) -> Iterator[CheckResult]:
    """One line per repository lacking the segment, with the most likely reason and where to look."""
    for name in missing:
        head = f"forced a WAL switch, but segment {segment} did not reach the {name} repository in {waited:.0f} s"
        if name in errors:
            reason = f"the last attempt to reach it failed: {errors[name]}"
        elif archiver.failing:
            reason = (
                "archive_command is failing, its error is in the server log "
                f"(SELECT * FROM pg_stat_archiver: {archiver.summary()})"
            )
        elif not archiver.archived(segment):
            reason = (
                "PostgreSQL has not archived it yet (a backlog of older segments?): see the server log and "
                f"SELECT * FROM pg_stat_archiver ({archiver.summary()})"
            )
        elif name in cfg.sync_repositories:
            reason = (
                "PostgreSQL reports it archived, so archive_command stored it elsewhere: check that its --config "
                f"names {cfg.where()} (recommended: {recommended_archive_command(cfg)})"
            )
        else:
            reason = f"wal-push queued it and the upload has not finished: run `pgdr wal-upload --repo {name}`"
        yield CheckResult(False, f"{head}: {reason}")


def _one(conn: psycopg.Connection[Any], query: str) -> Any:
    row = conn.execute(query).fetchone()
    assert row is not None
    return row[0]


def _sql_literal(text: str) -> str:
    """``text`` as an SQL string literal, so a fix can be pasted into psql as printed."""
    return "'" + text.replace("'", "''") + "'"


def _when(moment: datetime | None) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S %Z").strip() if moment else "never"


def _pg_reason(exc: psycopg.Error) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
