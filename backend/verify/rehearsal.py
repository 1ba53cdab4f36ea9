"""The restore rehearsal of ``pgdr verify --deep``: a physical backup (with its chain) restored into a
scratch directory, checked by ``pg_verifybackup``, started as a throwaway server that replays to its
consistency point through the real ``restore_command``, and queried. What the backup's content causes
is a problem (a BAD backup); what this host causes (no room, no permission, shared memory) is
``could_not``, an error of the run.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from backend.config import Config
from backend.errors import ConfigError, PgdrError
from backend.manifest import BackupManifest, BrokenChain, chain
from backend.postgres import chown_tree, own_folder, owner_of, program, run_server_program
from backend.progress import Progress, ProgressCallback, check_cancel, no_progress
from backend.repository import Repository
from backend.statedir import state_dir
from backend.tablespaces import TABLESPACE_MAP, recorded
from backend.timeline import estimate_restore_seconds
from backend.verify.report import Rehearsal
from backend.verify.scan import Meter, Scan
from backend.verify.wal import verify_wal_object
from backend.walnames import SegmentName

#: What a rehearsal server's log says when the host, not the backup, kept it from starting.
HOST_FAILURES = re.compile(
    r"shared memory|semaphore|could not create lock file|could not bind|Address already in use"
    r"|No space left on device|Too many open files|Cannot allocate memory|out of memory|Permission denied"
    r"|wrong ownership|invalid permissions",
    re.IGNORECASE,
)
#: Settings that make the rehearsal server a private, throwaway copy beside the production server: no
#: archiving (it must never push a divergent history), no TCP, a socket only its owner can use, its own
#: client authentication (production's pg_hba.conf may only allow peers it cannot match), and modest
#: memory (it may run on the production host).
REHEARSAL_SETTINGS = {
    "archive_mode": "off",
    "listen_addresses": "",
    "unix_socket_permissions": "0700",
    "ssl": "off",
    "logging_collector": "off",
    "shared_buffers": "64MB",
    "huge_pages": "off",
    "cluster_name": "pgdr-verify",
}


def rehearse(
    cfg: Config,
    manifest: BackupManifest,
    repos: list[Repository],
    scans: dict[str, Scan],
    segment_size: int,
    *,
    backups: dict[str, BackupManifest],
    on_progress: ProgressCallback,
    cancel: threading.Event | None,
) -> Rehearsal:
    """Restore ``manifest`` into a scratch directory, prove it with pg_verifybackup, start it, query it.

    An incremental is restored as a restore does it: its chain (from ``backups``, every manifest the
    repositories hold) is unpacked and combined with pg_combinebackup (``restore_chain``), whose
    ``backup_manifest`` of the combined directory is what pg_verifybackup checks; so the rehearsal
    proves the chain, not the incremental alone (which no server could start on). What the backup's
    content causes is a problem (a BAD backup); what this host causes is ``could_not`` (see the
    package docstring, ``backend.verify``).
    """
    from backend.restore.combine import combined_peak, restore_chain
    from backend.restore.run import recovery_command
    from backend.restore.settings import write_recovery_settings
    from backend.restore.target import RecoveryTarget
    from backend.restore.unpack import TargetFailed

    result = Rehearsal()
    began = time.monotonic()
    try:
        members = chain(manifest, backups)
    except BrokenChain as exc:
        result.problems.append(str(exc))
        return result
    assert manifest.wal_start and manifest.wal_stop
    first = SegmentName.parse(manifest.wal_start, segment_size)
    last = SegmentName.parse(manifest.wal_stop, segment_size)
    wal_segments = [SegmentName(first.timeline, n, segment_size) for n in range(first.number, last.number + 1)]
    parent = _scratch_parent(cfg)
    restored = sum(m.size_bytes for m in members)
    needed = (combined_peak(members) if len(members) > 1 else restored) + 2 * len(wal_segments) * segment_size
    version = manifest.version_num
    what = manifest.name if len(members) == 1 else f"{manifest.name} with its chain of {len(members)} backups"
    try:
        owner = _server_owner(cfg)
        if needed > (free := shutil.disk_usage(parent).free):
            result.could_not = f"it needs about {needed} bytes in {parent}, {free} are free"
            return result
        scratch = Path(tempfile.mkdtemp(prefix="pgdr-verify-", dir=parent))
    except PgdrError as exc:
        result.could_not = str(exc)
        return result
    except OSError as exc:
        result.could_not = f"cannot make a scratch directory in {parent}: {exc}"
        return result
    data_dir = scratch / "data"
    started = False
    try:
        own_folder(scratch, 0o755, owner)
        data_dir.mkdir(mode=0o700)
        on_progress(Progress("rehearsal", 0, restored, f"restoring {what} into {scratch}"))
        # Never the tablespaces' own locations: those are the running cluster's.
        spaces = {t.oid: scratch / "tablespaces" / str(t.oid) for t in recorded(manifest)}
        try:
            result.restored_from = restore_chain(
                cfg, members, repos, data_dir, tablespaces=spaces, on_progress=on_progress, cancel=cancel
            )
        except PgdrError as exc:
            # pg_combinebackup writing into a full or unwritable scratch directory says nothing of the chain.
            if str(exc).startswith("pg_combinebackup") and HOST_FAILURES.search(str(exc)):
                result.could_not = f"the scratch directory cannot take the combined backup: {exc}"
                return result
            raise

        # pg_verifybackup checks every file against PostgreSQL's own backup_manifest, and parses the WAL
        # range the backup needs; it must see the directory exactly as unpacked, so it runs first.
        wal_dir = scratch / "wal"
        wal_dir.mkdir()
        have_wal = _fetch_wal(wal_segments, repos, scans, wal_dir, segment_size, cancel=cancel)
        argv = [program(cfg, "pg_verifybackup", version)]
        argv += [f"--ignore={TABLESPACE_MAP}"] if spaces else []  # removed: it names the original locations
        argv += [f"--wal-directory={wal_dir}"] if have_wal else ["--no-parse-wal"]
        checked = subprocess.run([*argv, str(data_dir)], capture_output=True, text=True, check=False)
        if checked.returncode != 0:
            errors = [line.removeprefix("pg_verifybackup: ") for line in checked.stderr.strip().splitlines()]
            more = f" (and {len(errors) - 3} more)" if len(errors) > 3 else ""
            result.problems.append(f"pg_verifybackup fails: {'; '.join(errors[:3]) or 'no output'}{more}")
            return result
        result.verifybackup = checked.stdout.strip() or "verified"
        if not have_wal:
            result.verifybackup += " (WAL not parsed: no intact copy of it could be fetched)"
        shutil.rmtree(wal_dir)

        port = _free_port()
        if not (data_dir / "postgresql.conf").exists():
            (data_dir / "postgresql.conf").write_text("")  # Debian keeps it in /etc/postgresql
        (scratch / "pg_hba.conf").write_text("local all all trust\n")
        (scratch / "pg_ident.conf").write_text("")
        target = RecoveryTarget("immediate", timeline="current", action="promote")
        settings = {
            "restore_command": recovery_command(cfg, data_dir),
            **target.recovery_settings(),
            **REHEARSAL_SETTINGS,
            "port": str(port),
            "unix_socket_directories": str(scratch),
            "hba_file": str(scratch / "pg_hba.conf"),
            "ident_file": str(scratch / "pg_ident.conf"),
        }
        write_recovery_settings(data_dir, settings, f"verify --deep: a throwaway rehearsal of backup {manifest.name}")
        log_file = scratch / "server.log"
        if owner is not None:
            chown_tree(scratch, owner)

        pg_ctl = program(cfg, "pg_ctl", version)
        wait = int(max(300.0, estimate_restore_seconds(restored, len(wal_segments) * segment_size) * 5))
        on_progress(Progress("rehearsal", 0, None, f"starting {manifest.name} in {scratch} on port {port}"))
        started = True
        run_server_program(
            [pg_ctl, "start", "-D", str(data_dir), "-l", str(log_file), "-w", "-t", str(wait)], data_dir, check=False
        )
        _query_rehearsal(
            cfg,
            result,
            pg_ctl=pg_ctl,
            data_dir=data_dir,
            scratch=scratch,
            port=port,
            owner=owner,
            log_file=log_file,
            wait=wait,
            cancel=cancel,
        )
    except TargetFailed as exc:  # too few open files, a full disk, a permission
        result.could_not = f"the scratch directory cannot take the backup's files: {exc}"
    except ConfigError as exc:  # a PostgreSQL program missing
        result.could_not = str(exc)
    except PgdrError as exc:
        if exc.exit_code == 130:
            raise
        result.problems.append(str(exc))
    except OSError as exc:  # the scratch directory: a full disk, a permission
        result.could_not = f"the rehearsal failed in {scratch}: {exc}"
    finally:
        if started:
            stopped = run_server_program(
                [program(cfg, "pg_ctl", version), "stop", "-D", str(data_dir), "-m", "immediate", "-w", "-t", "60"],
                data_dir,
                check=False,
            )
            if stopped.returncode != 0 and (data_dir / "postmaster.pid").exists():
                result.problems.append(f"the rehearsal server in {scratch} did not stop: {stopped.stderr.strip()}")
        if (result.problems or result.could_not) and (scratch / "server.log").exists():
            _keep_log(scratch / "server.log", manifest.name, result)
        shutil.rmtree(scratch, ignore_errors=True)
        result.seconds = time.monotonic() - began
    return result


def _scratch_parent(cfg: Config) -> Path:
    """Beside the data directory (same disk, a path the server user can reach), else the state dir."""
    if cfg.postgres.data_dir:
        parent = Path(cfg.postgres.data_dir).absolute().parent
        if parent.is_dir():
            return parent
    folder = state_dir()
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _server_owner(cfg: Config) -> tuple[int, int] | None:
    """Who the rehearsal server runs as when pgdr is root: the data directory's owner, else postgres."""
    if os.geteuid() != 0:
        return None
    for candidate in (cfg.postgres.data_dir, cfg.local.path):
        if candidate and Path(candidate).exists() and owner_of(Path(candidate))[0] != 0:
            return owner_of(Path(candidate))
    import pwd

    try:
        user = pwd.getpwnam("postgres")
    except KeyError:
        raise PgdrError("pgdr runs as root and there is no postgres user to run the rehearsal server as") from None
    return user.pw_uid, user.pw_gid


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _keep_log(log: Path, name: str, result: Rehearsal) -> None:
    """The scratch directory goes, but the server log of a failed rehearsal is what explains it."""
    kept = state_dir() / "verify" / f"{name}-rehearsal-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.log"
    try:
        kept.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        shutil.copyfile(log, kept)
    except OSError:
        return
    if result.could_not is not None:
        result.could_not += f" (server log kept at {kept})"
    else:
        result.problems[-1] += f" (server log kept at {kept})"


