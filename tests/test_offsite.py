"""Off-site copies watched: the daemon drains the upload queue on an idle database, one uploader per
queue, stale queue temporaries go, and a repository emptied (or swapped for an empty one) is reported
by ``verify`` (exit 1, Telegram) and ``check`` as the loss it is, not as "nothing archived yet".

Real clusters archiving through the real ``pgdr wal-push`` into a local repository (waited for) and
moto's S3 (queued), the real ``pgdr --daemon`` and command line; the loss rules alone are pure logic.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from backend.archive import queue
from backend.archive.walfile import WalObject, find_archived
from backend.config import Config, load_config
from backend.manifest import BackupManifest
from backend.repository import ObjectInfo, open_repository
from backend.verify.losses import IN_FLIGHT, repository_loss
from backend.verify.report import RepositoryLoss
from backend.walnames import SegmentName, WalKind, wal_kind
from tests.conftest import s3_settings
from tests.harness.cluster import Cluster, clean_env, wait_for
from tests.harness.s3 import MotoEndpoint
from tests.harness.telegram import FakeTelegram
from tests.test_daemon import running_daemon

SEG = 16 * 1024 * 1024
#: Every scheduled job off: whatever the daemon does here, it does on its own, not as a job.
NO_JOBS = "\n[schedule]\n" + "".join(
    f'{job} = ""\n'
    for job in ("base_backup", "logical_dump", "verify", "verify_deep", "expire", "rpo_check", "wal_index")
)


def in_s3(cfg: Config, segment: str) -> bool:
    return bool(find_archived(open_repository(cfg, "s3"), segment))


def queue_folder(cluster: Cluster) -> Path:
    return cluster.local_repo / "main" / "queue" / "s3"


def temporary(folder: Path, segment: str, age: float) -> Path:
    """An empty temporary entry as a killed ``wal-push`` leaves it, ``age`` seconds old."""
    path = folder / f".tmp.{segment}.{os.getpid()}.{os.urandom(4).hex()}"
    path.touch()
    os.utime(path, (time.time() - age, time.time() - age))
    return path


# --- the daemon and the uploaders ----------------------------------------------------------------


def test_the_daemon_uploads_a_queued_segment_of_an_idle_database(
    cluster_s3: Cluster, moto: MotoEndpoint, bucket: str, tmp_path: Path
) -> None:
    cluster = cluster_s3
    cluster.write_config(cluster.base_config(s3=s3_settings(moto, bucket)) + NO_JOBS)
    cfg = load_config(cluster.config_path)
    env = clean_env(PGDR_STATE_DIR=str(tmp_path / "state"))
    with queue.uploader_lock(cfg, "s3", wait=True):  # an uploader at work: any other one must leave at once
        (segment,) = cluster.write_wal(1)
        cluster.wait_archived(segment)
        assert segment in queue.pending(cfg, "s3")
        # A second uploader, as wal-push starts it, neither waits for the lock nor uploads.
        began = time.monotonic()
        second = cluster.pgdr("wal-upload", "--repo", "s3", "--background", env=env, timeout=60)
        assert time.monotonic() - began < 20, "it left at once"
        assert second.stdout == "s3: uploaded 0 WAL file(s)\n"
        assert segment in queue.pending(cfg, "s3") and not in_s3(cfg, segment)
        stale = [temporary(queue_folder(cluster), segment, age=queue.STALE_TEMP_S + 60) for _ in range(3)]
        fresh = temporary(queue_folder(cluster), segment, age=0)
    # The uploaders wal-push started are gone and the database writes nothing: the segment stays queued.
    assert segment in queue.pending(cfg, "s3") and not in_s3(cfg, segment)

    with running_daemon(cluster, env, tmp_path / "daemon.log") as daemon:
        wait_for(
            lambda: in_s3(cfg, segment) and not queue.pending(cfg, "s3"),
            60,
            f"the daemon to upload {segment} without any further WAL",
        )
        wait_for(lambda: not any(p.exists() for p in stale), 30, "the stale temporaries to be removed")
        assert fresh.exists(), "a young temporary may be a push writing its entry right now"
        wait_for(lambda: daemon.saw("", "uploaded 1 queued WAL file(s) to the s3 repository"), 10, "the log line")
        (boot,) = [e for e in daemon.events() if e["message"].startswith("pgdr daemon started")]
        assert boot["fields"]["upload_queues"] == ["s3"]
        code, took = daemon.terminate(timeout=30)
        assert code == 0 and took < 15, (code, took)
    assert daemon.saw("", "removed 3 temporary file(s) a killed process left in the s3 upload queue")


def uploaders(config: Path, target: str) -> list[int]:
    """The ``pgdr wal-upload --repo <target>`` processes of this config (from /proc)."""
    wanted = [str(config).encode(), b"wal-upload", b"--repo", target.encode()]
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            argv = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        if all(arg in argv for arg in wanted):
            found.append(int(cmdline.parent.name))
    return found


def test_pushes_start_one_uploader_while_it_is_on_its_way(cluster_s3: Cluster, moto: MotoEndpoint, bucket: str) -> None:
    """``[archive] server = false``: every segment is a ``wal-push`` process, each starting the S3
    uploader it finds missing. Frozen on their way to the lock (a slow start, stretched), they used to
    be started once per push and then pile up on the lock."""
    cluster = cluster_s3
    cluster.write_config(cluster.base_config(s3=s3_settings(moto, bucket), extra="\n[archive]\nserver = false\n"))
    cfg = load_config(cluster.config_path)
    cluster.stop()
    cluster.start(PGDR_FAULT_STOP="uploader-starting")
    # An uploader the old server's last pushes started lingers a moment; without the fault it would drain.
    wait_for(lambda: not uploaders(cluster.config_path, "s3"), 30, "the old server's uploader to leave")
    try:
        segments = cluster.write_wal(4)
        cluster.wait_archived(segments[-1])
        wait_for(lambda: bool(uploaders(cluster.config_path, "s3")), 30, "the uploader the first push started")
        frozen = uploaders(cluster.config_path, "s3")
        assert len(frozen) == 1, f"{len(frozen)} S3 uploaders for {len(segments)} pushes"
        assert set(segments) <= set(queue.pending(cfg, "s3"))
    finally:  # the indexers froze at the same point
        for pid in uploaders(cluster.config_path, "s3") + uploaders(cluster.config_path, "index"):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
    wait_for(lambda: not queue.pending(cfg, "s3") and in_s3(cfg, segments[-1]), 60, "the uploader, let go, to drain")


def test_a_burst_of_pushes_starts_one_uploader(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Until the uploader it started reaches the lock, wal-push starts no other: twenty pushes, one process."""
    config = tmp_path / "pgdr.toml"
    config.write_text(f'[cluster]\nname = "main"\n[local]\npath = "{tmp_path / "repo"}"\n')
    cfg = load_config(config)
    started: list[tuple[str, ...]] = []
    monkeypatch.setattr(queue, "spawn_pgdr", lambda _cfg, *args, **_kw: started.append(args))
    for _ in range(20):
        queue.ensure_uploader(cfg, ["s3"])
    assert started == [("wal-upload", "--repo", "s3", "--quiet", "--background")]
    # It reached the lock (and, nothing queued, left): the next push starts one again.
    assert queue.drain(cfg, "s3", wait=False) == []
    queue.ensure_uploader(cfg, ["s3"])
    assert len(started) == 2
    # One that died on its way to the lock holds the next pushes back only for a while.
    marker = tmp_path / "repo" / "main" / "queue" / ".s3.starting"
    old = time.time() - queue.STARTING_S - 1
    os.utime(marker, (old, old))
    queue.ensure_uploader(cfg, ["s3"])
    assert len(started) == 3


