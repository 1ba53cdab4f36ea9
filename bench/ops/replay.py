"""Operation 7: a PITR that replays many segments with its WAL in S3 only, against the same replay with
the WAL in the local repository only (issue 6: within 1.5x).

Set-up: a small database, one ``pgdr backup`` into both repositories, then bulk loads (``pgbench -i``
rounds, which drop and recreate their tables, so the database stays small while the WAL grows) until
the archive holds the wanted number of segments past the backup. The archiver runs ``pgdr wal-push``
with a local and an S3 repository (S3 filled by the background uploader, as a default set-up does).

A restore's ``restore_command`` is the backup's own ``archive_command`` with ``wal-push`` turned into
``wal-fetch``, so it reads the config file the archiver used. The op therefore rewrites that one file
between restores: S3 only, then local only. Each timed figure is the whole
``pgdr restore --latest --target-dir DIR --port P --yes``: plan, unpack, start, replay every segment
through the restore's in-process prefetcher (``pgdr wal-fetch`` as fallback), promote. Local and S3
rounds alternate, so drifting load on the shared cores hits both alike.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench.cluster import SEGMENT_SIZE
from bench.context import Context
from bench.ops.backup import remove, stop_server
from bench.ops.wal import wait_pgdr_background
from bench.proc import BenchError, run
from bench.report import Measure, Row, fmt
from bench.workspace import CLUSTER_NAME, S3_ACCESS_KEY, S3_REGION, S3_SECRET_KEY, free_port, toml_str

#: Segments replayed: issue 6's 200 in full mode; fewer in quick mode.
SEGMENTS = {"quick": 50, "full": 200}
#: Scale of one ``pgbench -i`` round: about 15 segments of WAL, a 300 MB database.
ROUND_SCALE = 20
BUCKET = "bench-pgdr-replay"
DATABASE = "replay"


def op_replay(ctx: Context) -> None:
    ws, cluster = ctx.ws, ctx.ws.cluster
    wanted = SEGMENTS.get(ctx.settings.mode, SEGMENTS["quick"])
    if not ws.moto_url:
        ws.start_moto()
    ws.s3_client().create_bucket(Bucket=BUCKET)
    repo = ws.mkdir("pgdr-replay-repo")
    spool = ws.mkdir("state/replay-spool")
    local = f"\n[local]\npath = {toml_str(str(repo))}\n"
    s3 = (
        f'\n[s3]\nbucket = "{BUCKET}"\nprefix = "replay"\nregion = {toml_str(S3_REGION)}\n'
        f'endpoint_url = {toml_str(ws.moto_url)}\nstorage_class = "STANDARD"\n'
        f"access_key_id = {toml_str(S3_ACCESS_KEY)}\nsecret_access_key = {toml_str(S3_SECRET_KEY)}\n"
    )
    configs = {
        "archive": local + s3 + f"\n[archive]\nspool_path = {toml_str(str(spool))}\n",
        "s3": s3,
        "local": local,
    }
    conf = ws.write_private("pgdr-replay.toml", ws.postgres_section() + configs["archive"])

    # Earlier operations' databases would make the base backup, not the replay, dominate.
    cluster.set_archive_command("/bin/true")
    for name in ("rnd", "bench", DATABASE):
        cluster.sql(f"DROP DATABASE IF EXISTS {name}")
    cluster.sql(f"CREATE DATABASE {DATABASE}")
    cluster.set_archive_command(ws.pgdr_archive_command(conf))
    cluster.switch_wal()
    cluster.wait_archive_idle()
    wait_pgdr_background(ctx)

    ctx.log("op 7: pgdr backup (local and S3)")
    run([ws.pgdr, "--config", str(conf), "backup"], env=ws.env, timeout=3600, what="pgdr backup")
    start_lsn = cluster.current_lsn()
    rounds = 0
    while (cluster.current_lsn() - start_lsn) // SEGMENT_SIZE < wanted:
        rounds += 1
        ctx.log(f"op 7: WAL for the replay: pgbench -i -s {ROUND_SCALE} (round {rounds})")
        cluster.pgbench_init(ROUND_SCALE, dbname=DATABASE)
    cluster.switch_wal()
    cluster.wait_archive_idle(timeout=3600)
    wait_pgdr_background(ctx)
    in_s3 = _count_wal(ctx, "replay/")
    in_local = sum(1 for p in (repo / CLUSTER_NAME / "wal").rglob("*.zst"))
    if in_s3 < in_local:
        raise BenchError(f"the S3 repository holds {in_s3} WAL objects, the local one {in_local}: upload incomplete")

    samples: dict[str, list[float]] = {"local": [], "s3": []}
    plans: dict[str, dict[str, Any]] = {}
    for side in ("local", "s3"):
        ws.write_private(conf.name, ws.postgres_section() + configs[side])
        plans[side] = _dry_run(ctx, conf)  # untimed: indexes what the background indexer left, warms caches
    for i in range(ctx.settings.repeats):
        for side in ("local", "s3"):
            ws.write_private(conf.name, ws.postgres_section() + configs[side])
            ctx.log(f"op 7: round {i + 1}/{ctx.settings.repeats}: pgdr restore --latest, WAL {side} only")
            samples[side].append(_restore(ctx, conf, side))
    ws.write_private(conf.name, ws.postgres_section() + configs["archive"])

    segments = plans["s3"].get("wal_segments")
    ctx.results.details["replay"] = {
        "segments": segments,
        "segments_in_archive": in_local,
        "pgbench_rounds": rounds,
        "samples": samples,
        "plans": plans,
    }
    plan_note = ", ".join(f"{side} {fmt(plans[side].get('elapsed_s'), 's')}" for side in ("local", "s3"))
    ctx.results.add(
        Row(
            key="replay_s3_vs_local",
            operation=f"7. PITR replaying {segments} segments: WAL in S3 (moto) vs already local",
            pgdr=Measure("pgdr restore --latest, WAL from S3", samples["s3"]),
            anchor=Measure("the same restore, WAL from the local repository", samples["local"]),
            target=1.5,
            note=(
                f"the whole `pgdr restore --latest --target-dir` (plan, unpack a small base backup, start, replay "
                f"through the restore's in-process prefetcher, `pgdr wal-fetch` as fallback, promote), local and S3 "
                f"rounds alternating; WAL from "
                f"{rounds} rounds of pgbench -i -s {ROUND_SCALE}; planning alone (`--dry-run`): {plan_note}"
            ),
        )
    )


def _count_wal(ctx: Context, prefix: str) -> int:
    client, count = ctx.ws.s3_client(), 0
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=f"{prefix}{CLUSTER_NAME}/wal/"):
        count += sum(1 for obj in page.get("Contents", []) if obj["Key"].endswith(".zst"))
    return count


def _restore_argv(ctx: Context, conf: Path, target: Path) -> list[str]:
    return [ctx.ws.pgdr, "--config", str(conf), "restore", "--latest", "--target-dir", str(target)]


def _dry_run(ctx: Context, conf: Path) -> dict[str, Any]:
    r = run(
        [*_restore_argv(ctx, conf, ctx.ws.restore / "replay"), "--dry-run", "--json"],
        cwd=ctx.ws.restore,
        env=ctx.ws.env,
        timeout=3600,
        what="pgdr restore --dry-run",
    )
    return {**json.loads(r.stdout), "elapsed_s": r.elapsed}


def _restore(ctx: Context, conf: Path, side: str) -> float:
    ws = ctx.ws
    target = ws.restore / f"replay-{side}"
    remove(target)
    r = run(
        [*_restore_argv(ctx, conf, target), "--port", str(free_port()), "--yes", "--json"],
        cwd=ws.restore,
        env=ws.env,
        timeout=3600,
        what=f"pgdr restore (WAL {side})",
    )
    start = r.stdout.rfind("\n{")
    report = json.loads(r.stdout[start + 1 :] if start >= 0 else r.stdout)
    stop_server(ctx, target)
    if not report.get("reached_target") or (target / "pg_wal" / "pgdr-prefetch").exists():
        raise BenchError(f"pgdr restore (WAL {side}) did not finish cleanly: {r.stdout[-2000:]}")
    remove(target)
    return r.elapsed
