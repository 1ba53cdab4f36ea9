"""Incremental base backups (PostgreSQL 17+): which backup one builds on, and when it cannot.

With ``summarize_wal = on`` the server records which blocks each stretch of WAL changed, and
``pg_basebackup --incremental=<an earlier backup's backup_manifest>`` copies only the blocks changed
since that backup started; ``pg_combinebackup`` rebuilds a full data directory from the chain
(``backend.restore.combine``). Like pgBackRest's ``--type=incr``, an incremental builds on the
newest backup, full or incremental, and one that has nothing to build on is taken as a full backup
(the reason is recorded in ``extra["full_because"]`` and shown): a schedule of incrementals never
fails only because the full backup it would have built on was expired or never taken.

The parent must be in every repository the backup is written to, with its whole chain, so each
repository stays restorable alone (an S3 copy must not need the local disk).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from pathlib import Path

from backend.backup.pgbasebackup import MANIFEST
from backend.catalog import manifests
from backend.errors import PgdrError
from backend.manifest import BackupManifest, BrokenChain, chain
from backend.postgres import ServerInfo
from backend.repository import Repository
from backend.tablespaces import Tablespace

#: Incremental backups came with PostgreSQL 17.
INCREMENTAL_SINCE = 170000
#: Words of pg_basebackup's own refusals to build on a backup (WAL summaries missing or removed, a
#: manifest from another timeline or system): the backup is then taken as a full one.
_REFUSALS = ("summar", "incremental", "manifest", "timeline")


def refuse_unless_possible(info: ServerInfo, summarize_wal: str | None, spaces: Sequence[Tablespace]) -> None:
    """One line saying why this server cannot take an incremental backup at all, or nothing."""
    if info.version_num < INCREMENTAL_SINCE:
        raise PgdrError(
            f"incremental backups need PostgreSQL 17 or later (this server runs {info.version}): "
            "take a full backup with `pgdr backup`"
        )
    if summarize_wal != "on":
        raise PgdrError(
            "incremental backups need summarize_wal = on, and it is off: run "
            "`ALTER SYSTEM SET summarize_wal = on; SELECT pg_reload_conf();` as a superuser, then take a full "
            "backup (`pgdr backup`) for the incrementals to build on"
        )
    if spaces:
        raise PgdrError(
            f"the cluster has tablespaces ({', '.join(t.name for t in spaces)}): pgdr takes incremental backups "
            "of clusters without tablespaces only; take a full backup with `pgdr backup`"
        )


def choose_parent(repos: Sequence[Repository], info: ServerInfo) -> tuple[BackupManifest | None, str]:
    """The newest backup every repository holds with its whole chain, or None and why there is none."""
    held = [{m.name: m for m in manifests(repo) if m.kind == "physical"} for repo in repos]
    names = set(held[0]).intersection(*held[1:]) if held else set()
    candidates = sorted(
        (held[0][n] for n in names if held[0][n].system_identifier == info.system_identifier),
        key=lambda m: m.name,
        reverse=True,
    )
    broken = ""
    for candidate in candidates:
        if candidate.pg_version.split(".")[0] != info.version.split(".")[0]:
            return None, f"the newest backup, {candidate.name}, is of PostgreSQL {candidate.pg_version}"
        if (candidate.timeline or 0) > info.timeline:
            continue  # taken on a timeline the server has since left behind (a restore went back before it)
        try:
            for by_name in held:
                chain(candidate, by_name)
        except BrokenChain as exc:
            broken = broken or f"; {exc.backup}'s chain is broken ({exc.missing} is gone)"
            continue
        return candidate, ""
    where = " and ".join(repo.name for repo in repos)
    return None, f"no base backup of this cluster in the {where} repository to build on{broken}"


def write_parent_manifest(parent: BackupManifest, repos: Sequence[Repository], folder: Path) -> Path:
    """The parent's backup_manifest as a file for pg_basebackup, from the first copy whose checksum holds."""
    record = next((o for o in parent.objects if o.key == MANIFEST), None)
    if record is None:
        raise PgdrError(f"backup {parent.name} has no backup_manifest to build an incremental on: take a full backup")
    problems = []
    for repo in repos:
        try:
            data = repo.get(parent.object_key(record))
        except PgdrError as exc:
            problems.append(f"{repo.name}: {exc}")
            continue
        if hashlib.sha256(data).hexdigest() == record.sha256:
            path = folder / MANIFEST
            path.write_bytes(data)
            return path
        problems.append(f"{repo.name}: {parent.object_key(record)} fails its sha256 check")
    raise PgdrError(
        f"no intact copy of backup {parent.name}'s backup_manifest ({'; '.join(problems)}): "
        "run `pgdr verify`, and take a full backup"
    )


def server_reason(exc: PgdrError) -> str:
    """PostgreSQL's own words from pg_basebackup's failure, without the layers of prefixes around them."""
    detail = str(exc).partition("): ")[2]
    return re.sub(r"^(error: )?(could not initiate base backup: )?(ERROR:\s+)?", "", detail)


def refused_by_server(exc: PgdrError) -> bool:
    """Whether pg_basebackup failed because it would not build on the parent (a full backup then can)."""
    text = str(exc).lower()
    return text.startswith("pg_basebackup failed") and any(word in text for word in _REFUSALS)
