"""``pgdr demo``: a throwaway PostgreSQL cluster with real backups, real WAL and a live workload.

A newcomer should see the real product in a minute, on this machine, with nothing configured: this
builds a sandbox (``$PGDR_DEMO_DIR``, else ``<state dir>/demo``; as root ``/var/tmp/pgdr-demo-<uid>``,
because the ``postgres`` user that must run the server cannot enter root's home), initdb's a cluster
with 1 MB WAL segments (so the timeline visibly grows), archives through this very pgdr into a local
repository, takes base backups with ``jobs.backup_job`` around a named restore point and a dropped
table, and starts a small workload (inserts, and a WAL switch every few seconds) that keeps running
while the demo is open. ``clean()`` stops the workload and the server and removes everything.

Everything goes through the real backend and the real ``pgdr wal-push``: the demo is the product.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from backend.config import Config, load_config
from backend.errors import PgdrError
from backend.progress import Progress, ProgressCallback, no_progress

CLUSTER = "demo"
PORT = 5432  # the server listens only on the sandbox's own socket directory: no clash with a real one
WORKLOAD_INSERT_SECONDS = 1.0
WORKLOAD_SWITCH_SECONDS = 8.0


def sandbox_dir() -> Path:
    explicit = os.environ.get("PGDR_DEMO_DIR")
    if explicit:
        return Path(explicit)
    if os.geteuid() == 0:
        return Path(f"/var/tmp/pgdr-demo-{os.geteuid()}")
    from backend.audit import state_dir

    return state_dir() / "demo"


def _server_user() -> pwd.struct_passwd:
    if os.geteuid() == 0:
        try:
            return pwd.getpwnam("postgres")
        except KeyError:
            raise PgdrError(
                "pgdr demo runs as root, and PostgreSQL refuses to: create the `postgres` user "
                "(installing the PostgreSQL packages does) or run the demo as an ordinary user"
            ) from None
    return pwd.getpwuid(os.geteuid())


def _as_server(argv: list[str]) -> list[str]:
    if os.geteuid() == 0:
        return ["runuser", "-u", _server_user().pw_name, "--", *argv]
    return argv


def _give(path: Path) -> None:
    if os.geteuid() == 0:
        user = _server_user()
        os.chown(path, user.pw_uid, user.pw_gid)


def _pg_bin() -> Path:
    """Debian's newest server programs folder, else wherever initdb and pg_basebackup both are on PATH."""
    versions = sorted(
        (p for p in Path("/usr/lib/postgresql").glob("*/bin") if p.parent.name.isdigit() and (p / "initdb").exists()),
        key=lambda p: int(p.parent.name),
    )
    if versions:
        return versions[-1]
    found = shutil.which("initdb")
    if found and (Path(found).parent / "pg_basebackup").exists():
        return Path(found).parent
    raise PgdrError("PostgreSQL server programs (initdb, pg_ctl, pg_basebackup) not found: install PostgreSQL 15")


def _pgdr_for_server() -> Path:
    """The pgdr the server's archive_command runs: this one, if the server user can execute it."""
    exe = Path(sys.executable).parent / "pgdr"
    probe = subprocess.run(_as_server([str(exe), "--version"]), capture_output=True, text=True, check=False)
    if probe.returncode != 0:
        raise PgdrError(
            f"the server user {_server_user().pw_name} cannot run {exe} (needed for archive_command): install "
            "pgdr where that user can read it (deploy/install.sh builds the venv from /usr/bin/python3, "
            "readable by everyone), or check the permissions of the folders above it"
        )
    return exe


def _run(argv: list[str], what: str, **kwargs: object) -> str:
    result = subprocess.run(argv, capture_output=True, text=True, check=False, **kwargs)  # type: ignore[call-overload]
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip().splitlines()[-3:]
        raise PgdrError(f"{what} failed (exit {result.returncode}): {' / '.join(tail) or 'no output'}")
    return str(result.stdout)


class _Paths:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.data = root / "data"
        self.sock = root / "sock"
        self.repo = root / "repo"
        self.config = root / "pgdr.toml"
        self.server_log = root / "server.log"
        self.workload_pid = root / "workload.pid"
        self.workload_log = root / "workload.log"


