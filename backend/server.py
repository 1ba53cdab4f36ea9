"""Starting and stopping the PostgreSQL server a restore replaces (pg_ctl, as the data directory's owner)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

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


def start(cfg: Config, data_dir: Path, log_file: Path) -> int:
    """Start the server; returns pg_ctl's exit code (a recovery that shuts down at its target "fails" to start)."""
    argv = [program(cfg, "pg_ctl"), "start", "-D", str(data_dir), "-l", str(log_file), "-w", "-t", "120"]
    conf = config_file(cfg, data_dir)
    if conf is not None:
        argv += ["-o", f"-c config_file={shlex.quote(str(conf))}"]
    result = run_server_program(argv, data_dir, check=False)
    return result.returncode
