"""The machine a run was measured on: a benchmark figure means nothing without it."""

from __future__ import annotations

import os
import platform
import re
import subprocess
from pathlib import Path
from typing import Any

from bench.proc import PG_BIN, REPO_ROOT


def _out(argv: list[str]) -> str:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False).stdout.strip()
    except OSError:
        return ""


def describe() -> dict[str, Any]:
    cpu = ""
    for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem_kb = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem_kb = int(line.split()[1])
    os_name = ""
    release = Path("/etc/os-release")
    if release.exists():
        for line in release.read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                os_name = line.split("=", 1)[1].strip('"')
    found = re.search(r"\d+\.\d+", _out([str(PG_BIN / "postgres"), "--version"]))
    pg = found.group(0) if found else "unknown"
    pgbr = _out(["pgbackrest", "version"]).replace("pgBackRest ", "")
    barman = _out(["barman-cloud-wal-archive", "--version"]).rsplit(" ", 1)[-1]
    commit = _out(["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"])
    dirty = bool(_out(["git", "-C", str(REPO_ROOT), "status", "--porcelain", "--untracked-files=no"]))
    return {
        "nproc": os.cpu_count(),
        "cpu_model": cpu,
        "ram_gb": round(mem_kb / 1024 / 1024, 1),
        "os": os_name,
        "kernel": platform.release(),
        "postgresql": pg,
        "pgbackrest": pgbr or "not installed",
        "barman_cloud": barman or "not installed",
        "python": platform.python_version(),
        "pgdr_commit": commit,
        "pgdr_dirty": dirty,
        "loadavg_at_start": loadavg(),
    }


def loadavg() -> str:
    """The 1/5/15-minute load average: other work on the same cores skews every figure."""
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])
