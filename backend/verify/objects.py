"""Backups: every object of a backup read back and compared with its manifest (``verify_backup``), the
manifest compared with PostgreSQL's own ``backup_manifest`` and with the WAL, and each incremental judged
by its chain in every repository holding it (``check_chains``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import subprocess
import tempfile
import threading
from datetime import datetime, timedelta
from pathlib import Path

from backend.config import Config
from backend.errors import ObjectNotFound, PgdrError, RepositoryError
from backend.manifest import BACKUPS_PREFIX, MANIFEST_NAME, BackupManifest, BrokenChain, StoredObject, chain
from backend.postgres import program
from backend.repository import Repository
from backend.verify.records import Memory
from backend.verify.report import BackupProblem, BackupResult, VerifyReport
from backend.verify.scan import Meter, Readout, Scan, read_through

#: A backup folder without a manifest younger than this is probably a backup being written right now
#: (objects appear one by one, the manifest last), not debris of a crashed one.
DEBRIS_GRACE = timedelta(hours=1)
#: Problems of a backup an incremental builds on that leave the incremental restorable from that
#: repository: the WAL the link itself needs to become consistent (a restore of the incremental replays
#: from the incremental's own start), and the link's own chain (judged for each backup on its own).
_NOT_LINK_DAMAGE = frozenset({"wal", "chain"})
#: How a broken chain problem ends: what it means for the incremental.
_UNRESTORABLE = "this backup cannot be restored from it"


def verify_backup(
    cfg: Config,
    name: str,
    scans: list[Scan],
    memories: dict[str, Memory],
    *,
    deep: bool,
    now: datetime,
    cancel: threading.Event | None,
    meter: Meter,
) -> tuple[BackupResult, BackupManifest | None]:
    """One backup folder, in every repository holding it: each copy's manifest, then every object read back
    (but those the memory leaves unread); the result, and the manifest when one parses."""
    holding = [s for s in scans if name in s.folders]
    manifest = next((s.manifests[name] for s in holding if name in s.manifests), None)
    kind = manifest.kind if manifest else ("damaged" if any(name in s.manifest_errors for s in holding) else "debris")
    result = BackupResult(name, kind, [s.repo.name for s in holding])
    for scan in holding:
        objects = scan.folders[name]
        newest = max(info.modified for info in objects.values())
        young = now - newest < DEBRIS_GRACE
        if name in scan.manifest_errors:
            result.problems.append(BackupProblem(scan.repo.name, MANIFEST_NAME, "manifest", scan.manifest_errors[name]))
        elif MANIFEST_NAME not in objects:
            if young:
                result.notes.append(
                    f"{scan.repo.name}: no manifest yet (objects written {newest:%H:%M:%S} UTC): "
                    "probably a backup in progress"
                )
            elif manifest is None:
                keys = ", ".join(sorted(objects))
                result.problems.append(
                    BackupProblem(
                        scan.repo.name,
                        None,
                        "debris",
                        f"a folder without a manifest ({keys}), left by an interrupted backup or expire: not a "
                        f"backup; remove {BACKUPS_PREFIX}{name}/ from {scan.repo.location()}",
                    )
                )
            else:
                result.problems.append(
                    BackupProblem(
                        scan.repo.name,
                        MANIFEST_NAME,
                        "missing",
                        "this copy has no manifest, so it is not listed and cannot be restored from here",
                    )
                )
        if manifest is None:
            continue
        memory = memories[scan.repo.name]
        for obj in manifest.objects:
            info = objects.get(obj.key)
            if memory.skips(info):
                result.objects_remembered += 1
                continue
            problems, read = _check_object(
                cfg, scan.repo, manifest, obj, thorough_dump=deep, cancel=cancel, meter=meter
            )
            if any(p.kind == "missing" for p in problems) and not scan.repo.exists(manifest.key):
                result.notes.append(f"{scan.repo.name}: removed while being verified (expire?)")
                result.problems = [p for p in result.problems if p.repository != scan.repo.name]
                result.repositories.remove(scan.repo.name)
                break
            result.problems += problems
            result.objects_checked += 1
            result.bytes_checked += read
            if info is not None:
                if problems:
                    memory.found_damaged(info)
                else:
                    memory.found_intact(info)
    return result, manifest


def _check_object(
    cfg: Config,
    repo: Repository,
    manifest: BackupManifest,
    obj: StoredObject,
    *,
    thorough_dump: bool,
    cancel: threading.Event | None,
    meter: Meter,
) -> tuple[list[BackupProblem], int]:
    """Check one stored object of a backup; returns its problems and the bytes read.

    A ``.dump`` is copied to a temporary file as it streams past (pg_restore wants a file it can
    seek in), so it is downloaded once for both checks.
    """
    key = manifest.object_key(obj)
    is_dump = obj.key.endswith(".dump") and obj.compression == "none"
    with contextlib.ExitStack() as stack:
        dump_path = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="pgdr-verify-"))) / obj.key
        try:
            with contextlib.ExitStack() as sink_stack:
                sink = sink_stack.enter_context(dump_path.open("wb")) if is_dump else None
                readout = read_through(repo, key, obj.compression, raw_sink=sink, cancel=cancel, meter=meter)
        except ObjectNotFound:
            return [BackupProblem(repo.name, obj.key, "missing", f"not in the repository ({key})")], 0
        except RepositoryError as exc:
            return [BackupProblem(repo.name, obj.key, "unreadable", str(exc))], 0
        problems = _compare(repo.name, obj, readout)
        if is_dump:
            problems += _check_dump(cfg, repo.name, manifest, obj, dump_path, thorough=thorough_dump)
        return problems, readout.size


def _compare(repository: str, obj: StoredObject, readout: Readout) -> list[BackupProblem]:
    """The one most telling problem of a read-back object: size, then checksum, then decoding."""
    also = f"; {readout.decode_error}" if readout.decode_error else ""
    if readout.size != obj.size:
        return [
            BackupProblem(
                repository,
                obj.key,
                "size",
                f"{readout.size} bytes stored, the manifest says {obj.size} (truncated or overwritten){also}",
            )
        ]
    if readout.sha256 != obj.sha256:
        return [
            BackupProblem(
                repository,
                obj.key,
                "checksum",
                f"sha256 of the stored bytes is {readout.sha256[:16]}..., the manifest says "
                f"{obj.sha256[:16]}... (the bytes changed after the backup){also}",
            )
        ]
    if readout.decode_error:
        return [BackupProblem(repository, obj.key, "undecodable", readout.decode_error)]
    # raw_sha256 "" is a tar PostgreSQL compressed: no sha256 of its original bytes was recorded, and
    # raw_size then counts its files' bytes, not the tar's (pg_verifybackup checks those files).
    if obj.raw_sha256 and (readout.raw_size != obj.raw_size or readout.raw_sha256 != obj.raw_sha256):
        return [
            BackupProblem(
                repository,
                obj.key,
                "content",
                f"decompresses to {readout.raw_size} bytes with sha256 {readout.raw_sha256[:16]}..., "
                f"not the {obj.raw_size} bytes backed up ({obj.raw_sha256[:16]}...)",
            )
        ]
    return []


def _check_dump(
    cfg: Config, repository: str, manifest: BackupManifest, obj: StoredObject, path: Path, *, thorough: bool
) -> list[BackupProblem]:
    """``pg_restore --list`` reads the dump's table of contents: a dump it refuses cannot be restored.

    Deep also runs a restore into /dev/null, which reads and decompresses every data block.
    """
    try:
        pg_restore = program(cfg, "pg_restore", manifest.version_num)
    except PgdrError as exc:
        return [BackupProblem(repository, obj.key, "pg_restore", f"not checked: {exc}")]
    runs = [("pg_restore --list", [pg_restore, "--list", str(path)])]
    if thorough:
        runs.append(("pg_restore --file=/dev/null", [pg_restore, "--file=/dev/null", str(path)]))
    problems = []
    for label, argv in runs:
        result = subprocess.run(argv, capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL)
        if result.returncode != 0:
            err = result.stderr.strip().splitlines()
            reason = err[-1].removeprefix("pg_restore: ") if err else f"exit {result.returncode}"
            problems.append(BackupProblem(repository, obj.key, "pg_restore", f"{label} fails: {reason}"))
            break
    return problems


def check_against_postgres(
    report: VerifyReport, physical: list[BackupManifest], scans: list[Scan], memories: dict[str, Memory]
) -> None:
    """pgdr's manifest must name the WAL range PostgreSQL's own ``backup_manifest`` records.

    PostgreSQL seals its manifest with a sha256 of its own text, so a changed start or stop LSN (or
    timeline) in ``manifest.json``, which would send a restore to the wrong WAL, shows here even when
    every copy was changed alike. A copy whose two manifests agreed before, neither rewritten since
    nor ``manifest.json``'s turn come, is not compared again (nor its ``backup_manifest`` fetched).
    """
    for manifest in physical:
        stored = next((o for o in manifest.objects if o.key == "backup_manifest"), None)
        if stored is None:
            continue
        result = next(b for b in report.backups if b.name == manifest.name)
        for scan in scans:
            if manifest.name not in scan.manifests or not result.copy_ok(scan.repo.name):
                continue
            memory = memories[scan.repo.name]
            own = scan.folders[manifest.name][MANIFEST_NAME]
            if memory.skips(own) and manifest.object_key(stored) not in memory.read:
                continue
            try:
                raw = scan.repo.get(manifest.object_key(stored))
            except PgdrError:
                continue  # the object check above reports what cannot be read
            why = _disagreement(manifest, raw)
            if why:
                result.problems.append(BackupProblem(scan.repo.name, MANIFEST_NAME, "manifest", why))
                memory.found_damaged(own)
            else:
                memory.found_intact(own)


def _disagreement(manifest: BackupManifest, raw: bytes) -> str:
    sealed = raw.rfind(b'"Manifest-Checksum"')
    try:
        pg = json.loads(raw)
        ranges = pg["WAL-Ranges"]
        seal = pg["Manifest-Checksum"]
    except (ValueError, KeyError, TypeError):
        return "PostgreSQL's backup_manifest cannot be read as one"
    if sealed < 0 or hashlib.sha256(raw[:sealed]).hexdigest() != seal:
        return "PostgreSQL's backup_manifest fails its own checksum"
    said = (manifest.timeline, manifest.start_lsn, manifest.stop_lsn)
    found = (ranges[0].get("Timeline"), ranges[0].get("Start-LSN"), ranges[0].get("End-LSN"))
    if said != found:
        return (
            f"the manifest says timeline {said[0]}, LSN {said[1]} .. {said[2]}, and PostgreSQL's backup_manifest "
            f"{found[0]}, {found[1]} .. {found[2]}: the manifest was changed; take a new backup"
        )
    return ""


def check_against_wal(cfg: Config, report: VerifyReport, physical: list[BackupManifest]) -> None:
    """A manifest changed in every copy passes every checksum: the WAL itself must agree with it.

    The recovery timeline disowns a backup whose recorded stop time lies before commits its WAL
    holds (``timeline._contradicted_stop``): the same judgement the planner makes, reported here as
    the backup's problem, so the alarm goes off before a restore needs it. The timeline also disowns
    an incremental whose chain is broken in every repository: that is no contradicted manifest, and
    ``check_chains`` says where each link is missing.
    """
    if not physical:
        return
    from backend.recovery import VIEW_INDEX_BUDGET_S, load_view

    try:
        view = load_view(cfg, index_budget_s=VIEW_INDEX_BUDGET_S)
    except PgdrError as exc:
        report.notes.append(f"the manifests were not compared with the WAL: {exc}")
        return
    catalog = {b.manifest.name: b.manifest for b in view.catalog.backups}
    for manifest in physical:
        why = view.timeline.disowned.get(manifest.name)
        if why is not None and not _chain_broken(manifest, catalog):
            result = next(b for b in report.backups if b.name == manifest.name)
            result.problems.append(BackupProblem(None, MANIFEST_NAME, "manifest", why))


def _chain_broken(manifest: BackupManifest, backups: dict[str, BackupManifest]) -> bool:
    try:
        chain(manifest, backups)
    except BrokenChain:
        return True
    return False


def check_chains(report: VerifyReport, manifests: dict[str, BackupManifest], scans: list[Scan]) -> None:
    """Each incremental's chain, link by link, in every repository holding it: where one is broken, it is
    the incremental's problem there (kind "chain").

    A restore of an incremental needs every backup down to the full one, and a repository's copy of it
    is only worth something with that repository's links (a restore can mix repositories, but an
    operator reading "ok" for one must be able to restore from it alone, as from a full backup's copy).
    A link is broken when it is missing there (expired or deleted, its manifest gone) or this run
    found its copy there damaged; its WAL is not its successors' concern (``_NOT_LINK_DAMAGE``). Runs
    after the other checks of the links' copies (``check_against_postgres``), so they all count.
    """
    results = {b.name: b for b in report.backups}
    for name, manifest in manifests.items():
        if manifest.kind != "physical" or not manifest.incremental:
            continue
        result = results[name]
        for scan in scans:
            repository = scan.repo.name
            if name not in scan.manifests or repository not in result.repositories:
                continue
            try:
                links = chain(manifest, scan.manifests)[:-1]
            except BrokenChain as exc:
                result.problems.append(BackupProblem(repository, None, "chain", _broken_link(exc, scan)))
                continue
            for link in links:
                found = results.get(link.name)
                if found is None:
                    continue  # not read by this run (cannot happen: a named backup is read with its chain)
                if repository not in found.repositories:
                    gone = f"{link.name} was removed from the {repository} repository while it was verified"
                    result.problems.append(
                        BackupProblem(repository, None, "chain", f"chain broken: {gone}: {_UNRESTORABLE}")
                    )
                    continue
                damage = [p for p in found.problems if p.repository == repository and p.kind not in _NOT_LINK_DAMAGE]
                if damage:
                    what = "; ".join(f"{p.object or 'the copy'}: {p.kind}" for p in damage[:3])
                    result.problems.append(
                        BackupProblem(
                            repository,
                            None,
                            "chain",
                            f"chain broken: {link.name}, a backup it builds on, is damaged in the {repository} "
                            f"repository ({what}): {_UNRESTORABLE}",
                        )
                    )


def _broken_link(exc: BrokenChain, scan: Scan) -> str:
    """Why ``exc.missing`` breaks the chain in this repository, in one line."""
    where = f"the {scan.repo.name} repository"
    if exc.missing in scan.manifests:  # there, but not an earlier physical backup: only a damaged manifest says so
        why = f"{exc.missing}, named as the backup {exc.backup} builds on, is no earlier backup in {where}"
    elif exc.missing in scan.folders:
        why = f"{exc.missing} has no readable manifest in {where}"
    else:
        why = f"{exc.missing} is missing in {where} (expired or deleted)"
    return f"chain broken: {why}: {_UNRESTORABLE}"
