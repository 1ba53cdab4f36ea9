"""What a restore needs from the host, checked before the server is stopped.

A restore in place stops the server first. Everything it needs after that (moving the data directory
aside, writing its marker beside it, owning the files, room for the backup and its WAL, running the
server as its owner, asking the restored server how far it got) is checked here while nothing has
changed yet: a missing permission found after the stop leaves production down at 3 a.m. The dry run
shows the same checks, and the confirmed restore runs them again right before it stops anything.
"""

from __future__ import annotations

import os
import pwd
import shutil
import stat
from pathlib import Path
from typing import TYPE_CHECKING

from backend import server
from backend.config import Config
from backend.errors import PgdrError
from backend.postgres import connect_params, owner_of
from backend.restore.checks import Check
from backend.restore.disk import existing_parent
from backend.restore.marker import unfinished_restore

if TYPE_CHECKING:
    from backend.restore.plan import RestorePlan


def user_name(uid: int | None = None) -> str:
    uid = os.geteuid() if uid is None else uid
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def run_checks(cfg: Config, plan: RestorePlan) -> list[Check]:
    """Every check, failed or not; only reads the filesystem and (in place) asks the running server."""
    checks = [_unfinished(plan), _identity(plan), _directory(plan), _owner(cfg, plan), _space(plan)]
    if plan.tablespaces:
        checks.append(_tablespaces(cfg, plan))
    if plan.in_place:
        checks.append(_connection(cfg, plan))
    return checks


def refuse_unless_ready(cfg: Config, plan: RestorePlan) -> None:
    """Raise, naming the first failed check, before anything is stopped or moved."""
    failed = [c for c in run_checks(cfg, plan) if not c.ok]
    if failed:
        running = " and the server keeps running" if plan.in_place else ""
        raise PgdrError(f"cannot restore: {failed[0].name}: {failed[0].detail}; nothing was changed{running}")


def _unfinished(plan: RestorePlan) -> Check:
    """A restore over a half-restored directory would bury where the real data is: only when told to."""
    unfinished = unfinished_restore(plan.data_dir) if plan.in_place else None
    if unfinished is None:
        return Check("earlier restores", True, "none unfinished")
    if plan.force:
        kept = [str(unfinished.safety_copy)] if unfinished.safety_copy else []
        kept += [str(copy) for copy in unfinished.tablespaces.values()]
        where = f" (still kept at {', '.join(kept)})" if kept else ""
        return Check(
            "earlier restores",
            True,
            f"restoring over the half-restored directory of the unfinished restore from backup "
            f"{unfinished.backup} (--force); the data from before it is not touched{where}",
            warning=True,
        )
    return Check(
        "earlier restores",
        False,
        f"{unfinished.describe()}; roll back first, or restore over it with --force",
    )


def _identity(plan: RestorePlan) -> Check:
    """A restore in place replaces this cluster with its own past: never with another cluster's backup.

    A config pointing at another cluster's repository (a copied config, a shared bucket prefix)
    would otherwise restore that cluster over this one's data directory.
    """
    control = server.control_identity(plan.data_dir) if plan.in_place else None
    if control is None or not plan.backup.system_identifier:
        return Check("cluster", True, f"backup {plan.backup.name} is of cluster {plan.backup.cluster}")
    if control[0] != plan.backup.system_identifier:
        return Check(
            "cluster",
            False,
            f"{plan.data_dir} holds the cluster with system identifier {control[0]}, and backup "
            f"{plan.backup.name} is of another one ({plan.backup.system_identifier}): check the config's "
            "repositories, or to replace this cluster with that one move its data directory away first",
        )
    return Check("cluster", True, f"{plan.data_dir} and backup {plan.backup.name} are the same cluster")


def _directory(plan: RestorePlan) -> Check:
    """Where the restore writes: the data directory's parent (safety copy, marker) or the new directory's."""
    me = user_name()
    data_dir = plan.data_dir
    if not plan.in_place:
        parent = existing_parent(data_dir)
        if not os.access(parent, os.W_OK | os.X_OK):
            return Check(
                "data directory",
                False,
                f"{parent} is not writable by {me}: make it writable for {me}, or give a directory {me} can create",
            )
        return Check("data directory", True, f"{data_dir} can be created by {me}")
    parent = existing_parent(data_dir.parent)
    if plan.safety_copy is not None and os.path.ismount(data_dir):
        return Check(
            "data directory",
            False,
            f"{data_dir} is a mount point, so it cannot be moved aside as the safety copy: restore beside with "
            "--target-dir DIR, or keep the data directory in a folder below the mount point",
        )
    if not os.access(parent, os.W_OK | os.X_OK) or _sticky_denies(parent, data_dir):
        return Check(
            "data directory",
            False,
            f"{parent} is not writable by {me}, and a restore in place moves the data directory aside there "
            f"(the safety copy) and notes its progress there: make it writable for {me} (chown {me} {parent}), "
            "run pgdr as root, or restore beside with --target-dir DIR",
        )
    if plan.safety_copy is None:
        return Check("data directory", True, f"{data_dir} can be created by {me}")
    return Check("data directory", True, f"{data_dir} can be moved aside to {plan.safety_copy.name} by {me}")


