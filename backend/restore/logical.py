"""Logical restore: a ``.dump`` (pg_dump custom format) back into a database, safety dump first.

This is the seed's ``postgres-restore``: ``--latest``, a dump path, ``--from-s3 s3://...``. It restores
in one transaction (``pg_restore --single-transaction --clean --if-exists``), so a failure half-way
leaves the database as it was, and before touching anything it dumps the current database to a
safety file that is never deleted by pgdr.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from backend import audit
from backend.catalog import read_catalog
from backend.config import Config
from backend.errors import PgdrError
from backend.jobs import notify_restore
from backend.manifest import BACKUPS_PREFIX
from backend.postgres import connect, libpq_env, program, server_info
from backend.repository import ENCRYPTED_MAGIC, Repository, open_repositories

S3_SCHEME = "s3://"


@dataclass(frozen=True)
class DumpSource:
    """Where the dump comes from, for the plan, and how to get it onto local disk."""

    description: str
    size: int
    path: Path | None = None  # a local file
    repository: Repository | None = None
    key: str = ""
    s3_url: str = ""


@dataclass
class LogicalPlan:
    source: DumpSource
    database: str
    safety_dump: Path
    entries: int

    def render(self) -> str:
        import humanize

        return "\n".join(
            [
                "Logical restore plan",
                f"  dump:            {self.source.description} ({humanize.naturalsize(self.source.size)}, "
                f"{self.entries} table-of-contents entries)",
                f"  into database:   {self.database} (objects in the dump are dropped and recreated, one transaction)",
                f"  safety dump:     {self.safety_dump} (the database as it is now, taken first, never deleted)",
            ]
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "dump": self.source.description,
            "size": self.source.size,
            "database": self.database,
            "safety_dump": str(self.safety_dump),
            "entries": self.entries,
        }


def find_dump(
    cfg: Config, *, name_or_path: str | None = None, s3_url: str | None = None, latest: bool = False
) -> DumpSource:
    """Resolve the seed's ways of naming a dump: a file, an s3:// URL, a backup name, or the latest.

    An ``s3://`` URL is accepted wherever a dump is named (``--from-s3``, ``--from-dump``, the
    positional argument): the issue promises ``--from-dump s3://...``, and an operator pasting a URL
    should not be told it is an unknown backup name.
    """
    if s3_url:
        return _s3_source(cfg, s3_url)
    if name_or_path and name_or_path.startswith(S3_SCHEME):
        return _s3_source(cfg, name_or_path)
    if name_or_path and Path(name_or_path).is_file():
        path = Path(name_or_path)
        with path.open("rb") as fh:
            if fh.read(len(ENCRYPTED_MAGIC)) == ENCRYPTED_MAGIC:
                raise PgdrError(
                    f"{path} is encrypted (a copy of a repository object): decrypt it first with "
                    f"`pgdr decrypt --repo local|s3 --file {path} -o restore.dump`, or name the logical backup"
                )
        return DumpSource(str(path), path.stat().st_size, path=path)
    repos = open_repositories(cfg)
    catalog = read_catalog(repos)
    logical = [b for b in catalog.backups if b.manifest.kind == "logical"]
    if name_or_path:
        chosen = [b for b in logical if b.manifest.name == name_or_path]
        if not chosen:
            names = ", ".join(b.manifest.name for b in logical[-5:]) or "none"
            raise PgdrError(f"{name_or_path!r} is neither a dump file nor a logical backup (latest: {names})")
    elif latest:
        if not logical:
            raise PgdrError("there is no logical backup yet: take one with `pgdr backup --logical`")
        chosen = logical[-1:]
    else:
        raise PgdrError("name a dump: a path, a logical backup name, --from-s3 s3://..., or --latest")
    backup = chosen[0]
    dump = next(o for o in backup.manifest.objects if o.key.endswith(".dump"))
    repo = next(r for r in repos if r.name == backup.repositories[0])
    return DumpSource(
        f"{backup.manifest.name}/{dump.key} from the {repo.name} repository",
        dump.size,
        repository=repo,
        key=f"{BACKUPS_PREFIX}{backup.manifest.name}/{dump.key}",
    )


def _s3_source(cfg: Config, url: str) -> DumpSource:
    bucket, _, key = url.removeprefix(S3_SCHEME).partition("/")
    if not url.startswith(S3_SCHEME) or not bucket or not key:
        raise PgdrError(f"a dump in S3 is named s3://bucket/key, not {url!r}")
    from backend.repository.s3 import S3Repository

    repo: Repository = S3Repository.from_config(cfg, bucket=bucket, root="")
    sizes = [info.size for info in repo.list(key) if info.key == key]
    if sizes:
        with repo.open(key) as head:
            encrypted = head.read(len(ENCRYPTED_MAGIC)) == ENCRYPTED_MAGIC
        if encrypted:  # a dump in an encrypted pgdr repository: decrypted with the [s3] key
            from backend.repository.encrypted import EncryptedRepository, secret_for

            repo = EncryptedRepository(repo, secret_for(cfg, "s3"))
            sizes = [info.size for info in repo.list(key) if info.key == key]
    if not sizes:
        raise PgdrError(f"{url} does not exist (or is not readable with the configured credentials)")
    return DumpSource(url, sizes[0], repository=repo, key=key, s3_url=url)


@contextmanager
def local_copy(source: DumpSource) -> Iterator[Path]:
    """The dump as a local file (pg_restore needs to seek in custom-format dumps)."""
    if source.path is not None:
        yield source.path
        return
    assert source.repository is not None
    with tempfile.TemporaryDirectory(prefix="pgdr-dump-") as folder:
        path = Path(folder) / "restore.dump"
        with source.repository.open(source.key) as stream, path.open("wb") as out:
            shutil.copyfileobj(stream, out, 1 << 20)
        Path(folder).chmod(0o755)
        path.chmod(0o644)
        yield path


def plan_logical(cfg: Config, source: DumpSource, database: str | None = None) -> LogicalPlan:
    with local_copy(source) as path:
        toc = _pg_restore_list(cfg, path)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    db = database or cfg.postgres.dbname
    safety = audit.state_dir() / "safety" / f"{cfg.cluster.name}-{db}-{stamp}.dump"
    return LogicalPlan(source, db, safety, toc)


def _pg_restore_list(cfg: Config, path: Path) -> int:
    result = subprocess.run(
        [program(cfg, "pg_restore"), "--list", str(path)], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise PgdrError(
            f"{path} is not a readable pg_dump custom-format file: "
            f"{(result.stderr.strip().splitlines() or ['pg_restore --list failed'])[-1]}"
        )
    return sum(1 for line in result.stdout.splitlines() if line and not line.startswith(";"))


def restore_logical(cfg: Config, plan: LogicalPlan) -> None:
    """Safety dump, then pg_restore in one transaction; audited either way."""
    details = {"dump": plan.source.description, "database": plan.database, "safety_dump": str(plan.safety_dump)}
    audit.record(cfg, "logical restore", "started", **details)
    try:
        with connect(cfg, dbname=plan.database) as conn:
            version = server_info(conn).version_num
        plan.safety_dump.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        _run(
            [
                program(cfg, "pg_dump", version),
                "--format=custom",
                f"--file={plan.safety_dump}",
                f"--dbname={plan.database}",
            ],
            cfg,
            "the safety dump",
        )
        with local_copy(plan.source) as path:
            _run(
                [
                    program(cfg, "pg_restore", version),
                    "--single-transaction",
                    "--clean",
                    "--if-exists",
                    "--exit-on-error",
                    f"--dbname={plan.database}",
                    str(path),
                ],
                cfg,
                "pg_restore",
            )
    except BaseException as exc:
        audit.record(cfg, "logical restore", "failed", error=str(exc), **details)
        notify_restore(cfg, f"logical restore of {plan.source.description} into {plan.database}: {exc}", ok=False)
        raise
    audit.record(cfg, "logical restore", "done", **details)
    notify_restore(cfg, f"logical restore of {plan.source.description} into {plan.database} done", ok=True)


def _run(argv: list[str], cfg: Config, what: str) -> None:
    result = subprocess.run(argv, capture_output=True, text=True, env=libpq_env(cfg), check=False)
    if result.returncode != 0:
        reason = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise PgdrError(f"{what} failed (exit {result.returncode}): {reason}; the database was not changed")
