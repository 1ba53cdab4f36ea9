"""Logical restore: a dump (pg_dump custom format, or plain SQL as ``.sql.gz``) back into a database.

This is the ``postgres-restore`` service: ``--latest``, a dump path, ``--from-s3 s3://...``. Into a
database that exists it restores in one transaction (``pg_restore --single-transaction --clean
--if-exists``), so a failure half-way leaves the database as it was, and before touching anything it
dumps the current database to a safety file that is never deleted by pgdr.

A logical restore is needed most when the database is gone (``dropdb``), so a database that does not
exist is created for it: with the owner, encoding and locale the dump records (its ``CREATE
DATABASE``), then the dump is restored into it in one transaction, then the dumped database's own
settings, comment and grants. There is nothing to keep, so there is no safety dump; if anything
fails the database pgdr created is dropped again, and it does not exist, as before. Roles the dump
makes owners (or grants to) are checked first: a missing one is refused with the fix rather than
found half-way through the restore.

A plain SQL dump (the ``.sql.gz`` of ``pgdr backup --logical``) has no DROP statements, so it is
restored only into a database that does not exist (``psql --single-transaction``); it records the
encoding but not the database's owner or locale.
"""

from __future__ import annotations

import gzip
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from backend import audit
from backend.catalog import read_catalog
from backend.config import Config
from backend.errors import PgdrError
from backend.manifest import BACKUPS_PREFIX
from backend.notify import first_line, notify_restore
from backend.postgres import connect, libpq_env, program, server_info
from backend.repository import ENCRYPTED_MAGIC, Repository, open_repositories
from backend.statedir import state_dir

if TYPE_CHECKING:
    import psycopg
    from psycopg import sql

S3_SCHEME = "s3://"
#: How each kind of dump begins: pg_dump's archive formats, gzip, and pg_dump's plain SQL.
ARCHIVE_MAGIC = b"PGDMP"
GZIP_MAGIC = b"\x1f\x8b"
PLAIN_HEADER = b"-- PostgreSQL database dump"
#: Where pgdr connects to look at (and create) a database other than the one restored into.
MAINTENANCE_DATABASES = ("postgres", "template1")
CHUNK = 1 << 20


@dataclass(frozen=True)
class DumpSource:
    """Where the dump comes from, for the plan, and how to get it onto local disk."""

    description: str
    size: int
    path: Path | None = None  # a local file
    repository: Repository | None = None
    key: str = ""
    s3_url: str = ""


@dataclass(frozen=True)
class DumpContents:
    """What a dump says about itself, read before anything is changed: what to create, who must exist.

    Read from the dump's own SQL (``pg_restore --create --schema-only`` of an archive, the plain
    script itself), whose ``-- Name: ...; Type: ...; Owner: ...`` headers pg_dump writes per entry.
    """

    plain: bool
    entries: int
    #: The database the dump was taken of, when it records its ``CREATE DATABASE`` ("" otherwise).
    dbname: str = ""
    database_owner: str = ""
    #: The WITH clause of the dump's ``CREATE DATABASE`` (template0, encoding, locale), as pg_dump wrote it.
    create_options: str = ""
    #: The dumped database's own settings, comment and grants (they name it), run after the restore.
    database_sql: str = ""
    #: The dump's encoding (its ``SET client_encoding``), "" when it does not say.
    encoding: str = ""
    #: Roles the objects need: their owners and grantees.
    object_roles: frozenset[str] = frozenset()
    #: Roles the database itself needs (its owner, its grants): only when it is created.
    database_roles: frozenset[str] = frozenset()
    #: A plain dump made with ``pg_dump --create``: it creates and connects to its database itself.
    creates_database: bool = False


@dataclass(frozen=True)
class NoSafetyDump:
    """Stands where the safety dump's path would be when the database did not exist: there was
    nothing to keep. Its text is what the operator reads after "safety dump:" once the restore is done."""

    reason: str

    def __str__(self) -> str:
        return f"none ({self.reason})"


