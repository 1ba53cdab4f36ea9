"""Restore an incremental backup: unpack its chain, and let ``pg_combinebackup`` rebuild the data directory.

An incremental backup alone is not a data directory (PostgreSQL refuses to start on one): every
backup down its chain to the full one is unpacked, each checked as it streams like any base backup,
and ``pg_combinebackup`` writes the full data directory from them, with a ``backup_label`` and a
``backup_manifest`` as if the newest had been a full backup. Recovery then starts from the newest
backup's checkpoint and needs only the WAL after it.

Extra disk stays bounded and on the data directory's own file system: the chain is unpacked into a
work folder inside the (empty) new data directory, the result is moved up into it (renames), and
the work folder is removed. With PostgreSQL 18's ``pg_combinebackup --link`` the files no
incremental changed are hard links to the full backup's, not copies, so the peak is the chain's
data plus the files the incrementals changed; with 17's, plus one more copy of the data. The plan
states the peak (``space_needed``) and the pre-flight check holds the restore to it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path

from backend.config import Config
from backend.errors import PgdrError
from backend.manifest import BackupManifest
from backend.postgres import program
from backend.progress import Progress, ProgressCallback, check_cancel, no_progress
from backend.repository import Repository
from backend.restore.unpack import Counted, restore_base_backup
from backend.tablespaces import recorded

#: The work folder inside the new data directory; gone when the restore returns.
WORK_FOLDER = ".pgdr-chain"
#: ``pg_combinebackup --link`` came with PostgreSQL 18.
LINK_SINCE = 180000


def restore_chain(
    cfg: Config,
    chain: Sequence[BackupManifest],
    repos: list[Repository],
    target: Path,
    *,
    tablespaces: Mapping[int, Path] | None = None,
    on_progress: ProgressCallback = no_progress,
    cancel: threading.Event | None = None,
    refused: list[str] | None = None,
) -> str:
    """Lay the backup ``chain`` (full first) down in ``target``; the repository the newest came from.

    A chain of one is a full backup, unpacked as it is (``restore_base_backup``).
    """
    if len(chain) == 1:
        return restore_base_backup(
            chain[0], repos, target, tablespaces=tablespaces, on_progress=on_progress, cancel=cancel, refused=refused
        )
    with_spaces = [m.name for m in chain if recorded(m)]
    if with_spaces:
        raise PgdrError(
            f"backup {', '.join(with_spaces)} holds tablespaces, which pgdr does not combine into an incremental "
            "restore: restore a full backup (--backup)"
        )
    work = target / WORK_FOLDER
    total = sum(m.size_bytes for m in chain)
    done = 0
    inputs, source = [], ""
    try:
        for index, member in enumerate(chain):
            folder = work / f"{index:03d}-{member.name}"
            folder.mkdir(mode=0o700, parents=True)
            source = restore_base_backup(
                member,
                repos,
                folder,
                on_progress=Counted(on_progress, done, total, f"backup {index + 1} of {len(chain)}: "),
                cancel=cancel,
                refused=refused,
            )
            done += member.size_bytes
            inputs.append(folder)
        check_cancel(cancel, "restore")
        combined = work / "combined"
        on_progress(Progress("combine", 0, 1, f"combining {len(chain)} backups with pg_combinebackup"))
        _combine(cfg, chain[-1], inputs, combined)
        for entry in os.listdir(combined):
            os.rename(combined / entry, target / entry)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    fd = os.open(target, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    on_progress(Progress("combine", 1, 1, f"combined {len(chain)} backups into {target}"))
    return source


def combined_peak(chain: Sequence[BackupManifest]) -> int:
    """The most disk the restore of ``chain`` takes at once: every backup unpacked, and the combined result.

    The result is at most the size of the cluster when the newest backup was taken (recorded as
    ``extra["cluster_bytes"]``; else the full backup's size); with ``--link`` it is far less, since
    files no incremental changed are hard links: this is the bound, not the typical use.
    """
    newest = chain[-1].extra.get("cluster_bytes")
    result = int(newest) if isinstance(newest, int) else chain[0].size_bytes
    return sum(m.size_bytes for m in chain) + result


def _combine(cfg: Config, newest: BackupManifest, inputs: list[Path], output: Path) -> None:
    """``pg_combinebackup`` of ``inputs`` (full first) into ``output``, its refusal in one line."""
    version = newest.version_num
    argv = [program(cfg, "pg_combinebackup", version), "--output", str(output)]
    argv += ["--link"] if version is not None and version >= LINK_SINCE else []
    done = subprocess.run([*argv, *map(str, inputs)], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        errors = [line.removeprefix("pg_combinebackup: ") for line in done.stderr.strip().splitlines()]
        reason = next((line for line in reversed(errors) if "error" in line), errors[-1] if errors else "")
        raise PgdrError(
            f"pg_combinebackup could not rebuild the data directory from backup {newest.name}'s chain "
            f"(exit {done.returncode}: {reason.removeprefix('error: ')}): run `pgdr verify --deep {newest.name}`, "
            "or restore an older backup (--backup)"
        )