def test_stale_temporaries_only_in_the_queue_folder_itself(tmp_path: Path) -> None:
    """The daemon runs as root in a folder PostgreSQL's user owns: a link put in place of the queue
    folder must not make it delete another folder's files."""
    config = tmp_path / "pgdr.toml"
    config.write_text(f'[cluster]\nname = "main"\n[local]\npath = "{tmp_path / "repo"}"\n')
    cfg = load_config(config)
    assert queue.remove_stale_temporaries(cfg, "s3") == 0  # no repository yet
    queue.enqueue(cfg, "s3", "000000010000000000000001")
    folder = tmp_path / "repo" / "main" / "queue" / "s3"
    old = temporary(folder, "000000010000000000000002", age=queue.STALE_TEMP_S + 60)
    young = temporary(folder, "000000010000000000000003", age=60)
    assert queue.remove_stale_temporaries(cfg, "s3") == 1
    assert not old.exists() and young.exists() and queue.pending(cfg, "s3") == ["000000010000000000000001"]

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    victim = temporary(elsewhere, "000000010000000000000004", age=queue.STALE_TEMP_S + 60)
    (folder.parent / "index").symlink_to(elsewhere)
    assert queue.remove_stale_temporaries(cfg, "index") == 0
    assert victim.exists()


# --- an emptied repository -----------------------------------------------------------------------


