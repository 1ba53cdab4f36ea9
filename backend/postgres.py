"""Talking to the PostgreSQL server and running its programs.

Client programs (pg_basebackup, pg_dump) get the connection through libpq's environment, so the
password never shows in a process listing. Server programs (pg_ctl, postgres) refuse to run as root;
like Debian's pg_ctlcluster, pgdr run as root runs them as the owner of the data directory.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from backend.config import Config
from backend.errors import ConfigError, PgdrError

if TYPE_CHECKING:
    import psycopg

DEBIAN_BIN = Path("/usr/lib/postgresql")


def libpq_env(cfg: Config) -> dict[str, str]:
    """The environment a client program needs to reach the configured server."""
    env = dict(os.environ)
    pg = cfg.postgres
    for var, value in (
        ("PGHOST", pg.host),
        ("PGPORT", str(pg.port)),
        ("PGUSER", pg.user),
        ("PGDATABASE", pg.dbname),
        ("PGPASSWORD", pg.password),
    ):
        if value:
            env[var] = value
    env.setdefault("PGAPPNAME", "pgdr")
    env.setdefault("PGCONNECT_TIMEOUT", "10")
    return env


def describe_server(cfg: Config) -> str:
    pg = cfg.postgres
    host = pg.host or "the default socket"
    return f"PostgreSQL at {host} port {pg.port} as user {pg.user or os.environ.get('USER', '?')}"


def connect_params(
    cfg: Config, *, dbname: str | None = None, port: int | None = None, timeout: int = 10, application: str = "pgdr"
) -> dict[str, Any]:
    """psycopg keyword arguments for the configured server (autocommit); the one place they are built."""
    pg = cfg.postgres
    params: dict[str, Any] = {
        "dbname": dbname or pg.dbname or "postgres",
        "port": port or pg.port,
        "connect_timeout": timeout,
        "application_name": application,
        "autocommit": True,
    }
    for key, value in (("host", pg.host), ("user", pg.user), ("password", pg.password)):
        if value:
            params[key] = value
    return params


#: How long a backup waits for a server that is still starting before it fails.
SERVER_START_WAIT_S = 60.0
#: What a server that is still starting answers (or how its absent socket fails): worth waiting for.
_STARTING = ("the database system is starting up", "connection refused", "no such file or directory")


def connect(cfg: Config, *, dbname: str | None = None, wait_s: float = 0.0) -> psycopg.Connection[Any]:
    """Connect with autocommit; a failure is one line naming the server and the likely fix.

    With ``wait_s``, a server that is starting (refusing connections, or answering that it starts
    up) is waited for that long: a backup started with the deployment (``postgres-backup-now``
    right after ``up``) must not fail while the database still initialises.
    """
    import time

    import psycopg

    params = connect_params(cfg, dbname=dbname)
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return psycopg.connect(**params)
        except psycopg.OperationalError as exc:
            reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
            if time.monotonic() < deadline and any(s in str(exc).lower() for s in _STARTING):
                time.sleep(1.0)
                continue
            raise PgdrError(
                f"cannot connect to {describe_server(cfg)}: {reason}; check [postgres] host/port/user in "
                f"{cfg.where()} and that the server runs (pg_isready)"
            ) from None


@dataclass(frozen=True)
class ServerInfo:
    system_identifier: int
    version: str
    version_num: int
    segment_size: int
    timeline: int
    in_recovery: bool
    #: Whether the server can compress with zstd (a build without it refuses ``--compress=server-zstd``).
    zstd: bool = True


def server_info(conn: psycopg.Connection[Any]) -> ServerInfo:
    row = conn.execute(
        "SELECT (SELECT system_identifier FROM pg_control_system()),"
        " current_setting('server_version'), current_setting('server_version_num')::int,"
        " (SELECT setting::bigint FROM pg_settings WHERE name = 'wal_segment_size'),"
        " (SELECT timeline_id FROM pg_control_checkpoint()), pg_is_in_recovery(),"
        " (SELECT 'zstd' = ANY(enumvals) FROM pg_settings WHERE name = 'wal_compression')"
    ).fetchone()
    assert row is not None
    return ServerInfo(
        int(row[0]), str(row[1]).split()[0], int(row[2]), int(row[3]), int(row[4]), bool(row[5]), bool(row[6])
    )


def data_dir_version(data_dir: Path) -> int | None:
    """The major version a data directory's ``PG_VERSION`` names, as a server_version_num (18 -> 180000)."""
    try:
        return int((data_dir / "PG_VERSION").read_text().strip()) * 10000
    except (OSError, ValueError):
        return None