@dataclass
class LogicalPlan:
    source: DumpSource
    database: str
    safety_dump: Path | NoSafetyDump
    entries: int
    contents: DumpContents | None = None
    #: False: the database does not exist and is created with ``create_options`` and ``owner``.
    exists: bool = True
    create_options: str = ""
    owner: str = ""
    #: How the created database is made, in words, for the plan.
    created_as: str = ""

    def render(self) -> str:
        import humanize

        lines = [
            "Logical restore plan",
            f"  dump:            {self.source.description} ({humanize.naturalsize(self.source.size)}, "
            f"{self.entries} table-of-contents entries)",
        ]
        if self.exists:
            return "\n".join(
                [
                    *lines,
                    f"  into database:   {self.database} "
                    "(objects in the dump are dropped and recreated, one transaction)",
                    f"  safety dump:     {self.safety_dump} (the database as it is now, taken first, never deleted)",
                ]
            )
        return "\n".join(
            [
                *lines,
                f"  into database:   {self.database} (database {self.database} does not exist: it will be created)",
                f"  created as:      {self.created_as}",
                f"  restore:         the dump into it in one transaction; if anything fails, {self.database} "
                "is dropped again",
                f"  safety dump:     skipped: database {self.database} does not exist, so there is nothing to keep",
            ]
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "dump": self.source.description,
            "size": self.source.size,
            "database": self.database,
            "database_exists": self.exists,
            "safety_dump": str(self.safety_dump) if isinstance(self.safety_dump, Path) else None,
            "entries": self.entries,
            "create": None
            if self.exists
            else {"owner": self.owner, "options": self.create_options, "description": self.created_as},
        }


