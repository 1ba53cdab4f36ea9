"""Findings derived from the measured figures: what is slow, and what the run measured about why.

Each finding quotes numbers from this run's ``details`` only; nothing here is a constant from elsewhere.
"""

from __future__ import annotations

from typing import Any

from bench.report import Results, Row, median


def _row(results: Results, key: str) -> Row | None:
    return next((r for r in results.rows if r.key == key), None)


def _ms(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.2f} s"


def derive(results: Results) -> list[str]:
    out: list[str] = []
    for fn in (_wal_local, _indexer, _s3, _drain, _backup, _restore, _replay, _catalog):
        try:
            out.extend(fn(results, results.details))
        except (KeyError, TypeError, ValueError, ZeroDivisionError, AttributeError):
            continue  # a finding needs its figures; a partial run simply has fewer findings
    return out


def _wal_local(results: Results, d: dict[str, Any]) -> list[str]:
    row = _row(results, "wal_push_local")
    if row is None or row.ratio is None:
        return []
    w = d["wal_push_local"]
    floors = d.get("startup_floor_s", {})
    text = (
        f"WAL push (local): pgdr {row.pgdr.show()} per segment vs pgBackRest {row.anchor.show() if row.anchor else ''} "
        f"(ratio {row.ratio:.2f}); CPU per push {_ms(w['pgdr_cpu_median_s'])} vs {_ms(w['pgbackrest_cpu_median_s'])}."
    )
    if floors:
        imports = floors.get("venv python -c 'import backend.archive.push'")
        text += (
            f" Start-up alone: `venv python -c pass` {_ms(floors.get('venv python -c pass'))}, "
            f"`import backend.archive.push` {_ms(imports)}, "
            f"`pgdr --version` {_ms(floors.get('pgdr --version'))} against `pgbackrest version` "
            f"{_ms(floors.get('pgbackrest version'))}"
        )
        no_cache = next((v for k, v in floors.items() if k.startswith("pgdr --version, no writable")), None)
        if no_cache is not None:
            text += (
                f" (and {_ms(no_cache)} when the server user cannot write __pycache__, as with this root-owned "
                "checkout and no PYTHONPYCACHEPREFIX: every push then compiles pgdr's modules from source)"
            )
        text += "."
    top = d.get("wal_push_importtime_top_ms")
    if top:
        items = [f"{k} {v:.0f} ms" for k, v in top.items() if not k.startswith("(")][:6]
        text += f" Import time of one push ({top.get('(all top-level imports)', 0):.0f} ms): " + ", ".join(items) + "."
    return [text]


def _indexer(results: Results, d: dict[str, Any]) -> list[str]:
    probe = d.get("index_uploader_probe")
    pending = d.get("wal_push_local", {}).get("pgdr_queue_pending_after")
    if not probe or probe["returncode"] == 0:
        return []
    tail = " ".join(probe["stderr_tail"])
    return [
        "Bug: every local `pgdr wal-push` queues the segment for the WAL indexer and spawns a detached "
        "`python -m pgdr_tui wal-upload --repo index`, which exits "
        f"{probe['returncode']} ({tail!r}) after {_ms(probe['elapsed_s'])} ({_ms(probe['cpu_s'])} CPU): the indexer "
        f"never runs, the queue grows by one entry per segment ({pending} left after the push series), and each "
        "push pays a Python start-up in the background on the same cores; `pgdr timeline` and restore planning "
        "then index the segments themselves (see catalog)."
    ]


def _s3(results: Results, d: dict[str, Any]) -> list[str]:
    row = _row(results, "wal_push_s3")
    if row is None or row.ratio is None:
        return []
    s3 = d["wal_push_s3"]
    return [
        f"WAL push to S3: pgdr {row.pgdr.show()} vs barman-cloud {row.anchor.show() if row.anchor else ''} per "
        f"segment (ratio {row.ratio:.2f}, target 0.25). CPU per push {_ms(s3['pgdr_cpu_median_s'])} (pgdr) vs "
        f"{_ms(s3['barman_cpu_median_s'])} (barman). In one already-running Python, boto3 import / client / one "
        f"put_object of 16 MB cost {s3['boto3_floor']}: per-segment processes that import boto3 and build a "
        "client cannot reach 4x; a long-lived uploader can."
    ]


