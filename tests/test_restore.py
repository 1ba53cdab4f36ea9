"""Point-in-time restore end to end: the seed's "bad migration" story on a real cluster and real S3."""

from __future__ import annotations

import json
import shutil
import subprocess
from datetime import datetime
from pathlib import Path

import psycopg
import pytest

from backend.archive.walfile import find_archived
from backend.config import load_config
from backend.repository import open_repository
from tests.conftest import s3_settings
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
    subprocess.run(
        as_server_user(
            [str(PG_BIN / "pg_ctl"), "-D", str(data), "-l", str(data.parent / f"copy-{port}.log"), "-w", "start"]
        ),
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
    assert not safety_copies(cluster)


def test_corrupt_segment_is_not_replayed(cluster: Cluster) -> None:
    story = Story(cluster)
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

    def snapshot() -> list[tuple[str, int, float]]:
        return sorted(
            (str(p), p.stat().st_size, p.stat().st_mtime)
            for p in cluster.root.rglob("*")
            if p.is_file() and "pg_stat_tmp" not in str(p) and "server.log" not in p.name and "/data/" not in str(p)
        )

    before = snapshot()
    plan = restore(cluster, "--timestamp", story.before_drop.isoformat(), "--dry-run").stdout
    assert "Dry run: nothing was changed" in plan
    assert snapshot() == before
    assert not (cluster.local_repo / "main" / "walindex").exists()


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