def build(on_progress: ProgressCallback = no_progress) -> Config:
    """Build the sandbox (or bring an existing one back up) and return its loaded config."""
    paths = _Paths(sandbox_dir())
    step = _Steps(on_progress)
    if paths.config.exists() and (paths.data / "PG_VERSION").exists():
        step("starting the existing demo cluster")
        cfg = load_config(paths.config)
        _start(paths, _pg_bin())
        _start_workload(paths)
        return cfg
    if paths.root.exists():
        shutil.rmtree(paths.root)  # half-built by an interrupted run: start over
    pg_bin = _pg_bin()
    exe = _pgdr_for_server()
    step(f"creating the sandbox in {paths.root}")
    paths.root.mkdir(parents=True, mode=0o755)
    paths.root.chmod(0o755)
    _give(paths.root)
    for folder in (paths.sock, paths.repo):
        folder.mkdir(mode=0o700)
        _give(folder)
    paths.data.mkdir(mode=0o700)
    _give(paths.data)
    paths.config.write_text(
        f'# pgdr demo sandbox: remove with `pgdr demo --clean`\n[cluster]\nname = "{CLUSTER}"\n\n'
        f'[postgres]\nhost = "{paths.sock}"\nport = {PORT}\nuser = "postgres"\ndbname = "postgres"\n'
        f'data_dir = "{paths.data}"\nbin_dir = "{pg_bin}"\n\n[local]\npath = "{paths.repo}"\n'
    )
    paths.config.chmod(0o600)
    _give(paths.config)

    step("initdb: a throwaway PostgreSQL cluster with 1 MB WAL segments")
    _run(
        _as_server(
            [
                str(pg_bin / "initdb"),
                "-D",
                str(paths.data),
                "-A",
                "trust",
                "-U",
                "postgres",
                "--wal-segsize=1",
                "--no-sync",
                "-E",
                "UTF8",
                "--locale=C",
            ]
        ),
        "initdb",
    )
    archive = f"{exe} --config {paths.config} wal-push %p"
    settings = {
        "port": str(PORT),
        "listen_addresses": "''",
        "unix_socket_directories": f"'{paths.sock}'",
        "wal_level": "replica",
        "archive_mode": "on",
        "archive_command": "'" + archive.replace("'", "''") + "'",
        "archive_timeout": "30",
        "max_wal_senders": "4",
        "shared_buffers": "32MB",
        "fsync": "off",
    }
    conf = paths.data / "postgresql.auto.conf"
    conf.write_text("".join(f"{k} = {v}\n" for k, v in settings.items()))
    _give(conf)
    step("starting the server (archiving through pgdr wal-push)")
    _start(paths, pg_bin)
    cfg = load_config(paths.config)

    step("loading a small schema")
    _sql(
        cfg,
        "CREATE TABLE orders (id bigserial PRIMARY KEY, at timestamptz DEFAULT now(), amount numeric)",
        "INSERT INTO orders (amount) SELECT random() * 100 FROM generate_series(1, 20000)",
    )
    _backup(cfg, step, 1)
    _sql(
        cfg,
        "INSERT INTO orders (amount) SELECT random() * 100 FROM generate_series(1, 20000)",
        "SELECT pg_switch_wal()",
    )
    time.sleep(1.0)
    step("a named restore point, then a dropped table")
    _sql(
        cfg,
        "CREATE TABLE customers AS SELECT g AS id, 'customer ' || g AS name FROM generate_series(1, 5000) g",
        "SELECT pg_switch_wal()",
    )
    time.sleep(1.0)
    _sql(cfg, "SELECT pg_create_restore_point('before_migration')")
    time.sleep(1.0)
    _sql(cfg, "INSERT INTO orders (amount) SELECT random() * 100 FROM generate_series(1, 5000)")
    _sql(cfg, "DROP TABLE customers", "SELECT pg_switch_wal()")
    time.sleep(1.0)
    _backup(cfg, step, 2)
    _sql(
        cfg,
        "INSERT INTO orders (amount) SELECT random() * 100 FROM generate_series(1, 20000)",
        "SELECT pg_switch_wal()",
    )
    _backup(cfg, step, 3)
    step("starting the workload (inserts, and a WAL switch every few seconds)")
    _start_workload(paths)
    return cfg