def bin_dir(cfg: Config, version_num: int | None = None) -> Path | None:
    """Where the PostgreSQL programs are: the configured folder, Debian's for the major version, or PATH.

    The major version is the caller's (the server's, a backup's), else the configured data directory's.
    Another major's programs are never taken for it: pg_basebackup refuses a newer server, pg_waldump
    cannot read another version's WAL, pg_ctl cannot start another version's data directory.
    """
    if cfg.postgres.bin_dir:
        return Path(cfg.postgres.bin_dir)
    if version_num is None and cfg.postgres.data_dir:
        version_num = data_dir_version(Path(cfg.postgres.data_dir))
    if version_num is not None:
        candidate = DEBIAN_BIN / str(version_num // 10000) / "bin"
        return candidate if candidate.is_dir() else None
    # Debian puts only wrappers for client programs on PATH; pg_ctl and pg_waldump live here.
    versions = sorted(
        (p for p in DEBIAN_BIN.glob("*/bin") if p.parent.name.isdigit()), key=lambda p: int(p.parent.name)
    )
    return versions[-1] if versions else None


def program(cfg: Config, name: str, version_num: int | None = None) -> str:
    folder = bin_dir(cfg, version_num)
    path = str(folder / name) if folder else shutil.which(name)
    if not path or not os.access(path, os.X_OK):
        raise ConfigError(
            f"PostgreSQL program {name} not found{f' in {folder}' if folder else ' on PATH'}: "
            f"install the PostgreSQL client/server programs or set [postgres] bin_dir in {cfg.where()}"
        )
    return path


def owner_of(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_uid, st.st_gid


def chown_tree(root: Path, owner: tuple[int, int]) -> None:
    """Give a data directory pgdr wrote as root to the server's user (PostgreSQL refuses any other owner).

    That user can write into the tree while this runs (a restore's target, verify --deep's scratch),
    so nothing is reached by a path it could swap for a link: ``fwalk`` holds each folder open and
    refuses to descend into a link, and every entry is changed relative to its folder's descriptor,
    a link itself rather than what it points to.
    """
    for _folder, dirs, files, folder_fd in os.fwalk(root, follow_symlinks=False):
        os.fchown(folder_fd, *owner)
        for name in dirs + files:
            os.chown(name, *owner, dir_fd=folder_fd, follow_symlinks=False)


def own_folder(folder: Path, mode: int, owner: tuple[int, int] | None) -> None:
    """Set a folder's mode and (when pgdr is root) owner through a descriptor of the folder itself:
    never a path the server's user, who can write beside it, could swap for a link meanwhile."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        os.fchmod(fd, mode)
        if owner is not None:
            os.fchown(fd, *owner)
    finally:
        os.close(fd)


def run_server_program(
    argv: list[str], data_dir: Path, *, check: bool = True, **kwargs: Any
) -> subprocess.CompletedProcess[str]:
    """Run a server program (pg_ctl, postgres, pg_controldata) as the data directory's owner."""
    if os.geteuid() == 0:
        uid, gid = owner_of(data_dir)
        if uid == 0:
            raise PgdrError(f"{data_dir} is owned by root: PostgreSQL cannot run as root; chown it to the server user")
        import pwd

        home = pwd.getpwuid(uid).pw_dir
        env = dict(kwargs.pop("env", None) or os.environ)
        env.update(HOME=home)
        kwargs.update(user=uid, group=gid, extra_groups=[], env=env)
    result = subprocess.run(argv, text=True, capture_output=True, check=False, **kwargs)
    if check and result.returncode != 0:
        tail = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no output"]
        raise PgdrError(f"{Path(argv[0]).name} failed (exit {result.returncode}): {tail[0]}")
    return result
