"""Operation 2: sustained archiving of a bulk load, and the drain rate of a backlog.

pgBackRest runs ``archive-async`` with process-max 2 (its archive-push only confirms what the async
process has already stored, pushing the next ``.ready`` segments ahead in parallel); pgdr has no async
spool yet, so its synchronous ``wal-push`` is measured in the same place.

* live: ``pgbench -i -s N`` with archiving on; the archiver's backlog (``.ready`` files) is sampled
  every 0.1 s; the figure is the time from the start of the load until every completed segment is
  archived (equal to the load time when the tool keeps up).
* drain: archiving is paused (``archive_command = ''``) during the same load, then the tool is
  switched in; the figure is the backlog divided by the time to empty it: the tool's capacity.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from bench.cluster import SEGMENT_SIZE
from bench.context import Context
from bench.ops.wal import wait_pgdr_background
from bench.proc import wait_for
from bench.report import Measure, Row


def live(ctx: Context, command: str, *, pgdr: bool) -> dict[str, Any]:
    cluster = ctx.ws.cluster
    cluster.set_archive_command(command)
    cluster.wait_archive_idle()
    if pgdr:
        wait_pgdr_background(ctx)
    samples: list[tuple[float, int, int]] = []
    stop = threading.Event()
    (archived0, failed0, _) = cluster.archiver()
    t0 = time.monotonic()

    def sample() -> None:
        with cluster.connect() as conn:
            while not stop.is_set():
                row = conn.execute("SELECT archived_count FROM pg_stat_archiver").fetchone()
                samples.append((time.monotonic() - t0, cluster.ready_count(), int(row[0]) - archived0 if row else 0))
                stop.wait(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    lsn0 = cluster.current_lsn()
    sampler.start()
    load = cluster.pgbench_init(ctx.settings.scale)
    t_load = time.monotonic() - t0
    lsn1 = cluster.current_lsn()
    backlog_at_end = cluster.ready_count()
    cluster.wait_archive_idle(timeout=3600)
    t_idle = time.monotonic() - t0
    stop.set()
    sampler.join()
    archived1, failed1, _ = cluster.archiver()
    segments = lsn1 // SEGMENT_SIZE - lsn0 // SEGMENT_SIZE
    result = {
        "load_s": load,
        "segments": segments,
        "generated_seg_per_s": segments / load if load else None,
        "archived": archived1 - archived0,
        "failed": failed1 - failed0,
        "max_backlog": max((s[1] for s in samples), default=0),
        "backlog_at_load_end": backlog_at_end,
        "catch_up_s": t_idle - t_load,
        "until_archived_s": t_idle,
        "archived_seg_per_s_overall": (archived1 - archived0) / t_idle if t_idle else None,
        "timeline": [(round(t, 2), r, a) for t, r, a in samples],
    }
    if pgdr:
        result["pgdr_index_tail_s"] = wait_pgdr_background(ctx)
    return result


def drain(ctx: Context, command: str, *, pgdr: bool) -> dict[str, Any]:
    cluster = ctx.ws.cluster
    cluster.set_archive_command("")
    if pgdr:
        wait_pgdr_background(ctx)
    cluster.pgbench_init(ctx.settings.scale)
    cluster.sql("CHECKPOINT")
    backlog = cluster.ready_count()
    (archived0, failed0, _) = cluster.archiver()
    t0 = time.monotonic()
    cluster.set_archive_command(command)
    waited = wait_for(lambda: cluster.ready_count() == 0, 3600, "the backlog to drain", interval=0.01)
    took = time.monotonic() - t0
    archived1, failed1, _ = cluster.archiver()
    del waited
    result = {
        "backlog": backlog,
        "drain_s": took,
        "seg_per_s": backlog / took if took else None,
        "ms_per_segment": 1000 * took / backlog if backlog else None,
        "archived": archived1 - archived0,
        "failed": failed1 - failed0,
    }
    if pgdr:
        result["pgdr_index_tail_s"] = wait_pgdr_background(ctx)
    return result


def pgdr_async_settings() -> dict[str, Any] | None:
    """pgdr's push-ahead settings when this checkout has them (``[archive] push_ahead``), else None."""
    import dataclasses

    from backend.config import ArchiveConfig

    names = {f.name for f in dataclasses.fields(ArchiveConfig)}
    if "push_ahead" not in names:
        return None
    defaults = ArchiveConfig()
    return {n: getattr(defaults, n) for n in ("push_ahead", "workers") if n in names}


