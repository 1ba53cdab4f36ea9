"""``pgdr backup``: a physical base backup for point-in-time recovery.

pg_basebackup streams a tar of the cluster to stdout (with PostgreSQL's own ``backup_manifest``
injected); pgdr compresses it with zstd on both cores and writes it into every repository at once:
no temporary full copy on disk. pg_basebackup runs with ``-X none`` and returns only once the WAL the
backup needs is archived, so a listed backup is always restorable from the repositories.
"""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, cast

from backend import __version__, faults
from backend.backup.common import (
    backup_name,
    check_repositories,
    clean_debris,
    commit_manifest,
    discard_on_failure,
    object_record,
)
from backend.backup.fanout import fan_out
from backend.backup.tarscan import TarScanner
from backend.config import Config
from backend.errors import PgdrError
from backend.manifest import BACKUPS_PREFIX, BackupManifest
from backend.postgres import ServerInfo, connect, libpq_env, program, server_info
from backend.progress import Cancelled, Progress, ProgressCallback, check_cancel, no_progress
from backend.repository import Repository
from backend.walnames import SegmentName, parse_lsn

CHUNK = 1 << 20
TAR_OBJECT = "base.tar.zst"
PG_MANIFEST_OBJECT = "backup_manifest"


def take_base_backup(
    cfg: Config,
    repos: list[Repository],
    *,
    on_progress: ProgressCallback = no_progress,
    cancel: threading.Event | None = None,
) -> BackupManifest:
    with connect(cfg) as conn:
        info = server_info(conn)
        row = conn.execute("SELECT sum(pg_database_size(oid))::bigint FROM pg_database").fetchone()
        estimate = int(row[0]) if row and row[0] else None
    check_repositories(cfg, repos, info)
    clean_debris(repos)
    started = datetime.now(UTC)
    name = backup_name(started, "", repos)
    with discard_on_failure(repos, name):
        manifest = _take(
            cfg=cfg,
            repos=repos,
            info=info,
            name=name,
            started=started,
            estimate=estimate,
            on_progress=on_progress,
            cancel=cancel,
        )
    on_progress(Progress("backup", manifest.size_bytes, manifest.size_bytes, f"{name}: done"))
    return manifest


def _take(
    *,
    cfg: Config,
    repos: list[Repository],
    info: ServerInfo,
    name: str,
    started: datetime,
    estimate: int | None,
    on_progress: ProgressCallback,
    cancel: threading.Event | None,
) -> BackupManifest:
    import zstandard

    argv = [
        program(cfg, "pg_basebackup", info.version_num),
        "--pgdata=-",
        "--format=tar",
        "--wal-method=none",
        f"--checkpoint={cfg.backup.checkpoint}",
        f"--label=pgdr {name}",
        "--manifest-checksums=CRC32C",
        "--no-password",
    ]
    on_progress(Progress("backup", 0, estimate, f"starting {name}"))
    scanner = TarScanner({PG_MANIFEST_OBJECT})
    raw_hash = hashlib.sha256()
    raw_size = 0
    key = f"{BACKUPS_PREFIX}{name}/{TAR_OBJECT}"
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=libpq_env(cfg))
    assert proc.stdout is not None and proc.stderr is not None
    stderr_lines: list[bytes] = []
    drain = threading.Thread(target=_collect, args=(proc.stderr, stderr_lines), daemon=True)
    drain.start()
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
            drain.join()
            if proc.returncode != 0:
                err = b"".join(stderr_lines).decode(errors="replace").strip().splitlines()
                reason = next((line for line in reversed(err) if "error" in line.lower()), err[-1] if err else "")
                raise PgdrError(
                    f"pg_basebackup failed (exit {proc.returncode}): {reason.removeprefix('pg_basebackup: ')}"
                )
            pg_manifest = scanner.found.get(PG_MANIFEST_OBJECT)
            if pg_manifest is None:
                raise PgdrError("pg_basebackup's stream carried no backup_manifest: the backup is incomplete")
            tar_record = object_record(TAR_OBJECT, sink, raw_size, raw_hash.hexdigest(), "zstd")
    except BaseException as exc:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if isinstance(exc, KeyboardInterrupt):
            raise Cancelled(f"backup {name} interrupted: nothing was listed, partial objects were removed") from None
        raise
    for repo in repos:
        repo.put(f"{BACKUPS_PREFIX}{name}/{PG_MANIFEST_OBJECT}", pg_manifest)
    pg_record = object_record(PG_MANIFEST_OBJECT, None, len(pg_manifest), None, "none", data=pg_manifest)

    parsed = json.loads(pg_manifest)
    wal = parsed["WAL-Ranges"][0]
    timeline = int(wal["Timeline"])
    start_lsn, stop_lsn = wal["Start-LSN"], wal["End-LSN"]
    manifest = BackupManifest(
        name=name,
        kind="physical",
        cluster=cfg.cluster.name,
        system_identifier=info.system_identifier,
        pg_version=info.version,
        start_time=started,
        stop_time=datetime.now(UTC),
        objects=[tar_record, pg_record],
        timeline=timeline,
        start_lsn=start_lsn,
        stop_lsn=stop_lsn,
        wal_start=SegmentName.containing(timeline, parse_lsn(start_lsn), info.segment_size).name,
        wal_stop=SegmentName.containing(timeline, parse_lsn(stop_lsn), info.segment_size).name,
        wal_segment_size=info.segment_size,
        file_count=len(parsed.get("Files", [])),
        pgdr_version=__version__,
        extra={
            "label": f"pgdr {name}",
            "data_directory": str(Path(cfg.postgres.data_dir)) if cfg.postgres.data_dir else "",
        },
    )
    faults.point("backup-before-manifest")
    commit_manifest(repos, manifest)
    return manifest


def _collect(stream: IO[bytes], into: list[bytes]) -> None:
    """Read a child's stderr in the background so a chatty child never blocks on a full pipe."""
    into.extend(stream)
