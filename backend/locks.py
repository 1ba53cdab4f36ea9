"""Job locks: one backup (or expire, or restore) per cluster at a time: daemon and operator, any user, any host.

Every lock lives in the repositories, where everyone who writes to them looks, never in one user's
state dir. A local repository holds an flock on ``locks/<name>.lock``: root's ``pgdr backup`` and
the daemon running as postgres open the same file, and a killed holder releases it, so a crash never
leaves a stale lock behind.

An S3 repository holds a lock object under the same key: JSON naming the holder (job, user, host,
pid) and the end of its lease. It is created with a conditional write (If-None-Match), so of two
takers exactly one wins, then read back (a store that ignored the condition shows the winner's
token), renewed by a thread while held, and deleted at the end. A killed holder cannot delete it,
so a lock whose holder is gone is taken over, again with a conditional write (If-Match, naming the
version that was judged stale). Gone means: on the same machine (same boot, same pid namespace),
that its process no longer exists; elsewhere, that its lease ended more than ``SKEW`` ago, since
clocks differ between hosts.

With both repositories both locks are taken, the local one first. When S3 cannot be reached, a job
that holds the local lock goes on with a warning: a restore from the local repository must not
depend on S3 being up, and a job that writes to S3 fails on its own.
"""

from __future__ import annotations

import contextlib
import fcntl
import getpass
import json
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from backend.config import Config
from backend.errors import PgdrError, RepositoryError

if TYPE_CHECKING:
    from backend.repository.s3 import S3Repository

log = logging.getLogger("pgdr")

#: Jobs that must not run together: a backup during an expire could lose the WAL it needs.
EXCLUSIVE = "repository"
#: Seconds an S3 lock holds without renewal; it is renewed every ``RENEW`` seconds.
LEASE = 120.0
RENEW = 30.0
#: How far another host's clock may be behind before its expired lease counts as gone.
SKEW = 60.0


@contextlib.contextmanager
def job_lock(cfg: Config, job: str, *, name: str = EXCLUSIVE, wait: float = 0.0) -> Iterator[None]:
    """Hold the lock ``name`` for ``job`` in every repository; wait up to ``wait`` seconds, then refuse clearly."""
    deadline = time.monotonic() + wait
    with contextlib.ExitStack() as stack:
        if cfg.local.path:
            stack.enter_context(_local_lock(cfg, job, name, deadline))
        if cfg.s3.bucket:
            stack.enter_context(_s3_lock(cfg, job, name, deadline, optional=bool(cfg.local.path)))
        yield


def _refusal(cfg: Config, job: str, name: str, holder: str, where: str = "") -> PgdrError:
    return PgdrError(
        f"cannot start {job}: {holder} holds the {cfg.cluster.name} {name} lock{where}; "
        "wait for it to finish (pgdr status) and retry"
    )


@contextlib.contextmanager
def _local_lock(cfg: Config, job: str, name: str, deadline: float) -> Iterator[None]:
    from backend.repository.local import LocalRepository

    fd = LocalRepository(cfg.local.path, cfg.cluster.name).lock_file(f"locks/{name}.lock")
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another pgdr process"
                    raise _refusal(cfg, job, name, holder) from None
                time.sleep(0.2)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{job} (pid {os.getpid()}, since {time.strftime('%Y-%m-%d %H:%M:%S %Z')})".encode(), 0)
        yield
    finally:
        os.close(fd)


@contextlib.contextmanager
def _s3_lock(cfg: Config, job: str, name: str, deadline: float, *, optional: bool) -> Iterator[None]:
    from backend.repository.s3 import S3Repository

    repo = S3Repository.from_config(cfg)
    lock = S3Lock(repo, f"locks/{name}.lock", job)
    try:
        while (holder := lock.take()) is not None:
            if time.monotonic() >= deadline:
                raise _refusal(cfg, job, name, describe(holder), f" in {repo.location()}")
            time.sleep(1.0)
    except RepositoryError as exc:
        if not optional:
            raise
        log.warning("%s goes on without the lock in the S3 repository (it holds the local one): %s", job, exc)
        held = False
    else:
        held = True
    failed = True
    try:
        yield
        failed = False
    finally:
        if held:
            lock.release(quiet=failed)


