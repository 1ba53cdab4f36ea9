"""Operations 4 and 5: full backup and full restore, on the pgbench database and on random bytes.

Backup, per round and in turn: ``pgdr backup`` (into a local repository: the server compresses with
zstd on every core and pg_basebackup writes into the repository, as the anchor below does, plus
pgdr's checksums and manifest); ``pgbackrest backup --type=full`` (process-max 2, zst,
start-fast); ``pg_basebackup -Ft -X none --checkpoint=fast --compress=server-zstd:workers=2`` into a
fresh directory. All three wait for the backup's last WAL segment to be archived (the archive_command
pushes to both pgdr's and pgBackRest's repository), so they do the same work on the server side.

Restore, per round:
* ``pgdr restore ... --dry-run``: the planning alone (catalog, WAL index, plan).
* ``pgdr restore --immediate --backup NAME --target-dir DIR --port P --yes``: plan (catalog, WAL index),
  unpack, recovery settings, ``pg_ctl start``, replay to consistency (the restore's own prefetcher has
  the backup's WAL verified before the server asks; the server's restore_command, for this start, is
  a bare interpreter that takes from it, ``pgdr wal-fetch`` being its fallback), promotion, report;
  the command returns when the server is up and promoted (pg_control watched every 5 ms, then
  confirmed with ``pg_is_in_recovery()``).
* pgdr's unpack alone (``backend.restore.unpack.restore_base_backup`` in a fresh process): what
  ``pgbackrest restore`` does.
* ``pgbackrest restore --type=immediate``: files only (the server is not started), then, timed
  separately, ``pg_ctl start`` and replay through ``pgbackrest archive-get`` until promoted.
* floor: ``tar -I zstd -xf base.tar.zst && sync`` of pg_basebackup's own tar.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

from bench.cluster import Cluster
from bench.context import Context
from bench.ops.wal import wait_pgdr_background
from bench.proc import PG_BIN, REPO_ROOT, VENV_BIN, BenchError, chown_to_server, run
from bench.report import Measure, Row, median
from bench.workspace import free_port

UNPACK = """
import sys
from pathlib import Path
from backend.manifest import BackupManifest
from backend.repository.local import LocalRepository
from backend.restore.unpack import restore_base_backup
repo = LocalRepository(sys.argv[1], sys.argv[2])
manifest = BackupManifest.from_json(repo.get(f"backups/{sys.argv[3]}/manifest.json"), "bench")
restore_base_backup(manifest, [repo], Path(sys.argv[4]))
"""


def fresh_dir(ctx: Context, name: str) -> Path:
    path = ctx.ws.restore / name
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(mode=0o700)
    chown_to_server(path)
    return path


def remove(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def stop_server(ctx: Context, data: Path) -> None:
    run([str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"], env=ctx.ws.env, check=False)


def prepare_pgbench(ctx: Context) -> None:
    cluster = ctx.ws.cluster
    exists = cluster.sql("SELECT 1 FROM pg_database WHERE datname = 'bench'")
    if not exists or not cluster.sql("SELECT to_regclass('pgbench_accounts') IS NOT NULL", dbname="bench")[0][0]:
        cluster.set_archive_command("/bin/true")
        if not exists:
            cluster.sql("CREATE DATABASE bench")
        ctx.log(f"dataset: pgbench -i -s {ctx.settings.scale}")
        cluster.pgbench_init(ctx.settings.scale)
        cluster.wait_archive_idle()


def prepare_random(ctx: Context) -> None:
    """A database of random bytes (incompressible), replacing the pgbench one."""
    cluster = ctx.ws.cluster
    cluster.set_archive_command("/bin/true")  # the load's own WAL is not part of what is measured
    cluster.sql("DROP DATABASE IF EXISTS bench")
    cluster.sql("DROP DATABASE IF EXISTS rnd")
    cluster.sql("CREATE DATABASE rnd")
    row_bytes = 1800  # below the TOAST threshold: stored inline and never compressed
    rows = ctx.settings.random_mb * 1024 * 1024 // row_bytes
    ctx.log(f"dataset: {ctx.settings.random_mb} MB of random bytes ({rows} rows)")
    with cluster.connect("rnd") as conn:
        conn.execute("CREATE TABLE random_bytes (id bigserial PRIMARY KEY, payload bytea NOT NULL)")
        with conn.cursor() as cur, cur.copy("COPY random_bytes (payload) FROM STDIN") as copy:
            for _ in range(rows):
                copy.write_row((os.urandom(row_bytes),))
        conn.execute("VACUUM ANALYZE random_bytes")
        conn.execute("CHECKPOINT")
    cluster.wait_archive_idle()


def archive_to_both(ctx: Context) -> tuple[Path, Path]:
    ws = ctx.ws
    pgdr_conf = ws.pgdr_local_config()
    pgbr_conf = ws.pgbackrest_config("pgbackrest.conf", archive_async=False)
    ws.cluster.set_archive_command(
        f"{ws.pgdr_archive_command(pgdr_conf)} && {ws.pgbackrest_archive_command(pgbr_conf)}"
    )
    ws.cluster.switch_wal()
    ws.cluster.wait_archive_idle()
    wait_pgdr_background(ctx)
    return pgdr_conf, pgbr_conf


def op_backup_restore(ctx: Context, dataset: str) -> None:
    ws, cluster, repeats = ctx.ws, ctx.ws.cluster, ctx.settings.repeats
    if dataset == "pgbench":
        prepare_pgbench(ctx)
    else:
        prepare_random(ctx)
    pgdr_conf, pgbr_conf = archive_to_both(ctx)
    db_bytes = cluster.database_size()
    label = f"{dataset}, {db_bytes / 1e9:.2f} GB" if db_bytes > 1e9 else f"{dataset}, {db_bytes / 1e6:.0f} MB"

    backups: dict[str, list[dict[str, Any]]] = {"pgdr": [], "pgbackrest": [], "pg_basebackup": []}
    pgdr_names: list[str] = []
    basebackup_dir = ws.restore / f"basebackup-{dataset}"
    for i in range(repeats):
        ctx.log(f"op 4 ({dataset}): round {i + 1}/{repeats}: pgdr backup")
        r = run([ws.pgdr, "--config", str(pgdr_conf), "backup", "--json"], env=ws.env, timeout=3600, what="pgdr backup")
        manifest = json.loads(r.stdout)
        pgdr_names.append(manifest["name"])
        backups["pgdr"].append(_sample(r, stored=manifest.get("stored_bytes"), raw=manifest.get("size_bytes")))
        wait_pgdr_background(ctx)

        ctx.log(f"op 4 ({dataset}): round {i + 1}/{repeats}: pgbackrest backup --type=full")
        r = run(
            ws.pgbackrest_argv(pgbr_conf, "--type=full", "backup"), env=ws.env, timeout=3600, what="pgbackrest backup"
        )
        backups["pgbackrest"].append(_sample(r))

        ctx.log(f"op 4 ({dataset}): round {i + 1}/{repeats}: pg_basebackup server-zstd")
        remove(basebackup_dir)
        r = run(
            [
                str(PG_BIN / "pg_basebackup"),
                "-h",
                str(cluster.socket_dir),
                "-p",
                str(cluster.port),
                "-U",
                "postgres",
                "-D",
                str(basebackup_dir),
                "-Ft",
                "-X",
                "none",
                "--checkpoint=fast",
                "--compress=server-zstd:workers=2",
            ],
            env=ws.env,
            timeout=3600,
            what="pg_basebackup",
        )
        stored = sum(p.stat().st_size for p in basebackup_dir.iterdir())
        backups["pg_basebackup"].append(_sample(r, stored=stored))
    info = json.loads(run(ws.pgbackrest_argv(pgbr_conf, "--output=json", "info"), env=ws.env).stdout)
    pgbr_sets = info[0]["backup"]
    for sample, entry in zip(backups["pgbackrest"], pgbr_sets[-repeats:], strict=False):
        sample["stored"] = entry["info"]["repository"].get("delta") or entry["info"]["repository"].get("size")
        sample["raw"] = entry["info"].get("size")
        sample["label"] = entry["label"]

    elapsed = {k: [s["elapsed"] for s in v] for k, v in backups.items()}
    rss_mb = max(s["rss_kb"] for s in backups["pgdr"]) / 1024
    cpu = {k: median([s["cpu"] for s in v]) for k, v in backups.items()}
    ratio_of = {
        k: (v[-1].get("raw") or db_bytes) / v[-1]["stored"] if v and v[-1].get("stored") else None
        for k, v in backups.items()
    }
    ctx.results.details[f"backup_{dataset}"] = {
        "database_bytes": db_bytes,
        "samples": backups,
        "cpu_median_s": cpu,
        "compression_ratio": ratio_of,
        "pgdr_peak_rss_mb": rss_mb,
    }
    cpu_note = ", ".join(f"{k} {v:.1f} s" for k, v in cpu.items() if v is not None)
    ctx.results.add(
        Row(
            key=f"backup_{dataset}_vs_pgbackrest",
            operation=f"4. full backup ({label})",
            pgdr=Measure("pgdr backup", elapsed["pgdr"]),
            anchor=Measure("pgbackrest backup --type=full (process-max 2, zst)", elapsed["pgbackrest"]),
            target=0.5,
            note=(
                f"median of {repeats}; pgdr peak RSS {rss_mb:.0f} MB (wait4 maxrss: pgdr or its pg_basebackup child); "
                f"CPU time (user+sys of the command and its children): {cpu_note}; stored "
                + ", ".join(f"{k} {v:.1f}x" for k, v in ratio_of.items() if v)
                + " smaller than the data"
            ),
        )
    )
    ctx.results.add(
        Row(
            key=f"backup_{dataset}_vs_pg_basebackup",
            operation=f"4b. full backup ({label}) vs pg_basebackup itself",
            pgdr=Measure("pgdr backup", elapsed["pgdr"]),
            anchor=Measure("pg_basebackup -Ft --compress=server-zstd:workers=2", elapsed["pg_basebackup"]),
            target=1.2,
        )
    )
    ctx.results.details[f"backup_{dataset}"]["pgdr_peak_rss_mb"] = rss_mb

    op_restore(
        ctx,
        dataset=dataset,
        label=label,
        pgdr_conf=pgdr_conf,
        pgbr_conf=pgbr_conf,
        pgdr_backup=pgdr_names[-1],
        basebackup=basebackup_dir,
    )
    remove(basebackup_dir)


def _sample(r: Any, **extra: Any) -> dict[str, Any]:
    return {"elapsed": r.elapsed, "cpu": r.cpu, "rss_kb": r.maxrss_kb, **extra}


def op_restore(
    ctx: Context, *, dataset: str, label: str, pgdr_conf: Path, pgbr_conf: Path, pgdr_backup: str, basebackup: Path
) -> None:
    ws, repeats = ctx.ws, ctx.settings.repeats
    wait_pgdr_background(ctx)  # a restore plan indexes any segment the background indexer has not reached
    samples: dict[str, list[float]] = {
        k: [] for k in ("pgdr", "pgdr_plan", "pgdr_unpack", "pgbr_files", "pgbr_start", "floor")
    }
    cpu: dict[str, list[float]] = {}
    for i in range(repeats):
        port = free_port()
        ctx.log(f"op 5 ({dataset}): round {i + 1}/{repeats}: pgdr restore --dry-run (planning only)")
        target = ws.restore / "pgdr"
        remove(target)
        restore_args = ["--immediate", "--backup", pgdr_backup, "--target-dir", str(target), "--port", str(port)]
        r = run(
            [ws.pgdr, "--config", str(pgdr_conf), "restore", *restore_args, "--dry-run"],
            cwd=ws.restore,
            env=ws.env,
            timeout=3600,
            what="pgdr restore --dry-run",
        )
        samples["pgdr_plan"].append(r.elapsed)
        ctx.log(f"op 5 ({dataset}): round {i + 1}/{repeats}: pgdr restore --immediate --target-dir")
        r = run(
            [ws.pgdr, "--config", str(pgdr_conf), "restore", *restore_args, "--yes", "--json"],
            cwd=ws.restore,
            env=ws.env,
            timeout=3600,
            what="pgdr restore",
        )
        report = _json_tail(r.stdout)
        if not report.get("reached_target"):
            raise BenchError(f"pgdr restore did not reach its target: {r.stdout[-2000:]}")
        samples["pgdr"].append(r.elapsed)
        stop_server(ctx, target)
        remove(target)

        ctx.log(f"op 5 ({dataset}): round {i + 1}/{repeats}: pgdr unpack only")
        target = fresh_dir(ctx, "pgdr-unpack")
        r = run(
            [str(VENV_BIN / "python"), "-c", UNPACK, str(ws.pgdr_repo), "bench", pgdr_backup, str(target)],
            cwd=REPO_ROOT,
            env=ws.env,
            timeout=3600,
            what="pgdr unpack",
        )
        samples["pgdr_unpack"].append(r.elapsed)
        cpu.setdefault("pgdr_unpack", []).append(r.cpu)
        remove(target)

        ctx.log(f"op 5 ({dataset}): round {i + 1}/{repeats}: pgbackrest restore --type=immediate")
        target = fresh_dir(ctx, "pgbackrest")
        r = run(
            ws.pgbackrest_argv(
                pgbr_conf, f"--pg1-path={target}", "--type=immediate", "--target-action=promote", "restore"
            ),
            env=ws.env,
            timeout=3600,
            what="pgbackrest restore",
        )
        samples["pgbr_files"].append(r.elapsed)
        cpu.setdefault("pgbr_files", []).append(r.cpu)
        with (target / "postgresql.auto.conf").open("a") as fh:
            fh.write(f"\nport = {port}\narchive_mode = off\n")
        samples["pgbr_start"].append(_start_until_promoted(ctx, target, port))
        stop_server(ctx, target)
        remove(target)

        ctx.log(f"op 5 ({dataset}): round {i + 1}/{repeats}: tar -I zstd -x of pg_basebackup's base.tar.zst")
        target = fresh_dir(ctx, "floor")
        r = run(
            f"tar -I zstd -xf {basebackup / 'base.tar.zst'} -C {target} && sync -f {target}",
            shell=True,
            env=ws.env,
            timeout=3600,
            what="tar -x",
        )
        samples["floor"].append(r.elapsed)
        remove(target)

    pgbr_total = [f + s for f, s in zip(samples["pgbr_files"], samples["pgbr_start"], strict=True)]
    ctx.results.details[f"restore_{dataset}"] = {**samples, "pgbr_files_plus_start": pgbr_total, "cpu": cpu}
    start_median = median(samples["pgbr_start"]) or 0
    syncs = _fsync_counts(ctx, pgdr_backup, pgbr_conf) if dataset == "pgbench" else {}
    if syncs:
        ctx.results.details["restore_fsync_calls"] = syncs
    sync_note = (
        f"; durability differs: under strace pgdr's unpack made {syncs['pgdr_unpack']} fsync-family calls for "
        f"{syncs['pgdr_files']} files, pgbackrest restore {syncs['pgbackrest']} for {syncs['pgbackrest_files']} "
        "(PostgreSQL syncs the data directory when recovery starts, which 5b includes)"
        if syncs
        else ""
    )
    ctx.results.add(
        Row(
            key=f"restore_{dataset}_files",
            operation=f"5. full restore, files only ({label})",
            pgdr=Measure("pgdr unpack (restore_base_backup)", samples["pgdr_unpack"]),
            anchor=Measure("pgbackrest restore (process-max 2)", samples["pgbr_files"]),
            target=1.0,
            note=(
                f"both write the data directory and stop there; floor `tar -I zstd -x` of pg_basebackup's tar "
                f"plus sync: {_ms(median(samples['floor']))}; CPU {_ms(median(cpu.get('pgdr_unpack', [])))} "
                "(pgdr: zstd and the writes in one thread, writeback and fsync on two) vs "
                f"{_ms(median(cpu.get('pgbr_files', [])))} (pgBackRest)" + sync_note
            ),
        )
    )
    ctx.results.add(
        Row(
            key=f"restore_{dataset}_to_consistency",
            operation=f"5b. full restore to a promoted server ({label})",
            pgdr=Measure("pgdr restore --immediate --target-dir", samples["pgdr"]),
            anchor=Measure("pgbackrest restore + pg_ctl start until promoted", pgbr_total),
            target=1.0,
            note=(
                "pgdr's whole command (plan from the catalog and WAL index, unpack, start, replay from its own "
                "prefetcher via a bare-interpreter restore_command, promote; its planning alone, `--dry-run`, takes "
                f"{_ms(median(samples['pgdr_plan']))}) vs "
                f"pgBackRest's restore plus start and replay via archive-get ({_ms(start_median)} of it)"
            ),
        )
    )


SYNC_CALLS = "fsync,fdatasync,syncfs,sync_file_range,msync"


def _fsync_counts(ctx: Context, pgdr_backup: str, pgbr_conf: Path) -> dict[str, int]:
    """Untimed: how many fsync-family calls each tool's restore makes (under strace, when installed)."""
    strace = shutil.which("strace")
    if not strace:
        return {}
    ws, counts = ctx.ws, {}
    for tool in ("pgdr_unpack", "pgbackrest"):
        target = fresh_dir(ctx, f"strace-{tool}")
        log = ws.restore / f"strace-{tool}.txt"
        if tool == "pgdr_unpack":
            argv = [str(VENV_BIN / "python"), "-c", UNPACK, str(ws.pgdr_repo), "bench", pgdr_backup, str(target)]
        else:
            argv = ws.pgbackrest_argv(pgbr_conf, f"--pg1-path={target}", "--type=immediate", "restore")
        run([strace, "-f", "-c", "-e", f"trace={SYNC_CALLS}", "-o", str(log), *argv], cwd=REPO_ROOT, env=ws.env)
        total = 0
        for line in log.read_text().splitlines():
            fields = line.split()
            if fields and fields[-1] in SYNC_CALLS.split(",") and len(fields) >= 4:
                total += int(fields[3])
        counts[tool] = total
        counts["pgdr_files" if tool == "pgdr_unpack" else "pgbackrest_files"] = sum(
            1 for p in target.rglob("*") if p.is_file()
        )
        remove(target)
    return counts


