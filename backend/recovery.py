"""What the CLI and the TUI call for recovery: the timeline, a plan, and the confirmed restore.

Planning and restoring import their modules when called: ``pgdr timeline`` and the console, which
only read the timeline, would otherwise pay for importing the restore machinery on every open.
"""

from __future__ import annotations

import contextlib
import gc
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from backend.archive.index import ensure_indexes
from backend.catalog import Catalog, read_catalog, recovery_timeline
from backend.config import Config
from backend.errors import PgdrError
from backend.manifest import BACKUPS_PREFIX, BackupManifest
from backend.progress import ProgressCallback, no_progress
from backend.repository import Repository, open_repositories
from backend.server import cluster_timeline
from backend.timeline import RecoveryTimeline
from backend.walindex import WalEvent, lineage

if TYPE_CHECKING:
    from backend.restore.plan import RestorePlan
    from backend.restore.run import RestoreReport
    from backend.restore.target import RecoveryTarget


@dataclass
class RecoveryView:
    """The catalog and the timeline built from it, read once and shared by a command."""

    catalog: Catalog
    timeline: RecoveryTimeline
    repositories: list[Repository]
    #: The WAL index's events in LSN order, each record once, each on the timeline whose WAL holds it.
    events: list[WalEvent]
    #: Archived segments not indexed yet (the budget ran out): their times are archive times.
    unindexed: int = 0
    #: Archived segments no stored copy of which pg_waldump can read: archive times, until a copy changes.
    unreadable: int = 0


#: How long a view for reading (``pgdr timeline``, the console) may spend indexing WAL before it answers.
VIEW_INDEX_BUDGET_S = 15.0


def load_view(
    cfg: Config,
    only: str | None = None,
    *,
    on_progress: ProgressCallback = no_progress,
    persist_index: bool = True,
    index_budget_s: float | None = None,
    on_catalog: Callable[[Catalog, list[Repository]], None] | None = None,
) -> RecoveryView:
    """Read the catalog, bring the WAL index up to date, and build the timeline from both.

    ``persist_index=False`` (dry runs) indexes missing segments in memory without storing anything.
    ``index_budget_s`` bounds the indexing (views for reading: the timeline, the console); a restore
    plan passes none, since the segments it replays must be placed by their commit times.
    ``on_catalog`` gets the catalog as soon as it is read: reading the WAL index can take long (a
    cache nobody filled yet), and the console can show a timeline from archive times meanwhile.
    """
    repos = open_repositories(cfg, only)
    with collector_paused():
        catalog = read_catalog(repos)
    if on_catalog is not None:
        on_catalog(catalog, repos)
    indexes = ensure_indexes(
        cfg,
        repos,
        catalog.columns,
        catalog.segment_size,
        on_progress=on_progress,
        persist=persist_index,
        budget_s=index_budget_s,
    )
    with collector_paused():
        timeline = recovery_timeline(catalog, indexes.commit_columns, indexes.damaged_names)
        events = indexes.events(lineage(catalog.histories))
    timeline.events = events
    timeline.current = _running_timeline(cfg, catalog, timeline)
    return RecoveryView(catalog, timeline, repos, events, unindexed=indexes.pending, unreadable=indexes.unreadable)


def _running_timeline(cfg: Config, catalog: Catalog, timeline: RecoveryTimeline) -> int | None:
    """The timeline the configured data directory's cluster is on, when it is this archive's cluster."""
    if not cfg.postgres.data_dir:
        return None
    found = cluster_timeline(Path(cfg.postgres.data_dir))
    if found is None:
        return None
    system, current = found
    if catalog.backups and all(b.manifest.system_identifier != system for b in catalog.backups):
        return None
    return current if current in timeline.timelines else None