def empty_bucket(moto: MotoEndpoint, bucket: str) -> int:
    client = moto.client()
    keys = [
        o["Key"]
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
        for o in page.get("Contents", [])
    ]
    for start in range(0, len(keys), 1000):
        client.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": k} for k in keys[start : start + 1000]]})
    return len(keys)


def test_an_emptied_bucket_is_a_loss_for_verify_telegram_and_check(
    cluster_s3: Cluster, moto: MotoEndpoint, bucket: str, tmp_path: Path
) -> None:
    cluster = cluster_s3
    with FakeTelegram() as telegram:
        cluster.write_config(
            cluster.base_config(s3=s3_settings(moto, bucket))
            + f'\n[telegram]\nbot_token = "{telegram.token}"\nchat_id = "42"\napi_url = "{telegram.url}"\n'
        )
        cfg = load_config(cluster.config_path)
        env = clean_env(PGDR_STATE_DIR=str(tmp_path / "state"))
        name = json.loads(cluster.pgdr("backup", "--json", env=env).stdout)["name"]
        segments = cluster.write_wal(3)
        cluster.wait_archived(segments[-1])
        wait_for(lambda: in_s3(cfg, segments[-1]) and not queue.pending(cfg, "s3"), 60, "S3 to catch up")
        healthy = cluster.pgdr("verify", env=env, check=False)
        assert healthy.returncode == 0, healthy.stdout
        assert "LOST" not in healthy.stdout
        local_wal = list(open_repository(cfg, "local").list("wal/"))
        newest = max(info.modified for info in local_wal)
        # A segment stored this recently may be a push about to queue it for S3: never a loss yet.
        wait_for(lambda: datetime.now(UTC) - newest > IN_FLIGHT, 30, "the newest segment to be past IN_FLIGHT")

        assert empty_bucket(moto, bucket) > len(local_wal)

        result = cluster.pgdr("verify", env=env, check=False)
        assert result.returncode == 1, result.stdout
        (lost,) = [line.strip() for line in result.stdout.splitlines() if line.startswith("  LOST ")]
        assert lost.startswith("LOST   the s3 repository holds none of the 1 backup and ")
        assert "WAL segments the local repository holds, and its repo.json is gone: emptied, or replaced" in lost
        report = json.loads(cluster.pgdr("verify", "--json", env=env, check=False).stdout)
        (loss,) = report["losses"]
        assert (loss["repository"], loss["other"], loss["empty"], loss["backups"]) == ("s3", "local", True, 1)
        assert loss["segments"] == loss["other_segments"] == len(whole_segments(local_wal)) >= len(segments) + 1
        texts = telegram.wait_for(lambda ts: any(t.startswith("❌") for t in ts), 30, "the verify alert")
        (alert,) = [t for t in texts if t.startswith("❌")][:1]
        assert alert.startswith("❌ pgdr: verify of cluster main found problems")
        assert "the s3 repository holds none of the 1 backup" in alert

        # check says it in one line, with what to do; its own WAL switch refills the bucket with one segment.
        lines = cluster.pgdr("check", "--timeout", "30", env=env, check=False).stdout.splitlines()
        (line,) = [line for line in lines if "the s3 repository" in line]
        assert line.startswith("[FAIL] the s3 repository holds none of the 1 backup and ")
        assert "emptied, or replaced" in line and "`pgdr restore --repo local`" in line and "`pgdr backup`" in line
        assert "reached every repository (local, s3)" in lines[-1], lines

        # Archiving carries on into the bucket: it is no longer empty, and still not whole.
        refilled = verify_losses(cluster, env)
        assert [(x["repository"], x["empty"], x["backups"]) for x in refilled] == [("s3", False, 1)]
        assert refilled[0]["detail"].startswith("the s3 repository lacks ")
        assert "older than anything left in it" in refilled[0]["detail"]

        # The fix the message gives: a new base backup makes s3 restorable on its own again.
        cluster.pgdr("backup", env=env)
        assert verify_losses(cluster, env) == []
        assert name in json.dumps(json.loads(cluster.pgdr("list", "--json", "--repo", "local", env=env).stdout))


def whole_segments(listing: list[ObjectInfo]) -> list[str]:
    names = [obj.filename for info in listing if (obj := WalObject.parse_key(info.key)) is not None]
    return [name for name in names if wal_kind(name) is WalKind.SEGMENT]


