"""``python -m bench [--full] [--only OPS] [...]``: run the suite and write bench/results/latest.*"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from datetime import UTC, datetime
from pathlib import Path

from bench.context import Context, Settings
from bench.report import Results

OPS = ("wal", "s3", "async", "backup", "random", "incr", "replay", "fetch", "catalog", "tui")

QUICK = Settings()
FULL = Settings(
    mode="full",
    scale=70,
    segments=60,
    s3_segments=30,
    repeats=3,
    random_mb=1024,
    catalog_timeout=900.0,
)


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description="pgdr against pgBackRest, barman-cloud and pg_basebackup, measured in one run.",
    )
    p.add_argument("--full", action="store_true", help="issue 6's sizes: pgbench scale 70 (1.1 GB), 60 segments, ...")
    p.add_argument("--only", help=f"comma-separated subset of {','.join(OPS)} (default: all)")
    p.add_argument("--scale", type=int, help="pgbench scale for the bulk loads and the backup dataset")
    p.add_argument("--segments", type=int, help="WAL segments per local push series (plus one warm-up)")
    p.add_argument("--s3-segments", type=int, help="WAL segments per S3 push series (plus one warm-up)")
    p.add_argument("--repeats", type=int, help="backups and restores per tool")
    p.add_argument("--random-mb", type=int, help="size of the random-bytes dataset")
    p.add_argument("--catalog-backups", type=int, help="base backups in the synthetic repository")
    p.add_argument("--catalog-segments", type=int, help="WAL segments in the synthetic repository")
    p.add_argument("--catalog-timeout", type=float, help="seconds before a catalog command counts as too slow")
    p.add_argument("--results", default=str(Path(__file__).parent / "results"), help="where latest.json/.md go")
    p.add_argument("--workdir", help="parent of the temp work dir (default /tmp; must be enterable by postgres)")
    p.add_argument("--keep", action="store_true", help="keep the work dir (clusters stopped) for inspection")
    p.add_argument(
        "--update-docs",
        action="store_true",
        help="also put the table in docs/bench.md (the quick or full section, by mode)",
    )
    return p.parse_args(argv)


def settings_from(args: argparse.Namespace) -> Settings:
    base = FULL if args.full else QUICK
    s = Settings(**base.to_json())
    for name in (
        "scale",
        "segments",
        "s3_segments",
        "repeats",
        "random_mb",
        "catalog_backups",
        "catalog_segments",
        "catalog_timeout",
    ):
        value = getattr(args, name)
        if value is not None:
            setattr(s, name, value)
    return s


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if os.geteuid() != 0:
        print("bench: run as root (the clusters run as the postgres user, via setuid)", file=sys.stderr)
        return 2
    only = set(args.only.split(",")) if args.only else set(OPS)
    unknown = only - set(OPS)
    if unknown:
        print(
            f"bench: unknown operation(s) {', '.join(sorted(unknown))}: choose from {', '.join(OPS)}", file=sys.stderr
        )
        return 2
    settings = settings_from(args)

    # Imports that need the venv (psycopg, backend) come after the argument check.
    from bench.cluster import require_server_binaries
    from bench.machine import describe
    from bench.proc import BenchError, run
    from bench.workspace import Workspace

    results = Results(machine=describe(), settings={**settings.to_json(), "only": sorted(only)})
    require_server_binaries()
    ws = Workspace(keep=args.keep, parent=args.workdir)
    ctx = Context(ws, results, settings)
    ctx.log(f"work dir {ws.root}; {settings.mode} mode; operations: {', '.join(o for o in OPS if o in only)}")
    try:
        ws.check_tools(
            need_pgbackrest=bool(only & {"wal", "async", "backup", "random", "incr", "fetch"}), need_barman="s3" in only
        )
        needs_cluster = bool(only & {"wal", "s3", "async", "backup", "random", "incr", "replay"})
        if needs_cluster:
            ws.cluster.init()
            ws.cluster.start()
            ws.cluster.sql("CREATE DATABASE bench")
            results.machine["postgresql"] = ws.cluster.pg_version().split()[0]
            if ws.pgbackrest:
                conf = ws.pgbackrest_config("pgbackrest.conf", archive_async=False)
                run(ws.pgbackrest_argv(conf, "stanza-create"), env=ws.env, what="pgbackrest stanza-create")
        segments = []
        if only & {"wal", "s3"}:
            from bench.ops.wal import collect_segments

            wanted = 1 + max(settings.segments if "wal" in only else 0, settings.s3_segments if "s3" in only else 0)
            segments = collect_segments(ctx, wanted)
            ctx.log(f"{len(segments)} real WAL segments collected")

        def step(name: str, fn, *fn_args) -> None:  # type: ignore[no-untyped-def]
            from bench.machine import loadavg

            results.details.setdefault("loadavg_at_step_start", {})[name] = loadavg()
            try:
                fn(ctx, *fn_args)
            except (BenchError, Exception) as exc:
                results.errors.append(f"{name}: {exc}")
                ctx.log(f"{name} FAILED: {exc}")
                traceback.print_exc()

        if "wal" in only:
            from bench.ops.wal import op_startup_floor, op_wal_push_local

            step("op 1 (WAL push, local)", op_wal_push_local, segments[: settings.segments + 1])
            step("diagnostics (start-up floors)", op_startup_floor, segments)
        if "s3" in only:
            from bench.ops.wal import op_wal_push_s3

            step("op 3 (WAL push, S3)", op_wal_push_s3, segments[: settings.s3_segments + 1])
        if "async" in only:
            from bench.ops.bulk import op_bulk

            step("op 2 (WAL push, async / bulk load)", op_bulk)
        if "backup" in only:
            from bench.ops.backup import op_backup_restore

            step("ops 4/5 (backup/restore, pgbench)", op_backup_restore, "pgbench")
        if "random" in only:
            from bench.ops.backup import op_backup_restore

            step("ops 4/5 (backup/restore, random bytes)", op_backup_restore, "random")
        if "incr" in only:
            from bench.ops.incremental import op_incremental

            step("op incr (incremental backups on PostgreSQL 18, chain restore)", op_incremental)
        if "replay" in only:
            from bench.ops.replay import op_replay

            step("op 7 (PITR replay, WAL from S3 vs local)", op_replay)
        if "fetch" in only:
            from bench.ops.fetch import op_fetch

            step("op 10 (replay through a plain restore_command)", op_fetch)
        if "catalog" in only:
            from bench.ops.catalog import op_catalog

            step("op 6 (catalog at scale)", op_catalog)
        if "tui" in only:
            from bench.ops.tui import op_tui

            step("op tui (the console at scale)", op_tui)
    except KeyboardInterrupt:
        results.errors.append("interrupted")
        ctx.log("interrupted: cleaning up")
    except Exception as exc:
        results.errors.append(f"set-up: {exc}")
        traceback.print_exc()
    finally:
        ctx.log("cleaning up" + (f" (keeping {ws.root})" if args.keep else ""))
        ws.close()
        results.finished = datetime.now(UTC).isoformat(timespec="seconds")
        from bench.machine import loadavg

        results.machine["loadavg_at_end"] = loadavg()
        from bench.findings import derive

        results.findings = derive(results)
        js, md = results.write(Path(args.results))
        if args.update_docs and not results.errors:
            update_docs(results, settings.mode)
        print()
        print("Machine: " + results.machine_line())
        print(results.text_table())
        for error in results.errors:
            print(f"ERROR {error}")
        print(f"\nwrote {js} and {md}")
    return 1 if results.errors else 0


DOCS = Path(__file__).resolve().parents[1] / "docs" / "bench.md"


def update_docs(results: Results, mode: str) -> None:
    """Replace the text between ``<!-- bench:MODE -->`` and ``<!-- /bench:MODE -->`` in docs/bench.md."""
    start, end = f"<!-- bench:{mode} -->", f"<!-- /bench:{mode} -->"
    text = DOCS.read_text()
    if start not in text or end not in text:
        print(f"bench: {DOCS} has no {start} ... {end} section: not updated", file=sys.stderr)
        return
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    DOCS.write_text(f"{head}{start}\n{results.markdown()}{end}{tail}")
    print(f"updated the {mode} section of {DOCS}")


if __name__ == "__main__":
    sys.exit(main())
