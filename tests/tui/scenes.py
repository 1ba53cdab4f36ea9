"""The console's screens as scenes: keys pressed on the fixture repository, for snapshots and screenshots.

The snapshot tests and ``scripts/export_screenshots.py`` use the same scenes, so what the README shows
is what the tests pin. Each scene runs inside ``staged(scene, story)``:

* ``pinned``: what would otherwise change between two runs is fixed: free disk space and the restore
  plan's clock (the safety copy's name is stamped with it), and the state directory is a fresh one
  under the fixture root, so jobs, locks and caches of other tests never show;
* the scene's own ``stage``: state on disk that the console reads, written as the programs that
  own it write it: a restore job folder (``pgdr_tui.restorejob``'s files), the daemon's status file
  (``backend.daemon``'s), or a backup replayed through the backup screen's real code path.

Nothing a stage writes outlives the scene: the next scene (and any test after it) sees the fixture
as ``write_fixture`` left it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import shutil
from collections.abc import Awaitable, Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from unittest import mock
from zoneinfo import ZoneInfo

from textual.pilot import Pilot
from textual.worker import WorkerCancelled

from tests.tui.fixture_repo import NOW, Story

SIZES = ((80, 24), (120, 40))

#: What the plan reports as free on the data directory's filesystem (the real number changes every run).
DISK = (500 << 30, 120 << 30, 380 << 30)
#: The pid written into recorded job and status files (a real one would differ every run).
RESTORE_PID = 48213
DAEMON_PID = 2417


@dataclass(frozen=True)
class Scene:
    name: str
    keys: Callable[[Story], list[str | datetime]]
    #: State on disk (or a replayed job) the scene needs while the app runs; see the module docstring.
    stage: Callable[[Story], AbstractContextManager[None]] | None = field(default=None, compare=False)
    #: Draw with the plain-ASCII glyphs (``PGDR_ASCII=1``).
    ascii_only: bool = False

    def run_before(self, story: Story) -> Callable[[Pilot[Any]], Awaitable[None]]:
        async def run(pilot: Pilot[Any]) -> None:
            await settle(pilot)
            for key in self.keys(story):
                if isinstance(key, datetime):  # "go to" this instant
                    await pilot.press("g")
                    await settle(pilot)
                    await pilot.press(*key.strftime("%Y-%m-%d %H:%M:%S UTC"), "enter")
                else:
                    await pilot.press(key)
                await settle(pilot)
            await settle(pilot)

        return run


async def settle(pilot: Pilot[Any]) -> None:
    """Wait until no worker runs, and none was started by what the last frames did (a screen that
    reads its first state after its first refresh starts its worker then). An exclusive worker replaced
    by a newer one (a catalog reload asked for while the first load ran) ends cancelled, which
    ``wait_for_complete`` raises: wait again."""
    for _ in range(10):
        try:
            await pilot.app.workers.wait_for_complete()
        except WorkerCancelled:
            continue
        # Two frames: a DataTable measures its columns on the first refresh after rows arrive, and its
        # scrollbars follow on the next; a snapshot taken between the two differs from run to run.
        await pilot.pause()
        await pilot.pause()
        if all(worker.is_finished for worker in pilot.app.workers):
            # The workers' last messages (a table's rows) may have been handled in those frames; under
            # load the table measures its columns a frame later still.
            await pilot.pause()
            await pilot.pause()
            return


# --- pinning -------------------------------------------------------------------------------------


class _FrozenDatetime(datetime):
    """``datetime`` whose ``now()`` is the fixture's ``NOW`` (for modules that stamp names with it)."""

    @classmethod
    def now(cls, tz: Any = None) -> _FrozenDatetime:
        frozen = cls.fromtimestamp(NOW.timestamp(), UTC)
        return frozen.astimezone(tz) if tz is not None else frozen.replace(tzinfo=None)


def state_dir(story: Story) -> Path:
    return story.config.parent / "state"


@contextlib.contextmanager
def pinned(story: Story) -> Iterator[None]:
    """Free disk space, the plan's clock and a fresh state directory; see the module docstring."""
    from backend.restore import plan

    state = state_dir(story)
    shutil.rmtree(state, ignore_errors=True)
    state.mkdir(parents=True)
    usage = shutil._ntuple_diskusage(*DISK)
    with (
        mock.patch.dict(os.environ, {"PGDR_STATE_DIR": str(state)}),
        mock.patch.object(shutil, "disk_usage", lambda _path: usage),  # the module the plan calls
        mock.patch.object(plan, "datetime", _FrozenDatetime),
    ):
        yield