def _ms(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.2f} s"


def _json_tail(stdout: str) -> dict[str, Any]:
    """The JSON report pgdr prints after its plan text."""
    start = stdout.rfind("\n{")
    text = stdout[start + 1 :] if start >= 0 else stdout[stdout.find("{") :]
    try:
        return dict(json.loads(text))
    except ValueError:
        return {}


def _start_until_promoted(ctx: Context, data: Path, port: int) -> float:
    """``pg_ctl start`` on a restored directory, until the server has left recovery."""
    probe = Cluster(data.parent, port, ctx.ws.env)
    probe.data_dir = data
    probe.socket_dir = ctx.ws.cluster.socket_dir
    t0 = time.perf_counter()
    run(
        [
            str(PG_BIN / "pg_ctl"),
            "-D",
            str(data),
            "-l",
            str(data.parent / f"{data.name}.log"),
            "-w",
            "-t",
            "600",
            "start",
        ],
        env=ctx.ws.env,
        what="pg_ctl start (pgBackRest restore)",
    )
    deadline = time.monotonic() + 600
    while True:
        try:
            if not probe.sql("SELECT pg_is_in_recovery()")[0][0]:
                break
        except Exception:
            pass
        if time.monotonic() > deadline:
            raise BenchError(f"the pgBackRest-restored server did not promote (see {data.parent / data.name}.log)")
        time.sleep(0.01)
    return time.perf_counter() - t0
