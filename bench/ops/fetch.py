"""Operation 10 (issue 19): replay through a plain ``restore_command``, one process per WAL file, as
PostgreSQL runs it when nothing but the server drives recovery (a log-shipping standby, a restore done
by hand from PostgreSQL's documentation, a container recovering a restored volume).

Set-up, on a small cluster of its own (so the base backup is small and the replay is what is timed):
its archive_command stores every segment three ways at once, ``cp`` into a plain directory,
``pgbackrest archive-push`` (zst) and ``pgdr wal-push`` (a local repository, zstd); one
``pg_basebackup -X none`` is taken, then ``pgbench -i`` rounds (which drop and recreate their tables,
so the database stays small while the WAL grows) write the wanted number of real segments.

Each timed figure: a copy of the base backup with ``recovery.signal`` (a PITR to the end of the
archive), ``archive_mode = off`` and the tool's ``restore_command``; from ``pg_ctl start`` until
``pg_is_in_recovery()`` is false (recovery ran to the end of the archive, asked for the next segment
and the next timeline's history file, found neither, and promoted). The tools, in turn per round (the
one that goes first rotating), each once the helpers of the run before (pgdr's prefetcher, pgBackRest's
async process) have left and the cores are idle (waited for 20 s at most: a shared machine may never be):

* ``cp <plain dir>/%f %p``: the floor (no decompression, no verification);
* ``pgbackrest archive-get %f "%p"``, synchronous;
* the same with ``archive-async=y``, ``process-max=2`` (its queue of prefetched segments, default size);
* ``pgdr --config C wal-fetch %f %p``, its default configuration.

Per segment: the total divided by the segments PostgreSQL restored (its "restored log file" lines).

10b, the restore_command's own cost: the same files fetched back to back by each command, with no server
(a driver deletes %p and runs ``/bin/sh -c`` in a copy of the base backup, as the startup process does),
so replay neither hides nor adds to it.
"""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path

from bench.cluster import SEGMENT_SIZE, Cluster
from bench.context import Context
from bench.ops.backup import stop_server
from bench.proc import PG_BIN, BenchError, chown_to_server, run, wait_quiet
from bench.report import Measure, Row, fmt, median
from bench.workspace import CLUSTER_NAME, free_port, toml_str

#: Real segments replayed (issue 19: 300).
SEGMENTS = 300
#: One ``pgbench -i`` round: about 15 segments of WAL.
ROUND_SCALE = 20
STANZA = "fetch"
DATABASE = "walfetch"
TOOLS = ("cp", "pgbackrest", "pgbackrest-async", "pgdr")
LABELS = {  # no parentheses: the report names a tool by its label up to the first " ("
    "cp": "cp from a plain directory",
    "pgbackrest": "pgbackrest archive-get, sync",
    "pgbackrest-async": "pgbackrest archive-get, archive-async with process-max 2",
    "pgdr": "pgdr wal-fetch %f %p",
}
SHORT = {"cp": "cp", "pgbackrest": "pgBackRest sync", "pgbackrest-async": "pgBackRest async", "pgdr": "pgdr"}
#: 10b's driver, run as the server user: %p deleted, the command run through the shell, as PostgreSQL does.
LOOP = """
import json, os, subprocess, sys, time
command, data, names = sys.argv[1], sys.argv[2], sys.argv[3:]
target = os.path.join(data, "pg_wal", "RECOVERYXLOG")
times = []
for name in names:
    if os.path.exists(target):
        os.unlink(target)
    start = time.perf_counter()
    shell = command.replace("%f", name).replace("%p", "pg_wal/RECOVERYXLOG")
    code = subprocess.call(["/bin/sh", "-c", shell], cwd=data)
    times.append(time.perf_counter() - start)
    if code != 0 or os.path.getsize(target) != int(os.environ["SEGMENT_SIZE"]):
        sys.exit(f"{name}: exit {code}")
print(json.dumps(times))
"""
_RESTORED = re.compile(r'restored log file "([0-9A-F]{24})" from archive')
_SEGMENT = re.compile(r"^[0-9A-F]{24}$")