class _Steps:
    def __init__(self, on_progress: ProgressCallback) -> None:
        self.on_progress = on_progress

    def __call__(self, message: str) -> None:
        self.on_progress(Progress("demo", 0, None, message))


def _backup(cfg: Config, step: _Steps, n: int) -> None:
    from backend.jobs import backup_job

    step(f"base backup {n} of 3")
    backup_job(cfg, on_progress=lambda p: step.on_progress(Progress("backup", p.done, p.total, f"base backup {n}")))


def _sql(cfg: Config, *statements: str) -> None:
    from backend.postgres import connect

    with connect(cfg) as conn:
        for statement in statements:
            conn.execute(statement)


def _start(paths: _Paths, pg_bin: Path) -> None:
    status = subprocess.run(
        _as_server([str(pg_bin / "pg_ctl"), "status", "-D", str(paths.data)]), capture_output=True, check=False
    )
    if status.returncode == 0:
        return
    if not paths.server_log.exists():
        paths.server_log.touch()
        _give(paths.server_log)
    _run(
        _as_server(
            [str(pg_bin / "pg_ctl"), "start", "-D", str(paths.data), "-l", str(paths.server_log), "-w", "-t", "60"]
        ),
        f"starting the demo server (see {paths.server_log})",
        env=_clean_env(),
    )


def _clean_env() -> dict[str, str]:
    """No PG*/AWS* settings of the operator's shell leak into the sandbox's server or workload."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("PG", "AWS_", "DB_"))}


def _workload_alive(paths: _Paths) -> int | None:
    try:
        pid = int(paths.workload_pid.read_text().strip())
        os.kill(pid, 0)
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return None
    return pid if b"backend.demo" in cmdline else None


def _start_workload(paths: _Paths) -> None:
    if _workload_alive(paths):
        return
    with paths.workload_log.open("ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "backend.demo", "--workload", str(paths.config)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=_clean_env(),
            cwd="/",
        )
    paths.workload_pid.write_text(str(proc.pid))


def workload(config: Path) -> int:
    """Insert a row every second and switch WAL every few seconds until the sandbox goes away."""
    import psycopg

    cfg = load_config(config)
    last_switch = time.monotonic()
    failures = 0
    while config.exists():
        try:
            with psycopg.connect(
                host=cfg.postgres.host,
                port=cfg.postgres.port,
                user="postgres",
                dbname="postgres",
                autocommit=True,
                connect_timeout=3,
            ) as conn:
                failures = 0
                while config.exists():
                    conn.execute("INSERT INTO orders (amount) SELECT random() * 100 FROM generate_series(1, 50)")
                    if time.monotonic() - last_switch > WORKLOAD_SWITCH_SECONDS:
                        conn.execute("SELECT pg_switch_wal()")
                        last_switch = time.monotonic()
                    time.sleep(WORKLOAD_INSERT_SECONDS)
        except psycopg.Error:
            failures += 1
            if failures > 60:
                return 1  # the server is gone for good
            time.sleep(1.0)
    return 0


def clean() -> str:
    """Stop the workload and the server, remove the sandbox; says what it did."""
    paths = _Paths(sandbox_dir())
    if not paths.root.exists():
        return f"no demo sandbox at {paths.root}: nothing to remove"
    pid = _workload_alive(paths)
    if pid is not None:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGTERM)
    if (paths.data / "PG_VERSION").exists():
        with contextlib.suppress(PgdrError):
            pg_ctl = str(_pg_bin() / "pg_ctl")
            subprocess.run(
                _as_server([pg_ctl, "stop", "-D", str(paths.data), "-m", "immediate", "-w"]),
                capture_output=True,
                check=False,
                timeout=60,
            )
    if pid is not None:
        for _ in range(50):
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)  # reap it when this process started it (a test, a long session)
            if _workload_alive(paths) is None:
                break
            time.sleep(0.1)
        else:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
    shutil.rmtree(paths.root, ignore_errors=True)
    return f"removed the demo sandbox {paths.root} (server and workload stopped)"


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--workload":
        sys.exit(workload(Path(sys.argv[2])))
    print("usage: python -m backend.demo --workload CONFIG (started by `pgdr demo`)", file=sys.stderr)
    sys.exit(2)
