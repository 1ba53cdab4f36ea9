"""``pgdr verify`` against a real cluster, real archiving and a real S3 endpoint: damage is done to the
stored bytes by hand, exactly as a disk or an operator would, and verify must name the bad copy."""

from __future__ import annotations

import errno
import json
import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from backend.archive import queue
from backend.archive.walfile import find_archived
from backend.config import Config, load_config
from backend.manifest import BackupManifest
from backend.repository import open_repositories, open_repository
from backend.restore import unpack
from backend.verify.command import verify
from backend.verify.records import last_verified
from backend.verify.rehearsal import HOST_FAILURES
from backend.verify.report import VerifyReport
from backend.verify.wal import wal_continuity
from backend.walnames import SegmentName
from tests.conftest import on_every_version
from tests.harness.cluster import Cluster, wait_for

SEG = 16 * 1024 * 1024


def run_verify(cluster: Cluster, *args: str) -> tuple[int, dict[str, Any], str]:
    """``pgdr verify --json``: exit code, the report, and the human rendering of the same run's state."""
    result = cluster.pgdr("verify", "--json", *args, check=False, timeout=300)
    assert result.returncode in (0, 1), result.stderr
    return result.returncode, json.loads(result.stdout), result.stderr


def backup(cluster: Cluster, *args: str) -> str:
    return str(json.loads(cluster.pgdr("backup", "--json", *args).stdout)["name"])