def _drain(results: Results, d: dict[str, Any]) -> list[str]:
    row = _row(results, "wal_async_drain")
    live = d.get("wal_async", {}).get("live", {})
    if row is None or row.ratio is None:
        return []
    text = (
        f"Archiving capacity (draining a backlog): pgdr {row.pgdr.show()} vs pgBackRest async "
        f"{row.anchor.show() if row.anchor else ''}."
    )
    p, b = live.get("pgdr"), live.get("pgbackrest_async")
    if p and b:
        text += (
            f" During a live bulk load generating {p['generated_seg_per_s']:.1f} seg/s, pgdr's backlog peaked at "
            f"{p['max_backlog']} (pgBackRest {b['max_backlog']}) and it finished archiving {p['catch_up_s']:.1f} s "
            f"after the load ended (pgBackRest {b['catch_up_s']:.1f} s). The load itself took {p['load_s']:.1f} s "
            f"while pgdr archived and {b['load_s']:.1f} s while pgBackRest did (the runs with the median figure)"
        )
        text += (
            ": the archiver's CPU (and pgdr's background indexing with pg_waldump) competes with the server for "
            "the 2 cores."
            if p["load_s"] > 1.02 * b["load_s"]
            else "."
        )
    return [text]


def _backup(results: Results, d: dict[str, Any]) -> list[str]:
    out = []
    for dataset in ("pgbench", "random"):
        b = d.get(f"backup_{dataset}")
        vs_pgbb = _row(results, f"backup_{dataset}_vs_pg_basebackup")
        vs_pgbr = _row(results, f"backup_{dataset}_vs_pgbackrest")
        if not b or vs_pgbb is None or vs_pgbr is None or vs_pgbb.ratio is None or vs_pgbr.ratio is None:
            continue
        cpu = b["cpu_median_s"]
        out.append(
            f"Backup ({dataset}, {b['database_bytes'] / 1e6:.0f} MB): pgdr {vs_pgbb.pgdr.show()}, pg_basebackup "
            f"server-zstd {vs_pgbb.anchor.show() if vs_pgbb.anchor else ''} (ratio {vs_pgbb.ratio:.2f}, target 1.2), "
            f"pgBackRest {vs_pgbr.anchor.show() if vs_pgbr.anchor else ''} (ratio {vs_pgbr.ratio:.2f}, target 0.5). "
            f"Client-side CPU: pgdr {_ms(cpu.get('pgdr'))} vs pg_basebackup {_ms(cpu.get('pg_basebackup'))}: with a "
            "local repository the server compresses (zstd, every core) and pg_basebackup writes into the repository; "
            "pgdr reads the growing file once to hash it and upload it to S3. What is left of the gap is pgdr's fixed "
            f"start-up (Python, psycopg, the catalog checks). Peak RSS {b['pgdr_peak_rss_mb']:.0f} MB."
        )
    return out