class S3Lock:
    """One lock object in an S3 repository: taken, renewed while held, released (see the module docstring)."""

    def __init__(self, repo: S3Repository, key: str, job: str) -> None:
        self.repo, self.key = repo, key
        self.record: dict[str, Any] = {
            "token": secrets.token_hex(16),
            "job": job,
            "user": _user(),
            "host": socket.gethostname(),
            "machine": machine(),
            "pid": os.getpid(),
            "started": started(os.getpid()),
            "since": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        self._etag: str | None = None
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None

    def _body(self) -> bytes:
        return json.dumps({**self.record, "expires": time.time() + LEASE}).encode()

    def take(self) -> dict[str, Any] | None:
        """Take the lock and start renewing it: None; or the record of whoever holds it."""
        found = self.repo.read_tagged(self.key)
        if found is not None:
            holder = parse(found[0])
            if not gone(holder):
                return holder
        etag = self.repo.put_if(self.key, self._body(), etag=found[1] if found is not None else None)
        check = self.repo.read_tagged(self.key)
        if etag is None or check is None or parse(check[0]).get("token") != self.record["token"]:
            return parse(check[0]) if check is not None else {}
        self._etag = check[1]
        self._renewer = threading.Thread(target=self._renew, name="pgdr-lock-renewer", daemon=True)
        self._renewer.start()
        return None

    def _renew(self) -> None:
        while not self._stop.wait(RENEW):
            try:
                etag = self.repo.put_if(self.key, self._body(), etag=self._etag)
            except PgdrError as exc:
                log.warning("could not renew the lock %s (retrying): %s", self.repo.location() + "/" + self.key, exc)
                continue
            if etag is None:
                log.error(
                    "the lock %s was taken over by another pgdr (this one's lease ran out): %s no longer "
                    "excludes other jobs; check `pgdr status` and the network to S3",
                    self.repo.location() + "/" + self.key,
                    self.record["job"],
                )
                return
            self._etag = etag

    def release(self, *, quiet: bool = False) -> None:
        """Stop renewing and delete the lock object, if it is still this holder's.

        ``quiet`` after a failed job: its own error already tells of trouble with S3, and a lock left
        behind only delays the next job (at once taken over on this machine, after its lease elsewhere).
        """
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join()
        try:
            found = self.repo.read_tagged(self.key)
            if found is not None and parse(found[0]).get("token") == self.record["token"]:
                self.repo.remove(self.key)
        except PgdrError as exc:
            say = log.info if quiet else log.warning
            say("could not release the lock in %s (it lapses in %.0f s): %s", self.repo.location(), LEASE, exc)


def parse(blob: bytes) -> dict[str, Any]:
    """A lock object's record; {} for one that is not a record (so nobody's, and taken over)."""
    try:
        record = json.loads(blob)
    except ValueError:
        return {}
    return record if isinstance(record, dict) else {}


def describe(holder: dict[str, Any]) -> str:
    if not holder.get("job"):
        return "another pgdr process"
    return (
        f"{holder['job']} (pid {holder.get('pid', '?')} on {holder.get('host', '?')} as {holder.get('user', '?')}, "
        f"since {holder.get('since', '?')})"
    )


def gone(holder: dict[str, Any]) -> bool:
    """Whether the holder of a lock object no longer holds it (see the module docstring)."""
    here = machine()
    if here and holder.get("machine") == here and isinstance(holder.get("pid"), int):
        alive = _alive(holder["pid"], holder.get("started"))
        if alive is not None:
            return not alive
    expires = holder.get("expires")
    return not isinstance(expires, int | float) or time.time() > expires + SKEW


def machine() -> str:
    """This boot of this machine and this pid namespace: where a pid names one process; "" unknown."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as fh:
            boot = fh.read().strip()
        return f"{boot}/{os.stat('/proc/self/ns/pid').st_ino}"
    except OSError:
        return ""


def started(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks after boot): a reused pid has another; None unknown."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return int(fh.read().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def _alive(pid: int, start: object) -> bool | None:
    """Whether the process that took a lock on this machine still runs; None when it cannot be told."""
    now = started(pid)
    if now is not None:
        return now == start
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return None  # runs, but /proc hides it (hidepid): its start cannot be compared
    return None


def _user() -> str:
    try:
        return os.environ.get("SUDO_USER") or getpass.getuser()
    except (KeyError, OSError):
        return str(os.getuid())