def _sticky_denies(parent: Path, child: Path) -> bool:
    """In a sticky directory (/tmp) only the owner of an entry, or of the directory, may rename it."""
    me = os.geteuid()
    try:
        parent_st, child_st = parent.stat(), child.stat()
    except OSError:
        return False
    return bool(parent_st.st_mode & stat.S_ISVTX) and me not in (0, parent_st.st_uid, child_st.st_uid)


def _owner(cfg: Config, plan: RestorePlan) -> Check:
    """PostgreSQL runs only as the owner of its data directory, and never as root."""
    me = os.geteuid()
    try:
        owner = server_owner(cfg, plan)
    except PgdrError as exc:
        return Check("server user", False, str(exc))
    if owner is not None:
        return Check("server user", True, f"pgdr runs as root; the restored server runs as {user_name(owner[0])}")
    if plan.data_dir.exists():
        uid = plan.data_dir.stat().st_uid
        if uid != me:
            return Check(
                "server user",
                False,
                f"{plan.data_dir} belongs to {user_name(uid)} and pgdr runs as {user_name()}: run pgdr as the "
                f"cluster's owner (runuser -u {user_name(uid)} -- pgdr ...) or as root",
            )
    return Check("server user", True, f"the restored server runs as {user_name()}, who runs pgdr")


def server_owner(cfg: Config, plan: RestorePlan) -> tuple[int, int] | None:
    """Who must own the restored files when pgdr is root (None: pgdr is not root, and the server runs as it).

    The replaced directory's owner, else its parent's, the configured data directory's or the
    repository's, else ``postgres``: PostgreSQL never runs as root.
    """
    if os.geteuid() != 0:
        return None
    for candidate in (
        plan.data_dir,
        plan.data_dir.parent,
        Path(cfg.postgres.data_dir or "/nonexistent"),
        Path(cfg.local.path or "/nonexistent"),
    ):
        if candidate.exists() and owner_of(candidate)[0] != 0:
            return owner_of(candidate)
    try:
        user = pwd.getpwnam("postgres")
    except KeyError:
        raise PgdrError(
            f"pgdr runs as root, {plan.data_dir} and its parent belong to root, and there is no postgres user to "
            "run the restored server as: chown the data directory's parent to the server's user"
        ) from None
    return user.pw_uid, user.pw_gid


def _tablespaces(cfg: Config, plan: RestorePlan) -> Check:
    """Every tablespace's destination is free (or is the current one, moved aside) and can be written."""
    import humanize

    from backend.restore.tablespaces import problems, space_by_device

    running = Path(cfg.postgres.data_dir).absolute() if cfg.postgres.data_dir else None
    found = problems(plan.tablespaces, plan.data_dir, running)
    home = existing_parent(plan.data_dir).stat().st_dev
    for device, (where, need) in space_by_device(plan.tablespaces).items():
        free = shutil.disk_usage(where).free
        if device != home and need > free:
            found.append(
                f"the tablespaces restored onto {where}'s file system need {humanize.naturalsize(need)} and "
                f"{humanize.naturalsize(free)} is free: free some, or map them elsewhere with --tablespace-map"
            )
    if found:
        return Check("tablespaces", False, "; ".join(found))
    return Check("tablespaces", True, ", ".join(p.describe() for p in plan.tablespaces))


def _space(plan: RestorePlan) -> Check:
    import humanize

    where = existing_parent(plan.data_dir)
    need, free = humanize.naturalsize(plan.space_needed), humanize.naturalsize(plan.space_free)
    if plan.space_needed > plan.space_free:
        return Check(
            "disk space",
            False,
            f"the backup and its WAL need {need} on {where} and {free} is free: free some, or restore elsewhere "
            "with --target-dir",
        )
    return Check("disk space", True, f"{need} needed, {free} free on {where}")


def _connection(cfg: Config, plan: RestorePlan) -> Check:
    """The report asks the restored server how far replay got, the way the config says to connect.

    Tried on the running server (a restored one listens the same way); a server that is down cannot
    be asked, and that is no reason to refuse a restore.
    """
    import psycopg

    if not server.postmaster_running(plan.data_dir):
        return Check("connection", True, "not tried: the server is not running")
    try:
        with psycopg.connect(**connect_params(cfg, timeout=5, application="pgdr-restore")) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        return Check("connection", False, connection_problem(cfg, next(iter(str(exc).strip().splitlines()), "")))
    return Check("connection", True, "the server answers as the config says")


def connection_problem(cfg: Config, reason: str) -> str:
    """Why pgdr cannot ask the server, with the fix: peer authentication means pgdr runs as the wrong user."""
    if "peer authentication failed" in reason.lower():
        user = cfg.postgres.user or user_name()
        return (
            f"{reason}: the server lets only the OS user {user} connect as {user} over the socket; run pgdr as the "
            f"cluster's owner (runuser -u {user} -- pgdr ...), or set [postgres] host, user and password in "
            f"{cfg.where()} the way pg_hba.conf allows"
        )
    return f"{reason}; check [postgres] host, port and user in {cfg.where()}"