class _Collector:
    """Who holds Python's cyclic garbage collector off (threads share it), and whether it was on."""

    lock = threading.Lock()
    holders = 0
    was_enabled = False


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """Hold Python's cyclic garbage collector off while a view's objects are made.

    A year's catalog and timeline are tens of thousands of lasting objects made in one burst, and no
    garbage cycles: the collector would walk the growing heap over and over as they pile up (a tenth
    of the time these steps take; a third of the console's load, which holds it off for the WAL
    index too). Here only the pure computations are covered, not the WAL indexing between them,
    which can run for a long time and make garbage. The last thread out turns the collector back on,
    if it was on.
    """
    with _Collector.lock:
        if _Collector.holders == 0:
            _Collector.was_enabled = gc.isenabled()
            gc.disable()
        _Collector.holders += 1
    try:
        yield
    finally:
        with _Collector.lock:
            _Collector.holders -= 1
            if _Collector.holders == 0 and _Collector.was_enabled:
                gc.enable()


def plan_restore(
    cfg: Config,
    target: RecoveryTarget,
    *,
    backup: str | None = None,
    target_dir: str | None = None,
    port: int | None = None,
    only: str | None = None,
    dry_run: bool = False,
    force: bool = False,
    tablespace_map: dict[str, str] | None = None,
) -> tuple[RecoveryView, RestorePlan]:
    from backend.restore.copies import avoid_damaged_copies
    from backend.restore.plan import make_plan
    from backend.restore.preflight import run_checks

    view = load_view(cfg, only, persist_index=not dry_run)
    plan = make_plan(
        cfg,
        view.catalog,
        view.timeline,
        target,
        backup_name=backup,
        target_dir=target_dir,
        port=port,
        events=view.events,
        tablespace_map=tablespace_map,
    )
    avoid_damaged_copies(plan, view)
    plan.force = force
    plan.checks = run_checks(cfg, plan)
    return view, plan


def perform_restore(
    cfg: Config,
    view: RecoveryView,
    plan: RestorePlan,
    *,
    on_progress: ProgressCallback = no_progress,
    cancel: threading.Event | None = None,
) -> RestoreReport:
    from backend import audit
    from backend.locks import job_lock
    from backend.notify import notify_restore
    from backend.restore.run import execute

    details = {
        "target": plan.target.describe(),
        "backup": plan.backup.name,
        "data_dir": str(plan.data_dir),
        "safety_copy": str(plan.safety_copy) if plan.safety_copy else None,
    }
    audit.record(cfg, "restore", "started", **details)
    try:
        with job_lock(cfg, "restore"):
            for member in plan.chain:
                _check_backup_present(view.repositories, member)
            report = execute(cfg, plan, view.repositories, on_progress=on_progress, cancel=cancel)
    except BaseException as exc:
        audit.record(cfg, "restore", "failed", error=str(exc), **details)
        notify_restore(cfg, f"{plan.target.describe()} from {plan.backup.name}: {exc}", ok=False)
        raise
    notify_restore(cfg, report.render(), ok=report.reached_target)
    audit.record(
        cfg,
        "restore",
        "reached target" if report.reached_target else "stopped short",
        report=report.to_json(),
        **details,
    )
    return report


def _check_backup_present(repos: list[Repository], manifest: BackupManifest) -> None:
    """Refuse, before anything is stopped or moved, a plan whose backup is no longer whole anywhere.

    The catalog behind the plan may be older than the repository: an expire on another host removes
    backups, and the listing cache trusts an S3 listing for up to ``listcache.RELIST_S``. Checked
    under the restore lock (so no expire from this host runs in between); when the backup is gone,
    the cache is told, so planning again lists the repositories afresh.
    """
    from backend import listcache

    wanted = {manifest.key, *(manifest.object_key(o) for o in manifest.objects)}
    for repo in repos:
        if wanted <= {info.key for info in repo.list(f"{BACKUPS_PREFIX}{manifest.name}/")}:
            return
    for repo in repos:
        listcache.invalidate(repo.location())
    raise PgdrError(
        f"backup {manifest.name} is no longer complete in any repository (removed since the catalog was read, "
        "e.g. by `pgdr expire` on another host): nothing was changed; plan the restore again, it will list "
        "the repositories afresh"
    )
