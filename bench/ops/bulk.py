"""Operation 2: sustained archiving of a bulk load, and the drain rate of a backlog.

pgBackRest runs ``archive-async`` with process-max 2 (its archive-push only confirms what the async
process has already stored, pushing the next ``.ready`` segments ahead in parallel); pgdr runs its
``wal-push`` as configured by default (a push server storing the next segments ahead).

Each round measures both tools, the one that goes first alternating from round to round (each load
drops the tables the one before made, and the cluster's checkpoints fall differently); the figures
are medians over the rounds. Every measurement starts after a checkpoint, with pgdr's background
work from the round before finished and the cores idle.

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
from bench.proc import wait_for, wait_quiet
from bench.report import Measure, Row


def live(ctx: Context, command: str, *, pgdr: bool) -> dict[str, Any]:
    cluster = ctx.ws.cluster
    cluster.set_archive_command(command)
    cluster.wait_archive_idle()
    wait_pgdr_background(ctx)
    cluster.sql("CHECKPOINT")
    wait_quiet()
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
    wait_pgdr_background(ctx)
    cluster.pgbench_init(ctx.settings.scale)
    cluster.sql("CHECKPOINT")
    wait_quiet()
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

    tools = [("pgbackrest_async", "pgBackRest async", pgbr_cmd), ("pgdr", "pgdr", pgdr_cmd)]
    drains: dict[str, list[dict[str, Any]]] = {key: [] for key, _, _ in tools}
    lives: dict[str, list[dict[str, Any]]] = {key: [] for key, _, _ in tools}
    rounds = max(1, ctx.settings.repeats)
    for i in range(rounds):
        order = tools if i % 2 == 0 else tools[::-1]
        for key, name, command in order:
            ctx.log(f"op 2: round {i + 1}/{rounds}: drain of a pgbench -i -s {scale} backlog: {name}")
            drains[key].append(drain(ctx, command, pgdr=key == "pgdr"))
        for key, name, command in order:
            ctx.log(f"op 2: round {i + 1}/{rounds}: pgbench -i -s {scale} with archiving live: {name}")
            lives[key].append(live(ctx, command, pgdr=key == "pgdr"))
    d_pgbr, d_pgdr = (_median_run(drains[key], "seg_per_s") for key, _, _ in tools)
    l_pgbr, l_pgdr = (_median_run(lives[key], "until_archived_s") for key, _, _ in tools)
    ctx.results.details["wal_async"] = {
        "drain": {"pgbackrest_async": d_pgbr, "pgdr": d_pgdr},
        "live": {"pgbackrest_async": l_pgbr, "pgdr": l_pgdr},
        "rounds": {"drain": drains, "live": lives},
    }
    failed = {key: sum(d["failed"] for d in drains[key]) for key, _, _ in tools}
    for key, name, _ in tools:
        if failed[key]:
            ctx.results.errors.append(f"op 2: {name} failed {failed[key]} archive attempts during the drains")
    d_pgbr_rates = [d["seg_per_s"] for d in drains["pgbackrest_async"]]
    d_pgdr_rates = [d["seg_per_s"] for d in drains["pgdr"]]
    ctx.results.add(
        Row(
            key="wal_async_drain",
            operation="2. WAL push, async 2 processes: drain rate of a backlog",
            pgdr=Measure(
                "pgdr wal-push" + (f" (default config: {push_ahead})" if push_ahead else ""),
                d_pgdr_rates,
                unit="seg/s",
                text=(
                    f"{d_pgdr['seg_per_s']:.1f} seg/s, {d_pgdr['ms_per_segment']:.0f} ms/seg"
                    if push_ahead
                    else f"n/a (no async); sync: {d_pgdr['seg_per_s']:.1f} seg/s, {d_pgdr['ms_per_segment']:.0f} ms/seg"
                ),
            ),
            anchor=Measure(
                "pgBackRest archive-async, process-max 2",
                d_pgbr_rates,
                unit="seg/s",
                text=f"{d_pgbr['seg_per_s']:.1f} seg/s, {d_pgbr['ms_per_segment']:.0f} ms/seg",
            ),
            higher_is_better=True,
            target=1.0,
            note=(
                f"backlog of {d_pgbr['backlog']} / {d_pgdr['backlog']} .ready segments from pgbench -i -s {scale} "
                f"with archiving paused, then the tool switched in; median of {rounds} rounds"
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
                [d["until_archived_s"] for d in lives["pgdr"]],
                text=live_text(l_pgdr),
            ),
            anchor=Measure(
                "pgBackRest archive-async, process-max 2",
                [d["until_archived_s"] for d in lives["pgbackrest_async"]],
                text=live_text(l_pgbr),
            ),
            target=1.0,
            note=(
                f"the load generates {l_pgbr['generated_seg_per_s']:.1f} / {l_pgdr['generated_seg_per_s']:.1f} "
                "segments/s (pgBackRest run / pgdr run); keeping up means the backlog stays near 0 and the "
                f"figure equals the load time; the run with the median figure of {rounds} rounds is shown "
                f"(load times alone: pgdr runs {_range([d['load_s'] for d in lives['pgdr']])}, pgBackRest runs "
                f"{_range([d['load_s'] for d in lives['pgbackrest_async']])})"
            ),
        )
    )


def _median_run(runs: list[dict[str, Any]], key: str) -> dict[str, Any]:
    """The run whose ``key`` is the median (the lower middle one for an even count)."""
    ordered = sorted(runs, key=lambda r: r[key])
    return ordered[(len(ordered) - 1) // 2]


def _range(seconds: list[float]) -> str:
    return f"{min(seconds):.1f} to {max(seconds):.1f} s"
