"""Point-in-time restore end to end: the original runbook's "bad migration" story on a real cluster and real S3."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import psycopg
import pytest

from backend.archive.walfile import find_archived
from backend.config import load_config
from backend.repository import open_repository
from backend.timeline import estimate_restore_seconds
from tests.conftest import on_every_version, s3_settings
from tests.harness.cluster import PG_BIN, Cluster, as_server_user, clean_env, pgdr_executable, wait_for
from tests.harness.s3 import MotoEndpoint


class Story:
    """Rows committed before and after a backup, then a migration that drops the table."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        cluster.sql("CREATE TABLE accounts (id int PRIMARY KEY, balance numeric)")
        cluster.sql("CREATE TABLE audit_trail (id serial, note text)")
        cluster.sql("INSERT INTO accounts SELECT g, g * 10 FROM generate_series(1, 100) g")
        self.backup = json.loads(cluster.pgdr("backup", "--json").stdout)["name"]
        cluster.sql("INSERT INTO accounts SELECT g, g * 10 FROM generate_series(101, 150) g")
        self.before_drop: datetime = cluster.sql("SELECT clock_timestamp()")[0][0]
        with cluster.connect() as conn, conn.transaction():
            self.drop_xid = int(conn.execute("SELECT txid_current()").fetchone()[0])  # type: ignore[index]
            conn.execute("DROP TABLE accounts")
        cluster.sql("INSERT INTO audit_trail (note) VALUES ('after the migration')")
        self.last_segment = cluster.switch_wal()
        cluster.wait_archived(self.last_segment)

    def assert_restored_before_drop(self, cluster: Cluster) -> None:
        assert cluster.sql("SELECT count(*), max(id) FROM accounts")[0] == (150, 150)
        assert cluster.sql("SELECT count(*) FROM audit_trail")[0][0] == 0