def _fetch_wal(
    segments: list[SegmentName],
    repos: list[Repository],
    scans: dict[str, Scan],
    folder: Path,
    segment_size: int,
    *,
    cancel: threading.Event | None,
) -> bool:
    """Write the first intact copy of each segment into ``folder``; False when one has none."""
    meter = Meter(no_progress, None)
    for seg in segments:
        for repo in repos:
            scan = scans.get(repo.name)
            found = scan.segments.get((seg.timeline, seg.number)) if scan else None
            if found is None:
                continue
            target = folder / seg.name
            with target.open("wb") as out:
                problem = verify_wal_object(repo, found[0], segment_size, sink=out, cancel=cancel, meter=meter)
            if problem is None:
                break
            target.unlink()
        else:
            return False
    return True


def _query_rehearsal(
    cfg: Config,
    result: Rehearsal,
    *,
    pg_ctl: str,
    data_dir: Path,
    scratch: Path,
    port: int,
    owner: tuple[int, int] | None,
    log_file: Path,
    wait: int,
    cancel: threading.Event | None,
) -> None:
    """Wait for the promotion that ends replay at consistency, then read the system catalogs."""
    import psycopg

    user = cfg.postgres.user
    if not user:
        import pwd

        user = pwd.getpwuid(owner[0] if owner else os.geteuid()).pw_name
    params: dict[str, Any] = {"host": str(scratch), "port": port, "user": user, "connect_timeout": 5}
    deadline = time.monotonic() + wait
    promoted = False
    while time.monotonic() < deadline:
        check_cancel(cancel, "verify")
        try:
            with psycopg.connect(dbname=cfg.postgres.dbname or "postgres", autocommit=True, **params) as conn:
                row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
                if row is not None and not row[0]:
                    promoted = True
                    break
        except psycopg.OperationalError:
            status = run_server_program([pg_ctl, "status", "-D", str(data_dir)], data_dir, check=False)
            if status.returncode != 0:
                break
        time.sleep(0.25)
    log = log_file.read_text(errors="replace") if log_file.exists() else ""
    if match := re.search(r"consistent recovery state reached at ([0-9A-F]+/[0-9A-F]+)", log):
        result.consistent_lsn = match.group(1)
    if not promoted:
        fatal = [m.group(1).strip() for m in re.finditer(r"(?:FATAL|PANIC):\s+(.*)", log)]
        reason = "; ".join(dict.fromkeys(fatal)) or f"no promotion within {wait} s"
        if HOST_FAILURES.search(reason):
            result.could_not = f"the rehearsal server cannot start on this host: {reason}"
        else:
            result.problems.append(f"the restored backup did not start and reach consistency: {reason}")
        return
    try:
        with psycopg.connect(dbname=cfg.postgres.dbname or "postgres", autocommit=True, **params) as conn:
            rows = conn.execute("SELECT datname FROM pg_database WHERE datallowconn ORDER BY datname").fetchall()
        result.databases = [str(r[0]) for r in rows]
        for database in result.databases:
            with psycopg.connect(dbname=database, autocommit=True, **params) as conn:
                row = conn.execute("SELECT count(*) FROM pg_class").fetchone()
                result.relations += int(row[0]) if row else 0
    except psycopg.Error as exc:
        result.problems.append(f"the restored server answers, but a catalog query fails: {str(exc).strip()}")