def entry(report: dict[str, Any], name: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = [b for b in report["backups"] if b["name"] == name]
    assert len(found) == 1, name
    return found[0]


def wal_of(report: dict[str, Any], repo: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = [w for w in report["wal"] if w["repository"] == repo]
    assert len(found) == 1, repo
    return found[0]


def listed(cluster: Cluster) -> list[dict[str, Any]]:
    """The backups ``pgdr list --json`` shows."""
    backups: list[dict[str, Any]] = json.loads(cluster.pgdr("list", "--json").stdout)["backups"]
    return backups


def list_rows(cluster: Cluster, *names: str) -> list[str]:
    """The rows of ``pgdr list``'s backup table naming these backups (the header says LAST VERIFIED)."""
    text = cluster.pgdr("list").stdout
    assert "LAST VERIFIED (UTC)" in text
    rows = [line.rstrip() for line in text.splitlines() if any(line.strip().startswith(n) for n in names)]
    assert len(rows) == len(names), text
    return rows


def config(cluster: Cluster) -> Config:
    return load_config(cluster.config_path)


def archive_segments(cluster: Cluster, count: int) -> list[str]:
    cluster.sql("CREATE TABLE IF NOT EXISTS filler (x int)")
    names = []
    for _ in range(count):
        cluster.sql("INSERT INTO filler SELECT generate_series(1, 100)")
        names.append(cluster.switch_wal())
    cluster.wait_archived(names[-1])
    return names


def in_s3(cluster: Cluster, segment: str) -> bool:
    return bool(find_archived(open_repository(config(cluster), "s3"), segment))


def test_good_backups_pass_and_the_result_is_stored(cluster_s3: Cluster) -> None:
    cluster_s3.sql("CREATE TABLE loans AS SELECT g AS id FROM generate_series(1, 1000) g")
    physical = backup(cluster_s3)
    logical = backup(cluster_s3, "--logical")
    archive_segments(cluster_s3, 2)
    assert {b["name"]: b["last_verified"] for b in listed(cluster_s3)} == {physical: None, logical: None}
    assert all(line.rstrip().endswith(" never") for line in list_rows(cluster_s3, physical, logical))

    result = cluster_s3.pgdr("verify")
    assert result.returncode == 0
    lines = result.stdout.splitlines()
    assert lines[0].endswith(": OK"), result.stdout
    assert any(physical in line and line.strip().startswith("ok") for line in lines)
    assert any(logical in line and line.strip().startswith("ok") for line in lines)

    code, report, _ = run_verify(cluster_s3, "--full")  # the run above remembers what it read: read it all again
    assert code == 0 and report["ok"]
    assert entry(report, physical)["repositories"] == ["local", "s3"]
    assert entry(report, physical)["objects_checked"] == 4  # base.tar.zst + backup_manifest, twice
    assert wal_of(report, "local")["verified_objects"] >= 1  # the backup's consistency WAL was decoded

    # Stored beside the backups, readable back by what the catalog and the console use.
    assert (cluster_s3.local_repo / "main" / "verify" / f"{physical}.json").is_file()
    repos = open_repositories(config(cluster_s3))
    for name in (physical, logical):
        record = last_verified(repos, name)
        assert record is not None and record["ok"] is True and record["level"] == "checksums"
        assert datetime.fromisoformat(record["time"]) > datetime.now(UTC) - timedelta(minutes=5)
    s3_record = last_verified(repos[1], physical)
    assert s3_record is not None and s3_record["repository"] == "s3" and s3_record["copy_ok"] is True
    assert last_verified(repos, "19990101T000000Z") is None

    # `pgdr list` says when and how each backup was last verified, and the verdict.
    shown = {b["name"]: b["last_verified"] for b in listed(cluster_s3)}
    for name in (physical, logical):
        record = last_verified(repos, name)
        assert record is not None
        assert shown[name] == {
            "time": record["time"],
            "level": "checksums",
            "ok": True,
            "repository": record["repository"],
            "last_deep": None,
        }
    verified_at = datetime.fromisoformat(shown[physical]["time"])
    for row in list_rows(cluster_s3, physical, logical):
        assert row.endswith(f"{verified_at:%Y-%m-%d %H:%M} checksums ok"), row


def test_bad_copies_are_named_and_the_good_copy_is_not(cluster_s3: Cluster) -> None:
    name = backup(cluster_s3)
    local_tar = cluster_s3.local_repo / "main" / "backups" / name / "base.tar.zst"
    blob = bytearray(local_tar.read_bytes())
    blob[len(blob) // 2] ^= 0x01  # one flipped bit in the middle of the local copy
    local_tar.write_bytes(bytes(blob))

    result = cluster_s3.pgdr("verify", check=False)
    assert result.returncode == 1, result.stdout
    assert "PROBLEMS FOUND" in result.stdout
    assert f"BAD    backup {name}" in result.stdout
    assert "local: base.tar.zst: checksum" in result.stdout
    assert "s3: copy ok" in result.stdout

    code, report, _ = run_verify(cluster_s3, name)
    (problem,) = entry(report, name)["problems"]
    assert (problem["repository"], problem["object"], problem["kind"]) == ("local", "base.tar.zst", "checksum")
    repos = open_repositories(config(cluster_s3))
    local_record, s3_record = last_verified(repos[0], name), last_verified(repos[1], name)
    assert local_record is not None and local_record["ok"] is False and local_record["copy_ok"] is False
    assert s3_record is not None and s3_record["copy_ok"] is True
    (listed_backup,) = listed(cluster_s3)
    assert (listed_backup["last_verified"]["level"], listed_backup["last_verified"]["ok"]) == ("checksums", False)
    (row,) = list_rows(cluster_s3, name)
    assert row.endswith(" checksums FAILED"), row

    # Now cut the S3 copy of the other object short as well: both copies are named, each for its own fault.
    s3 = repos[1]
    key = f"backups/{name}/backup_manifest"
    s3.put(key, s3.get(key)[:-100])
    code, report, _ = run_verify(cluster_s3)
    assert code == 1 and not report["ok"]
    found = {(p["repository"], p["object"], p["kind"]) for p in entry(report, name)["problems"]}
    assert found == {("local", "base.tar.zst", "checksum"), ("s3", "backup_manifest", "size")}


def test_deleted_segment_is_lost_and_debris_is_named(cluster: Cluster) -> None:
    name = backup(cluster)
    segments = archive_segments(cluster, 4)
    victim = segments[1]
    wal_dir = cluster.local_repo / "main" / "wal" / victim[:16]
    (path,) = [p for p in wal_dir.iterdir() if p.name.startswith(victim + ".")]
    path.unlink()
    # Debris of a crashed backup long ago, and a manifest that no longer parses.
    debris = cluster.local_repo / "main" / "backups" / "20200101T000000Z"
    debris.mkdir(parents=True)
    (debris / "base.tar.zst").write_bytes(b"half")
    os.utime(debris / "base.tar.zst", (time.time() - 86400, time.time() - 86400))
    damaged = cluster.local_repo / "main" / "backups" / "20200102T000000Z"
    damaged.mkdir()
    (damaged / "manifest.json").write_text("{not json")

    code, report, _ = run_verify(cluster)
    assert code == 1
    (finding,) = wal_of(report, "local")["findings"]
    assert (finding["first"], finding["last"], finding["status"]) == (victim, victim, "lost")
    assert "no repository holds it" in finding["detail"]
    assert entry(report, name)["problems"] == []  # its own WAL is intact: the backup is still restorable
    assert [p["kind"] for p in entry(report, "20200101T000000Z")["problems"]] == ["debris"]
    assert [p["kind"] for p in entry(report, "20200102T000000Z")["problems"]] == ["manifest"]
    text = cluster.pgdr("verify", check=False).stdout
    assert f"LOST: {victim}" in text

    unknown = cluster.pgdr("verify", name[:-3] + "99Z", check=False)
    assert unknown.returncode == 2 and len(unknown.stderr.strip().splitlines()) == 1
    assert "no backup named" in unknown.stderr and name in unknown.stderr


def test_a_segment_queued_for_s3_is_not_lost(cluster_s3: Cluster) -> None:
    backup(cluster_s3)
    segments = archive_segments(cluster_s3, 3)
    wait_for(lambda: in_s3(cluster_s3, segments[-1]), 60, "the uploader to reach S3")
    cfg = config(cluster_s3)
    s3 = open_repository(cfg, "s3")
    victim = segments[1]
    # Hold the S3 uploader's lock so nothing can deliver the queued segment while we look.
    with queue.uploader_lock(cfg, "s3", wait=True):
        wait_for(lambda: not queue.pending(cfg, "s3"), 60, "the S3 queue to drain")
        (obj,) = find_archived(s3, victim)
        s3.delete([obj.key])
        queue.enqueue(cfg, "s3", victim)

        report = verify(cfg)
        assert report.ok, report.render()
        statuses = {(f.first, f.status) for w in report.wal for f in w.findings}
        assert statuses == {(victim, "uploading")}

        # Not queued, but the next segment reached S3 only now: the uploader may still be catching up.
        cfg_repo = open_repository(cfg, "local")
        cfg_repo.delete([f"queue/s3/{victim}"])
        delayed = verify(cfg)
        assert delayed.ok and _statuses(delayed) == {(victim, "delayed")}
        # The same hole an hour later is lost from S3, with the intact local copy named.
        later = verify(cfg, now=datetime.now(UTC) + timedelta(hours=1))
        assert not later.ok and _statuses(later) == {(victim, "lost")}
        (finding,) = [f for w in later.wal for f in w.findings]
        assert finding.repository == "s3" and "an intact copy is in local" in finding.detail
        assert f"LOST: {victim}" in later.render()


def _statuses(report: VerifyReport) -> set[tuple[str, str]]:
    return {(f.first, f.status) for w in report.wal for f in w.findings}


def test_damaged_dump_fails_pg_restore(cluster: Cluster) -> None:
    cluster.sql("CREATE TABLE borrowers AS SELECT g AS id FROM generate_series(1, 500) g")
    name = backup(cluster, "--logical")
    dump = cluster.local_repo / "main" / "backups" / name / "postgres.dump"
    blob = bytearray(dump.read_bytes())
    blob[:5] = b"XXXXX"  # the PGDMP magic: pg_restore cannot read the table of contents
    dump.write_bytes(bytes(blob))

    code, report, _ = run_verify(cluster, name)
    assert code == 1
    kinds = {(p["object"], p["kind"]) for p in entry(report, name)["problems"]}
    assert kinds == {("postgres.dump", "checksum"), ("postgres.dump", "pg_restore")}
    (restore_problem,) = [p for p in entry(report, name)["problems"] if p["kind"] == "pg_restore"]
    assert "pg_restore --list fails" in restore_problem["detail"]
    assert report["wal"] == []  # a named logical dump needs no WAL


@on_every_version
def test_deep_rehearsal_restores_starts_and_cleans_up(cluster: Cluster) -> None:
    cluster.sql("CREATE TABLE accounts AS SELECT g AS id FROM generate_series(1, 1000) g")
    cluster.sql("CREATE DATABASE reports")
    name = backup(cluster)
    archive_segments(cluster, 1)

    code, report, _ = run_verify(cluster, "--deep")
    assert code == 0, json.dumps(report, indent=2)
    rehearsal = entry(report, name)["rehearsal"]
    assert rehearsal["ok"] and rehearsal["restored_from"] == "local"
    assert "successfully verified" in rehearsal["pg_verifybackup"]
    assert {"postgres", "reports"} <= set(rehearsal["databases"]) and rehearsal["relations"] > 300
    assert rehearsal["consistent_lsn"]
    assert report["level"] == "deep"
    assert not list(cluster.root.glob("pgdr-verify-*")), "the scratch directory is removed"
    # The rehearsal promoted a throwaway copy: nothing of its new timeline reaches the archive.
    assert not list((cluster.local_repo / "main" / "wal").glob("history/00000002.history*"))
    record = last_verified(open_repositories(config(cluster)), name)
    assert record is not None and record["level"] == "deep" and record["ok"] is True
    # A quick run afterwards is the newest result, but still tells when the backup was last rehearsed.
    cluster.pgdr("verify")
    quick = last_verified(open_repositories(config(cluster)), name)
    assert quick is not None and quick["level"] == "checksums"
    assert quick["last_deep"] == {"time": record["time"], "ok": True}
    (listed_backup,) = listed(cluster)
    assert listed_backup["last_verified"]["level"] == "checksums"
    assert listed_backup["last_verified"]["last_deep"] == {"time": record["time"], "ok": True}
    (row,) = list_rows(cluster, name)
    assert row.endswith(f" checksums ok, deep {datetime.fromisoformat(record['time']):%Y-%m-%d}"), row


def test_a_rehearsal_the_host_cannot_hold_does_not_make_the_backup_bad(cluster: Cluster) -> None:
    """As the cluster's owner, with no room for a scratch directory beside the data directory: the
    run is incomplete (not ok, exit 1), but the backup is not BAD and is recorded as checksums-verified."""
    name = backup(cluster)
    cluster.root.chmod(0o555)
    try:
        deep = cluster.pgdr_as_owner("verify", "--deep", "--json", check=False)
        text = cluster.pgdr_as_owner("verify", "--deep", check=False)
    finally:
        cluster.root.chmod(0o755)
    assert deep.returncode == text.returncode == 1, deep.stderr
    report = json.loads(deep.stdout)
    (error,) = report["errors"]
    assert error.startswith(f"could not rehearse backup {name}: cannot make a scratch directory in {cluster.root}")
    assert "Permission denied" in error
    result = entry(report, name)
    assert result["ok"] and result["level"] == "checksums" and result["problems"] == []
    assert result["rehearsal"]["could_not"] and result["rehearsal"]["problems"] == []
    lines = text.stdout.splitlines()
    assert lines[0].endswith(": PROBLEMS FOUND") and lines[1].startswith(f"  ERROR  could not rehearse backup {name}")
    assert any(line.startswith(f"  ok     backup {name} ") and "not rehearsed" in line for line in lines), text.stdout
    assert "BAD" not in text.stdout
    record = last_verified(open_repositories(config(cluster)), name)
    assert record is not None and record["ok"] is True and record["level"] == "checksums"
    assert record["last_deep"] is None
    (row,) = list_rows(cluster, name)
    assert row.endswith(" checksums ok"), row


def test_a_target_that_cannot_take_the_files_is_not_a_bad_backup(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The unpack's "Too many open files" (or a full disk) is the host's, whichever copy is restored."""
    name = backup(cluster)

    def create(path: str, mode: int) -> int:
        raise unpack._write_error(path, OSError(errno.EMFILE, os.strerror(errno.EMFILE)))

    monkeypatch.setattr(unpack, "_create", create)
    report = verify(config(cluster), deep=True)
    assert not report.ok
    (error,) = report.errors
    assert error.startswith(f"could not rehearse backup {name}: the scratch directory cannot take the backup's files")
    assert "Too many open files" in error
    (result,) = report.backups
    assert result.ok and result.level == "checksums"
    assert "BAD" not in report.render()
    assert not list(cluster.root.glob("pgdr-verify-*")), "the scratch directory is removed"


def test_host_failures_of_the_rehearsal_server_are_told_from_the_backups() -> None:
    """FATAL lines of a rehearsal server that did not start: the host's fault, or the backup's."""
    host = [
        "could not create shared memory segment: No space left on device",
        'could not create lock file "/tmp/x/.s.PGSQL.5432.lock": Permission denied',
        "could not map anonymous shared memory: Cannot allocate memory",
        'data directory "/tmp/x/data" has invalid permissions',
    ]
    backup = [
        "could not locate required checkpoint record",
        "WAL ends before end of online backup",
        "requested timeline 2 is not a child of this server's history",
        "could not find redo location referenced by checkpoint record",
    ]
    assert all(HOST_FAILURES.search(line) for line in host)
    assert not any(HOST_FAILURES.search(line) for line in backup)


def test_wal_continuity_rules() -> None:
    """The classification alone: lag is never a loss, a hole is, and grace is bounded."""
    now = datetime(2024, 6, 1, 12, 0, tzinfo=UTC)
    old, recent = now - timedelta(hours=2), now - timedelta(minutes=2)
    b = BackupManifest(
        name="20240601T000000Z",
        kind="physical",
        cluster="main",
        system_identifier=1,
        pg_version="15.6",
        start_time=old,
        stop_time=old,
        objects=[],
        timeline=1,
        wal_start=SegmentName(1, 10).name,
        wal_stop=SegmentName(1, 11).name,
    )

    def held(*numbers: int, at: datetime = old) -> dict[tuple[int, int], datetime]:
        return {(1, n): at for n in numbers}

    def run(repo: str, holdings: dict[str, dict[tuple[int, int], datetime]], **kw: Any) -> set[tuple[int, int, str]]:
        _spans, findings = wal_continuity(
            repo,
            holdings,
            [b],
            sync=kw.pop("sync", False),
            queued=kw.pop("queued", set()),
            histories={},
            segment_size=SEG,
            now=now,
        )
        return {(SegmentName.parse(f.first).number, SegmentName.parse(f.last).number, f.status) for f in findings}

    local = held(*range(8, 21))
    # S3 lags behind local: what it lacks after its newest segment is lag while queued for it, or while
    # local got it only recently; not queued and long in local, it is not coming: lost.
    lagging = {"local": local, "s3": held(10, 11, 12, 13)}
    assert run("s3", lagging, queued={SegmentName(1, n).name for n in range(14, 21)}) == {(14, 20, "uploading")}
    assert run("s3", {**lagging, "local": {**local, **held(*range(14, 21), at=recent)}}) == {(14, 20, "delayed")}
    assert run("s3", lagging) == {(14, 20, "lost")}
    # Segments before the oldest backup's wal_start are no one's concern.
    assert run("local", {"local": held(10, 11, 12)}) == set()
    # A hole nobody holds is lost everywhere; a run of them is one finding.
    assert run("local", {"local": held(10, 11, 12, 15, 16)}) == {(13, 14, "lost")}
    # A hole in S3: queued -> uploading; not queued but recent -> delayed; old -> lost.
    up_to_15 = held(*range(8, 16))
    s3 = {**held(10, 11, 12), **held(15, at=recent)}
    assert run("s3", {"local": up_to_15, "s3": s3}, queued={SegmentName(1, 13).name, SegmentName(1, 14).name}) == {
        (13, 14, "uploading")
    }
    assert run("s3", {"local": up_to_15, "s3": s3}) == {(13, 14, "delayed")}
    assert run("s3", {"local": up_to_15, "s3": held(10, 11, 12, 15)}) == {(13, 14, "lost")}
    # A repository wal-push waits for never has an innocent hole; past its newest, a push may be midway.
    assert run("local", {"local": held(10, 12, at=recent), "s3": held(10, 11, 12)}, sync=True) == {(11, 11, "lost")}
    assert run("local", {"local": held(10, 11), "s3": held(10, 11, 12, at=recent)}, sync=True) == {(12, 12, "delayed")}
    # The WAL a backup needs is required even beyond every repository's newest segment.
    assert run("s3", {"local": held(8, 9, 10, 11), "s3": held(10)}) == {(11, 11, "lost")}
    assert run("s3", {"local": held(10), "s3": held(10)}) == {(11, 11, "lost")}
    assert run("s3", {"local": held(8, 9, 10, 11), "s3": held(10)}, queued={SegmentName(1, 11).name}) == {
        (11, 11, "uploading")
    }


def test_unreadable_state_is_never_ok(cluster: Cluster, tmp_path: Path) -> None:
    """A configured repository that cannot be read makes the verdict "not ok", never a silent pass."""
    backup(cluster)
    bad = tmp_path / "pgdr.toml"
    bad.write_text(cluster.base_config(s3={"bucket": "nope", "endpoint_url": "http://127.0.0.1:9", "region": "x"}))
    report = verify(load_config(bad))
    assert not report.ok and any("s3" in e for e in report.errors), report.render()
