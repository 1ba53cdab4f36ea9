"""The ``pgdr`` command line: parse, call the backend, print. No behaviour lives here.

Imports are deferred to each command, so ``pgdr wal-push`` (run by PostgreSQL for every segment)
loads the configuration and the archiver and nothing else: no Textual, no boto3 unless S3 is a
repository it must reach.
"""

from __future__ import annotations

import os
import sys
from types import SimpleNamespace

from backend import __version__
from backend.errors import PgdrError

#: Not ``typing.TYPE_CHECKING``: importing typing (and json, and what they import) would cost every
#: wal-push as much CPU again as the interpreter's own start-up; mypy and ruff go by the name.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable, Sequence
    from typing import Any

    from backend.config import Config
    from backend.manifest import BackupManifest
    from backend.progress import Progress
    from backend.restore.plan import RestorePlan

    Handler = Callable[[argparse.Namespace], int]


def main(argv: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    hot = _hot_path(words)
    if hot is not None:
        code = _run(hot)  # a few files open at a time: the open-files limit stays as it is
        if argv is None and getattr(hot, "answered", False):
            # wal-fetch answered by its prefetcher, once per segment PostgreSQL replays: the interpreter's
            # teardown (freeing every module and object) costs about as much as the answer itself.
            # Nothing is pending: no threads, no files open, and what was printed is flushed here.
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
        return code
    from backend.limits import raise_open_files_limit

    raise_open_files_limit()
    parser = build_parser()
    args = parser.parse_args(words)
    if args.command is None and not args.daemon:
        if sys.stdin.isatty() and sys.stdout.isatty():
            args.handler = cmd_tui  # the operator console is what `pgdr` means on a terminal
        else:
            parser.print_help()
            return 0
    if args.daemon:
        args.handler = cmd_daemon
    if args.command in BACKGROUND or getattr(args, "background", False):
        return _in_background(args)
    return _run(args)


def _hot_path(words: list[str]) -> argparse.Namespace | None:
    """``wal-push %p`` / ``wal-fetch %f %p`` exactly as PostgreSQL runs them, without building the
    whole parser (or importing argparse): they run once per WAL segment, and argparse for every
    command costs ~10 ms. A SimpleNamespace carries the same attributes as argparse's Namespace."""
    config = None
    if len(words) >= 2 and words[0] == "--config":
        config, words = words[1], words[2:]
    if any(w.startswith("-") for w in words[1:]):
        return None
    args: Any  # a SimpleNamespace standing in for argparse's Namespace
    if len(words) == 2 and words[0] == "wal-push":
        args = SimpleNamespace(config=config, command="wal-push", handler=cmd_wal_push, path=words[1])
    elif len(words) == 3 and words[0] == "wal-fetch":
        args = SimpleNamespace(
            config=config, command="wal-fetch", handler=cmd_wal_fetch, filename=words[1], destination=words[2]
        )
    else:
        return None
    return args  # type: ignore[no-any-return]


def _run(args: argparse.Namespace) -> int:
    try:
        handler: Handler = args.handler
        return handler(args)
    except PgdrError as exc:
        # restore_command is asked for files that never existed (the next timeline's .history, the
        # segment after the last): "not there" is routine there, not an error worth alarming a log reader.
        routine = args.command == "wal-fetch" and exc.exit_code == 1
        refused = f" (pgdr runs as user {_user()})" if isinstance(exc.__cause__, PermissionError) else ""
        print(f"pgdr: {'' if routine else 'error: '}{exc}{refused}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("pgdr: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        if not _stdout_gone():
            print("pgdr: error: broken pipe (a program pgdr was writing to went away)", file=sys.stderr)
            return 2
        return 141  # as a shell reports a writer whose reader went away (128 + SIGPIPE)
    except OSError as exc:
        # A safety net, not the way errors are meant to be reported: an operator can act on a path, a
        # reason and a user, where a traceback from an unwritable folder or a full disk only alarms.
        print(f"pgdr: error: {_os_error(exc)}", file=sys.stderr)
        return 2
    except Exception as exc:
        # A bug: the traceback is what a report needs, and the last line (the one a log or a pager
        # shows) says it is not the operator's setup, so nobody spends the night changing the config.
        import traceback

        traceback.print_exc()
        print(
            f"pgdr: internal error ({type(exc).__name__}: {exc}): a bug in pgdr, not in your setup; "
            "please report it with the traceback above",
            file=sys.stderr,
        )
        return 2


def _user() -> str:
    from backend.restore.preflight import user_name

    return user_name()


def _os_error(exc: OSError) -> str:
    """A refusal names the user too: the same path is fine for root and not for the server user, and
    which of them ran pgdr (cron, archive_command, a shell) is what the operator has to find out."""
    import errno

    paths = " -> ".join(os.fsdecode(p) if isinstance(p, bytes) else str(p) for p in (exc.filename, exc.filename2) if p)
    text = f"{paths}: {exc.strerror or exc}" if paths else str(exc.strerror or exc)
    if exc.errno in (errno.EACCES, errno.EPERM):
        user = _user()
        return f"{text} (pgdr runs as user {user}): give {user} access to it, or run pgdr as the user who owns it"
    if exc.errno == errno.ENOSPC:
        return f"{text}: free space on that filesystem, then retry"
    return text


def _stdout_gone() -> bool:
    """Whether the broken pipe is our standard output (``pgdr list | head``): then nothing needs saying,
    and further writes, including the interpreter's final flush, go to /dev/null instead of raising."""
    import select

    try:
        fd = sys.stdout.fileno()
    except (OSError, ValueError):  # replaced by something without a descriptor, or closed
        return False
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    if not any(events & select.POLLERR for _, events in poller.poll(0)):  # a pipe without a reader
        return False
    os.dup2(os.open(os.devnull, os.O_WRONLY), fd)
    return True


#: Commands wal-push/wal-fetch start detached. They always exit 0 and log failures instead: in a
#: container where the postmaster is process 1 they become its children, and PostgreSQL treats a
#: child it does not know exiting with any other status as a crashed backend and restarts.
BACKGROUND = frozenset({"wal-spool", "wal-prefetch", "wal-pushd"})


def _in_background(args: argparse.Namespace) -> int:
    import logging
    import traceback

    try:
        handler: Handler = args.handler
        handler(args)
    except BaseException as exc:
        from backend.statedir import state_dir

        try:
            folder = state_dir()
            folder.mkdir(parents=True, exist_ok=True)
            with (folder / "background.log").open("a") as log:
                log.write(f"pgdr {args.command}: {exc}\n")
                if not isinstance(exc, PgdrError):
                    log.write(traceback.format_exc())
        except OSError:
            logging.getLogger("pgdr").warning("pgdr %s failed: %s", args.command, exc)
    return 0


def _port(text: str) -> int:
    """Checked while parsing, so a port no server can listen on fails before anything is planned or stopped."""
    import argparse

    if not (text.isdecimal() and 1 <= int(text) <= 65535):
        raise argparse.ArgumentTypeError(f"{text!r} is not a TCP port: use a number from 1 to 65535")
    return int(text)


def _seconds(text: str) -> float:
    import argparse
    import math

    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 1 <= value <= 86400:  # also refuses nan and inf, which would wait forever
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds: use one from 1 to 86400")
    return value


def build_parser() -> argparse.ArgumentParser:
    import argparse

    parser = argparse.ArgumentParser(
        prog="pgdr",
        description="Backup and disaster recovery for PostgreSQL: WAL archiving, base backups, point-in-time restore.",
    )
    parser.add_argument("--version", action="version", version=f"pgdr {__version__}")
    parser.add_argument(
        "--config",
        metavar="PATH",
        help="config file (default: $PGDR_CONFIG, the user config dir, /etc/pgdr/pgdr.toml)",
    )
    parser.add_argument("--daemon", action="store_true", help="run the scheduler (backups, verify, retention, alarms)")
    parser.add_argument("--log-format", choices=["text", "json"], default="text", help="daemon log format on stdout")
    parser.set_defaults(command=None)
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")

    def command(name: str, handler: Handler, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(command=name, handler=handler)
        # Also accepted after the command (`pgdr init --config PATH`); SUPPRESS keeps the global value.
        p.add_argument("--config", metavar="PATH", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        return p

    p = command("init", cmd_init, "write a commented starting config file")
    p.add_argument("--cluster", default="main", help="cluster name (default: main)")
    p.add_argument("--data-dir", default="", help="the cluster's data directory")
    p.add_argument("--local-path", default="", help="local repository directory")
    p.add_argument("--host", default="", help="server host or socket directory")
    p.add_argument("--port", type=_port, default=5432)
    p.add_argument("--user", default="postgres")
    p.add_argument(
        "--bin-dir", default="", help="the PostgreSQL programs' folder (default: found from the data directory)"
    )
    p.add_argument("--force", action="store_true", help="overwrite an existing file")

    p = command("wal-push", cmd_wal_push, "archive one WAL file (archive_command = 'pgdr wal-push %%p')")
    p.add_argument("path", help="the WAL file, as PostgreSQL's %%p gives it")

    p = command("wal-fetch", cmd_wal_fetch, "restore one WAL file (restore_command = 'pgdr wal-fetch %%f %%p')")
    p.add_argument("filename", help="the WAL file name (%%f)")
    p.add_argument("destination", help="where to write it (%%p)")

    p = command(
        "wal-spool", cmd_wal_spool, "push the segments waiting in pg_wal ahead of the archiver (started by wal-push)"
    )
    p.add_argument("pg_wal", help="the server's pg_wal directory")
    p.add_argument("--after", default="", help="only segments after this one (the archiver has it in hand)")

    # Hidden (no help): the push server wal-push starts for the next segments (backend/archive/pushd.py).
    p = sub.add_parser("wal-pushd")
    p.set_defaults(command="wal-pushd", handler=cmd_wal_pushd)
    p.add_argument("--after", default="")  # the segment its starter pushes: push the ready ones behind it

    p = command("wal-prefetch", cmd_wal_prefetch, "fetch WAL ahead of recovery (started by wal-fetch)")
    p.add_argument("folder", help="the prefetch folder in pg_wal")
    p.add_argument("--after", required=True, help="the segment recovery has in hand")

    p = command("wal-upload", cmd_wal_upload, "copy queued WAL to repositories wal-push does not wait for")
    p.add_argument("--repo", choices=["local", "s3", "index"], help="only this repository (index: the WAL index)")
    p.add_argument("--quiet", action="store_true", help="print nothing on success")
    p.add_argument("--background", action="store_true", help=argparse.SUPPRESS)  # started by wal-push

    p = command(
        "backup", cmd_backup, "take a physical base backup (or, with --logical, the logical dumps: .dump and .sql.gz)"
    )
    kind = p.add_mutually_exclusive_group()
    kind.add_argument("--logical", action="store_true", help="pg_dump .dump and .sql.gz instead of pg_basebackup")
    kind.add_argument(
        "--incremental",
        action="store_true",
        help="PostgreSQL 17+: only the blocks changed since the newest base backup (needs summarize_wal = on)",
    )
    p.add_argument("--repo", choices=["local", "s3"], help="write to this repository only")
    p.add_argument("--json", action="store_true", help="print the manifest summary as JSON")

    p = command("list", cmd_list, "list backups and the archived WAL")
    p.add_argument("--repo", choices=["local", "s3"], help="only this repository")
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = command("check", cmd_check, "check the server's archiving settings and that WAL reaches every repository")
    p.add_argument("--timeout", type=_seconds, default=60.0, help="seconds to wait for the switched segment")

    p = command("timeline", cmd_timeline, "the recovery windows per timeline, with gaps (and events)")
    p.add_argument("--repo", choices=["local", "s3"], help="only this repository")
    p.add_argument(
        "--events",
        action="store_true",
        help="list restore points, drops, truncates and rewrites (VACUUM FULL, CLUSTER, SET TABLESPACE, "
        "REFRESH) from the WAL",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = command("restore", cmd_restore, "point-in-time restore (plan with --dry-run first)")
    target = p.add_argument_group("recovery target (exactly one)")
    target.add_argument("--timestamp", metavar="TIME", help="'YYYY-MM-DD HH:MM:SS[.ffffff][+HH:MM]'")
    target.add_argument("--xid", help="a transaction id")
    target.add_argument("--lsn", help="a WAL location such as 0/3000028")
    target.add_argument("--name", help="a restore point made with pg_create_restore_point()")
    target.add_argument("--latest", action="store_true", help="replay all archived WAL")
    target.add_argument("--immediate", action="store_true", help="stop as soon as the base backup is consistent")
    logical = p.add_argument_group("logical restore (the forms of the postgres-restore service)")
    logical.add_argument(
        "dump",
        nargs="?",
        help="a dump to restore: .dump (pg_dump custom format), or .sql/.sql.gz (plain SQL, only into a database "
        "that does not exist)",
    )
    logical.add_argument("--logical", action="store_true", help="restore a logical dump (with --latest: the newest)")
    logical.add_argument("--from-dump", metavar="NAME_OR_PATH", help="a logical backup name or a .dump/.sql.gz file")
    logical.add_argument("--from-s3", metavar="URL", help="a .dump or .sql.gz at s3://bucket/key")
    logical.add_argument("--dbname", help="database to restore a dump into (default: [postgres] dbname)")
    logical.add_argument("--list", action="store_true", help="list the local repository's backups (= pgdr list)")
    logical.add_argument("--list-s3", action="store_true", help="list the S3 repository's backups")
    p.add_argument("--backup", metavar="NAME", help="the base backup to start from (default: newest before the target)")
    p.add_argument("--exclusive", action="store_true", help="stop just before the target")
    # No default value: an explicit latest is followed as typed, the default may follow an older timeline.
    p.add_argument("--target-timeline", help="latest (default), current or a number")
    p.add_argument("--target-action", default="promote", help="promote (default), pause or shutdown")
    p.add_argument("--tz", help="time zone of --timestamp without an offset (default: [restore] timezone, UTC)")
    p.add_argument(
        "--target-dir", metavar="DIR", help="restore beside: into this new directory, leaving the cluster alone"
    )
    p.add_argument("--port", type=_port, help="port for a restore beside (default: the cluster's port + 1)")
    p.add_argument("--repo", choices=["local", "s3"], help="read from this repository only")
    p.add_argument("--dry-run", action="store_true", help="print the plan and change nothing")
    p.add_argument("--yes", action="store_true", help="do not ask for the cluster name")
    p.add_argument(
        "--force", action="store_true", help="restore although an earlier restore of this data directory did not finish"
    )
    p.add_argument(
        "--tablespace-map",
        action="append",
        default=[],
        metavar="OLD=NEW",
        help="restore the tablespace named OLD (or at location OLD) into NEW; repeat per tablespace "
        "(a restore beside puts unmapped ones in <target-dir>-tablespaces/<name>)",
    )
    p.add_argument("--json", action="store_true", help="print the plan / report as JSON")

    p = command("verify", cmd_verify, "verify backups (checksums, WAL continuity; --deep: a restore rehearsal)")
    p.add_argument("name", nargs="?", help="one backup (default: every backup and the WAL archive)")
    p.add_argument(
        "--full", action="store_true", help="read every object now, also those verified within [verify] reread_days"
    )
    p.add_argument("--deep", action="store_true", help="--full, and also restore into a scratch directory and start it")
    p.add_argument("--repo", choices=["local", "s3"], help="only this repository")
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = command("expire", cmd_expire, "apply retention: remove old backups and the WAL no kept backup needs")
    p.add_argument("--dry-run", action="store_true", help="say what would be removed, remove nothing")
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = command("s3-lifecycle", cmd_s3_lifecycle, "the S3 lifecycle rule (Glacier after 30 days, expire after a year)")
    p.add_argument("--print", action="store_true", required=True, help="print it as JSON for put-bucket-lifecycle")

    p = command("status", cmd_status, "the daemon's jobs: last and next run, result")
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = command("tui", cmd_tui, "open the operator console (also: `pgdr` alone on a terminal)")

    p = command("demo", cmd_demo, "build a throwaway cluster with backups and WAL, and open the console on it")
    p.add_argument("--clean", action="store_true", help="stop and remove the demo sandbox")
    p.add_argument("--no-tui", action="store_true", help="build the sandbox and print its config path only")

    p = command("audit", cmd_audit, "the audit log: restores, expiries and config changes (who, when, result)")
    p.add_argument("--repo", choices=["local", "s3"], help="the copies kept in this repository ([audit] setting)")
    p.add_argument("--json", action="store_true", help="one JSON object per line, as stored")

    p = command("decrypt", cmd_decrypt, "decrypt one object of an encrypted repository (by key, or a copied file)")
    p.add_argument("key", nargs="?", help="the object's key, e.g. backups/NAME/base.tar.zst")
    p.add_argument("--file", metavar="PATH", help="decrypt this copy of an object instead of reading the repository")
    p.add_argument("--repo", choices=["local", "s3"], default="local", help="whose key to use (default: local)")
    p.add_argument("-o", "--output", metavar="PATH", required=True, help="where to write the plaintext ('-': stdout)")

    p = command("config", cmd_config, "print the effective configuration (secrets masked)")
    p.add_argument("--json", action="store_true")
    return parser


#: Commands PostgreSQL runs (and their helpers): per WAL segment, they skip the config-change audit.
ARCHIVE_COMMANDS = frozenset({"wal-push", "wal-fetch", "wal-upload", *BACKGROUND})


def load(args: argparse.Namespace) -> Config:
    from backend.config import load_config

    cfg = load_config(args.config)
    if args.command not in ARCHIVE_COMMANDS:
        import contextlib

        from backend.audit import note_config

        with contextlib.suppress(OSError):  # an unwritable state dir must not stop a restore at 3 a.m.
            note_config(cfg)
    return cfg


def cmd_init(args: argparse.Namespace) -> int:
    from pathlib import Path

    from backend.config import starter_config, user_config_path
    from backend.init import next_steps

    path = Path(args.config or os.environ.get("PGDR_CONFIG") or user_config_path())
    if path.exists() and not args.force:
        raise PgdrError(f"{path} already exists: edit it, or pass --force to overwrite it")
    text = starter_config(
        name=args.cluster,
        host=args.host,
        port=args.port,
        user=args.user,
        data_dir=args.data_dir,
        local_path=args.local_path,
        bin_dir=args.bin_dir,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)  # recreate, so an old file's looser mode does not survive --force
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    print(f"wrote {path}; next:")
    steps = next_steps(
        path.absolute(), data_dir=args.data_dir, local_path=args.local_path, bin_dir=args.bin_dir, pgdr=_invoked_as()
    )
    for number, step in enumerate(steps, 1):
        print(f"  {number}. {step}")
    return 0


def _invoked_as() -> str:
    """This pgdr as a path another user (the server's, for archive_command) can run: absolute."""
    import shutil
    from pathlib import Path

    argv0 = sys.argv[0]
    if os.sep in argv0:
        return str(Path(argv0).absolute()) if Path(argv0).name == "pgdr" else "pgdr"
    return shutil.which(argv0) or "pgdr"


def cmd_wal_push(args: argparse.Namespace) -> int:
    """The push server first, before the config is even read; without its "stored", push in-process."""
    from backend.archive import pushd

    if pushd.request(args.config, args.path):
        return 0
    from backend.archive.push import push

    cfg = load(args)
    pushd.ensure_server(cfg, args.config, args.path)
    push(cfg, args.path, ahead=not cfg.archive.server)  # the server pushes ahead itself
    return 0


def cmd_wal_pushd(args: argparse.Namespace) -> int:
    from backend.archive.pushd import serve

    serve(args.config, after=args.after)
    return 0


def cmd_wal_fetch(args: argparse.Namespace) -> int:
    """The running prefetcher first, before the config is even read; without one, fetch in-process
    (and start one for the segments after this)."""
    from backend.archive import prefetch

    answer = prefetch.ask(args.config, args.filename, args.destination)
    args.answered = answer in (prefetch.TAKEN, prefetch.ABSENT)
    if answer == prefetch.TAKEN:
        return 0
    if answer == prefetch.ABSENT:
        raise PgdrError(f"{args.filename} is not in any repository", exit_code=1)
    from backend.archive.fetch import fetch

    fetch(load(args), args.filename, args.destination, config=args.config, asked=answer == prefetch.DAMAGED)
    return 0


def cmd_wal_spool(args: argparse.Namespace) -> int:
    from pathlib import Path

    from backend.archive.push import push_ahead

    push_ahead(load(args), Path(args.pg_wal), args.after)
    return 0


def cmd_wal_prefetch(args: argparse.Namespace) -> int:
    from pathlib import Path

    from backend.archive.prefetch import run_prefetch

    run_prefetch(load(args), Path(args.folder), args.after, config=args.config)
    return 0


def cmd_wal_upload(args: argparse.Namespace) -> int:
    from backend.archive import queue
    from backend.archive.queue import INDEX_TARGET

    cfg = load(args)
    targets = [args.repo] if args.repo else [n for n in cfg.repository_names if n not in cfg.sync_repositories]
    if not args.repo and cfg.local.path:
        targets.append(INDEX_TARGET)
    for target in targets:
        done = queue.drain_in_background(cfg, target) if args.background else queue.drain(cfg, target)
        if not args.quiet:
            verb = "indexed" if target == INDEX_TARGET else "uploaded"
            print(f"{target}: {verb} {len(done)} WAL file(s)")
    return 0


def cmd_backup(args: argparse.Namespace) -> int:
    import json

    from backend.jobs import backup_job

    cfg = load(args)
    manifest = backup_job(
        cfg, logical=args.logical, incremental=args.incremental, only=args.repo, on_progress=_progress_printer()
    )
    if args.json:
        print(json.dumps(json.loads(manifest.to_json())))
    else:
        import humanize

        took = (manifest.stop_time - manifest.start_time).total_seconds()
        kind = f"incremental on {manifest.parent}" if manifest.parent else manifest.kind
        print(
            f"backup {manifest.name} ({kind}) complete: {humanize.naturalsize(manifest.size_bytes)} "
            f"stored as {humanize.naturalsize(manifest.stored_bytes)}, {took:.1f} s"
        )
        if args.incremental and not manifest.parent:
            print(f"  taken as a full backup: {manifest.extra.get('full_because', 'no backup to build on')}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    import json

    from backend.catalog import read_catalog, read_verified
    from backend.repository import open_repositories
    from backend.restore.marker import cluster_unfinished_restore

    cfg = load(args)
    repos = open_repositories(cfg, args.repo)
    catalog = read_catalog(repos)
    read_verified(catalog, repos)
    for reason in catalog.unreadable.values():
        print(f"pgdr: warning: {reason}", file=sys.stderr)
    unfinished = cluster_unfinished_restore(cfg.postgres.data_dir)
    if args.json:
        print(
            json.dumps({"cluster": cfg.cluster.name, "unfinished_restore": unfinished, **catalog.to_json()}, indent=2)
        )
        return 0
    import humanize

    if unfinished:
        print(unfinished)
    print(f"Backups of cluster {cfg.cluster.name}:")
    # The BUILDS ON column only where there are incrementals (PostgreSQL 17+): a 15 or 16 cluster's
    # listing stays as it was.
    chained = any(b.manifest.incremental for b in catalog.backups)
    head = ["NAME", "KIND", *(["BUILDS ON"] if chained else []), "STARTED (UTC)", "SIZE", "STORED", "TL"]
    rows = [[*head, "REPOSITORIES", "LAST VERIFIED (UTC)"]]
    by_name = {b.manifest.name: b.manifest for b in catalog.backups}
    for b in catalog.backups:
        m = b.manifest
        rows.append(
            [
                m.name,
                "incremental" if m.incremental else m.kind,
                *([_builds_on(m, by_name)] if chained else []),
                m.start_time.strftime("%Y-%m-%d %H:%M:%S"),
                humanize.naturalsize(m.size_bytes),
                humanize.naturalsize(m.stored_bytes),
                str(m.timeline or ""),
                ", ".join(b.repositories),
                _verified_cell(b.last_verified()),
            ]
        )
    _print_table(rows) if len(rows) > 1 else print("  none yet: run `pgdr backup`")
    print("\nWAL archive (contiguous ranges):")
    rows = [["REPO", "TL", "FIRST SEGMENT", "LAST SEGMENT", "SEGMENTS", "STORED", "ARCHIVED (UTC)"]]
    for r in catalog.wal:
        rows.append(
            [
                r.repository,
                str(r.timeline),
                r.first.name,
                r.last.name,
                str(r.segments),
                humanize.naturalsize(r.stored_bytes),
                f"{r.first_archived_at:%Y-%m-%d %H:%M} .. {r.last_archived_at:%Y-%m-%d %H:%M}",
            ]
        )
    _print_table(rows) if len(rows) > 1 else print("  none yet: set archive_command = 'pgdr wal-push %p'")
    return 0


def _builds_on(m: BackupManifest, by_name: dict[str, BackupManifest]) -> str:
    """The BUILDS ON cell: an incremental's parent, and whether its chain down to the full backup is whole.

    A broken chain (a backup down it expired or deleted) is said here, where the operator looks before
    counting on that backup: no restore can combine it.
    """
    from backend.manifest import BrokenChain, chain

    if m.parent is None:
        return ""
    try:
        members = chain(m, by_name)
    except BrokenChain as exc:
        return f"{m.parent} (BROKEN: {exc.missing} is gone)"
    return f"{m.parent} (chain of {len(members)})"


def _verified_cell(last: dict[str, Any] | None) -> str:
    """The LAST VERIFIED cell: when, how and the verdict, so a never-checked backup stands out in the list.

    E.g. "2024-05-01 12:00 checksums ok", with ", deep 2024-04-28" when an earlier run rehearsed it.
    """
    if last is None:
        return "never"
    from datetime import UTC, datetime

    when = datetime.fromisoformat(str(last["time"])).astimezone(UTC)
    cell = f"{when:%Y-%m-%d %H:%M} {last['level']} {'ok' if last['ok'] else 'FAILED'}"
    deep = last.get("last_deep")
    if last["level"] != "deep" and isinstance(deep, dict) and deep.get("time"):
        cell += f", deep {datetime.fromisoformat(str(deep['time'])).astimezone(UTC):%Y-%m-%d}"
    return cell


def cmd_check(args: argparse.Namespace) -> int:
    from backend.check import run_check

    cfg = load(args)
    problems = 0
    for result in run_check(cfg, timeout=args.timeout):
        mark = "ok  " if result.ok else "FAIL"
        print(f"[{mark}] {result.message}")
        problems += not result.ok
    return 1 if problems else 0


def cmd_timeline(args: argparse.Namespace) -> int:
    import json

    from backend.recovery import VIEW_INDEX_BUDGET_S, load_view
    from backend.walnames import format_lsn

    cfg = load(args)
    view = load_view(cfg, args.repo, index_budget_s=VIEW_INDEX_BUDGET_S)
    shown = list(view.events) if args.events else []
    if args.json:
        extra = {"events": [e.to_json() for e in shown]} if args.events else {}
        counts = {"unindexed_segments": view.unindexed, "unreadable_segments": view.unreadable}
        body = {"cluster": cfg.cluster.name, **view.timeline.to_json(), **counts, **extra}
        print(json.dumps(body, indent=2))
        return 0
    print(f"Recovery timeline of cluster {cfg.cluster.name} (times UTC)")
    if view.unindexed:
        print(
            f"  {view.unindexed} older archived segments are not indexed yet: their times below are archive"
            " times, and their events are not listed; the next `pgdr timeline` goes on indexing"
        )
    if view.unreadable:
        print(
            f"  {view.unreadable} archived segments cannot be indexed (damaged copies, or not WAL): those no copy"
            " of which matches its checksum show as gaps (recovery cannot replay them), the others count as"
            " archived, with archive times; `pgdr verify` names the copies, and a replaced copy is read again"
        )
    if not view.timeline.windows and not view.timeline.gaps:
        print("  nothing recoverable yet: take a base backup (`pgdr backup`) with archiving on")
    abandoned = view.timeline.abandoned()
    for name, why in view.timeline.disowned.items():
        print(f"  backup {name} is not offered: {why}")
    for tli in view.timeline.timelines:
        windows, gaps = view.timeline.windows_on(tli), [g for g in view.timeline.gaps if g.timeline == tli]
        if not windows and not gaps:
            continue
        if tli in abandoned:
            state = f" (abandoned: the cluster runs on timeline {view.timeline.current}, which does not continue it)"
        else:
            state = " (the cluster runs on it)" if tli == view.timeline.current else ""
        print(f"Timeline {tli}{state}:")
        for w in windows:
            print(
                f"  window  {w.start:%Y-%m-%d %H:%M:%S} .. {w.end:%Y-%m-%d %H:%M:%S}  from backup {w.base_backup}"
                f"  (WAL {w.first_segment.name} .. {w.last_segment.name})"
            )
        for g in gaps:
            print(
                f"  GAP     after {g.after_segment.name}: missing {g.missing_from.name} .. {g.missing_to.name}"
                " (targets past it are unreachable until a newer backup)"
            )
    followed = [w for w in view.timeline.windows if w.timeline not in abandoned]
    if followed:
        newest = max(followed, key=lambda w: (w.end, w.timeline))
        print(f"Latest recoverable commit: {newest.end:%Y-%m-%d %H:%M:%S} UTC on timeline {newest.timeline}")
    if args.events:
        print("Events (from the WAL):" if shown else "Events: none found in the archived WAL")
        for e in shown:
            when = f"{e.time:%Y-%m-%d %H:%M:%S.%f}"[:-3] if e.time else "time unknown"
            what = f"restore point {e.name!r}" if e.kind == "restore_point" else e.kind.replace("_", " ")
            xid = f" xid {e.xid}" if e.xid else ""
            rels = f" ({', '.join(e.relations)})" if e.relations else ""
            branch = f" on timeline {e.timeline}" if len(view.timeline.timelines) > 1 else ""
            print(f"  {when}  {what}{xid} at {format_lsn(e.lsn)}{branch}{rels}")
    return 0


def cmd_restore(args: argparse.Namespace) -> int:
    import json

    from backend.recovery import perform_restore, plan_restore
    from backend.restore.target import make_target
    from backend.tablespaces import parse_mapping

    if args.list or args.list_s3:
        args.repo, args.json = ("s3" if args.list_s3 else "local"), args.json
        return cmd_list(args)
    cfg = load(args)
    if args.logical or args.dump or args.from_dump or args.from_s3:
        return _restore_logical(cfg, args)
    target = make_target(
        timestamp=args.timestamp,
        xid=args.xid,
        lsn=args.lsn,
        name=args.name,
        latest=args.latest,
        immediate=args.immediate,
        exclusive=args.exclusive,
        timeline=args.target_timeline,
        action=args.target_action,
        zone=args.tz or cfg.restore.timezone,
    )
    port = args.port if args.port is not None else (cfg.postgres.port + 1 if args.target_dir else None)
    view, plan = plan_restore(
        cfg,
        target,
        backup=args.backup,
        target_dir=args.target_dir,
        port=port,
        only=args.repo,
        dry_run=args.dry_run,
        force=args.force,
        tablespace_map=parse_mapping(args.tablespace_map),
    )
    if args.dry_run:
        print(
            json.dumps(plan.to_json(), indent=2) if args.json else plan.render() + "\n\nDry run: nothing was changed."
        )
        return 0
    print(plan.render())
    if not args.yes:
        _confirm(cfg.cluster.name, plan)
    report = perform_restore(cfg, view, plan, on_progress=_progress_printer())
    print(json.dumps(report.to_json(), indent=2) if args.json else report.render())
    return 0 if report.reached_target else 3


def _restore_logical(cfg: Config, args: argparse.Namespace) -> int:
    import json

    from backend.restore.logical import find_dump, plan_logical, restore_logical

    if args.timestamp or args.xid or args.lsn or args.name or args.immediate:
        raise PgdrError("a logical dump restores to the moment it was taken: drop --timestamp/--xid/--lsn/--name")
    source = find_dump(cfg, name_or_path=args.from_dump or args.dump, s3_url=args.from_s3, latest=args.latest)
    plan = plan_logical(cfg, source, args.dbname)
    if args.dry_run:
        print(
            json.dumps(plan.to_json(), indent=2) if args.json else plan.render() + "\n\nDry run: nothing was changed."
        )
        return 0
    print(plan.render())
    if not args.yes:
        _confirm(
            cfg.cluster.name,
            f"database {plan.database}"
            if plan.exists
            else f"nothing (database {plan.database} does not exist: it is created)",
        )
    restore_logical(cfg, plan)
    print(f"restored {source.description} into {plan.database}; safety dump: {plan.safety_dump}")
    return 0


def _confirm(cluster: str, replaced: RestorePlan | str) -> None:
    """The operator types the cluster name; anything else, or no answer at all, cancels.

    The question says what happens to what exists: a restore beside replaces nothing, and saying it
    does would alarm for nothing; in place it names the directory replaced and where it is kept.
    """
    if isinstance(replaced, str):
        effect = f"This replaces {replaced}"
    elif not replaced.in_place:
        effect = (
            f"This creates a new cluster in {replaced.data_dir} (port {replaced.port}); "
            "the running cluster is left alone"
        )
    elif replaced.safety_copy is not None:
        effect = (
            f"This replaces the data directory {replaced.data_dir} (the server is stopped first); "
            f"the current one is kept as the safety copy {replaced.safety_copy}, never deleted"
        )
    else:
        effect = f"This replaces the data directory {replaced.data_dir}, empty or missing: there is nothing to keep"
    sys.stdout.write(f"\n{effect}. Type the cluster name ({cluster}) to restore, anything else cancels: ")
    sys.stdout.flush()
    answer = sys.stdin.readline().strip()
    if answer != cluster:
        raise PgdrError(
            f"cancelled: {cluster!r} was not typed, nothing was changed (--yes skips the question)", exit_code=1
        )


def cmd_verify(args: argparse.Namespace) -> int:
    import json

    from backend.verify.command import verify

    cfg = load(args)
    report = verify(cfg, args.name, deep=args.deep, full=args.full, only=args.repo, on_progress=_progress_printer())
    print(json.dumps(report.to_json(), indent=2) if args.json else report.render())
    return 0 if report.ok else 1


def cmd_expire(args: argparse.Namespace) -> int:
    import json

    from backend.retention import ExpireError, expire

    try:
        report = expire(load(args), dry_run=args.dry_run)
    except ExpireError as exc:
        print(json.dumps(exc.report.to_json(), indent=2) if args.json else exc.report.render())
        raise
    print(json.dumps(report.to_json(), indent=2) if args.json else report.render())
    return 0


def cmd_s3_lifecycle(args: argparse.Namespace) -> int:
    import json

    from backend.retention import lifecycle_policy

    print(json.dumps(lifecycle_policy(load(args)), indent=2))
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    import json

    from backend.daemon import read_status
    from backend.restore.marker import cluster_unfinished_restore

    cfg = load(args)
    status = read_status(cfg)
    unfinished = cluster_unfinished_restore(cfg.postgres.data_dir)
    if args.json:
        print(json.dumps({**status.to_json(), "unfinished_restore": unfinished}, indent=2))
    else:
        print(status.render() + (f"\n{unfinished}" if unfinished else ""))
    return 0 if status.healthy and not unfinished else 1


def cmd_daemon(args: argparse.Namespace) -> int:
    from backend.daemon import run_daemon

    return run_daemon(load(args), log_format=args.log_format)


def cmd_tui(args: argparse.Namespace) -> int:
    from pgdr_tui.app import run_app

    reattach = _restore_config(args)
    if reattach is not None:
        return run_app(load(reattach), demo=_is_demo(reattach.config))
    return run_app(load(args))


def _restore_config(args: argparse.Namespace) -> argparse.Namespace | None:
    """``pgdr`` with no config file anywhere, while a restore started from a console with ``--config`` (or
    from ``pgdr demo``) runs, or finished unwatched: its arguments, to open the console on it."""
    from backend.config import find_config

    if args.config or os.environ.get("PGDR_CONFIG") or find_config() is not None:
        return None
    from backend.statedir import state_dir
    from pgdr_tui.restorejob import RestoreJob

    job = RestoreJob.to_reattach(state_dir())
    if job is None:
        return None
    if job.config is None or not os.path.isfile(job.config):
        running = "is running" if job.result() is None else "finished"
        raise PgdrError(
            f"no config file found, and the restore of cluster {job.cluster} started from a console {running} "
            f"(pid {job.pid}, log {job.log}): open the console with the configuration it was started with"
        )
    print(f"pgdr: no config file found; opening the console on the restore of cluster {job.cluster}: {job.config}")
    import copy

    again = copy.copy(args)
    again.config = job.config
    return again


def _is_demo(config: str | None) -> bool:
    from pathlib import Path

    from backend import demo

    return config is not None and (Path(config).parent / demo.MARKER).is_file()


def cmd_demo(args: argparse.Namespace) -> int:
    from backend import demo

    if args.clean:
        print(demo.clean())
        return 0
    cfg = demo.build(on_progress=_progress_printer())
    if args.no_tui:
        print(cfg.source)
        return 0
    from pgdr_tui.app import run_app

    return run_app(cfg, demo=True)


def cmd_audit(args: argparse.Namespace) -> int:
    import json

    from backend.audit import read_entries

    for entry in read_entries(load(args), args.repo):
        if args.json:
            print(json.dumps(entry))
        else:
            print(f"{entry['time'][:19]}  {entry['user']}@{entry['host']}  {entry['action']}: {entry['result']}")
    return 0


def cmd_decrypt(args: argparse.Namespace) -> int:
    """All or nothing: the plaintext is staged in a temporary file and reaches the output only once
    every chunk is authenticated, so a damaged object leaves no output, not even a good beginning
    that a pipe or a script would take for the whole object."""
    import shutil
    import tempfile

    from backend.repository.encrypted import decrypt_object

    if bool(args.key) == bool(args.file):
        raise PgdrError("name exactly one object: a repository key, or --file PATH for a copy of one")
    cfg = load(args)
    if args.output == "-":
        with tempfile.TemporaryFile() as plaintext:
            decrypt_object(cfg, args.repo, plaintext, key=args.key, file=args.file)
            plaintext.seek(0)
            shutil.copyfileobj(plaintext, sys.stdout.buffer)
        return 0
    output = os.path.abspath(args.output)
    if os.path.lexists(output):
        raise PgdrError(f"cannot create {args.output}: it exists (pgdr never overwrites a file)")
    try:  # beside the output, so linking it there at the end copies nothing
        fd, staged = tempfile.mkstemp(dir=os.path.dirname(output), prefix=".pgdr-decrypt.")
    except OSError as exc:
        raise PgdrError(f"cannot create {args.output}: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as target:
            size = decrypt_object(cfg, args.repo, target, key=args.key, file=args.file)
            target.flush()
            os.fsync(target.fileno())
        try:
            os.link(staged, output)
        except OSError as exc:
            raise PgdrError(f"cannot create {args.output}: {exc.strerror} (pgdr never overwrites a file)") from None
    finally:
        os.unlink(staged)
    print(f"wrote {size} bytes to {args.output}", file=sys.stderr)
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    import json

    cfg = load(args)
    if args.json:
        print(json.dumps(cfg.to_dict(), indent=2))
    else:
        import tomli_w

        print(f"# effective configuration from {cfg.where()} and the environment (secrets masked)")
        print(tomli_w.dumps(cfg.to_dict()))
    return 0


def _print_table(rows: list[list[str]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  " + "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


#: Progress steps whose counts are bytes (the rest count segments, files or steps).
BYTE_STEPS = frozenset({"backup", "dump", "base backup"})


def _progress_printer() -> Callable[[Progress], None]:
    """A progress line on a terminal, rewritten in place; nothing when output goes to a file or a log.

    A step's line ends (a newline) when its count reaches the total, or at once when it has none. A
    count that goes on past it (the total was an estimate: pg_basebackup's, the files a tar holds)
    rewrites that same line above, not a new line per update, and drops the "of ~total" it passed.
    """
    if not sys.stderr.isatty():
        return lambda _: None
    import humanize

    finished: list[tuple[str, str]] = []  # the step whose line was ended last

    def show(p: Progress) -> None:
        if p.step in BYTE_STEPS:
            total = f" of ~{humanize.naturalsize(p.total)}" if p.total and p.done < p.total else ""
            line = f"{p.message}: {humanize.naturalsize(p.done)}{total}"
        else:
            count = f" ({p.done}/{p.total})" if p.total else ""
            line = f"{p.message}{count}"
        key = (p.step, p.message)
        if finished and finished[-1] == key:
            sys.stderr.write(f"\x1b[F\r{line}\x1b[K\n")  # the line above, once more
        else:
            sys.stderr.write(f"\r{line}\x1b[K")
            # A step without a count ("starting the server") says what is done now: a line of its own.
            if p.total is None or p.done >= p.total:
                sys.stderr.write("\n")
                finished[:] = [key]
        sys.stderr.flush()

    return show
