"""``pgdr backup --logical``: the logical dumps, a ``.dump`` (pg_dump custom format) and a ``.sql.gz``.

Both come from one exported snapshot, so they describe the same instant, and both stream straight
into the repositories. A logical dump cannot replay WAL; it is for restoring single objects, moving
between major versions, and reading by hand.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import subprocess
import threading
from datetime import UTC, datetime
from typing import cast

from backend import __version__
from backend.backup.common import (
    backup_name,
    check_repositories,
    clean_debris,
    commit_manifest,
    discard_on_failure,
)
from backend.backup.fanout import fan_out
from backend.config import Config
from backend.errors import PgdrError
from backend.manifest import BACKUPS_PREFIX, BackupManifest, StoredObject
from backend.postgres import SERVER_START_WAIT_S, connect, libpq_env, program, server_info
from backend.progress import Progress, ProgressCallback, check_cancel, no_progress
from backend.repository import Repository

CHUNK = 1 << 20


def take_logical_dump(
    cfg: Config,
    repos: list[Repository],
    *,
    on_progress: ProgressCallback = no_progress,
    cancel: threading.Event | None = None,
) -> BackupManifest:
    dbname = cfg.postgres.dbname
    with connect(cfg, wait_s=SERVER_START_WAIT_S) as conn:
        info = server_info(conn)
        check_repositories(cfg, repos, info)
        clean_debris(repos)
        started = datetime.now(UTC)
        name = backup_name(started, "-logical", repos)
        on_progress(Progress("dump", 0, None, f"starting {name}"))
        conn.autocommit = False
        conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        row = conn.execute("SELECT pg_export_snapshot()").fetchone()
        assert row is not None
        snapshot = str(row[0])
        pg_dump = program(cfg, "pg_dump", info.version_num)
        with discard_on_failure(repos, name):
            jobs = [
                _DumpJob(repos, name, f"{dbname}.dump", [pg_dump, "--format=custom"], gzip_output=False),
                _DumpJob(repos, name, f"{dbname}.sql.gz", [pg_dump, "--format=plain"], gzip_output=True),
            ]
            threads = [threading.Thread(target=job.run, args=(cfg, snapshot, dbname, cancel)) for job in jobs]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            conn.rollback()
            for job in jobs:
                if job.error is not None:
                    raise job.error
            manifest = BackupManifest(
                name=name,
                kind="logical",
                cluster=cfg.cluster.name,
                system_identifier=info.system_identifier,
                pg_version=info.version,
                start_time=started,
                stop_time=datetime.now(UTC),
                objects=[job.record for job in jobs if job.record is not None],
                timeline=info.timeline,
                database=dbname,
                pgdr_version=__version__,
            )
            commit_manifest(repos, manifest)
    on_progress(Progress("dump", manifest.size_bytes, manifest.size_bytes, f"{name}: done"))
    return manifest


class _DumpJob:
    """One pg_dump process streamed into every repository (in its own thread)."""

    def __init__(self, repos: list[Repository], name: str, key: str, argv: list[str], *, gzip_output: bool) -> None:
        self.repos, self.name, self.key, self.argv, self.gzip_output = repos, name, key, argv, gzip_output
        self.record: StoredObject | None = None
        self.error: BaseException | None = None

    def run(self, cfg: Config, snapshot: str, dbname: str, cancel: threading.Event | None) -> None:
        try:
            self._run(cfg, snapshot, dbname, cancel)
        except BaseException as exc:  # handed to the main thread, which raises it
            self.error = exc

    def _run(self, cfg: Config, snapshot: str, dbname: str, cancel: threading.Event | None) -> None:
        argv = [*self.argv, f"--snapshot={snapshot}", "--no-password", f"--dbname={dbname}"]
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=libpq_env(cfg))
        assert proc.stdout is not None and proc.stderr is not None
        raw = hashlib.sha256()
        raw_size = 0
        try:
            with fan_out(self.repos, f"{BACKUPS_PREFIX}{self.name}/{self.key}") as sink:
                out = gzip.GzipFile(fileobj=sink, mode="wb", compresslevel=6, mtime=0) if self.gzip_output else sink
                while chunk := cast(io.BufferedReader, proc.stdout).read1(CHUNK):
                    check_cancel(cancel, f"dump {self.name}")
                    raw.update(chunk)
                    raw_size += len(chunk)
                    out.write(chunk)
                if isinstance(out, gzip.GzipFile):
                    out.close()
                err = proc.stderr.read().decode(errors="replace").strip()
                if proc.wait() != 0:
                    raise PgdrError(
                        f"pg_dump failed (exit {proc.returncode}): {err.splitlines()[-1] if err else 'no output'}"
                    )
                self.record = StoredObject(
                    self.key,
                    sink.size,
                    sink.sha256,
                    raw_size,
                    raw.hexdigest(),
                    "gzip" if self.gzip_output else "none",
                )
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
