"""Starting and stopping the PostgreSQL server a restore replaces (pg_ctl, as the data directory's owner)."""

from __future__ import annotations

import os
import re
import shlex
import struct
from pathlib import Path

from backend import pids
from backend.config import Config
from backend.errors import PgdrError
from backend.postgres import program, run_server_program

DEBIAN_ETC = Path("/etc/postgresql")


def is_running(cfg: Config, data_dir: Path) -> bool:
    """pg_ctl status: 0 running, 3 not running, 4 no usable data directory."""
    if not (data_dir / "PG_VERSION").exists():
        return False
    result = run_server_program([program(cfg, "pg_ctl"), "status", "-D", str(data_dir)], data_dir, check=False)
    return result.returncode == 0


def stop(cfg: Config, data_dir: Path, mode: str = "fast") -> None:
    result = run_server_program(
        [program(cfg, "pg_ctl"), "stop", "-D", str(data_dir), "-m", mode, "-w", "-t", "300"], data_dir, check=False
    )
    if result.returncode != 0 and is_running(cfg, data_dir):
        raise PgdrError(
            f"could not stop the server on {data_dir}: {result.stderr.strip() or result.stdout.strip()}; "
            "stop it yourself (pg_ctl stop / systemctl stop) and retry"
        )


def config_file(cfg: Config, data_dir: Path) -> Path | None:
    """postgresql.conf when it lives outside the data directory, as on Debian and Ubuntu."""
    if cfg.postgres.config_file:
        return Path(cfg.postgres.config_file)
    if (data_dir / "postgresql.conf").exists():
        return None
    for conf in sorted(DEBIAN_ETC.glob("*/*/postgresql.conf")):
        for line in conf.read_text(errors="replace").splitlines():
            match = re.match(r"\s*data_directory\s*=\s*'([^']*)'", line)
            if match and Path(match.group(1)) == data_dir:
                return conf
    return None


def start(cfg: Config, data_dir: Path, log_file: Path, settings: dict[str, str] | None = None) -> int:
    """Start the server; returns pg_ctl's exit code (a recovery that shuts down at its target "fails" to start).

    ``settings`` go on the server's command line: they hold for this start (and a ``pg_ctl restart``
    of it) and are written to no configuration file.
    """
    argv = [program(cfg, "pg_ctl"), "start", "-D", str(data_dir), "-l", str(log_file), "-w", "-t", "120"]
    conf = config_file(cfg, data_dir)
    if conf is not None:
        argv += ["-o", f"-c config_file={shlex.quote(str(conf))}"]
    for name, value in (settings or {}).items():
        argv += ["-o", f"-c {shlex.quote(f'{name}={value}')}"]
    result = run_server_program(argv, data_dir, check=False)
    return result.returncode


def postmaster_running(data_dir: Path) -> bool:
    """Whether postmaster.pid names a live process, as pg_ctl status decides: reading one small file,
    cheap enough to watch closely, which starting pg_ctl is not."""
    try:
        pid = int((data_dir / "postmaster.pid").read_text().split("\n", 1)[0])
    except (OSError, ValueError):
        return False
    return pids.alive(pid)


#: pg_control's DBState once recovery is over (DB_IN_PRODUCTION in src/include/catalog/pg_control.h).
_IN_PRODUCTION = 6
#: The state field follows system_identifier (8 bytes) and two 4-byte version numbers.
_STATE = struct.Struct("=16xi")


#: pg_control's head: system_identifier, then (after two version numbers, the state, the time and the
#: latest checkpoint's location) the checkpoint's redo LSN and its timeline. The same from 12 to 18.
_HEAD = struct.Struct("=Q40xI")


def control_identity(data_dir: Path) -> tuple[int, int] | None:
    """The cluster's system identifier and the timeline of its latest checkpoint, from pg_control.

    None when there is no readable pg_control (no cluster there, or not pgdr's to read). A server
    that promoted moments ago may still show the old timeline until its first checkpoint: ask a
    running server instead (``pg_walfile_name``).
    """
    try:
        with (data_dir / "global" / "pg_control").open("rb") as fh:
            head = fh.read(_HEAD.size)
    except OSError:
        return None
    if len(head) < _HEAD.size:
        return None
    system, timeline = _HEAD.unpack(head)
    return int(system), int(timeline)


def cluster_timeline(data_dir: Path) -> tuple[int, int] | None:
    """The system identifier of the cluster in ``data_dir`` and the timeline it runs on (None: unreadable).

    pg_control names the timeline of the latest checkpoint, which after a promotion stays the old one
    until the next checkpoint; the promotion wrote the new timeline's history file into pg_wal at
    once, and the newest history file there is never older than the timeline the cluster is on.
    """
    control = control_identity(data_dir)
    if control is None:
        return None
    system, timeline = control
    try:
        names = os.listdir(data_dir / "pg_wal")
    except OSError:
        names = []
    for name in names:
        stem, _, suffix = name.partition(".")
        if suffix == "history" and len(stem) == 8 and all(c in "0123456789ABCDEF" for c in stem):
            timeline = max(timeline, int(stem, 16))
    return system, timeline


def in_production(data_dir: Path) -> bool:
    """Whether pg_control says recovery is over, as ``pg_ctl promote -w`` watches for it.

    postmaster.pid cannot tell: it says "ready" for a hot standby as for a primary. The control file
    is written in the server's byte order, on this machine.
    """
    try:
        with (data_dir / "global" / "pg_control").open("rb") as fh:
            head = fh.read(_STATE.size)
    except OSError:
        return False
    return len(head) == _STATE.size and _STATE.unpack(head)[0] == _IN_PRODUCTION