def op_fetch(ctx: Context) -> None:
    ws = ctx.ws
    root = ws.mkdir("fetch")
    plain = ws.mkdir("fetch/plain")
    pgdr_repo = ws.mkdir("fetch/pgdr-repo")
    for sub in ("repo", "log", "lock", "spool"):
        ws.mkdir(f"fetch/pgbackrest/{sub}")
    source = Cluster(root / "source", free_port(), ws.env)
    source.init(settings={"max_wal_size": "'4GB'", "checkpoint_timeout": "'1h'"})
    source.start()
    ctx.results.machine.setdefault("postgresql", source.pg_version().split()[0])
    servers: list[Path] = []
    try:
        pgdr_conf = ws.write_private(
            "fetch/pgdr.toml",
            f"[cluster]\nname = {toml_str(CLUSTER_NAME)}\n\n[postgres]\nhost = {toml_str(str(source.socket_dir))}\n"
            f'port = {source.port}\nuser = "postgres"\ndbname = "postgres"\n'
            f"data_dir = {toml_str(str(source.data_dir))}\nbin_dir = {toml_str(str(PG_BIN))}\n"
            f"\n[local]\npath = {toml_str(str(pgdr_repo))}\n",
        )
        pgbr_sync = _pgbackrest_config(ctx, source, "sync", archive_async=False)
        _pgbackrest_config(ctx, source, "async", archive_async=True)
        run([ws.pgbackrest, f"--config={pgbr_sync}", f"--stanza={STANZA}", "stanza-create"], env=ws.env)
        archive = (
            f"test ! -f {plain}/%f && cp %p {plain}/%f"
            f" && {ws.pgbackrest} --config={pgbr_sync} --stanza={STANZA} archive-push %p"
            f" && {ws.pgdr} --config {pgdr_conf} wal-push %p"
        )
        source.set_archive_command(archive)
        source.sql(f"CREATE DATABASE {DATABASE}")
        base = root / "base"
        ctx.log("op 10: pg_basebackup -X none")
        run(
            [
                str(PG_BIN / "pg_basebackup"),
                "-h",
                str(source.socket_dir),
                "-p",
                str(source.port),
                "-U",
                "postgres",
                "-D",
                str(base),
                "-X",
                "none",
                "-c",
                "fast",
                "--no-sync",
            ],
            env=ws.env,
            what="pg_basebackup",
        )
        start_lsn = source.current_lsn()
        rounds = 0
        while (source.current_lsn() - start_lsn) // SEGMENT_SIZE < SEGMENTS:
            rounds += 1
            ctx.log(f"op 10: WAL for the replay: pgbench -i -s {ROUND_SCALE} (round {rounds})")
            source.pgbench_init(ROUND_SCALE, dbname=DATABASE)
        source.switch_wal()
        source.wait_archive_idle(timeout=3600)
        source.stop()
        _wait_helpers(ctx)

        samples: dict[str, list[float]] = {tool: [] for tool in TOOLS}
        restored: dict[str, list[int]] = {tool: [] for tool in TOOLS}
        for i in range(ctx.settings.repeats):
            order = TOOLS[i % len(TOOLS) :] + TOOLS[: i % len(TOOLS)]
            for tool in order:
                target = root / f"replay-{tool}"
                servers.append(target)
                ctx.log(f"op 10: round {i + 1}/{ctx.settings.repeats}: replay through {LABELS[tool]}")
                took, files = _replay(ctx, base, target, _restore_command(ctx, tool, target, plain, pgdr_conf))
                samples[tool].append(took)
                restored[tool].append(files)
                ctx.log(f"op 10: {took:.2f} s, {files} files restored ({took / max(files, 1) * 1000:.1f} ms each)")
        segments = max(max(counts) for counts in restored.values())
        for tool, counts in restored.items():
            if min(counts) < segments:
                raise BenchError(f"{LABELS[tool]} restored {min(counts)} of {segments} segments")
        names = sorted(p.name for p in plain.iterdir() if _SEGMENT.match(p.name))
        loops: dict[str, list[list[float]]] = {tool: [] for tool in TOOLS}
        for i in range(ctx.settings.repeats):
            for tool in TOOLS[i % len(TOOLS) :] + TOOLS[: i % len(TOOLS)]:
                ctx.log(f"op 10b: round {i + 1}/{ctx.settings.repeats}: {len(names)} files through {LABELS[tool]}")
                loops[tool].append(
                    _loop(ctx, base, root / f"loop-{tool}", tool, plain=plain, pgdr_conf=pgdr_conf, names=names)
                )
                ctx.log(f"op 10b: {sum(loops[tool][-1]):.2f} s")
    finally:
        for data in servers:
            stop_server(ctx, data)
        source.stop("immediate")

    per_segment = {tool: [s / segments for s in samples[tool]] for tool in TOOLS}
    totals = {tool: [sum(run) for run in runs] for tool, runs in loops.items()}
    per_call = {tool: median([t for run in runs for t in run]) or 0.0 for tool, runs in loops.items()}
    ctx.results.details["fetch"] = {
        "segments": segments,
        "pgbench_rounds": rounds,
        "replay_s": samples,
        "restored": restored,
        "replay_per_segment_ms": {t: [round(v * 1000, 2) for v in values] for t, values in per_segment.items()},
        "loop_files": len(names),
        "loop_total_s": totals,
        "loop_per_call_median_ms": {tool: round(v * 1000, 2) for tool, v in per_call.items()},
    }

    def measure(tool: str, figures: dict[str, list[float]], count: int) -> Measure:
        total = median(figures[tool]) or 0.0
        return Measure(LABELS[tool], figures[tool], text=f"{fmt(total, 's')} ({total / count * 1000:.1f} ms/seg)")

    per = ", ".join(f"{SHORT[t]} {(median(per_segment[t]) or 0) * 1000:.1f} ms" for t in TOOLS)
    note = (
        f"PITR of a copy of one `pg_basebackup -X none` to the end of {segments} real segments (pgbench -i "
        f"-s {ROUND_SCALE}, {rounds} rounds), `pg_ctl start` until promoted, one restore_command process per "
        f"file as PostgreSQL runs it, each server as the server user; the tools in turn, {ctx.settings.repeats} "
        f"rounds. Per segment restored: {per}"
    )
    for key, tool, target in (
        ("fetch_vs_pgbackrest_async", "pgbackrest-async", 1.0),
        ("fetch_vs_cp", "cp", 1.5),
        ("fetch_vs_pgbackrest", "pgbackrest", None),
    ):
        ctx.results.add(
            Row(
                key=key,
                operation=f"10. replay of {segments} segments through a plain restore_command, vs {SHORT[tool]}",
                pgdr=measure("pgdr", samples, segments),
                anchor=measure(tool, samples, segments),
                target=target,
                note=note if key == "fetch_vs_pgbackrest_async" else "",
            )
        )
    calls = ", ".join(f"{SHORT[t]} {per_call[t] * 1000:.1f} ms" for t in TOOLS)
    for key, tool in (("fetch_loop_vs_pgbackrest_async", "pgbackrest-async"), ("fetch_loop_vs_cp", "cp")):
        ctx.results.add(
            Row(
                key=key,
                operation=f"10b. the same {len(names)} files fetched back to back, no server, vs {SHORT[tool]}",
                pgdr=measure("pgdr", totals, len(names)),
                anchor=measure(tool, totals, len(names)),
                note=(
                    "the restore_command's own cost, without replay: a driver deletes %p and runs the command "
                    f"through /bin/sh in a copy of the base backup, file after file. Median per call: {calls}"
                )
                if tool == "pgbackrest-async"
                else "",
            )
        )