def _restore(results: Results, d: dict[str, Any]) -> list[str]:
    out = []
    for dataset in ("pgbench", "random"):
        r = d.get(f"restore_{dataset}")
        files = _row(results, f"restore_{dataset}_files")
        whole = _row(results, f"restore_{dataset}_to_consistency")
        if not r or files is None or whole is None or files.ratio is None or whole.ratio is None:
            continue
        pgdr_total, unpack, plan = median(r["pgdr"]), median(r["pgdr_unpack"]), median(r.get("pgdr_plan") or [])
        start = median(r["pgbr_start"])
        rest = (pgdr_total or 0) - (unpack or 0) - (plan or 0)
        syncs = d.get("restore_fsync_calls") if dataset == "pgbench" else None
        sync_text = (
            f" (pgdr's unpack makes {syncs['pgdr_unpack']} fsync calls for {syncs['pgdr_files']} files, "
            f"pgBackRest {syncs['pgbackrest']} for {syncs['pgbackrest_files']}: the files-only comparison flatters "
            "pgdr; PostgreSQL syncs the whole data directory when recovery starts, inside the whole-restore figure)"
            if syncs
            else ""
        )
        out.append(
            f"Restore ({dataset}): unpacking alone pgdr {files.pgdr.show()} vs pgbackrest restore "
            f"{files.anchor.show() if files.anchor else ''} (ratio {files.ratio:.2f}){sync_text}; the whole "
            "`pgdr restore` "
            f"{whole.pgdr.show()} vs pgBackRest restore + start {whole.anchor.show() if whole.anchor else ''} "
            f"(ratio {whole.ratio:.2f}). Planning alone (`--dry-run`: catalog, WAL index, plan) takes {_ms(plan)}; "
            f"the rest beyond the unpack, {_ms(rest)}, is pgdr's start of the server, replay of the backup's WAL "
            "from the restore's own prefetcher (restore_command: `mv` of a prefetched, verified file, else a bare "
            f"interpreter asking it), promotion and the report, where pgBackRest's "
            f"start-to-promoted took {_ms(start)}."
        )
    return out


def _replay(results: Results, d: dict[str, Any]) -> list[str]:
    row = _row(results, "replay_s3_vs_local")
    if row is None or row.ratio is None:
        return []
    r = d["replay"]
    segments = r["segments"] or 0
    s3, local = row.pgdr.figure or 0.0, row.anchor.figure if row.anchor else 0.0
    return [
        f"PITR replay of {segments} segments: WAL from S3 {row.pgdr.show()} vs already local "
        f"{row.anchor.show() if row.anchor else ''} (ratio {row.ratio:.2f}, target 1.5): S3 costs "
        f"{_ms((s3 - (local or 0.0)) / max(segments, 1))} more per segment replayed, with wal-fetch taking the "
        "segments its background prefetcher already downloaded and verified."
    ]


def _catalog(results: Results, d: dict[str, Any]) -> list[str]:
    c = d.get("catalog")
    if not c:
        return []
    s = results.settings
    segments = s.get("catalog_segments") or 1
    out = []
    probe = d.get("index_uploader_probe") or {}
    broken = bool(probe) and probe.get("returncode") != 0
    un = c.get("timeline_unindexed", {})
    if un.get("timed_out"):
        out.append(
            f"`pgdr timeline` on {segments} segments without WAL index entries did not finish within "
            f"{s.get('catalog_timeout'):.0f} s: at a year of history it is unusable until every segment has an "
            "index entry or is known unreadable."
        )
    elif un.get("samples"):
        t = median(un["samples"]) or 0.0
        first = ", ".join(f"{x:.1f} s" for x in [un.get("first_s", 0.0), *(un.get("settle_s") or [])])
        out.append(
            f"`pgdr timeline` on {segments} segments without WAL index entries (stand-ins pg_waldump cannot read): "
            f"the first run(s) read each segment once within the indexing budget ({first}) "
            f"and record the unreadable ones with the copy they were; warm runs take {t:.2f} s. A real repository "
            "is in this state for segments archived while the background indexer was not running"
            + (" (in this checkout the indexer does not run at all: see above)." if broken else ".")
        )
    ix = c.get("timeline_indexed", {})
    if ix.get("samples"):
        t = median(ix["samples"]) or 0.0
        out.append(
            f"`pgdr timeline` with every segment indexed: {t:.2f} s (reads one JSON file per segment: "
            f"{segments} files); `pgdr list`: "
            + (
                _ms(sorted(c["list"]["samples"])[len(c["list"]["samples"]) // 2])
                if c.get("list", {}).get("samples")
                else "n/a"
            )
            + " (walks every WAL object and parses every manifest)."
        )
    return out
