"""A restore never reports success for less than it was asked, and follows the timeline the cluster is on."""

from __future__ import annotations

import json
import shutil
from datetime import datetime, timedelta
from pathlib import Path

from backend.archive.index import index_key
from backend.archive.walfile import find_archived
from backend.config import load_config
from backend.repository import open_repository
from tests.harness.cluster import Cluster, running_cluster


def damage_the_second_of_four(cluster: Cluster, *, indexed: bool) -> list[str]:
    """A backup, four segments after it, and the second of them damaged in the only repository.

    ``indexed``: the WAL index read it while it was intact, so only a recovery can find the damage.
    """
    cluster.write_wal(1)
    cluster.pgdr_as_owner("backup")
    segments = cluster.write_wal(4)
    cluster.wait_archived(segments[-1])
    if indexed:
        cluster.pgdr_as_owner("timeline")
    repo = open_repository(load_config(cluster.config_path), "local")
    (obj,) = find_archived(repo, segments[1])
    stored = cluster.local_repo / "main" / obj.key
    blob = bytearray(stored.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    stored.write_bytes(bytes(blob))
    return segments


def test_latest_stopped_by_a_segment_damaged_everywhere_is_not_success(cluster: Cluster) -> None:
    segments = damage_the_second_of_four(cluster, indexed=True)
    (total,) = cluster.sql("SELECT count(*) FROM ledger")[0]

    result = cluster.pgdr_as_owner("restore", "--latest", "--yes", check=False, timeout=600)

    assert result.returncode == 3, result.stdout + result.stderr
    assert "Restore did NOT reach its target" in result.stdout
    assert "commits after it are NOT in the restored data" in result.stdout
    assert f"{segments[1]}: no intact copy" in result.stdout
    assert "to roll back:" in result.stdout
    (restored,) = cluster.sql("SELECT count(*) FROM ledger")[0]
    assert restored < total
    audit = [json.loads(line) for line in cluster.pgdr_as_owner("audit", "--json").stdout.splitlines()]
    assert [e["result"] for e in audit if e["action"] == "restore"] == ["started", "stopped short"]


def test_another_clusters_backup_is_never_restored_over_this_one(
    cluster: Cluster, shared_dir: Path, pgdr_for_server: Path
) -> None:
    cluster.write_wal(1)
    cluster.pgdr_as_owner("backup")
    cluster.wait_archived(cluster.switch_wal())
    with running_cluster(shared_dir, pgdr_for_server) as other:
        # A copied config: the other cluster's own data directory, this cluster's repository.
        other.write_config(other.base_config().replace(str(other.local_repo), str(cluster.local_repo)))
        other.start()
        plan = other.pgdr_as_owner("restore", "--latest", "--dry-run").stdout
        assert "FAILS: cluster:" in plan, plan
        result = other.pgdr_as_owner("restore", "--latest", "--yes", check=False)
        assert result.returncode == 2
        (line,) = result.stderr.strip().splitlines()
        assert "is of another one" in line and "the server keeps running" in line
        assert other.sql("SELECT 1") == [(1,)]


def test_a_timeline_the_operator_rolled_back_from_is_abandoned_not_followed(cluster: Cluster) -> None:
    cluster.sql("CREATE TABLE kept (id int)")
    cluster.sql("INSERT INTO kept VALUES (1)")
    cluster.pgdr_as_owner("backup")
    cluster.wait_archived(cluster.switch_wal())
    # A restore onto timeline 2 that the operator then rolled back by hand, as the report says to.
    cluster.pgdr_as_owner("restore", "--latest", "--yes", timeout=600)
    cluster.wait_archived(cluster.switch_wal())  # timeline 2 is in the archive now, with WAL of its own
    (safety,) = cluster.root.glob("data.pgdr-safety-*")
    cluster.stop()
    cluster.data_dir.rename(cluster.root / "data.failed")
    safety.rename(cluster.data_dir)
    cluster.start()
    cluster.sql("INSERT INTO kept VALUES (2)")  # production goes on, on timeline 1
    cluster.wait_archived(cluster.switch_wal())

    shown = cluster.pgdr_as_owner("timeline").stdout
    assert "Timeline 2 (abandoned" in shown and "Timeline 1 (the cluster runs on it)" in shown, shown
    assert json.loads(cluster.pgdr_as_owner("timeline", "--json").stdout)["abandoned_timelines"] == [2]
    plan = json.loads(cluster.pgdr_as_owner("restore", "--latest", "--dry-run", "--json").stdout)
    assert plan["timeline"] == 1 and plan["target"]["settings"]["recovery_target_timeline"] == "1"
    assert any("abandoned" in note for note in plan["notes"])

    cluster.pgdr_as_owner("restore", "--latest", "--yes", timeout=600)
    assert cluster.sql("SELECT id FROM kept ORDER BY id") == [(1,), (2,)]


def test_a_segment_damaged_everywhere_is_a_gap_the_plan_does_not_promise_past(cluster: Cluster) -> None:
    segments = damage_the_second_of_four(cluster, indexed=False)
    # Nothing has read it since: no index entry for it anywhere, as for a segment damaged before indexing.
    (cluster.local_repo / "main" / index_key(segments[1])).unlink(missing_ok=True)
    shutil.rmtree(cluster.root / "server-state" / "pgdr" / "cache", ignore_errors=True)

    timeline = json.loads(cluster.pgdr_as_owner("timeline", "--json").stdout)
    assert [g["missing_from"] for g in timeline["gaps"]] == [segments[1]], timeline["gaps"]
    plan = json.loads(cluster.pgdr_as_owner("restore", "--latest", "--dry-run", "--json").stdout)
    assert plan["wal_last"] < segments[1]  # the plan promises only what recovery can replay, and says so
    assert any("the archive goes on past a gap" in note for note in plan["notes"]), plan["notes"]
    result = cluster.pgdr_as_owner("restore", "--latest", "--yes", check=False, timeout=600)
    assert result.returncode == 3 and "NOT replayed" in result.stdout, result.stdout + result.stderr


def test_a_backup_whose_manifest_the_wal_contradicts_is_not_offered(cluster: Cluster) -> None:
    cluster.write_wal(2)
    name = json.loads(cluster.pgdr_as_owner("backup", "--json").stdout)["name"]
    cluster.wait_archived(cluster.switch_wal())
    cluster.pgdr_as_owner("timeline")
    manifest_path = cluster.local_repo / "main" / "backups" / name / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    stopped = datetime.fromisoformat(manifest["stop_time"])
    manifest["stop_time"] = (stopped - timedelta(days=1)).isoformat()  # a window from before the data existed
    manifest_path.write_text(json.dumps(manifest))

    timeline = json.loads(cluster.pgdr_as_owner("timeline", "--json").stdout)
    assert name in timeline["disowned_backups"] and not timeline["windows"], timeline
    early = (stopped - timedelta(hours=12)).isoformat()
    refused = cluster.pgdr_as_owner("restore", "--timestamp", early, "--dry-run", check=False)
    assert (
        refused.returncode == 2 and f"backup {name} is not offered: its manifest says it stopped at" in refused.stderr
    )
    named = cluster.pgdr_as_owner("restore", "--latest", "--backup", name, "--dry-run", check=False)
    assert named.returncode == 2 and "the manifest was changed" in named.stderr
    checked = cluster.pgdr_as_owner("verify", check=False)
    assert checked.returncode == 1 and "the manifest was changed" in checked.stdout, checked.stdout

    # Its stop LSN changed instead: PostgreSQL's own sealed backup_manifest says otherwise.
    manifest["stop_time"] = stopped.isoformat()
    manifest["stop_lsn"] = "0/1000000"
    manifest_path.write_text(json.dumps(manifest))
    checked = cluster.pgdr_as_owner("verify", name, check=False)
    assert checked.returncode == 1 and "PostgreSQL's backup_manifest" in checked.stdout, checked.stdout