def op_bulk(ctx: Context) -> None:
    ws = ctx.ws
    pgdr_cmd = ws.pgdr_archive_command(ws.pgdr_local_config())
    async_conf = ws.pgbackrest_config("pgbackrest-async.conf", archive_async=True)
    pgbr_cmd = ws.pgbackrest_archive_command(async_conf)
    scale = ctx.settings.scale
    push_ahead = pgdr_async_settings()
    ctx.results.details["pgdr_push_ahead"] = push_ahead

    ctx.log(f"op 2: drain of a pgbench -i -s {scale} backlog: pgBackRest async")
    d_pgbr = drain(ctx, pgbr_cmd, pgdr=False)
    ctx.log(f"op 2: drain of a pgbench -i -s {scale} backlog: pgdr")
    d_pgdr = drain(ctx, pgdr_cmd, pgdr=True)
    ctx.log(f"op 2: pgbench -i -s {scale} with archiving live: pgBackRest async")
    l_pgbr = live(ctx, pgbr_cmd, pgdr=False)
    ctx.log(f"op 2: pgbench -i -s {scale} with archiving live: pgdr")
    l_pgdr = live(ctx, pgdr_cmd, pgdr=True)
    ctx.results.details["wal_async"] = {
        "drain": {"pgbackrest_async": d_pgbr, "pgdr": d_pgdr},
        "live": {"pgbackrest_async": l_pgbr, "pgdr": l_pgdr},
    }
    for name, d in (("pgBackRest", d_pgbr), ("pgdr", d_pgdr)):
        if d["failed"]:
            ctx.results.errors.append(f"op 2: {name} failed {d['failed']} archive attempts during the drain")
    ctx.results.add(
        Row(
            key="wal_async_drain",
            operation="2. WAL push, async 2 processes: drain rate of a backlog",
            pgdr=Measure(
                "pgdr wal-push" + (f" (default config: {push_ahead})" if push_ahead else ""),
                unit="seg/s",
                value=d_pgdr["seg_per_s"],
                text=(
                    f"{d_pgdr['seg_per_s']:.1f} seg/s, {d_pgdr['ms_per_segment']:.0f} ms/seg"
                    if push_ahead
                    else f"n/a (no async); sync: {d_pgdr['seg_per_s']:.1f} seg/s, {d_pgdr['ms_per_segment']:.0f} ms/seg"
                ),
            ),
            anchor=Measure(
                "pgBackRest archive-async, process-max 2",
                unit="seg/s",
                value=d_pgbr["seg_per_s"],
                text=f"{d_pgbr['seg_per_s']:.1f} seg/s, {d_pgbr['ms_per_segment']:.0f} ms/seg",
            ),
            higher_is_better=True,
            target=1.0,
            note=(
                f"backlog of {d_pgbr['backlog']} / {d_pgdr['backlog']} .ready segments from pgbench -i -s {scale} "
                "with archiving paused, then the tool switched in"
                + ("" if push_ahead else "; pgdr has no async mode in this checkout: the ratio uses its sync rate")
            ),
        )
    )

    def live_text(d: dict[str, Any]) -> str:
        return (
            f"{d['until_archived_s']:.1f} s (load {d['load_s']:.1f} s, {d['segments']} seg, "
            f"max backlog {d['max_backlog']}, {d['backlog_at_load_end']} left at load end)"
        )

    ctx.results.add(
        Row(
            key="wal_async_live",
            operation=f"2b. bulk load (pgbench -i -s {scale}) with archiving live: until all archived",
            pgdr=Measure(
                "pgdr wal-push" + (" (default config)" if push_ahead else " (sync)"),
                value=l_pgdr["until_archived_s"],
                text=live_text(l_pgdr),
            ),
            anchor=Measure(
                "pgBackRest archive-async, process-max 2", value=l_pgbr["until_archived_s"], text=live_text(l_pgbr)
            ),
            target=1.0,
            note=(
                f"the load generates {l_pgbr['generated_seg_per_s']:.1f} / {l_pgdr['generated_seg_per_s']:.1f} "
                "segments/s (pgBackRest run / pgdr run); keeping up means the backlog stays near 0 and the "
                "figure equals the load time"
            ),
        )
    )