def find_dump(
    cfg: Config, *, name_or_path: str | None = None, s3_url: str | None = None, latest: bool = False
) -> DumpSource:
    """Resolve how the ``postgres-restore`` service names a dump: a file, an s3:// URL, a backup name, the latest.

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
    # The custom-format dump restores into an existing database too; the plain one only when there is none.
    objects = sorted(backup.manifest.objects, key=lambda o: not o.key.endswith(".dump"))
    if not objects:
        raise PgdrError(f"logical backup {backup.manifest.name} holds no dump: name another one")
    dump = objects[0]
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
            shutil.copyfileobj(stream, out, CHUNK)
        Path(folder).chmod(0o755)
        path.chmod(0o644)
        yield path


def plan_logical(cfg: Config, source: DumpSource, database: str | None = None) -> LogicalPlan:
    """Read the dump, then ask the server whether the database exists and the dump's roles do.

    What cannot work is refused here, in one line with the fix, before anything is changed: a role
    the dump needs is missing, or a plain dump would go into a database that exists.
    """
    with local_copy(source) as path:
        contents = read_contents(cfg, path)
    db = database or cfg.postgres.dbname or "postgres"
    with maintenance_connection(cfg, db) as conn:
        exists = database_exists(conn, db)
        user = _current_user(conn)
        _refuse_plain_into_existing(source, contents, db, exists)
        check_roles(conn, contents, db, exists=exists)
    if exists:
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        safety = state_dir() / "safety" / f"{cfg.cluster.name}-{db}-{stamp}.dump"
        return LogicalPlan(source, db, safety, contents.entries, contents)
    options, owner, created_as = _creation(contents, db, user)
    return LogicalPlan(
        source,
        db,
        NoSafetyDump(f"database {db} did not exist: it was created for the restore"),
        contents.entries,
        contents,
        exists=False,
        create_options=options,
        owner=owner,
        created_as=created_as,
    )


def _refuse_plain_into_existing(source: DumpSource, contents: DumpContents, db: str, exists: bool) -> None:
    if contents.creates_database:
        raise PgdrError(
            f"{source.description} is a plain dump made with pg_dump --create (it creates database "
            f"{contents.dbname or '?'} itself): run it with `psql -X -v ON_ERROR_STOP=1 -d postgres -f FILE`, "
            "or restore a dump made without --create; nothing was changed"
        )
    if contents.plain and exists:
        raise PgdrError(
            f"{source.description} is a plain SQL dump, which has no DROP statements: pgdr restores it only into "
            f"a database that does not exist, and database {db} exists; restore the .dump of the same backup, "
            "or name a new database with --dbname; nothing was changed"
        )


def _creation(contents: DumpContents, db: str, user: str) -> tuple[str, str, str]:
    """How the missing database is created: the WITH clause, the owner, and both in words.

    The dump's own ``CREATE DATABASE`` when it has one (template0, encoding, locale provider and
    locale as dumped); a dump without one (plain SQL, a dump of single schemas) records at most its
    encoding, and the database is then owned by the user pgdr connects as.
    """
    from psycopg import sql

    if contents.create_options:
        described = _described_options(contents.create_options)
        words = f"owner {contents.database_owner or user}{', ' + described if described else ''}, as dumped"
        if contents.database_sql and contents.dbname != db:
            words += (
                f" (database {contents.dbname}'s own settings, comment and grants are not copied "
                "to a database of another name)"
            )
        elif contents.database_sql:
            words += ", with its settings, comment and grants"
        return contents.create_options, contents.database_owner or user, words
    options = "TEMPLATE = template0"
    if contents.encoding:
        options += " ENCODING = " + sql.Literal(contents.encoding).as_string(None)
    encoding = f"encoding {contents.encoding} as dumped" if contents.encoding else "the server's default encoding"
    return (
        options,
        user,
        f"owner {user} (the dump does not record the database's owner), {encoding}, the server's default locale",
    )


OPTION_RE = re.compile(r"(\w+) = ('(?:[^']|'')*'|[^\s']+)")


def _described_options(options: str) -> str:
    """``ENCODING = 'LATIN1' LOCALE_PROVIDER = libc LOCALE = 'C'`` in words: "encoding LATIN1, locale C"."""
    pairs = {key.upper(): value.strip("'").replace("''", "'") for key, value in OPTION_RE.findall(options)}
    words = {
        "ENCODING": "encoding",
        "LOCALE": "locale",
        "LC_COLLATE": "collation",
        "LC_CTYPE": "ctype",
        "ICU_LOCALE": "ICU locale",
        "TABLESPACE": "tablespace",
    }
    return ", ".join(f"{word} {pairs[key]}" for key, word in words.items() if key in pairs)


# --- reading a dump ---------------------------------------------------------------------------------

#: pg_dump's header above each entry: ``-- Name: loans; Type: TABLE; Schema: public; Owner: lender``.
HEADER_RE = re.compile(r"^-- (?:Data for )?Name: (.*); Type: (.*?); Schema: (.*?); Owner: (.*)$")
CREATE_DATABASE_RE = re.compile(r'^CREATE DATABASE ("(?:[^"]|"")*"|\S+) WITH (.*);$')
CLIENT_ENCODING_RE = re.compile(r"^SET client_encoding = '([^']*)';$")
_ROLE = r'(?:"(?:[^"]|"")*"|[^\s",;]+)'
#: The roles a GRANT gives to, a REVOKE takes from, ALTER DEFAULT PRIVILEGES or ALTER ROLE ... IN DATABASE name.
ROLE_RES = (
    re.compile(rf"^GRANT .* TO ({_ROLE}(?:, {_ROLE})*)(?: WITH (?:GRANT|ADMIN) OPTION)?(?: GRANTED BY {_ROLE})?;$"),
    re.compile(rf"^REVOKE .* FROM ({_ROLE}(?:, {_ROLE})*)(?: GRANTED BY {_ROLE})?(?: CASCADE)?;$"),
    re.compile(rf"^ALTER DEFAULT PRIVILEGES FOR ROLE ({_ROLE}) "),
    re.compile(rf"^ALTER ROLE ({_ROLE}) IN DATABASE "),
)
ROLE_ITEM_RE = re.compile(_ROLE)
#: Entries that belong to the database itself rather than to objects in it.
DATABASE_LEVEL = ("DATABASE PROPERTIES",)
DATABASE_TAGGED = ("COMMENT", "ACL", "SECURITY LABEL")


@dataclass
class _Entry:
    name: str
    type: str
    owner: str
    lines: list[str] = field(default_factory=list)

    @property
    def database_level(self) -> bool:
        return self.type in DATABASE_LEVEL or (self.type in DATABASE_TAGGED and self.name.startswith("DATABASE "))


def read_contents(cfg: Config, path: Path) -> DumpContents:
    """What the dump at ``path`` holds and needs; a file that is no dump is refused in one line."""
    with path.open("rb") as fh:
        head = fh.read(4096)
    if head.startswith(GZIP_MAGIC):
        try:
            with gzip.open(path, "rb") as fh:
                head = fh.read(4096)
        except (OSError, EOFError) as exc:
            raise PgdrError(f"{path} is not a readable gzip file: {exc}") from None
        if PLAIN_HEADER not in head:
            raise PgdrError(
                f"{path} is gzip-compressed but not a pg_dump plain SQL dump (no {PLAIN_HEADER.decode()!r})"
            )
        with gzip.open(path, "rb") as stream:
            return _read_plain(stream, path)
    if not head.startswith(ARCHIVE_MAGIC) and PLAIN_HEADER in head:
        with path.open("rb") as stream:
            return _read_plain(stream, path)
    entries = _pg_restore_list(cfg, path)
    result = subprocess.run(
        [program(cfg, "pg_restore"), "--create", "--schema-only", "--file=-", str(path)],
        capture_output=True,
        check=False,
    )
    if result.returncode != 0:
        raise PgdrError(f"{path} cannot be read by pg_restore: {_reason(result.stderr.decode(errors='replace'))}")
    return _parse(_decoded(result.stdout.splitlines()), plain=False, entries=entries)


def _read_plain(stream: Iterable[bytes], path: Path) -> DumpContents:
    try:
        return _parse(_decoded(stream), plain=True, entries=None)
    except (OSError, EOFError) as exc:  # a truncated or damaged gzip stream
        raise PgdrError(f"{path} cannot be read to the end: {exc}") from None


def _decoded(lines: Iterable[bytes]) -> Iterator[str]:
    """Lines as text that turns back into the very same bytes (a dump need not be UTF-8)."""
    for line in lines:
        yield line.rstrip(b"\r\n").decode("utf-8", errors="surrogateescape")


def _parse(lines: Iterable[str], *, plain: bool, entries: int | None) -> DumpContents:
    """Walk the dump's SQL once: its entries with their owners and statements, its encoding.

    psql meta-commands (``\\connect``, ``\\restrict``) end an entry, and the data of a plain dump's
    ``COPY ... FROM stdin`` is skipped, so a row that looks like a header is never read as one.
    """
    found: list[_Entry] = []
    current: _Entry | None = None
    encoding = ""
    in_copy = False
    for line in lines:
        if in_copy:
            in_copy = line != "\\."
            continue
        header = HEADER_RE.match(line)
        if header:
            current = _Entry(header[1], header[2], header[4])
            found.append(current)
            continue
        if line.startswith("\\"):
            current = None
            continue
        if not encoding and (match := CLIENT_ENCODING_RE.match(line)):
            encoding = match[1]
        if line.startswith("--") or current is None:
            continue
        if plain and line.startswith("COPY ") and line.endswith(" FROM stdin;"):
            in_copy = True
        elif line and not line.startswith(("SET ", "SELECT pg_catalog.set_config(")):
            current.lines.append(line)
    dbname = owner = options = ""
    database_sql: list[str] = []
    object_roles: set[str] = set()
    database_roles: set[str] = set()
    for entry in found:
        roles = database_roles if entry.database_level or entry.type == "DATABASE" else object_roles
        if entry.owner and entry.owner != "-":
            roles.add(entry.owner)
        for line in entry.lines:
            for pattern in ROLE_RES:
                if match := pattern.match(line):
                    roles.update(_unquoted_roles(match[1]))
        if entry.type == "DATABASE":
            dbname, owner = entry.name, entry.owner
            options = next((m[2] for m in map(CREATE_DATABASE_RE.match, entry.lines) if m), "")
        elif entry.database_level:
            database_sql += entry.lines
    return DumpContents(
        plain=plain,
        entries=len(found) if entries is None else entries,
        dbname=dbname,
        database_owner=owner,
        create_options=options if options.isascii() else "",
        database_sql="\n".join(database_sql) + "\n" if database_sql else "",
        encoding=encoding,
        object_roles=frozenset(object_roles),
        database_roles=frozenset(database_roles),
        creates_database=plain and any(e.type == "DATABASE" for e in found),
    )


def _unquoted_roles(listed: str) -> Iterator[str]:
    for item in ROLE_ITEM_RE.findall(listed):
        if item.startswith('"'):
            yield item[1:-1].replace('""', '"')
        elif item.upper() != "PUBLIC":
            yield item


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


# --- the server ------------------------------------------------------------------------------------


@contextmanager
def maintenance_connection(cfg: Config, database: str) -> Iterator[psycopg.Connection[Any]]:
    """A connection to a database other than ``database``, which may not exist (``postgres``, else template1).

    Connecting to the database restored into would fail exactly when it is gone, with a hint about
    the connection settings that sends the operator the wrong way.
    """
    first: PgdrError | None = None
    for name in (n for n in MAINTENANCE_DATABASES if n != database):
        try:
            conn = connect(cfg, dbname=name)
        except PgdrError as exc:
            first = first or exc
            continue
        with conn:
            yield conn
        return
    assert first is not None
    raise first


def database_exists(conn: psycopg.Connection[Any], database: str) -> bool:
    return conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,)).fetchone() is not None


def _current_user(conn: psycopg.Connection[Any]) -> str:
    row = conn.execute("SELECT current_user").fetchone()
    assert row is not None
    return str(row[0])


def check_roles(conn: psycopg.Connection[Any], contents: DumpContents, database: str, *, exists: bool) -> None:
    """Refuse, before anything is changed, a restore whose owners or grantees do not exist as roles.

    pg_restore would stop at the first ``ALTER ... OWNER TO`` of a missing role anyway, after the
    safety dump and with a message that names one statement; this names every missing role and the fix.
    Objects are not given to someone else instead: who owns what is part of what the dump restores.
    """
    wanted = set(contents.object_roles)
    if not exists:  # the database's owner; its grants too when they are applied (the dumped name)
        wanted |= {contents.database_owner} if contents.dbname != database else contents.database_roles
    # A name pgdr cannot read back exactly (a dump not in UTF-8) is left for pg_restore to check.
    names = sorted(n for n in wanted if n and n.isprintable())
    if not names:
        return
    rows = conn.execute(
        "SELECT r FROM unnest(%s::text[]) AS r WHERE r NOT IN (SELECT rolname FROM pg_roles) ORDER BY r", (names,)
    ).fetchall()
    missing = [str(r[0]) for r in rows]
    if not missing:
        return
    from psycopg import sql

    create = "; ".join(f"CREATE ROLE {sql.Identifier(m).as_string(conn)}" for m in missing)
    if len(missing) == 1:
        role = missing[0]
        what = (
            f"owner of database {database} in the dump"
            if role == contents.database_owner and not exists
            else "an owner or grantee in the dump"
        )
        raise PgdrError(
            f"role {role} does not exist ({what}): create it first ({create}), then run the restore again; "
            "nothing was changed"
        )
    raise PgdrError(
        f"roles {', '.join(missing)} do not exist (owners or grantees in the dump): create them first "
        f"({create}), then run the restore again; nothing was changed"
    )


# --- the restore -----------------------------------------------------------------------------------


def restore_logical(cfg: Config, plan: LogicalPlan) -> None:
    """Safety dump then pg_restore in one transaction, or (no database) create it then restore; audited."""
    details = {"dump": plan.source.description, "database": plan.database, "safety_dump": str(plan.safety_dump)}
    audit.record(cfg, "logical restore", "started", **details)
    try:
        with maintenance_connection(cfg, plan.database) as conn:
            version = server_info(conn).version_num
            exists = database_exists(conn, plan.database)
            if plan.contents is not None:
                check_roles(conn, plan.contents, plan.database, exists=exists)
        if exists != plan.exists:
            now = "was created by someone else" if exists else "was dropped"
            raise PgdrError(
                f"database {plan.database} {now} after the plan was made: run the restore again for a new plan; "
                "nothing was changed"
            )
        if plan.exists:
            _restore_over(cfg, plan, version)
        else:
            _restore_new(cfg, plan, version)
    except BaseException as exc:
        audit.record(cfg, "logical restore", "failed", error=str(exc), **details)
        notify_restore(cfg, f"logical restore of {plan.source.description} into {plan.database}: {exc}", ok=False)
        raise
    audit.record(cfg, "logical restore", "done", **details)
    notify_restore(cfg, f"logical restore of {plan.source.description} into {plan.database} done", ok=True)


def _restore_over(cfg: Config, plan: LogicalPlan, version: int) -> None:
    """Into the database that exists: its safety dump first, then the dump in one transaction."""
    assert isinstance(plan.safety_dump, Path)
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


def _restore_new(cfg: Config, plan: LogicalPlan, version: int) -> None:
    """Create the database as dumped, restore into it in one transaction, then its own settings.

    Not ``pg_restore --create``: that cannot run in one transaction (CREATE DATABASE cannot) and
    only makes the dumped name. Whatever fails after the database was created drops it again, so
    a failed restore leaves the database missing, as it was, rather than half there.
    """
    from psycopg import sql

    contents = plan.contents
    assert contents is not None
    gone = f"database {plan.database} was dropped again: it does not exist, as before"
    with local_copy(plan.source) as path:  # fetched before anything is created
        name = sql.Identifier(plan.database)
        create = sql.SQL("CREATE DATABASE {} WITH {}").format(name, sql.SQL(plan.create_options))
        _ddl(cfg, plan.database, create, f"cannot create database {plan.database}", "nothing was changed")
        try:
            owner = sql.SQL("ALTER DATABASE {} OWNER TO {}").format(name, sql.Identifier(plan.owner))
            _ddl(cfg, plan.database, owner, f"cannot give database {plan.database} to {plan.owner}", gone)
            if contents.plain:
                with _opened(path) as stream:
                    _psql(cfg, version, plan.database, stream, what="psql", outcome=gone)
            else:
                _run(
                    [
                        program(cfg, "pg_restore", version),
                        "--single-transaction",
                        "--exit-on-error",
                        f"--dbname={plan.database}",
                        str(path),
                    ],
                    cfg,
                    "pg_restore",
                    gone,
                )
            if contents.database_sql and contents.dbname == plan.database:
                preamble = f"SET client_encoding = '{contents.encoding}';\n" if contents.encoding else ""
                text = (preamble + contents.database_sql).encode("utf-8", errors="surrogateescape")
                _psql(cfg, version, plan.database, text, what="the database's own settings", outcome=gone)
        except BaseException as exc:
            _drop_created(cfg, plan.database, version, exc, gone)
            raise


def _ddl(cfg: Config, database: str, statement: sql.Composed, failed: str, outcome: str) -> None:
    """Run one statement about ``database`` on the maintenance connection; a failure is one line."""
    with maintenance_connection(cfg, database) as conn:
        try:
            conn.execute(statement)
        except Exception as exc:
            raise PgdrError(f"{failed}: {first_line(exc)}; {outcome}") from None


def _drop_created(cfg: Config, database: str, version: int, cause: BaseException, gone: str) -> None:
    """Drop the database this restore created; if that fails too, say so, and how to finish it."""
    from psycopg import sql

    force = sql.SQL(" WITH (FORCE)") if version >= 130000 else sql.SQL("")
    try:
        with maintenance_connection(cfg, database) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}{}").format(sql.Identifier(database), force))
    except Exception as exc:
        message = str(cause).replace(f"; {gone}", "")
        raise PgdrError(
            f"{message or type(cause).__name__}; database {database}, created for this restore, could not be "
            f"dropped again ({first_line(exc)}): drop it with DROP DATABASE before restoring again"
        ) from None


class _Reader(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


@contextmanager
def _opened(path: Path) -> Iterator[_Reader]:
    with path.open("rb") as fh:
        gzipped = fh.read(len(GZIP_MAGIC)) == GZIP_MAGIC
    with gzip.open(path, "rb") if gzipped else path.open("rb") as stream:
        yield stream


def _psql(cfg: Config, version: int, database: str, script: _Reader | bytes, *, what: str, outcome: str) -> None:
    """Run SQL with psql in one transaction, stopping at the first error (psql handles pg_dump's
    meta-commands, which no driver does)."""
    argv = [
        program(cfg, "psql", version),
        "--no-psqlrc",
        "--quiet",
        "--single-transaction",
        "--set=ON_ERROR_STOP=1",
        f"--dbname={database}",
        "--file=-",
    ]
    with tempfile.TemporaryFile() as errors:
        proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=errors, env=libpq_env(cfg)
        )
        assert proc.stdin is not None
        try:
            try:
                if isinstance(script, bytes):
                    proc.stdin.write(script)
                else:
                    while chunk := script.read(CHUNK):
                        proc.stdin.write(chunk)
                proc.stdin.close()
            except BrokenPipeError:
                pass  # psql stopped reading: it stopped at an error, reported below
            except (OSError, EOFError) as exc:  # the dump cannot be read to its end
                proc.kill()
                proc.wait()
                raise PgdrError(f"{what} failed: the dump cannot be read to its end ({exc}); {outcome}") from None
            code = proc.wait()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        if code != 0:
            errors.seek(0)
            raise PgdrError(
                f"{what} failed (exit {code}): {_reason(errors.read().decode(errors='replace'))}; {outcome}"
            )


def _run(argv: list[str], cfg: Config, what: str, outcome: str = "the database was not changed") -> None:
    result = subprocess.run(argv, capture_output=True, text=True, env=libpq_env(cfg), check=False)
    if result.returncode != 0:
        raise PgdrError(f"{what} failed (exit {result.returncode}): {_reason(result.stderr)}; {outcome}")


def _reason(stderr: str) -> str:
    """The line of a client program's output that says what went wrong: its last ERROR, not the
    "Command was: ..." pg_restore prints after it, with the statement when it is short."""
    lines = [line.strip() for line in stderr.strip().splitlines() if line.strip()]
    if not lines:
        return "no output"
    errors = [i for i, line in enumerate(lines) if "ERROR:" in line or "error:" in line]
    if not errors:
        return lines[-1]
    at = errors[-1]
    reason = " ".join(lines[at][lines[at].rfind("ERROR:") :].split()) if "ERROR:" in lines[at] else lines[at]
    following = lines[at + 1] if at + 1 < len(lines) else ""
    if following.startswith("Command was: ") and len(following) <= 200:
        reason += f" ({following.removesuffix(';')})"
    return reason
