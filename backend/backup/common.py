"""What physical and logical backups share: naming, the repository checks, the manifest commit."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
from collections.abc import Iterator
from datetime import datetime

from backend.backup.fanout import FanOut
from backend.config import Config
from backend.errors import PgdrError
from backend.manifest import BACKUPS_PREFIX, MANIFEST_NAME, BackupManifest, StoredObject
from backend.postgres import ServerInfo
from backend.repository import ClusterIdentity, Repository, ensure_identity


def backup_name(started: datetime, suffix: str, repos: list[Repository]) -> str:
    """``YYYYMMDDTHHMMSSZ`` in UTC (plus a suffix per kind): sorting names sorts backups by time."""
    name = started.strftime("%Y%m%dT%H%M%SZ") + suffix
    for repo in repos:
        if any(True for _ in repo.list(f"{BACKUPS_PREFIX}{name}/")):
            raise PgdrError(
                f"a backup named {name} already exists in the {repo.name} repository: wait a second and retry"
            )
    return name


def check_repositories(cfg: Config, repos: list[Repository], info: ServerInfo) -> None:
    """Refuse to back a cluster up into a repository that belongs to another one."""
    if not repos:
        raise PgdrError(f"no repository to write to: set [local] path or [s3] bucket in {cfg.where()}")
    for repo in repos:
        ensure_identity(repo, ClusterIdentity(info.system_identifier, info.segment_size), cfg.cluster.name)


def object_record(
    key: str,
    sink: FanOut | None,
    raw_size: int,
    raw_sha256: str | None,
    compression: str,
    *,
    data: bytes = b"",
) -> StoredObject:
    """Describe a stored object: from the fan-out that wrote it, or from its bytes when stored as-is."""
    if sink is not None:
        return StoredObject(key, sink.size, sink.sha256, raw_size, raw_sha256 or sink.sha256, compression)
    digest = hashlib.sha256(data).hexdigest()
    return StoredObject(key, len(data), digest, len(data), digest, compression)


def commit_manifest(repos: list[Repository], manifest: BackupManifest) -> None:
    """Check every object is complete in every repository, then write the manifest: the backup exists."""
    for repo in repos:
        stored = {info.key: info.size for info in repo.list(f"{BACKUPS_PREFIX}{manifest.name}/")}
        for obj in manifest.objects:
            size = stored.get(manifest.object_key(obj))
            if size != obj.size:
                raise PgdrError(
                    f"{manifest.object_key(obj)} in the {repo.name} repository is {size} bytes, expected {obj.size}: "
                    "the backup was not listed; retry it"
                )
    for repo in repos:
        repo.put(manifest.key, dataclasses.replace(manifest, encryption=repo.encryption).to_json())


@contextlib.contextmanager
def discard_on_failure(repos: list[Repository], name: str) -> Iterator[None]:
    """Remove what an interrupted backup had stored, so no debris is left beside real backups."""
    try:
        yield
    except BaseException:
        for repo in repos:
            with contextlib.suppress(PgdrError):
                repo.delete([info.key for info in repo.list(f"{BACKUPS_PREFIX}{name}/")])
        raise


def clean_debris(repos: list[Repository]) -> list[str]:
    """Remove what interrupted backups left: folders without a manifest, temp files, unfinished uploads.

    Callers hold the repository lock (``jobs.backup_job``), so no other backup is writing: anything
    without a manifest now is debris, never a backup in progress.
    """
    removed = []
    for repo in repos:
        folders: dict[str, list[str]] = {}
        for info in repo.list(BACKUPS_PREFIX):
            parts = info.key.split("/")
            if len(parts) == 3:
                folders.setdefault(parts[1], []).append(info.key)
        for name, keys in folders.items():
            if not any(key.endswith("/" + MANIFEST_NAME) for key in keys):
                repo.delete(keys)
                removed.append(f"{repo.name}:{name}")
        if repo.cleanup_temporary(BACKUPS_PREFIX):
            removed.append(f"{repo.name}:temporary files")
    return removed
