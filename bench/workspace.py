"""Everything one benchmark run sets up in its temp dir, and takes down again.

Layout (the dir is world-enterable so the server user can reach it; the pieces it writes are its own)::

    cluster/             the PostgreSQL cluster (data, socket, server.log)
    state/               PGDR_STATE_DIR and XDG dirs for every pgdr process
    pgdr-repo/           pgdr's local repository;  pgdr.toml and friends beside it
    pgbackrest/          pgBackRest's repo1, log, lock and spool dirs;  pgbackrest*.conf
    wal/                 real segments copied aside, and each tool's working copies
    restore/             restore targets
    catalog/             the synthetic year-of-history repository
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.cluster import Cluster
from bench.proc import PG_BIN, VENV_BIN, BenchError, chown_to_server, need, run, server_env

STANZA = "bench"
CLUSTER_NAME = "bench"
S3_ACCESS_KEY = "bench"
S3_SECRET_KEY = "bench-secret"
S3_REGION = "us-east-1"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def toml_str(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


class Workspace:
    def __init__(self, keep: bool = False, parent: str | None = None) -> None:
        self.keep = keep
        self.root = Path(tempfile.mkdtemp(prefix="pgdr-bench-", dir=parent or "/tmp"))
        self.root.chmod(0o755)
        self.state = self.mkdir("state")
        self.env = server_env(
            {
                "PGDR_STATE_DIR": str(self.state),
                "XDG_STATE_HOME": str(self.state / "xdg-state"),
                "XDG_CONFIG_HOME": str(self.state / "xdg-config"),
                "XDG_CACHE_HOME": str(self.state / "xdg-cache"),
                # The checkout is root's: the server user cannot write __pycache__ there, so without this
                # every pgdr process would compile its modules from source (an installed pgdr has .pyc).
                "PYTHONPYCACHEPREFIX": str(self.state / "pycache"),
            }
        )
        self.cluster = Cluster(self.root / "cluster", free_port(), self.env)
        self.pgdr_repo = self.mkdir("pgdr-repo")
        self.pgbr = self.mkdir("pgbackrest")
        for sub in ("repo", "log", "lock", "spool"):
            self.mkdir(f"pgbackrest/{sub}")
        self.wal = self.mkdir("wal")
        self.restore = self.mkdir("restore")
        self.moto: subprocess.Popen[bytes] | None = None
        self.moto_url = ""
        self.pgdr = str(VENV_BIN / "pgdr")
        self.pgbackrest = ""
        self.barman = ""

    def mkdir(self, rel: str) -> Path:
        path = self.root / rel
        path.mkdir(parents=True, exist_ok=True)
        chown_to_server(path)
        return path

    def write_private(self, rel: str, text: str) -> Path:
        """A config file the server user can read (and nobody else)."""
        path = self.root / rel
        path.write_text(text)
        path.chmod(0o600)
        chown_to_server(path)
        return path

    # --- tools -----------------------------------------------------------------------------------

    def check_tools(self, *, need_pgbackrest: bool, need_barman: bool) -> None:
        if not Path(self.pgdr).exists():
            raise BenchError(f"{self.pgdr} is missing: create the venv with deploy/install.sh")
        probe = run([self.pgdr, "--version"], env=self.env, check=False)
        if not probe.ok:
            raise BenchError(f"the server user cannot run {self.pgdr}: {probe.stderr.strip()}")
        if need_pgbackrest:
            self.pgbackrest = need("pgbackrest", "apt-get install -y pgbackrest (the set-up installs it)")
        if need_barman:
            self.barman = need(
                "barman-cloud-wal-archive", "apt-get install -y barman-cli-cloud (the set-up installs it)"
            )

    # --- pgdr configs ------------------------------------------------------------------------------

    def postgres_section(self) -> str:
        c = self.cluster
        return (
            f"[cluster]\nname = {toml_str(CLUSTER_NAME)}\n\n"
            f'[postgres]\nhost = {toml_str(str(c.socket_dir))}\nport = {c.port}\nuser = "postgres"\n'
            f'dbname = "postgres"\ndata_dir = {toml_str(str(c.data_dir))}\nbin_dir = {toml_str(str(PG_BIN))}\n'
        )

    def pgdr_local_config(self, name: str = "pgdr.toml", extra: str = "") -> Path:
        return self.write_private(
            name, self.postgres_section() + f"\n[local]\npath = {toml_str(str(self.pgdr_repo))}\n" + extra
        )

    def pgdr_s3_config(self, name: str, bucket: str, compression: str = "zstd") -> Path:
        text = self.postgres_section() + (
            f'\n[s3]\nbucket = {toml_str(bucket)}\nprefix = "pgdr"\nregion = {toml_str(S3_REGION)}\n'
            f'endpoint_url = {toml_str(self.moto_url)}\nstorage_class = "STANDARD"\n'
            f"access_key_id = {toml_str(S3_ACCESS_KEY)}\nsecret_access_key = {toml_str(S3_SECRET_KEY)}\n"
            f'\n[archive]\nsync = ["s3"]\ncompression = {toml_str(compression)}\n'
        )
        return self.write_private(name, text)

    def pgdr_archive_command(self, config: Path) -> str:
        return f"{self.pgdr} --config {config} wal-push %p"

    # --- pgBackRest ------------------------------------------------------------------------------

    def pgbackrest_config(self, name: str, *, archive_async: bool) -> Path:
        c = self.cluster
        lines = [
            "[global]",
            f"repo1-path={self.pgbr / 'repo'}",
            "repo1-retention-full=100",
            f"log-path={self.pgbr / 'log'}",
            f"lock-path={self.pgbr / 'lock'}",
            f"spool-path={self.pgbr / 'spool'}",
            "log-level-console=warn",
            "compress-type=zst",
            "process-max=2",
            "start-fast=y",
            f"archive-async={'y' if archive_async else 'n'}",
            "",
            f"[{STANZA}]",
            f"pg1-path={c.data_dir}",
            f"pg1-socket-path={c.socket_dir}",
            f"pg1-port={c.port}",
            "pg1-user=postgres",
            "",
        ]
        return self.write_private(name, "\n".join(lines))

    def pgbackrest_argv(self, config: Path, *args: str) -> list[str]:
        return [self.pgbackrest, f"--config={config}", f"--stanza={STANZA}", *args]

    def pgbackrest_archive_command(self, config: Path) -> str:
        return f"{self.pgbackrest} --config={config} --stanza={STANZA} archive-push %p"

    # --- moto ------------------------------------------------------------------------------------

    def start_moto(self) -> str:
        """moto's S3 server in its own process (so its CPU is not the benchmark's), on loopback."""
        port = free_port()
        log = open(self.root / "moto.log", "wb")  # noqa: SIM115 - lives as long as the server
        self.moto = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.moto_url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                break
            if self.moto.poll() is not None or time.monotonic() > deadline:
                raise BenchError(f"moto's S3 server did not start (see {self.root / 'moto.log'})")
            time.sleep(0.1)
        return self.moto_url

    def s3_client(self) -> Any:
        import boto3

        return boto3.session.Session(
            aws_access_key_id=S3_ACCESS_KEY, aws_secret_access_key=S3_SECRET_KEY, region_name=S3_REGION
        ).client("s3", endpoint_url=self.moto_url)

    # --- teardown --------------------------------------------------------------------------------

    def close(self) -> None:
        self.cluster.stop("immediate")
        for data in self.restore.glob("*"):
            if (data / "postmaster.pid").exists():
                run([str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"], env=self.env, check=False)
        self.kill_leftovers()
        if self.moto is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.moto.pid, signal.SIGTERM)
            self.moto.wait(timeout=10)
        if not self.keep:
            shutil.rmtree(self.root, ignore_errors=True)

    def kill_leftovers(self) -> None:
        """End background processes this run's clusters started (pgdr uploaders, pgBackRest async
        workers): found by this run's unique work dir in their command line, ended by pid."""
        mine = str(self.root)
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if mine in cmdline and "postgres" not in cmdline.split(" ", 1)[0]:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(int(entry.name), signal.SIGTERM)
