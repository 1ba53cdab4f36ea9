"""WAL push per segment: local repository (zstd) against ``pgbackrest archive-push``, and S3 against
``barman-cloud-wal-archive``.

Real segments come from a bulk load (``pgbench -i``) archived by ``cp`` into ``wal/src``. Each tool then
archives the same segments, one process per segment exactly as PostgreSQL's archiver runs an
``archive_command``: ``/bin/sh -c '<command> <path>'`` as the server user, cwd = the data directory,
back to back. The first segment of each series is a warm-up (it also creates the repository's
metadata) and is not counted.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import time
from pathlib import Path
from typing import Any

from bench.cluster import SEGMENT_SIZE
from bench.context import Context
from bench.proc import VENV_BIN, BenchError, chown_to_server, run
from bench.report import Measure, Row, median
from bench.workspace import CLUSTER_NAME, S3_ACCESS_KEY, S3_REGION, S3_SECRET_KEY

SEGMENT_RE = re.compile(r"^[0-9A-F]{24}$")


# --- real segments -----------------------------------------------------------------------------------


def collect_segments(ctx: Context, wanted: int) -> list[Path]:
    """At least ``wanted`` real, full segments of a bulk load, copied aside by the archiver."""
    ws, cluster = ctx.ws, ctx.ws.cluster
    src = ws.mkdir("wal/src")
    cluster.set_archive_command(f"test ! -f {src}/%f && cp %p {src}/%f")
    cluster.wait_archive_idle()
    before = {p.name for p in src.iterdir()}
    rounds = 0
    while True:
        rounds += 1
        ctx.log(f"collecting WAL: pgbench -i -s {ctx.settings.scale} (round {rounds})")
        cluster.pgbench_init(ctx.settings.scale)
        cluster.wait_archive_idle()
        fresh = sorted(p for p in src.iterdir() if SEGMENT_RE.match(p.name) and p.name not in before)
        if len(fresh) >= wanted or rounds >= 5:
            break
    full = [p for p in fresh if p.stat().st_size == SEGMENT_SIZE]
    if len(full) < 2:
        raise BenchError(f"only {len(full)} WAL segments were produced by the bulk load")
    return full[-wanted:]


def copy_segments(ctx: Context, segments: list[Path], folder: str) -> list[Path]:
    dest = ctx.ws.mkdir(folder)
    copies = []
    for seg in segments:
        target = dest / seg.name
        shutil.copyfile(seg, target)
        chown_to_server(target)
        copies.append(target)
    return copies


def push_series(
    ctx: Context, command: str, segments: list[Path], env: dict[str, str] | None = None
) -> list[dict[str, Any]]:
    """Run ``command <segment>`` once per segment as the archiver would; the first is a warm-up."""
    samples = []
    for i, seg in enumerate(segments):
        served_before = pushd_cpu(ctx)
        result = run(
            f"{command} {shlex.quote(str(seg))}",
            shell=True,
            cwd=ctx.ws.cluster.data_dir,
            env=env or ctx.ws.env,
            timeout=300,
            what=f"{command.split(maxsplit=1)[0]} on {seg.name}",
        )
        if i == 0:
            continue
        # The push server's share counts too: a client that only waits for it is not a cheap push.
        served = sum(cpu - served_before.get(pid, 0.0) for pid, cpu in pushd_cpu(ctx).items())
        samples.append(
            {"segment": seg.name, "elapsed": result.elapsed, "cpu": result.cpu + served, "rss_kb": result.maxrss_kb}
        )
    return samples


def _pgdr_processes(ctx: Context) -> dict[int, str]:
    """pid -> command line of the pgdr processes working for this run's configs."""
    mine, found = str(ctx.ws.root), {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if mine in cmdline and ("pgdr_tui" in cmdline or "/bin/pgdr " in cmdline):
            found[int(entry.name)] = cmdline
    return found


def background_pgdr(ctx: Context) -> list[int]:
    """pids of pgdr processes with work in hand (uploaders, indexers, push-ahead workers). The push
    server (``wal-pushd``) is left out: it only lingers, idle, for the next push."""
    return [pid for pid, cmdline in _pgdr_processes(ctx).items() if " wal-pushd" not in cmdline]


def pushd_cpu(ctx: Context) -> dict[int, float]:
    """CPU seconds (user+sys) each running push server has used: the work a push hands to it."""
    tick = os.sysconf("SC_CLK_TCK")
    used = {}
    for pid, cmdline in _pgdr_processes(ctx).items():
        if " wal-pushd" not in cmdline:
            continue
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        used[pid] = (int(fields[11]) + int(fields[12])) / tick
    return used


def queue_pending(ctx: Context) -> int:
    """Entries in pgdr's background queues (``queue/<target>/<wal file>`` in its local repository)."""
    queue = ctx.ws.pgdr_repo / CLUSTER_NAME / "queue"
    if not queue.exists():
        return 0
    return sum(1 for p in queue.rglob("*") if p.is_file() and not p.name.startswith("."))


def wait_pgdr_background(ctx: Context, timeout: float = 1800) -> float:
    """Wait until pgdr's background uploader/indexer (``wal-upload``) has drained its queue and exited.

    Returns the seconds waited. A queue no process is working on is not waited for (it is reported:
    ``queue_pending``), so a broken uploader shows up as a finding rather than a hang.
    """
    start = time.monotonic()
    quiet_since: float | None = None
    while time.monotonic() - start < timeout:
        busy = bool(background_pgdr(ctx))
        if not busy and queue_pending(ctx) == 0:
            break
        if busy:
            quiet_since = None
        elif quiet_since is None:
            quiet_since = time.monotonic()
        elif time.monotonic() - quiet_since > 1.0:
            break  # entries left, nobody working on them
        time.sleep(0.1)
    return time.monotonic() - start


def stored_bytes(folder: Path, names: set[str]) -> int:
    total = 0
    for path in folder.rglob("*"):
        if path.is_file() and path.name[:24] in names:
            total += path.stat().st_size
    return total


# --- operation 1: local push -------------------------------------------------------------------------


def op_wal_push_local(ctx: Context, segments: list[Path]) -> None:
    ws = ctx.ws
    pgbr_conf = ws.pgbackrest_config("pgbackrest.conf", archive_async=False)
    pgdr_conf = ws.pgdr_local_config()
    names = {s.name for s in segments}

    ctx.log(f"op 1: pgbackrest archive-push (sync, zst) x {len(segments)}")
    pgbr = push_series(ctx, f"{ws.pgbackrest} --config={pgbr_conf} --stanza=bench archive-push", segments)

    ctx.log(f"op 1: pgdr wal-push (local, zstd) x {len(segments)}")
    pgdr = push_series(ctx, f"{ws.pgdr} --config {pgdr_conf} wal-push", segments)
    last_push = time.monotonic()
    waited = wait_pgdr_background(ctx)
    index_tail = time.monotonic() - last_push

    pgdr_stored = stored_bytes(ws.pgdr_repo / CLUSTER_NAME / "wal", names)
    pgbr_stored = stored_bytes(ws.pgbr / "repo" / "archive", names)
    raw = SEGMENT_SIZE * len(names)
    ctx.results.details["wal_push_local"] = {
        "segments": sorted(names),
        "pgdr": pgdr,
        "pgbackrest": pgbr,
        "pgdr_cpu_median_s": median([s["cpu"] for s in pgdr]),
        "pgbackrest_cpu_median_s": median([s["cpu"] for s in pgbr]),
        "pgdr_rss_median_kb": median([s["rss_kb"] for s in pgdr]),
        "pgbackrest_rss_median_kb": median([s["rss_kb"] for s in pgbr]),
        "compression_ratio_pgdr": raw / pgdr_stored if pgdr_stored else None,
        "compression_ratio_pgbackrest": raw / pgbr_stored if pgbr_stored else None,
        "pgdr_background_index_seconds_after_last_push": index_tail,
        "pgdr_background_wait_s": waited,
        "pgdr_queue_pending_after": queue_pending(ctx),
    }
    p_cpu = ctx.results.details["wal_push_local"]["pgdr_cpu_median_s"] or 0
    b_cpu = ctx.results.details["wal_push_local"]["pgbackrest_cpu_median_s"] or 0
    ctx.results.add(
        Row(
            key="wal_push_local",
            operation="1. WAL segment push, local repo, zstd (per segment)",
            pgdr=Measure("pgdr wal-push", [s["elapsed"] for s in pgdr]),
            anchor=Measure("pgbackrest archive-push (sync, zst)", [s["elapsed"] for s in pgbr]),
            target=1.0,
            note=(
                f"median of {len(pgdr)} real pgbench segments, one process each as the archiver runs it; CPU per "
                f"segment {p_cpu * 1000:.0f} ms (pgdr) vs {b_cpu * 1000:.0f} ms (pgBackRest); stored "
                f"{raw / max(pgdr_stored, 1):.1f}x smaller (pgdr) vs {raw / max(pgbr_stored, 1):.1f}x (pgBackRest). "
                + _indexer_note(ctx, index_tail)
            ),
        )
    )
    _cpu_row(ctx, pgdr, pgbr)


def _indexer_note(ctx: Context, tail: float) -> str:
    pending = queue_pending(ctx)
    if pending:
        return (
            f"Each pgdr push queues the segment for its WAL indexer and spawns a detached `pgdr wal-upload --repo "
            f"index`; no indexer ran to completion: {pending} queue entries were left"
        )
    return (
        "Each pgdr push also queues the segment for its WAL indexer (a detached `pgdr wal-upload` running "
        f"pg_waldump), which was still busy {tail:.1f} s after the last push"
    )


def _cpu_row(ctx: Context, pgdr: list[dict[str, Any]], pgbr: list[dict[str, Any]]) -> None:
    ctx.results.add(
        Row(
            key="wal_push_local_cpu",
            operation="1b. the same, CPU time per segment push (user+sys)",
            pgdr=Measure("pgdr wal-push", [s["cpu"] for s in pgdr]),
            anchor=Measure("pgbackrest archive-push (sync, zst)", [s["cpu"] for s in pgbr]),
            target=1.0,
            note=(
                "steadier than wall time when other work shares the cores; the archive_command process, the "
                "children it waits for and the push server's work for it (pgdr's detached indexer/pusher "
                "processes are not counted)"
            ),
        )
    )


# --- diagnostics: where a push's time goes -------------------------------------------------------------


def op_startup_floor(ctx: Context, segments: list[Path]) -> None:
    """Process start-up floors and an import/profile breakdown of one ``pgdr wal-push``."""
    ws, n = ctx.ws, ctx.settings.startup_repeats
    py = str(VENV_BIN / "python")
    probes = {
        "/usr/bin/python3 -c pass": ["/usr/bin/python3", "-c", "pass"],
        "venv python -c pass": [py, "-c", "pass"],
        "venv python -c 'import backend.archive.push'": [py, "-c", "import backend.archive.push"],
        "venv python -c 'import zstandard'": [py, "-c", "import zstandard"],
        "venv python -c 'import boto3'": [py, "-c", "import boto3"],
        "pgdr --version": [ws.pgdr, "--version"],
        "pgbackrest version": [ws.pgbackrest, "version"],
    }
    floors: dict[str, float] = {}
    for label, argv in probes.items():
        times = [run(argv, cwd=ws.cluster.data_dir, env=ws.env).elapsed for _ in range(n)]
        floors[label] = median(times) or 0.0
    no_cache = {k: v for k, v in ws.env.items() if k != "PYTHONPYCACHEPREFIX"}
    times = [run([ws.pgdr, "--version"], cwd=ws.cluster.data_dir, env=no_cache).elapsed for _ in range(n)]
    floors["pgdr --version, no writable __pycache__ (as this checkout runs for postgres)"] = median(times) or 0.0
    ctx.results.details["startup_floor_s"] = floors
    ctx.log("diagnostics: start-up floors " + ", ".join(f"{k}: {v * 1000:.0f} ms" for k, v in floors.items()))

    # A fresh repository for the profiles, so each push does the full work (nothing is deduplicated).
    profile_repo = ws.mkdir("pgdr-profile-repo")
    conf = ws.write_private(
        "pgdr-profile.toml",
        ws.postgres_section() + f'\n[local]\npath = "{profile_repo}"\n',
    )
    segs = copy_segments(ctx, segments[:3], "wal/profile")
    importtime = run(
        [py, "-X", "importtime", "-m", "pgdr_tui", "--config", str(conf), "wal-push", str(segs[0])],
        cwd=ws.cluster.data_dir,
        env=ws.env,
    )
    ctx.results.details["wal_push_importtime_top_ms"] = _top_imports(importtime.stderr)
    profile = run(
        [py, "-m", "cProfile", "-s", "cumulative", "-m", "pgdr_tui", "--config", str(conf), "wal-push", str(segs[1])],
        cwd=ws.cluster.data_dir,
        env=ws.env,
    )
    ctx.results.details["wal_push_cprofile_top"] = _profile_head(profile.stdout, 30)
    wait_pgdr_background(ctx)
    # What the detached uploader that every local push spawns does, run in the foreground once.
    uploader = run(
        [py, "-m", "pgdr_tui", "--config", str(conf), "wal-upload", "--repo", "index", "--quiet"],
        cwd=ws.cluster.data_dir,
        env=ws.env,
        check=False,
    )
    ctx.results.details["index_uploader_probe"] = {
        "argv": "python -m pgdr_tui --config CFG wal-upload --repo index --quiet",
        "returncode": uploader.returncode,
        "elapsed_s": uploader.elapsed,
        "cpu_s": uploader.cpu,
        "stderr_tail": uploader.stderr.strip().splitlines()[-1:] if uploader.stderr.strip() else [],
    }


def _top_imports(stderr: str, n: int = 12) -> dict[str, float]:
    """Top-level modules by cumulative import time (``-X importtime``), in ms."""
    tops: dict[str, float] = {}
    for line in stderr.splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \| (\s*)(\S+)", line)
        if not m or m.group(3):  # nested imports are indented
            continue
        tops[m.group(4)] = tops.get(m.group(4), 0) + int(m.group(2)) / 1000
    ordered = sorted(tops.items(), key=lambda kv: -kv[1])[:n]
    total = sum(tops.values())
    return {"(all top-level imports)": round(total, 1), **{k: round(v, 1) for k, v in ordered}}


def _profile_head(stdout: str, n: int) -> list[str]:
    lines = stdout.splitlines()
    for i, line in enumerate(lines):
        if line.strip().startswith("ncalls"):
            return [ln.rstrip() for ln in lines[i : i + 1 + n]]
    return lines[:n]


# --- operation 3: S3 ---------------------------------------------------------------------------------


def op_wal_push_s3(ctx: Context, segments: list[Path]) -> None:
    ws = ctx.ws
    if not ws.moto_url:
        ws.start_moto()
    s3 = ws.s3_client()
    for bucket in ("bench-barman", "bench-pgdr-zstd", "bench-pgdr-raw"):
        s3.create_bucket(Bucket=bucket)
    barman_env = {
        **ws.env,
        "AWS_ACCESS_KEY_ID": S3_ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": S3_SECRET_KEY,
        "AWS_DEFAULT_REGION": S3_REGION,
    }
    barman_cmd = f"{ws.barman} --cloud-provider aws-s3 --endpoint-url {ws.moto_url} s3://bench-barman/barman bench"
    zstd_conf = ws.pgdr_s3_config("pgdr-s3.toml", "bench-pgdr-zstd", "zstd")
    raw_conf = ws.pgdr_s3_config("pgdr-s3-raw.toml", "bench-pgdr-raw", "none")

    ctx.log(f"op 3: barman-cloud-wal-archive x {len(segments)}")
    barman = push_series(ctx, barman_cmd, segments, env=barman_env)
    ctx.log(f"op 3: pgdr wal-push to S3 (sync, zstd) x {len(segments)}")
    pgdr = push_series(ctx, f"{ws.pgdr} --config {zstd_conf} wal-push", segments)
    ctx.log(f"op 3: pgdr wal-push to S3 (sync, no compression) x {len(segments)}")
    pgdr_raw = push_series(ctx, f"{ws.pgdr} --config {raw_conf} wal-push", segments)

    # One push profiled into a bucket of its own (so it uploads rather than finds the segment archived).
    s3.create_bucket(Bucket="bench-pgdr-profile")
    profile_conf = ws.pgdr_s3_config("pgdr-s3-profile.toml", "bench-pgdr-profile", "zstd")
    cprofile = [str(VENV_BIN / "python"), "-m", "cProfile", "-s", "cumulative", "-m", "pgdr_tui"]
    profile = run(
        [*cprofile, "--config", str(profile_conf), "wal-push", str(segments[1])],
        cwd=ws.cluster.data_dir,
        env=ws.env,
    )
    floor = run(
        [str(VENV_BIN / "python"), "-c", _BOTO_FLOOR, ws.moto_url, str(segments[1])],
        cwd=ws.cluster.data_dir,
        env=ws.env,
    )
    ctx.results.details["wal_push_s3"] = {
        "barman": barman,
        "pgdr_zstd": pgdr,
        "pgdr_none": pgdr_raw,
        "pgdr_cpu_median_s": median([s["cpu"] for s in pgdr]),
        "barman_cpu_median_s": median([s["cpu"] for s in barman]),
        "boto3_floor": floor.stdout.strip(),
        "cprofile_top": _profile_head(profile.stdout, 40),
    }
    ctx.results.add(
        Row(
            key="wal_push_s3",
            operation="3. WAL segment push to S3 (moto), per segment",
            pgdr=Measure("pgdr wal-push, S3 sync, zstd", [s["elapsed"] for s in pgdr]),
            anchor=Measure("barman-cloud-wal-archive (no compression)", [s["elapsed"] for s in barman]),
            target=0.25,
            note=(
                f'S3-only pgdr config with `[archive] sync = ["s3"]`; moto runs on the same 2 cores. '
                f"In-process floor (boto3 import / client / one put_object of a 16 MB segment): {floor.stdout.strip()}."
            ),
        )
    )
    ctx.results.add(
        Row(
            key="wal_push_s3_raw",
            operation="3b. the same, pgdr without compression",
            pgdr=Measure("pgdr wal-push, S3 sync, compression none", [s["elapsed"] for s in pgdr_raw]),
            anchor=Measure("barman-cloud-wal-archive (no compression)", [s["elapsed"] for s in barman]),
            target=0.25,
            note="like for like with barman-cloud's default (no compression)",
        )
    )


_BOTO_FLOOR = """
import sys, time
t0 = time.perf_counter()
import boto3
t1 = time.perf_counter()
c = boto3.session.Session(aws_access_key_id="bench", aws_secret_access_key="bench-secret",
                          region_name="us-east-1").client("s3", endpoint_url=sys.argv[1])
t2 = time.perf_counter()
data = open(sys.argv[2], "rb").read()
c.put_object(Bucket="bench-barman", Key="floor/" + sys.argv[2].rsplit("/", 1)[-1], Body=data)
t3 = time.perf_counter()
print(f"{(t1 - t0) * 1000:.0f} / {(t2 - t1) * 1000:.0f} / {(t3 - t2) * 1000:.0f} ms")
"""