def _pgbackrest_config(ctx: Context, source: Cluster, name: str, *, archive_async: bool) -> Path:
    base = ctx.ws.root / "fetch" / "pgbackrest"
    lines = [
        "[global]",
        f"repo1-path={base / 'repo'}",
        f"log-path={base / 'log'}",
        f"lock-path={base / 'lock'}",
        f"spool-path={base / 'spool'}",
        "log-level-console=warn",
        "log-level-file=off",
        "compress-type=zst",
        "process-max=2",
        f"archive-async={'y' if archive_async else 'n'}",
        "",
        f"[{STANZA}]",
        f"pg1-path={source.data_dir}",
        f"pg1-socket-path={source.socket_dir}",
        f"pg1-port={source.port}",
        "pg1-user=postgres",
        "",
    ]
    return ctx.ws.write_private(f"fetch/pgbackrest-{name}.conf", "\n".join(lines))


def _restore_command(ctx: Context, tool: str, target: Path, plain: Path, pgdr_conf: Path) -> str:
    ws = ctx.ws
    if tool == "cp":
        return f"cp {plain}/%f %p"
    if tool == "pgdr":
        return f"{ws.pgdr} --config {pgdr_conf} wal-fetch %f %p"
    conf = ws.root / "fetch" / f"pgbackrest-{'async' if tool == 'pgbackrest-async' else 'sync'}.conf"
    # pgBackRest resolves a relative %p against pg1-path: the server being restored.
    return f'{ws.pgbackrest} --config={conf} --stanza={STANZA} --pg1-path={target} archive-get %f "%p"'


