"""``pgdr backup``: a physical base backup for point-in-time recovery.

Two paths, one result. With a local repository that stores objects as given and PostgreSQL 15 or
later, the server compresses with zstd on every core and pg_basebackup writes into the local
repository (``backend.backup.staged``); the other repositories get their copy from it. Otherwise
(S3 only, an encrypted local repository, an older server) pg_basebackup streams a tar to stdout
(with PostgreSQL's own ``backup_manifest`` injected), and pgdr compresses it with zstd on both cores
and writes it into every repository at once; a cluster with tablespaces, which pg_basebackup cannot
stream, goes through a bounded scratch folder instead (``backend.backup.staged``). None keeps a
temporary full copy. pg_basebackup runs
with ``-X none`` and returns only once the WAL the backup needs is archived, so a listed backup is
always restorable from the repositories.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import subprocess
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, cast

from backend import __version__, faults, server, tablespaces
from backend.backup import incremental as chains
from backend.backup import pgbasebackup, staged
from backend.backup.common import (
    backup_name,
    check_repositories,
    clean_debris,
    commit_manifest,
    discard_on_failure,
    object_record,
)
from backend.backup.fanout import fan_out
from backend.backup.pgbasebackup import MANIFEST, TAR_OBJECT
from backend.backup.tarscan import TarScanner
from backend.config import Config
from backend.errors import PgdrError
from backend.manifest import BACKUPS_PREFIX, BackupManifest, StoredObject
from backend.postgres import SERVER_START_WAIT_S, ServerInfo, connect, libpq_env, server_info
from backend.progress import Cancelled, Progress, ProgressCallback, check_cancel, no_progress
from backend.repository import Repository
from backend.restore.settings import strip_recovery_settings
from backend.tablespaces import Tablespace, with_sizes
from backend.walnames import SegmentName, parse_lsn

CHUNK = 1 << 20


def take_base_backup(
    cfg: Config,
    repos: list[Repository],
    *,
    incremental: bool = False,
    on_progress: ProgressCallback = no_progress,
    cancel: threading.Event | None = None,
) -> BackupManifest:
    """A full base backup, or with ``incremental`` one on top of the newest backup (``backend.backup.incremental``)."""
    with connect(cfg, wait_s=SERVER_START_WAIT_S) as conn:
        info = server_info(conn)
        row = conn.execute("SELECT sum(pg_database_size(oid))::bigint FROM pg_database").fetchone()
        estimate = int(row[0]) if row and row[0] else None
        spaces = tablespaces.live_tablespaces(conn)
        summarize = conn.execute("SELECT current_setting('summarize_wal', true)").fetchone() if incremental else None
    check_repositories(cfg, repos, info)
    if incremental:
        chains.refuse_unless_possible(info, str(summarize[0]) if summarize else None, spaces)
    if spaces and (info.version_num < staged.SERVER_ZSTD or not info.zstd):
        raise PgdrError(
            f"the cluster has tablespaces ({', '.join(t.name for t in spaces)}) and its PostgreSQL {info.version} "
            f"{'is older than 15' if info.zstd else 'was built without zstd'}: pgdr backs up tablespaces with the "
            "server's zstd; use a PostgreSQL 15 or later built with zstd (Debian's and PGDG's are)"
        )
    _forget_finished_recovery(cfg, info, on_progress)
    clean_debris(repos)
    staged.clean_staging(repos)
    parent, full_because = chains.choose_parent(repos, info) if incremental else (None, "")
    run = _Backup(
        cfg=cfg, repos=repos, info=info, spaces=spaces, estimate=estimate, on_progress=on_progress, cancel=cancel
    )
    if parent is None:
        return run.take(None, None, full_because)
    with tempfile.TemporaryDirectory(prefix="pgdr-incremental.") as scratch:
        parent_file = chains.write_parent_manifest(parent, repos, Path(scratch))
        try:
            return run.take(parent, parent_file, "")
        except PgdrError as exc:
            if not chains.refused_by_server(exc):
                raise
            why = f"PostgreSQL would not build on {parent.name}: {chains.server_reason(exc)}"
    return run.take(None, None, why)


@dataclasses.dataclass(frozen=True, kw_only=True)
class _Backup:
    """One ``pgdr backup`` run: what it learnt of the server, and how to take the backup with it."""

    cfg: Config
    repos: list[Repository]
    info: ServerInfo
    spaces: list[Tablespace]
    estimate: int | None
    on_progress: ProgressCallback
    cancel: threading.Event | None

    def take(self, parent: BackupManifest | None, parent_file: Path | None, full_because: str) -> BackupManifest:
        """Take the backup (incremental on ``parent``, else full) and list it once every object is whole."""
        cfg, repos, info, spaces = self.cfg, self.repos, self.info, self.spaces
        if full_because:
            self.on_progress(Progress("backup", 0, None, f"taking a full backup: {full_because}"))
        started = datetime.now(UTC)
        name = backup_name(started, "", repos)
        local = staged.staging_repository(repos, info)
        reached = 0  # pg_basebackup counts tar bytes, a little more than the files: "done" never goes back

        def report(p: Progress) -> None:
            nonlocal reached
            reached = max(reached, p.done) if p.step == "backup" else reached
            self.on_progress(p)

        with discard_on_failure(repos, name):
            try:
                if local is not None or spaces:
                    records, pg_manifest = staged.take(
                        cfg=cfg,
                        local=local,
                        repos=repos,
                        info=info,
                        name=name,
                        tablespaces=spaces,
                        estimate=self.estimate,
                        on_progress=report,
                        cancel=self.cancel,
                        parent_manifest=parent_file,
                    )
                else:
                    tar_record, pg_manifest = _stream(
                        cfg=cfg,
                        repos=repos,
                        info=info,
                        name=name,
                        estimate=self.estimate,
                        on_progress=report,
                        cancel=self.cancel,
                        parent_manifest=parent_file,
                    )
                    records = [tar_record]
            except KeyboardInterrupt:
                raise Cancelled(
                    f"backup {name} interrupted: nothing was listed, partial objects were removed"
                ) from None
            for repo in repos:
                repo.put(f"{BACKUPS_PREFIX}{name}/{MANIFEST}", pg_manifest)
            pg_record = object_record(MANIFEST, None, len(pg_manifest), None, "none", data=pg_manifest)
            manifest = _manifest(
                cfg, info, name, started, objects=[*records, pg_record], pg_manifest=pg_manifest, tablespaces=spaces
            )
            if self.estimate is not None:
                manifest.extra["cluster_bytes"] = self.estimate  # what a restore of a chain ending here may rebuild
            if parent is not None:
                manifest = dataclasses.replace(manifest, parent=parent.name)
            elif full_because:
                manifest.extra["full_because"] = full_because
            faults.point("backup-before-manifest")
            commit_manifest(repos, manifest)
        final = max(reached, manifest.size_bytes)
        self.on_progress(Progress("backup", final, final, f"{name}: done"))
        return manifest


def _forget_finished_recovery(cfg: Config, info: ServerInfo, on_progress: ProgressCallback) -> None:
    """Remove the recovery settings a finished restore left in the data directory, before it is copied.

    A restore that paused at its target leaves them for the operator, who promotes by hand; copied
    into this backup they would stop every restore of it at that old target. Only a server out of
    recovery, whose data directory this is (its pg_control names the same system), is touched; a
    restore strips them from any backup anyway, so a data directory pgdr cannot write is left alone.
    """
    if info.in_recovery or not cfg.postgres.data_dir:
        return
    data_dir = Path(cfg.postgres.data_dir)
    control = server.control_identity(data_dir)
    if control is None or control[0] != info.system_identifier:
        return
    try:
        removed = strip_recovery_settings(data_dir)
    except OSError:
        return
    if removed:
        on_progress(Progress("backup", 0, None, f"removed a finished recovery's settings: {'; '.join(removed)}"))


def _stream(
    *,
    cfg: Config,
    repos: list[Repository],
    info: ServerInfo,
    name: str,
    estimate: int | None,
    on_progress: ProgressCallback,
    cancel: threading.Event | None,
    parent_manifest: Path | None,
) -> tuple[StoredObject, bytes]:
    """pg_basebackup's tar on stdout, compressed here into every repository: the tar's record and backup_manifest."""
    import zstandard

    argv = [*pgbasebackup.base_argv(cfg, info, name, parent_manifest), "--pgdata=-"]
    on_progress(Progress("backup", 0, estimate, f"starting {name}"))
    scanner = TarScanner({MANIFEST})
    raw_hash = hashlib.sha256()
    raw_size = 0
    key = f"{BACKUPS_PREFIX}{name}/{TAR_OBJECT}"
    proc, stderr = pgbasebackup.start(argv, libpq_env(cfg), stdout=subprocess.PIPE)
    assert proc.stdout is not None
    try:
        compressor = zstandard.ZstdCompressor(level=cfg.backup.compression_level, threads=-1, write_checksum=True)
        with fan_out(repos, key) as sink:
            with compressor.stream_writer(cast(IO[bytes], sink), closefd=False) as zout:
                last_report = 0.0
                while chunk := cast(io.BufferedReader, proc.stdout).read1(CHUNK):
                    check_cancel(cancel, f"backup {name}")
                    raw_hash.update(chunk)
                    raw_size += len(chunk)
                    scanner.feed(chunk)
                    zout.write(chunk)
                    if raw_size > CHUNK * 4:
                        faults.point("backup-mid-upload")
                    now = time.monotonic()
                    if now - last_report > 0.2:
                        on_progress(Progress("backup", raw_size, estimate, f"{name}: streaming"))
                        last_report = now
            proc.wait()
            if proc.returncode != 0:
                raise stderr.failure(proc.returncode)
            pg_manifest = scanner.found.get(MANIFEST)
            if pg_manifest is None:
                raise PgdrError("pg_basebackup's stream carried no backup_manifest: the backup is incomplete")
            return object_record(TAR_OBJECT, sink, raw_size, raw_hash.hexdigest(), "zstd"), pg_manifest
    except BaseException:
        pgbasebackup.stop(proc)
        raise


def _manifest(
    cfg: Config,
    info: ServerInfo,
    name: str,
    started: datetime,
    *,
    objects: list[StoredObject],
    pg_manifest: bytes,
    tablespaces: list[Tablespace],
) -> BackupManifest:
    """pgdr's record of the backup, with the WAL range PostgreSQL's manifest gives."""
    parsed = json.loads(pg_manifest)
    extra: dict[str, Any] = {
        "label": f"pgdr {name}",
        "data_directory": str(Path(cfg.postgres.data_dir)) if cfg.postgres.data_dir else "",
    }
    if tablespaces:
        extra["tablespaces"] = [t.to_json() for t in with_sizes(tablespaces, parsed.get("Files", []))]
    wal = parsed["WAL-Ranges"][0]
    timeline = int(wal["Timeline"])
    start_lsn, stop_lsn = wal["Start-LSN"], wal["End-LSN"]
    return BackupManifest(
        name=name,
        kind="physical",
        cluster=cfg.cluster.name,
        system_identifier=info.system_identifier,
        pg_version=info.version,
        start_time=started,
        stop_time=datetime.now(UTC),
        objects=objects,
        timeline=timeline,
        start_lsn=start_lsn,
        stop_lsn=stop_lsn,
        wal_start=SegmentName.containing(timeline, parse_lsn(start_lsn), info.segment_size).name,
        wal_stop=SegmentName.containing(timeline, parse_lsn(stop_lsn), info.segment_size).name,
        wal_segment_size=info.segment_size,
        file_count=len(parsed.get("Files", [])),
        pgdr_version=__version__,
        extra=extra,
    )