@contextlib.contextmanager
def staged(scene: Scene, story: Story) -> Iterator[None]:
    with pinned(story), scene.stage(story) if scene.stage is not None else contextlib.nullcontext():
        yield


# --- a restore, recorded in its job folder -------------------------------------------------------


def _drop_restore(story: Story) -> tuple[Any, Any]:
    """The request the timeline makes at the DROP (just before its transaction) and the backend's plan for it."""
    from backend.config import load_config
    from backend.recovery import load_view
    from backend.restore.plan import make_plan
    from pgdr_tui.request import RestoreRequest

    cfg = load_config(story.config)
    request = RestoreRequest("xid", str(story.drop_xid), exclusive=True, timeline="1")
    view = load_view(cfg, persist_index=False)
    started = NOW - timedelta(minutes=6)
    plan = make_plan(
        cfg, view.catalog, view.timeline, request.target(cfg.restore.timezone), now=started, events=view.events
    )
    return dataclasses.replace(request, backup=plan.backup.name), plan  # the timeline names the backup too


def _write_restore_job(story: Story, *, finished: bool) -> Path:
    """A job folder as ``RestoreJob.start`` and ``pgdr_tui.detached`` write it, mid-replay or finished.

    The plan and (when finished) the report are the backend's own objects rendered by their own
    code; only the progress timestamps and the PostgreSQL facts (where replay stopped) are recorded.
    """
    from backend.restore.run import RestoreReport
    from pgdr_tui.restorejob import REPORT_FOLLOWS, command_line, jobs_dir, write_json

    request, plan = _drop_restore(story)
    started = NOW - timedelta(minutes=6)
    folder = jobs_dir(state_dir(story)) / started.strftime("%Y%m%dT%H%M%S%fZ")
    folder.mkdir(parents=True)
    argv = ["/usr/bin/python3", "-m", "pgdr_tui.detached", "--job-dir", str(folder), "--config", str(story.config)]
    write_json(folder / "request.json", request.to_json())
    write_json(
        folder / "job.json",
        {
            "pid": RESTORE_PID,
            "argv": argv,
            "log": str(folder / "restore.log"),
            "started": started.isoformat(),
            "cluster": "main",
            "config": str(story.config),
            "request": request.to_json(),
        },
    )
    data = plan.data_dir
    tar = plan.backup.size_bytes
    segments = len(plan.wal)
    steps: list[tuple[float, str, int, int | None, str]] = [
        (0, "plan", 0, 1, "planning"),
        (4, "stop", 0, 1, f"stopping the server on {data}"),
        (9, "safety", 0, 1, f"moving {data} aside to {plan.safety_copy}"),
        *((10 + 20 * k, "base backup", tar * k // 10, tar, "unpacking base.tar.zst") for k in range(11)),
        (212, "start", 0, 1, "starting the server to replay WAL"),
    ]
    first = plan.wal[0].segment
    replayed = segments if finished else segments * 2 // 5
    for k in range(1, replayed + 1, max(1, segments // 12)):
        lsn = first.start_lsn + k * (plan.backup.wal_segment_size or 0) - 0x2000
        when = plan.wal[k - 1].last_commit
        if k == segments and finished:
            when = story.drop - timedelta(seconds=2, microseconds=617_000)  # where replay stopped
        upto = f", replayed up to {when:%Y-%m-%d %H:%M:%S} UTC" if when is not None else ""
        steps.append((214 + k * 2.5, "replay", k, segments, f"replaying WAL at {_lsn(lsn)}{upto}"))
    with (folder / "progress.jsonl").open("w") as fh:
        for at, step, done, total, message in steps:
            line = {
                "time": (started + timedelta(seconds=at)).isoformat(),
                "step": step,
                "done": done,
                "total": total,
                "message": message,
            }
            fh.write(json.dumps(line) + "\n")
    log = [
        f"pgdr restore job {folder.name}: {request.describe()}",
        "equivalent command: " + command_line(request, "--yes", config=story.config),
        plan.render(),
    ]
    if finished:
        stop_lsn = _lsn(plan.wal[-1].segment.start_lsn + 8192 - 0x58)
        report = RestoreReport(
            reached_target=True,
            last_commit_time=story.drop - timedelta(seconds=2, microseconds=617_000),
            last_commit_xid=story.drop_xid - 1,
            stopped_at_lsn=stop_lsn,
            stopped_before=f"commit of transaction {story.drop_xid} at {story.drop:%Y-%m-%d %H:%M:%S.%f} UTC",
            stop_reason=f"before commit of transaction {story.drop_xid}",
            new_timeline=3,
            server_state="running (promoted)",
            log_file=data / "log" / f"pgdr-restore-{started + timedelta(seconds=212):%Y%m%dT%H%M%SZ}.log",
            safety_copy=plan.safety_copy,
            data_dir=data,
            base_backup_from=plan.backup_repository,
        )
        text = report.render()
        log += [REPORT_FOLLOWS, text]
        write_json(
            folder / "result.json",
            {
                "ok": True,
                "report": report.to_json(),
                "text": text,
                "error": None,
                "finished": (started + timedelta(seconds=214 + segments * 2.5)).isoformat(),
            },
        )
    (folder / "restore.log").write_text("\n".join(log) + "\n")
    return folder


def _lsn(value: int) -> str:
    from backend.walnames import format_lsn

    return format_lsn(value)


@contextlib.contextmanager
def restore_running(story: Story) -> Iterator[None]:
    """A restore mid-replay whose process is alive: the console opened now re-attaches to it.

    ``alive()`` is the one thing not on disk (a pid and its command line); it is answered "yes" for
    the recorded job rather than by starting a stand-in process, whose pid would differ every run.
    """
    from pgdr_tui.restorejob import RestoreJob

    folder = _write_restore_job(story, finished=False)
    with mock.patch.object(RestoreJob, "alive", lambda self: self.folder == folder):
        yield


@contextlib.contextmanager
def restore_finished(story: Story) -> Iterator[None]:
    """A restore that finished while no console watched it: the console opened now shows its report."""
    _write_restore_job(story, finished=True)
    yield


# --- the daemon's status file --------------------------------------------------------------------


@contextlib.contextmanager
def daemon_running(story: Story) -> Iterator[None]:
    """``daemon-main.json`` as ``backend.daemon`` keeps it, and its lock held as a running daemon holds it.

    The jobs' history agrees with the fixture: backups at the times the catalog shows, the nightly
    verify failing since the WAL gap (no repository holds those segments), the RPO check every five
    minutes.
    """
    import humanize

    from backend.config import load_config
    from backend.daemon import JOBS, Schedule, status_path
    from backend.manifest import BackupManifest
    from backend.repository.local import LocalRepository

    cfg = load_config(story.config)
    repo = LocalRepository(Path(cfg.local.path), "main")

    def newest(kind: str) -> BackupManifest:
        name = max(n for n in story.backups if ("logical" in n) == (kind == "logical"))
        return BackupManifest.from_json(repo.get(f"backups/{name}/manifest.json"), name)

    utc = ZoneInfo("UTC")
    schedules = {
        "base_backup": "2 4,10,16,22 * * *",
        "logical_dump": "32 4 * * *",
        "expire": "0 5 * * *",
        "verify": "15 3 * * *",
        "verify_deep": "15 3 * * 0",
        "rpo_check": "*/5 * * * *",
        "wal_index": "*/15 * * * *",
    }
    gap = f"{_segment(story, story.gap_start)} .. {_segment(story, story.gap_end - timedelta(minutes=10))}"
    lost = (
        f"verify found problems: LOST: {gap} (18 segments): no repository holds it: point-in-time recovery "
        "cannot cross it; take a new base backup to start a restorable stretch after it"
    )

    def run(job: str, took: float, result: str, detail: str, error: str | None = None) -> dict[str, Any]:
        schedule = Schedule(job, schedules[job], utc)
        start = schedule.prev_before(NOW)
        end = start + timedelta(seconds=took)
        record: dict[str, Any] = {
            "schedule": schedules[job],
            "next_run": _iso(schedule.next_after(NOW)),
            "last_start": _iso(start),
            "last_end": _iso(end),
            "result": result,
            "error": error,
            "duration_seconds": took,
            "detail": detail,
            "trigger": "schedule",
            "completed_start": _iso(start),
        }
        if result == "ok":
            record["last_success"] = _iso(end)
        return record

    physical, logical = newest("physical"), newest("logical")

    def stored(m: BackupManifest) -> str:
        return f"{m.name}: {humanize.naturalsize(m.size_bytes)} stored as {humanize.naturalsize(m.stored_bytes)}"

    jobs = {
        "base_backup": run("base_backup", 131.7, "ok", stored(physical)),
        # Not scheduled (the day of incrementals in the fixture was taken by hand): as the daemon records it.
        "incremental_backup": {"schedule": "", "next_run": None},
        "logical_dump": run("logical_dump", 243.2, "ok", stored(logical)),
        "expire": run("expire", 1.9, "ok", f"Expire of cluster main at {NOW:%Y-%m-%d} 05:00:01 UTC"),
        "verify": run("verify", 47.3, "failed", lost.removeprefix("verify found problems: "), lost),
        "verify_deep": run("verify_deep", 402.6, "failed", lost.removeprefix("verify found problems: "), lost),
        "rpo_check": run("rpo_check", 0.4, "ok", "newest archived WAL is 302 s old"),
        "wal_index": run("wal_index", 2.6, "ok", "3 segments indexed, 0 waiting, 0 unreadable"),
    }
    status = {
        "cluster": "main",
        "pid": DAEMON_PID,
        "config": str(story.config),
        "first_started": _iso(story.start),
        "started": _iso(NOW - timedelta(days=4, hours=6, minutes=17)),
        "stopped": None,
        "updated": _iso(NOW - timedelta(minutes=5) + timedelta(seconds=1)),
        "jobs": {job: jobs[job] for job in JOBS},
        "backups": {
            m.kind: {
                "name": m.name,
                "size_bytes": m.size_bytes,
                "stored_bytes": m.stored_bytes,
                "stop_time": _iso(m.stop_time),
            }
            for m in (physical, logical)
        },
        "rpo": {"ok": True, "lag_seconds": 302.0, "checked": _iso(NOW - timedelta(minutes=5))},
    }
    path = status_path(cfg)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.tmp")
    temp.write_text(json.dumps(status, indent=2, default=str))
    os.replace(temp, path)
    # A running daemon holds an exclusive flock on its lock file for its whole life.
    with path.with_suffix(".lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _iso(when: datetime) -> str:
    return when.astimezone(UTC).isoformat(timespec="seconds")


def _segment(story: Story, when: datetime) -> str:
    from backend.walnames import SegmentName
    from tests.tui.fixture_repo import FIRST_SEGMENT, SEGMENT_SIZE

    number = FIRST_SEGMENT + int((when - story.start) / timedelta(minutes=10))
    return SegmentName(1, number, SEGMENT_SIZE).name


# --- a backup, replayed through the backup screen --------------------------------------------------


class _Clock:
    """The scene's time: starts at ``NOW`` and moves only as the replayed backup reports progress."""

    def __init__(self) -> None:
        self.seconds = 0.0

    def now(self) -> datetime:
        return NOW + timedelta(seconds=self.seconds)


@contextlib.contextmanager
def backup_replayed(story: Story) -> Iterator[None]:
    """``Source.backup`` replays what a real physical base backup reports, then lists it as the backend does.

    The progress (a "starting", a "streaming" report every second at about 42 MB/s, a "done") is what
    ``backend.backup.physical`` sends; the manifest is stored with ``BackupManifest.to_json`` beside
    the fixture's and removed when the scene ends. Time is the scene's clock, advanced by the replay,
    so the rate, ETA, elapsed time and log stamps are the same in every run.
    """
    from backend.config import load_config
    from backend.manifest import BackupManifest, StoredObject
    from backend.progress import Progress
    from backend.repository.local import LocalRepository
    from backend.walnames import SegmentName, format_lsn
    from pgdr_tui.source import Source
    from tests.tui.fixture_repo import FIRST_SEGMENT, SEGMENT_SIZE, SYSTEM_ID

    cfg = load_config(story.config)
    repo = LocalRepository(Path(cfg.local.path), "main")
    clock = _Clock()
    name = NOW.strftime("%Y%m%dT%H%M%SZ")
    size, rate = 1_456_203_776, 42_000_000

    def backup(
        self: Source, *, logical: bool, on_progress: Any, cancel: Any, incremental: bool = False
    ) -> BackupManifest:
        estimate = 1_449_000_000
        on_progress(Progress("backup", 0, estimate, f"starting {name}"))
        done = 0
        while done < size:
            clock.seconds += 1.0
            done = min(size, done + rate)
            on_progress(Progress("backup", done, estimate, f"{name}: streaming"))
        clock.seconds += 2.0  # pg_basebackup waits for the WAL to be archived, then the manifest is written
        seg = SegmentName(2, FIRST_SEGMENT + int((NOW - story.start) / timedelta(minutes=10)), SEGMENT_SIZE)
        digest = "5e2d" * 16
        manifest = BackupManifest(
            name=name,
            kind="physical",
            cluster="main",
            system_identifier=SYSTEM_ID,
            pg_version="18.1",
            start_time=NOW,
            stop_time=clock.now(),
            objects=[
                StoredObject("base.tar.zst", size // 9, digest, size - 180_000, "", "zstd"),
                StoredObject("backup_manifest", 180_000, digest, 180_000, digest, "none"),
            ],
            timeline=2,
            start_lsn=format_lsn(seg.start_lsn + 0x28),
            stop_lsn=format_lsn(seg.start_lsn + 0x1000),
            wal_start=seg.name,
            wal_stop=seg.name,
            wal_segment_size=SEGMENT_SIZE,
            file_count=1851,
            pgdr_version="0.1.0",
            extra={"label": f"pgdr {name}", "data_directory": "/var/lib/postgresql/18/main"},
        )
        repo.put(manifest.key, manifest.to_json())
        on_progress(Progress("backup", size, size, f"{name}: done"))
        return manifest

    try:
        with (
            mock.patch.object(Source, "backup", backup),
            mock.patch.object(Source, "now", lambda self: clock.now()),
            mock.patch.object(Source, "monotonic", lambda self: clock.seconds),
        ):
            yield
    finally:
        shutil.rmtree(Path(cfg.local.path) / "main" / "backups" / name, ignore_errors=True)


# --- a verify run, and the record it leaves -------------------------------------------------------


@contextlib.contextmanager
def verify_record_removed(story: Story) -> Iterator[None]:
    """A verify run stores ``verify/<backup>.json``; the fixture is put back as it was afterwards."""
    from backend.config import load_config

    record = Path(load_config(story.config).local.path) / "main" / "verify" / f"{story.whole}.json"
    try:
        yield
    finally:
        record.unlink(missing_ok=True)


def _verify_newest(story: Story) -> list[str | datetime]:
    """On the verify screen: open the list, pick the newest backup (the first after "all"), run it."""
    return ["v", "enter", "down", "enter", "r"]


def _in_a_chain(story: Story) -> list[str | datetime]:
    """An hour after the second incremental of the fixture's chain, zoomed in so each backup has its column."""
    taken = datetime.strptime(story.incrementals[1], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    return [taken + timedelta(hours=1), "plus", "plus"]


SCENES = (
    Scene("timeline", lambda s: []),
    Scene("timeline-incremental", _in_a_chain),
    Scene("timeline-drop", lambda s: [s.drop]),
    Scene("timeline-gap", lambda s: [s.gap_start + timedelta(minutes=40), "plus", "plus"]),
    Scene("plan", lambda s: [s.drop, "d"]),
    Scene("confirm", lambda s: [s.drop, "d", "r"]),
    Scene("restore-progress", lambda s: [], restore_running),
    Scene("restore-report", lambda s: [], restore_finished),
    Scene("backups", lambda s: ["b", "down", "down", "down", "down"]),  # an incremental, with its chain
    Scene("backup", lambda s: ["n", "p"], backup_replayed),
    Scene("verify", _verify_newest, verify_record_removed),
    Scene("daemon", lambda s: ["s"], daemon_running),
    Scene("settings", lambda s: ["c"]),
    Scene("help", lambda s: ["question_mark"]),
    Scene("timeline-ascii", lambda s: [s.drop], ascii_only=True),
)
