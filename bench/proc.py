"""Running programs the way the benchmark needs: as the server user, timed, with their peak memory.

A process is timed from just before ``fork`` to ``wait4`` returning, like PostgreSQL's archiver sees an
``archive_command``. ``wait4`` also gives the CPU time and the peak RSS (the largest of the process and
the descendants it waited for).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SERVER_USER = "postgres"
PG_BIN = Path(os.environ.get("PGDR_BENCH_PG_BIN", "/usr/lib/postgresql/15/bin"))
REPO_ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = REPO_ROOT / ".venv" / "bin"


class BenchError(RuntimeError):
    """A step of the benchmark failed; the message says which and shows the program's output."""


@dataclass
class Run:
    argv: list[str]
    returncode: int
    elapsed: float
    cpu: float
    maxrss_kb: int
    stdout: str
    stderr: str
    timed_out: bool = False

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out


def server_account() -> pwd.struct_passwd:
    if os.geteuid() == 0:
        return pwd.getpwnam(SERVER_USER)
    return pwd.getpwuid(os.geteuid())


def chown_to_server(path: Path, *, recursive: bool = False) -> None:
    if os.geteuid() != 0:
        return
    acct = server_account()
    paths = [path]
    if recursive:
        paths += list(path.rglob("*"))
    for p in paths:
        os.lchown(p, acct.pw_uid, acct.pw_gid)


def server_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """A clean environment for the server user: nothing of the caller's PG*/AWS*/PGDR* settings."""
    acct = server_account()
    env = {
        "PATH": f"{PG_BIN}:/usr/local/bin:/usr/bin:/bin",
        "HOME": acct.pw_dir,
        "USER": acct.pw_name,
        "LOGNAME": acct.pw_name,
        "LANG": "C.UTF-8",
        "TZ": "UTC",
    }
    env.update(extra or {})
    return env


def run(
    argv: Sequence[str] | str,
    *,
    as_server: bool = True,
    cwd: Path | str | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float | None = None,
    check: bool = True,
    shell: bool = False,
    what: str = "",
) -> Run:
    """Run one program to completion (as the server user when we are root) and measure it."""
    args: list[str] = ["/bin/sh", "-c", argv] if shell else list(argv)  # type: ignore[list-item]
    kwargs: dict[str, Any] = {}
    if as_server and os.geteuid() == 0:
        acct = server_account()
        kwargs.update(user=acct.pw_uid, group=acct.pw_gid, extra_groups=[])
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            cwd=cwd,
            env=dict(env) if env is not None else server_env(),
            start_new_session=True,
            **kwargs,
        )
        timed_out = threading.Event()
        timer = None
        if timeout is not None:

            def kill() -> None:
                timed_out.set()
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)

            timer = threading.Timer(timeout, kill)
            timer.daemon = True
            timer.start()
        _, status, usage = os.wait4(proc.pid, 0)
        elapsed = time.perf_counter() - start
        if timer is not None:
            timer.cancel()
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        result = Run(
            argv=args,
            returncode=proc.returncode,
            elapsed=elapsed,
            cpu=usage.ru_utime + usage.ru_stime,
            maxrss_kb=usage.ru_maxrss,
            stdout=out.read().decode(errors="replace"),
            stderr=err.read().decode(errors="replace"),
            timed_out=timed_out.is_set(),
        )
    if check and not result.ok:
        why = f"timed out after {timeout:.0f} s" if result.timed_out else f"exited {result.returncode}"
        raise BenchError(f"{what or ' '.join(args)} {why}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}".rstrip())
    return result


def need(program: str, hint: str) -> str:
    """The absolute path of a required program, or a clear error naming the set-up step."""
    path = program if os.path.isabs(program) else shutil.which(program)
    if not path or not os.access(path, os.X_OK):
        raise BenchError(f"{program} is not installed: {hint}")
    return path


def wait_for(condition: object, timeout: float, what: str, interval: float = 0.05) -> float:
    """Poll ``condition()`` until true; returns the seconds waited; raises BenchError at the deadline."""
    start = time.monotonic()
    while not condition():  # type: ignore[operator]
        if time.monotonic() - start > timeout:
            raise BenchError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)
    return time.monotonic() - start


def cpu_busy(interval: float = 1.0) -> float:
    """The fraction of all cores' time spent busy over ``interval`` (from /proc/stat's first line)."""

    def sample() -> tuple[int, int]:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        idle = fields[3] + fields[4]  # idle + iowait
        return sum(fields), idle

    total0, idle0 = sample()
    time.sleep(interval)
    total1, idle1 = sample()
    return 1.0 - (idle1 - idle0) / max(total1 - total0, 1)


def wait_quiet(threshold: float = 0.1, timeout: float = 180) -> tuple[float, float]:
    """Wait until the cores are idle (busy below ``threshold`` over a second): what earlier operations
    left running (servers checkpointing, background indexers) must not be timed with a CPU-bound open.
    Returns (seconds waited, the last busy fraction); gives up at ``timeout`` and says so in the results."""
    start = time.monotonic()
    busy = cpu_busy()
    while busy >= threshold and time.monotonic() - start < timeout:
        busy = cpu_busy()
    return time.monotonic() - start, busy