def _replay(ctx: Context, base: Path, target: Path, restore_command: str) -> tuple[float, int]:
    """Recover a copy of ``base`` to the end of the archive; (seconds until promoted, files restored)."""
    ws = ctx.ws
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(base, target, symlinks=True)
    chown_to_server(target, recursive=True)
    target.chmod(0o700)
    if "pgbackrest-async.conf" in restore_command:  # an empty queue: each round fetches everything
        shutil.rmtree(ws.root / "fetch" / "pgbackrest" / "spool", ignore_errors=True)
        ws.mkdir("fetch/pgbackrest/spool")
    port = free_port()
    escaped = restore_command.replace("'", "''")
    with (target / "postgresql.auto.conf").open("a") as conf:
        conf.write(
            f"port = {port}\narchive_mode = off\nrestore_command = '{escaped}'\n"
            "log_line_prefix = '%m [%p] '\nmax_wal_size = '4GB'\n"
        )
    (target / "recovery.signal").touch()
    chown_to_server(target, recursive=True)
    log = target.parent / f"{target.name}.log"
    log.unlink(missing_ok=True)
    probe = Cluster(target.parent, port, ws.env)
    probe.data_dir = target
    probe.socket_dir = ws.root / "fetch" / "source" / "sock"
    _wait_helpers(ctx)
    wait_quiet(timeout=20)  # not longer: on a shared machine the cores may never be idle
    t0 = time.perf_counter()
    started = run(
        [str(PG_BIN / "pg_ctl"), "-D", str(target), "-l", str(log), "-w", "-t", "900", "start"],
        env=ws.env,
        check=False,
    )
    deadline = time.monotonic() + 900
    while started.ok:
        try:
            if not probe.sql("SELECT pg_is_in_recovery()")[0][0]:
                break
        except Exception:
            pass
        if time.monotonic() > deadline:
            break
        time.sleep(0.005)
    else:
        raise BenchError(f"the server did not start ({restore_command}): {_tail(log)}")
    if time.monotonic() > deadline:
        raise BenchError(f"the server did not promote ({restore_command}): {_tail(log)}")
    took = time.perf_counter() - t0
    stop_server(ctx, target)
    files = len(set(_RESTORED.findall(log.read_text(errors="replace"))))
    shutil.rmtree(target, ignore_errors=True)
    return took, files


def _loop(
    ctx: Context, base: Path, scratch: Path, tool: str, *, plain: Path, pgdr_conf: Path, names: list[str]
) -> list[float]:
    """Seconds each call of ``tool``'s restore_command took, fetching ``names`` in order into ``scratch``."""
    import json
    import sys

    ws = ctx.ws
    if scratch.exists():
        shutil.rmtree(scratch)
    shutil.copytree(base, scratch, symlinks=True)  # pgBackRest reads pg_control from pg1-path
    chown_to_server(scratch, recursive=True)
    if tool == "pgbackrest-async":
        shutil.rmtree(ws.root / "fetch" / "pgbackrest" / "spool", ignore_errors=True)
        ws.mkdir("fetch/pgbackrest/spool")
    _wait_helpers(ctx)
    wait_quiet(timeout=20)
    command = _restore_command(ctx, tool, scratch, plain, pgdr_conf)
    try:
        result = run(
            [sys.executable, "-c", LOOP, command, str(scratch), *names],
            env={**ws.env, "SEGMENT_SIZE": str(SEGMENT_SIZE)},
            timeout=3600,
            what=f"{len(names)} calls of {command}",
        )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)  # also sends pgdr's prefetcher away: its folder is gone
    return [float(t) for t in json.loads(result.stdout)]


def _wait_helpers(ctx: Context, timeout: float = 120) -> None:
    """Until no helper of this op runs (pgdr's prefetcher and uploaders, pgBackRest's async process):
    one replay's leftovers must not share the cores with the next one. The push server only idles."""
    mine = str(ctx.ws.root / "fetch")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        busy = [c for c in _cmdlines() if mine in c and " wal-pushd" not in c and not _is_server(c)]
        if not busy:
            return
        time.sleep(0.1)


def _cmdlines() -> list[str]:
    found: list[str] = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                found.append((entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
            except OSError:
                continue
    return found


def _tail(log: Path) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-15:])
    except OSError:
        return f"{log} is missing"


def _is_server(cmdline: str) -> bool:
    return cmdline.split(" ", 1)[0].rsplit("/", 1)[-1] == "postgres"