def restore(cluster: Cluster, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return cluster.pgdr("restore", *args, "--yes", check=check, timeout=600)


def safety_copies(cluster: Cluster) -> list[Path]:
    return sorted(cluster.data_dir.parent.glob("data.pgdr-safety-*"))


def start_copy(cluster: Cluster, data: Path, port: int) -> psycopg.Connection[object]:
    """Start a copy of a data directory on another port (archiving off) and connect to it."""
    with (data / "postgresql.auto.conf").open("a") as fh:
        fh.write(f"port = {port}\narchive_mode = off\n")
    log = data.parent / f"copy-{port}.log"
    subprocess.run(
        as_server_user([str(cluster.pg_bin / "pg_ctl"), "-D", str(data), "-l", str(log), "-w", "start"]),
        check=True,
        capture_output=True,
    )
    return psycopg.connect(host=str(cluster.socket_dir), port=port, user="postgres", dbname="postgres", autocommit=True)


def stop_copy(data: Path) -> None:
    subprocess.run(
        as_server_user([str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"]),
        capture_output=True,
        check=False,
    )


@on_every_version
def test_restore_to_just_before_the_bad_migration(cluster_s3: Cluster) -> None:
    story = Story(cluster_s3)
    plan = restore(cluster_s3, "--timestamp", story.before_drop.isoformat(), "--dry-run").stdout
    assert story.backup in plan and "Dry run: nothing was changed" in plan
    assert not safety_copies(cluster_s3)

    result = restore(cluster_s3, "--timestamp", story.before_drop.isoformat())
    assert "Restore finished" in result.stdout, result.stdout + result.stderr
    assert f"before commit of transaction {story.drop_xid}" in result.stdout
    story.assert_restored_before_drop(cluster_s3)

    # The safety copy holds the pre-restore state: the table dropped, the later row present.
    (safety,) = safety_copies(cluster_s3)
    copy = start_copy(cluster_s3, safety, 5440)
    try:
        assert copy.execute("SELECT to_regclass('accounts')").fetchone() == (None,)
        assert copy.execute("SELECT count(*) FROM audit_trail").fetchone() == (1,)
    finally:
        copy.close()
        stop_copy(safety)
    audit = (Path(cluster_s3.root).parent / "xdg-state" / "pgdr" / "audit.log").read_text().splitlines()
    assert json.loads(audit[-1])["result"] == "reached target"


def test_restore_to_the_dropping_xid_exclusive(cluster: Cluster) -> None:
    story = Story(cluster)
    result = restore(cluster, "--xid", str(story.drop_xid), "--exclusive", "--backup", story.backup)
    assert "Restore finished" in result.stdout, result.stdout
    story.assert_restored_before_drop(cluster)


def test_restore_from_s3_alone(cluster_s3: Cluster, moto: MotoEndpoint, bucket: str) -> None:
    story = Story(cluster_s3)
    config = load_config(cluster_s3.config_path)
    wait_for(lambda: bool(find_archived(open_repository(config, "s3"), story.last_segment)), 60, "S3 upload")
    shutil.move(cluster_s3.local_repo, cluster_s3.root / "local-repo-gone")
    cluster_s3.write_config(cluster_s3.base_config(local=False, s3=s3_settings(moto, bucket)))
    plan = restore(cluster_s3, "--timestamp", story.before_drop.isoformat(), "--dry-run").stdout
    assert "from the s3 repository" in plan
    result = restore(cluster_s3, "--timestamp", story.before_drop.isoformat())
    assert "Restore finished" in result.stdout, result.stdout
    story.assert_restored_before_drop(cluster_s3)


def test_second_pitr_on_the_new_timeline(cluster: Cluster) -> None:
    story = Story(cluster)
    assert "Restore finished" in restore(cluster, "--timestamp", story.before_drop.isoformat()).stdout
    assert cluster.sql("SELECT timeline_id FROM pg_control_checkpoint()")[0][0] >= 1
    cluster.sql("CHECKPOINT")
    assert cluster.sql("SELECT timeline_id FROM pg_control_checkpoint()")[0][0] == 2
    cluster.sql("INSERT INTO accounts VALUES (1000, 1)")
    on_tl2 = cluster.switch_wal()
    assert on_tl2.startswith("00000002")
    cluster.wait_archived(on_tl2)
    listing = json.loads(cluster.pgdr("list", "--json").stdout)
    assert listing["history_files"]["local"] == ["00000002.history"]

    timeline = json.loads(cluster.pgdr("timeline", "--json").stdout)
    assert 2 in {w["timeline"] for w in timeline["windows"]}
    # An instant from before the promotion is found on timeline 1, and the plan says so.
    earlier = json.loads(restore(cluster, "--timestamp", story.before_drop.isoformat(), "--dry-run", "--json").stdout)
    assert earlier["timeline"] == 1 and earlier["target"]["settings"]["recovery_target_timeline"] == "1"
    result = restore(cluster, "--latest")
    assert "Restore finished" in result.stdout, result.stdout
    assert cluster.sql("SELECT count(*) FROM accounts")[0][0] == 151
    assert cluster.sql("SELECT timeline_id FROM pg_control_checkpoint()")[0][0] >= 2


def test_wal_gap_shows_and_blocks_targets_past_it(cluster: Cluster) -> None:
    story = Story(cluster)
    cluster.sql("INSERT INTO audit_trail (note) SELECT 'more' FROM generate_series(1, 10)")
    after_gap = cluster.switch_wal()
    in_gap: datetime = cluster.sql("SELECT clock_timestamp()")[0][0]  # its commit is in the lost segment
    cluster.sql("INSERT INTO audit_trail (note) VALUES ('last')")
    later = cluster.switch_wal()
    cluster.wait_archived(later)
    wal_dir = cluster.local_repo / "main" / "wal" / after_gap[:16]
    (victim,) = [p for p in wal_dir.iterdir() if p.name.startswith(after_gap + ".")]
    victim.unlink()

    timeline = json.loads(cluster.pgdr("timeline", "--json").stdout)
    assert [(g["timeline"], g["missing_from"], g["missing_to"]) for g in timeline["gaps"]] == [
        (1, after_gap, after_gap)
    ]
    (window,) = timeline["windows"]
    assert window["last_segment"] < after_gap
    assert "GAP" in cluster.pgdr("timeline").stdout
    plan = json.loads(restore(cluster, "--latest", "--backup", story.backup, "--dry-run", "--json").stdout)
    assert plan["wal_last"] < after_gap
    future = restore(cluster, "--timestamp", "2099-01-01 00:00:00", check=False)
    assert future.returncode == 2 and "not reachable" in future.stderr

    # Between the gap and the last archived commit: refused, naming the missing segment and the
    # last reachable instant before it (nothing after it can be reached: no backup follows the gap).
    reachable_before = f"{datetime.fromisoformat(window['end']) - timedelta(microseconds=1):%Y-%m-%d %H:%M:%S.%f} UTC"
    stranded = restore(cluster, "--timestamp", in_gap.isoformat(), "--dry-run", check=False)
    assert stranded.returncode == 2, stranded.stdout + stranded.stderr
    assert f"the archived WAL has a gap: {after_gap} is missing" in stranded.stderr
    assert f"latest reachable before it: {reachable_before}" in stranded.stderr
    assert "nothing is reachable after it" in stranded.stderr

    # A base backup after the gap opens a second window: the refusal names its start too, and both
    # instants it names, pasted back as --timestamp, are planned from the right backup.
    newer = json.loads(cluster.pgdr("backup", "--json").stdout)["name"]
    cluster.sql("INSERT INTO audit_trail (note) VALUES ('after the new backup')")
    cluster.wait_archived(cluster.switch_wal())
    second = next(
        w for w in json.loads(cluster.pgdr("timeline", "--json").stdout)["windows"] if w["base_backup"] == newer
    )
    reachable_after = f"{datetime.fromisoformat(second['start']):%Y-%m-%d %H:%M:%S.%f} UTC"
    both = restore(cluster, "--timestamp", in_gap.isoformat(), "--dry-run", check=False)
    assert both.returncode == 2 and f"{after_gap} is missing" in both.stderr, both.stderr
    assert f"latest reachable before it: {reachable_before} (backup {story.backup})" in both.stderr
    assert f"earliest reachable after it: {reachable_after} (backup {newer})" in both.stderr
    for pasted, backup in ((reachable_before, story.backup), (reachable_after, newer)):
        planned = json.loads(restore(cluster, "--timestamp", pasted, "--dry-run", "--json").stdout)
        assert planned["base_backup"] == backup
    assert not safety_copies(cluster)


def test_corrupt_segment_is_not_replayed(cluster: Cluster) -> None:
    story = Story(cluster)
    cluster.pgdr("timeline")  # indexed while intact: only the recovery finds the damage
    repo = open_repository(load_config(cluster.config_path), "local")
    (obj,) = find_archived(repo, story.last_segment)
    stored = cluster.local_repo / "main" / obj.key
    blob = bytearray(stored.read_bytes())
    blob[-20] ^= 0xFF
    stored.write_bytes(bytes(blob))
    result = restore(cluster, "--timestamp", story.before_drop.isoformat(), check=False)
    # The target lies in the damaged segment: wal-fetch refuses it, recovery stops short, and pgdr says so.
    assert result.returncode == 3 and "did NOT reach" in result.stdout, result.stdout
    assert "to roll back:" in result.stdout
    log = next((cluster.data_dir / "log").glob("pgdr-restore-*.log")).read_text()
    assert f"{story.last_segment}: no intact copy" in log
    assert f"{story.last_segment}: no intact copy" in result.stdout  # the report names the refused segment
    assert safety_copies(cluster), "the pre-restore data directory is kept"


def test_the_newest_backup_stopped_at_or_before_the_target_is_chosen(cluster: Cluster) -> None:
    """Without --backup: never a backup that stopped after the target, and no older one than needed."""
    cluster.sql("CREATE TABLE ticks (at timestamptz DEFAULT clock_timestamp())")
    first = json.loads(cluster.pgdr("backup", "--json").stdout)["name"]
    cluster.sql("INSERT INTO ticks DEFAULT VALUES")
    between: datetime = cluster.sql("SELECT clock_timestamp()")[0][0]
    second = json.loads(cluster.pgdr("backup", "--json").stdout)["name"]
    cluster.sql("INSERT INTO ticks DEFAULT VALUES")
    cluster.wait_archived(cluster.switch_wal())
    stopped = {
        b["name"]: datetime.fromisoformat(b["stop_time"])
        for b in json.loads(cluster.pgdr("list", "--json").stdout)["backups"]
    }

    def chosen(instant: datetime) -> str:
        plan = json.loads(restore(cluster, "--timestamp", instant.isoformat(), "--dry-run", "--json").stdout)
        assert datetime.fromisoformat(plan["target_instant"]) == instant
        return str(plan["base_backup"])

    assert chosen(between) == first  # the later backup stopped after the target: never used
    assert chosen(stopped[second] - timedelta(microseconds=1)) == first
    assert chosen(stopped[second]) == second  # at its stop point, the newer backup wins: less WAL to replay
    text = restore(cluster, "--timestamp", stopped[second].isoformat(), "--dry-run").stdout
    assert f"base backup:     {second} (stopped" in text and first not in text

    # Before the first backup stopped, no backup can serve: refused, never a silent later backup.
    early = restore(cluster, "--timestamp", (stopped[first] - timedelta(microseconds=1)).isoformat(), check=False)
    assert early.returncode == 2 and "no base backup finished before it" in early.stderr, early.stderr
    assert f"earliest reachable after it: {stopped[first]:%Y-%m-%d %H:%M:%S.%f} UTC (backup {first})" in early.stderr
    assert not safety_copies(cluster)


def test_the_plan_reads_the_time_zone_and_shows_space_safety_copy_and_time(cluster: Cluster) -> None:
    cluster.sql("CREATE TABLE notes (x int)")
    backup = json.loads(cluster.pgdr("backup", "--json").stdout)["name"]
    cluster.sql("INSERT INTO notes VALUES (1)")
    target: datetime = cluster.sql("SELECT clock_timestamp()")[0][0]
    cluster.sql("INSERT INTO notes VALUES (2)")
    cluster.wait_archived(cluster.switch_wal())
    # The wall clock in Kolkata (UTC+05:30 all year), typed without an offset.
    typed = f"{target.astimezone(ZoneInfo('Asia/Kolkata')):%Y-%m-%d %H:%M:%S.%f}"
    utc = f"{target.astimezone(UTC):%Y-%m-%d %H:%M:%S.%f}"

    def dry_run(*args: str) -> subprocess.CompletedProcess[str]:
        return restore(cluster, "--timestamp", typed, *args, "--dry-run", check=False)

    plan = json.loads(dry_run("--tz", "Asia/Kolkata", "--json").stdout)
    assert datetime.fromisoformat(plan["target_instant"]) == target
    assert plan["target"]["settings"]["recovery_target_time"] == f"{utc}+00"
    text = dry_run("--tz", "Asia/Kolkata").stdout
    assert f"time {utc[:-3]} UTC (typed {typed!r}, read in Asia/Kolkata" in text
    # Read in UTC (the default, or --tz over the config), the same clock reading is 5½ hours later.
    assert "not reachable" in dry_run().stderr
    cluster.write_config(cluster.base_config(extra='\n[restore]\ntimezone = "Asia/Kolkata"\n'))
    assert json.loads(dry_run("--json").stdout)["target_instant"] == plan["target_instant"]
    assert "not reachable" in dry_run("--tz", "UTC").stderr

    # Disk space: the base backup plus the WAL to replay, against the free space where the data directory is.
    (size,) = [b["size_bytes"] for b in json.loads(cluster.pgdr("list", "--json").stdout)["backups"]]
    assert plan["base_backup"] == backup and plan["wal_segments"] >= 1
    assert plan["space_needed"] == size + plan["wal_segments"] * 16 * 1024 * 1024
    assert abs(plan["space_free"] - shutil.disk_usage(cluster.data_dir).free) < 1 << 30
    assert re.search(r"disk space: +needs [\d.]+ [kMG]?B, [\d.]+ [kMGT]?B free\n", text), text
    # The safety copy: the data directory moved aside beside itself; a dry run does not make it.
    safety = Path(plan["safety_copy"])
    assert safety.parent == cluster.data_dir.parent and re.fullmatch(r"data\.pgdr-safety-\d{8}T\d{6}Z", safety.name)
    moved_aside = rf"safety copy: +{re.escape(str(cluster.data_dir))}\.pgdr-safety-\d{{8}}T\d{{6}}Z \(the current data"
    assert re.search(moved_aside + r" directory, moved aside, never deleted\)", text), text
    assert not safety_copies(cluster)
    # The estimate: an upper bound from the bytes to unpack and replay, printed in seconds.
    assert plan["estimated_seconds"] == round(estimate_restore_seconds(size, plan["wal_bytes"]), 1)
    assert re.search(r"estimated time: +about \d+ seconds?\n", text), text

    beside = json.loads(dry_run("--target-dir", str(cluster.root / "beside"), "--json").stdout)
    assert beside["safety_copy"] is None and beside["in_place"] is False
    assert not (cluster.root / "beside").exists()


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--timestamp", "2001-01-01 00:00:00"], "no base backup finished before it"),
        (["--timestamp", "2099-01-01 00:00:00"], "not reachable"),
        (["--timestamp", "yesterday-ish"], "cannot read the timestamp"),
        (["--latest", "--backup", "19990101T000000Z"], "no backup named"),
        (["--latest", "--timestamp", "2024-01-01"], "exactly one recovery target"),
        (["--timestamp", "2024-01-15 14:30:00", "--tz", "Mars/Olympus"], "unknown time zone"),
    ],
)
def test_bad_targets_touch_nothing(cluster: Cluster, args: list[str], words: str) -> None:
    cluster.sql("CREATE TABLE keep (x int)")
    cluster.pgdr("backup")
    cluster.wait_archived(cluster.switch_wal())
    result = restore(cluster, *args, check=False)
    assert result.returncode == 2 and words in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not safety_copies(cluster)
    assert cluster.sql("SELECT count(*) FROM keep")[0][0] == 0  # still the running, untouched server


def test_restore_needs_the_cluster_name_typed(cluster: Cluster) -> None:
    story = Story(cluster)
    args = [
        str(pgdr_executable()),
        "--config",
        str(cluster.config_path),
        "restore",
        "--timestamp",
        story.before_drop.isoformat(),
    ]
    wrong = subprocess.run(args, input="prod\n", capture_output=True, text=True, env=clean_env(), check=False)
    assert wrong.returncode == 1 and "cancelled" in wrong.stderr
    assert not safety_copies(cluster) and cluster.sql("SELECT count(*) FROM audit_trail")[0][0] == 1
    right = subprocess.run(
        args, input="main\n", capture_output=True, text=True, env=clean_env(), check=False, timeout=600
    )
    assert "Restore finished" in right.stdout, right.stdout + right.stderr
    story.assert_restored_before_drop(cluster)


def test_restore_beside_leaves_the_cluster_alone(cluster: Cluster) -> None:
    story = Story(cluster)
    beside = cluster.root / "inspect"
    result = restore(
        cluster, "--timestamp", story.before_drop.isoformat(), "--target-dir", str(beside), "--port", "5441"
    )
    assert "Restore finished" in result.stdout, result.stdout
    with psycopg.connect(host=str(cluster.socket_dir), port=5441, user="postgres", dbname="postgres") as conn:
        assert conn.execute("SELECT count(*) FROM accounts").fetchone() == (150,)
    stop_copy(beside)
    assert cluster.sql("SELECT to_regclass('accounts')")[0][0] is None  # the running cluster is untouched
    assert not safety_copies(cluster)


@on_every_version
def test_events_name_the_drop_and_restore_points_and_serve_as_targets(cluster: Cluster) -> None:
    cluster.sql("CREATE TABLE warmup (x int)")
    story = Story(cluster)
    del story  # the story's own drop is at the end; add a named restore point after more work
    cluster.sql("CREATE TABLE ledger (x int)")
    cluster.sql("INSERT INTO ledger SELECT generate_series(1, 10)")
    cluster.sql("SELECT pg_create_restore_point('before_cleanup')")
    cluster.sql("TRUNCATE ledger")
    cluster.wait_archived(cluster.switch_wal())

    events = json.loads(cluster.pgdr("timeline", "--events", "--json").stdout)["events"]
    kinds = [(e["kind"], e["name"]) for e in events]
    assert ("drop", None) in kinds and ("restore_point", "before_cleanup") in kinds and ("truncate", None) in kinds
    drop = next(e for e in events if e["kind"] == "drop")
    human = cluster.pgdr("timeline", "--events").stdout
    assert f"drop xid {drop['xid']}" in human and "restore point 'before_cleanup'" in human

    # The WAL index locates both targets, so no --backup is needed.
    plan = json.loads(cluster.pgdr("restore", "--name", "before_cleanup", "--dry-run", "--json").stdout)
    assert plan["target"]["settings"]["recovery_target_name"] == "before_cleanup"
    unknown = restore(cluster, "--name", "no_such_point", "--dry-run", check=False)
    assert unknown.returncode == 2 and "before_cleanup" in unknown.stderr
    result = restore(cluster, "--name", "before_cleanup")
    assert "Restore finished" in result.stdout, result.stdout
    assert cluster.sql("SELECT count(*) FROM ledger")[0][0] == 10
    result = restore(cluster, "--xid", str(drop["xid"]), "--exclusive", "--target-timeline", "1")
    assert "Restore finished" in result.stdout, result.stdout
    assert cluster.sql("SELECT count(*) FROM accounts")[0][0] == 150


def test_dry_run_changes_nothing_anywhere(cluster: Cluster) -> None:
    story = Story(cluster)
    cluster.pgdr("wal-upload")  # let the background indexer finish, then forget its work
    shutil.rmtree(cluster.local_repo / "main" / "walindex")
    state = Path(os.environ["XDG_STATE_HOME"]) / "pgdr"  # the CLI's state dir (the server's is under root)
    cache = state / "cache"
    started = cluster.sql("SELECT pg_postmaster_start_time()")[0][0]
    conf = (cluster.data_dir / "postgresql.auto.conf").read_bytes()

    def snapshot(*, data: bool) -> list[tuple[str, int, float]]:
        """Every file and folder (a folder's mtime moves when anything is created or removed in it).

        Except pgdr's caches (``cache/`` in the state dir): they only remember listings and WAL index
        entries already read, deleting them loses nothing, and every read-only command keeps them.
        """
        paths = [p for top in (cluster.root, state) for p in top.rglob("*") if p != cache and cache not in p.parents]
        if not data:  # a running server writes its own files under data/ and its log all the time
            paths = [p for p in paths if cluster.data_dir not in p.parents and p != cluster.log_path]
        return sorted((str(p), p.stat().st_size if p.is_file() else 0, p.stat().st_mtime) for p in paths)

    def dry_run() -> None:
        plan = restore(cluster, "--timestamp", story.before_drop.isoformat(), "--dry-run").stdout
        assert "Dry run: nothing was changed" in plan

    # While the server runs: it is not stopped or restarted, its data directory is not moved aside or
    # given recovery settings, and nothing else (repository, configs, state dir) changes.
    before = snapshot(data=False)
    names = sorted(p.name for p in cluster.data_dir.iterdir())
    dry_run()
    assert snapshot(data=False) == before
    assert cluster.sql("SELECT pg_postmaster_start_time()")[0][0] == started
    assert sorted(p.name for p in cluster.data_dir.iterdir()) == names
    assert (cluster.data_dir / "postgresql.auto.conf").read_bytes() == conf
    assert not (cluster.local_repo / "main" / "walindex").exists()

    # With the server stopped nothing else writes there: the data directory too, byte for byte.
    cluster.stop()
    before = snapshot(data=True)
    contents = {p: p.read_bytes() for p in cluster.data_dir.rglob("*") if p.is_file()}
    dry_run()
    assert snapshot(data=True) == before
    assert {p: p.read_bytes() for p in cluster.data_dir.rglob("*") if p.is_file()} == contents


def test_a_restore_is_announced_on_telegram(cluster: Cluster) -> None:
    from tests.harness.telegram import FakeTelegram

    story = Story(cluster)
    with FakeTelegram() as bot:
        cluster.write_config(
            cluster.base_config() + f'\n[telegram]\nbot_token = "{bot.token}"\nchat_id = "42"\napi_url = "{bot.url}"\n'
        )
        result = restore(
            cluster,
            "--timestamp",
            story.before_drop.isoformat(),
            "--target-dir",
            str(cluster.root / "beside"),
            "--port",
            "5442",
        )
        assert "Restore finished" in result.stdout
        (text,) = bot.texts()
        assert "restore" in text.lower() and "main" in text and story.backup in cluster.pgdr("list").stdout
    stop_copy(cluster.root / "beside")