def verify_losses(cluster: Cluster, env: dict[str, str]) -> list[dict[str, Any]]:
    report = json.loads(cluster.pgdr("verify", "--json", env=env, check=False).stdout)
    losses: list[dict[str, Any]] = report["losses"]
    return losses


# --- the rules alone -----------------------------------------------------------------------------


def test_repository_loss_rules() -> None:
    """Lag and retention are never a loss; what an emptied or swapped repository lacks is, at once."""
    now = datetime(2024, 6, 1, 12, 0, tzinfo=UTC)
    old, just_now = now - timedelta(hours=2), now - timedelta(seconds=1)

    def held(*numbers: int, at: datetime = old) -> dict[tuple[int, int], datetime]:
        return {(1, n): at for n in numbers}

    def backup(name: str, first: int, at: datetime = old) -> BackupManifest:
        return BackupManifest(
            name=name,
            kind="physical",
            cluster="main",
            system_identifier=1,
            pg_version="15.6",
            start_time=at,
            stop_time=at,
            objects=[],
            timeline=1,
            start_lsn="0/0",
            stop_lsn=f"0/{first * SEG + 100:X}",
            wal_start=SegmentName(1, first, SEG).name,
            wal_stop=SegmentName(1, first, SEG).name,
        )

    def loss(
        local: dict[tuple[int, int], datetime],
        s3: dict[tuple[int, int], datetime],
        *,
        local_backups: tuple[BackupManifest, ...] = (),
        s3_backups: tuple[BackupManifest, ...] = (),
        queued: set[str] | None = None,
        s3_identity: bool = True,
    ) -> RepositoryLoss | None:
        return repository_loss(
            "s3",
            {"local": local, "s3": s3},
            {"local": list(local_backups), "s3": list(s3_backups)},
            identities={"local": True, "s3": s3_identity},
            queued=queued or set(),
            retention_days=30,
            histories={},
            segment_size=SEG,
            now=now,
        )

    everything = held(*range(1, 21))
    b5 = backup("20240601T100000Z", 5, at=old + timedelta(minutes=1))

    emptied = loss(everything, {}, local_backups=(b5,), s3_identity=False)
    assert emptied is not None and emptied.empty and emptied.identity_gone
    assert (emptied.segments, emptied.other_segments, emptied.backups, emptied.other_backups) == (20, 20, 1, 1)
    assert emptied.describe().startswith(
        "the s3 repository holds none of the 1 backup and 20 WAL segments the local repository holds, "
        "and its repo.json is gone: emptied"
    )
    # A new repository whose first uploads are queued is lag, and so is a push between storing and queueing.
    assert loss(everything, {}, queued={SegmentName(1, n, SEG).name for n in range(1, 21)}) is None
    assert loss(held(1, at=just_now), {}) is None
    # Refilled after being emptied (or swapped for another bucket): what is older than anything in it is lost.
    swapped = loss(everything, held(15, 16, 17, 18, 19, 20), local_backups=(b5,))
    assert swapped is not None and not swapped.empty
    assert (swapped.segments, swapped.first, swapped.last) == (
        14,
        SegmentName(1, 1, SEG).name,
        SegmentName(1, 14, SEG).name,
    )
    assert swapped.describe().startswith("the s3 repository lacks 14 WAL segments the local repository holds (")
    assert ", and its backup: emptied and refilled" in swapped.describe()
    no_backups = loss(everything, held(15, 16))
    assert no_backups is not None and ", and" not in no_backups.describe()
    # What its own retention removed is not owed: its oldest kept backup starts at 15.
    assert loss(everything, held(*range(15, 21)), s3_backups=(backup("20240601T103000Z", 15),)) is None
    # Holes between what it holds are wal_continuity's, with their grace.
    assert loss(everything, {**held(*range(1, 10)), **held(*range(11, 21))}) is None
    # All its WAL, but none of the backups taken while it was archiving: they were removed.
    removed = loss(everything, everything, local_backups=(b5,))
    assert removed is not None and (removed.segments, removed.backups) == (0, 1)
    assert "were its backups removed?" in removed.describe()
    # A backup of its own, though not the other's (taken with --repo local?): not a loss.
    assert loss(everything, everything, local_backups=(b5,), s3_backups=(backup("20240601T110000Z", 18),)) is None
    # Backups older than its retention are not owed either.
    ancient = backup("20240401T000000Z", 5, at=now - timedelta(days=60))
    assert loss(everything, everything, local_backups=(ancient,)) is None
