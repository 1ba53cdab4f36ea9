"""WAL archiving end to end: the real server's archive_command is the real ``pgdr wal-push``."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

from backend.archive.walfile import find_archived
from backend.config import load_config
from backend.repository import open_repository
from backend.walnames import SegmentName
from tests.conftest import s3_settings
from tests.harness.cluster import PG_BIN, Cluster, as_server_user, clean_env, pgdr_executable, wait_for
from tests.harness.s3 import MotoEndpoint


def archived_in(cluster: Cluster, repo_name: str, segment: str) -> bool:
    repo = open_repository(load_config(cluster.config_path), repo_name)
    return bool(find_archived(repo, segment))


def fetch(cluster: Cluster, segment: str, dest: Path, config: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(pgdr_executable()), "--config", str(config or cluster.config_path), "wal-fetch", segment, str(dest)],
        capture_output=True,
        text=True,
        env=clean_env(),
        check=False,
    )


def test_workload_reaches_both_repositories_contiguously(cluster_s3: Cluster) -> None:
    names = cluster_s3.write_wal(4)
    cluster_s3.wait_archived(names[-1])
    # S3 is not in archive.sync: the background uploader started by wal-push carries the queue there.
    wait_for(lambda: all(archived_in(cluster_s3, "s3", n) for n in names), 60, "the uploader to reach S3")
    listing = json.loads(cluster_s3.pgdr("list", "--json").stdout)
    ranges = {r["repository"]: r for r in listing["wal"] if r["timeline"] == 1}
    assert [r["repository"] for r in listing["wal"]] == ["local", "s3"], "one contiguous range per repository"
    for repo in ("local", "s3"):
        assert ranges[repo]["first_segment"] <= names[0] and ranges[repo]["last_segment"] >= names[-1]
        assert (
            ranges[repo]["segments"]
            == int(ranges[repo]["last_segment"], 16) - int(ranges[repo]["first_segment"], 16) + 1
        )
    only_s3 = json.loads(cluster_s3.pgdr("list", "--json", "--repo", "s3").stdout)
    assert {r["repository"] for r in only_s3["wal"]} == {"s3"}


def test_fetch_returns_the_archived_bytes_and_refuses_corruption(cluster_s3: Cluster, tmp_path: Path) -> None:
    (segment,) = cluster_s3.write_wal(1)
    cluster_s3.wait_archived(segment)
    wait_for(lambda: archived_in(cluster_s3, "s3", segment), 60, "the uploader to reach S3")
    fetched = tmp_path / "seg"
    assert fetch(cluster_s3, segment, fetched).returncode == 0
    (obj,) = find_archived(open_repository(load_config(cluster_s3.config_path), "local"), segment)
    assert hashlib.sha256(fetched.read_bytes()).hexdigest() == obj.checksum

    missing = fetch(cluster_s3, "0000000100000000000000FE", tmp_path / "nothing")
    assert missing.returncode == 1 and not (tmp_path / "nothing").exists()
    assert "not in any repository" in missing.stderr

    # Damage the local copy: the fetch notices and takes S3's intact copy instead.
    stored = cluster_s3.local_repo / "main" / obj.key
    blob = bytearray(stored.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    stored.write_bytes(bytes(blob))
    again = tmp_path / "again"
    assert fetch(cluster_s3, segment, again).returncode == 0
    assert again.read_bytes() == fetched.read_bytes()

    # With the local repository alone, the damaged copy is refused and nothing is written.
    local_only = tmp_path / "local.toml"
    local_only.write_text(cluster_s3.base_config())
    refused = fetch(cluster_s3, segment, tmp_path / "bad", local_only)
    assert refused.returncode == 2 and not (tmp_path / "bad").exists()
    assert segment in refused.stderr and "local" in refused.stderr


def test_duplicate_push_same_bytes_succeeds_different_bytes_fails(cluster: Cluster, tmp_path: Path) -> None:
    (segment,) = cluster.write_wal(1)
    cluster.wait_archived(segment)
    copy = tmp_path / segment
    assert fetch(cluster, segment, copy).returncode == 0
    assert cluster.pgdr("wal-push", str(copy)).returncode == 0

    repo_dir = cluster.local_repo / "main" / "wal" / segment[:16]
    before = {p.name: p.read_bytes() for p in repo_dir.iterdir()}
    data = bytearray(copy.read_bytes())
    data[100_000] ^= 0x01
    copy.write_bytes(bytes(data))
    result = cluster.pgdr("wal-push", str(copy), check=False)
    assert result.returncode not in (0, 1)
    assert "already archived" in result.stderr and "different content" in result.stderr
    assert {p.name: p.read_bytes() for p in repo_dir.iterdir()} == before


def test_a_recycled_segment_under_the_next_name_is_refused(cluster: Cluster, tmp_path: Path) -> None:
    """Its header names the segment it was: stored under the new name, it would block the real one for good."""
    (segment,) = cluster.write_wal(1)
    cluster.wait_archived(segment)
    following = SegmentName.parse(segment).next().name
    recycled = tmp_path / following
    assert fetch(cluster, segment, recycled).returncode == 0

    result = cluster.pgdr("wal-push", str(recycled), check=False)

    assert result.returncode == 2 and "(a recycled or copied file?): refusing to archive it" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not find_archived(open_repository(load_config(cluster.config_path), "local"), following)


def test_push_killed_half_way_leaves_no_partial_segment(cluster: Cluster, tmp_path: Path) -> None:
    (segment,) = cluster.write_wal(1)
    cluster.wait_archived(segment)
    source = tmp_path / segment
    assert fetch(cluster, segment, source).returncode == 0
    config = tmp_path / "fresh.toml"
    fresh_repo = tmp_path / "fresh-repo"
    config.write_text(
        cluster.base_config(local=False) + f'\n[local]\npath = "{fresh_repo}"\n[archive]\ncompression = "none"\n'
    )
    argv = [str(pgdr_executable()), "--config", str(config), "wal-push", str(source)]
    for delay in (0.0, 0.02, 0.05, 0.08, 0.12, 0.2):
        proc = subprocess.Popen(argv, env=clean_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        visible = [p for p in fresh_repo.rglob("*") if p.is_file() and not p.name.startswith(".") and segment in p.name]
        if visible:  # the push got all the way: the object must be complete and correct
            out = tmp_path / f"check-{delay}"
            assert fetch(cluster, segment, out, config).returncode == 0
            assert out.read_bytes() == source.read_bytes()
            break
    # Whatever was killed, the next push completes and the segment reads back intact.
    assert subprocess.run(argv, env=clean_env(), check=False).returncode == 0
    out = tmp_path / "final"
    assert fetch(cluster, segment, out, config).returncode == 0
    assert out.read_bytes() == source.read_bytes()


def test_segment_of_another_cluster_is_refused(cluster: Cluster, tmp_path: Path) -> None:
    (segment,) = cluster.write_wal(1)
    cluster.wait_archived(segment)
    other = cluster.root / "other"
    other.mkdir()
    os.chown(other, cluster.data_dir.stat().st_uid, cluster.data_dir.stat().st_gid)
    subprocess.run(
        as_server_user([str(PG_BIN / "initdb"), "-D", str(other), "--no-sync", "-A", "trust"]),
        capture_output=True,
        check=True,
    )
    foreign = tmp_path / "000000010000000000000001"
    foreign.write_bytes((other / "pg_wal" / "000000010000000000000001").read_bytes())
    before = sorted(p.name for p in (cluster.local_repo / "main" / "wal").rglob("*"))
    result = cluster.pgdr("wal-push", str(foreign), check=False)
    assert result.returncode not in (0, 1)
    assert "system identifier" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert sorted(p.name for p in (cluster.local_repo / "main" / "wal").rglob("*")) == before


def test_s3_down_during_push_then_postgres_retry_succeeds(
    cluster: Cluster, moto: MotoEndpoint, bucket: str, tmp_path: Path
) -> None:
    cluster.write_config(cluster.base_config(local=False, s3=s3_settings(moto, bucket)))
    first = cluster.write_wal(1)[0]
    cluster.wait_archived(first)
    moto.stop()
    try:
        cluster.sql("INSERT INTO ledger (amount) SELECT g FROM generate_series(1, 1000) g")
        during = cluster.switch_wal()
        wait_for(
            lambda: cluster.sql("SELECT last_failed_wal FROM pg_stat_archiver")[0][0] == during,
            60,
            "wal-push to fail while S3 is down",
        )
        assert (cluster.sql("SELECT last_archived_wal FROM pg_stat_archiver")[0][0] or "") < during
    finally:
        moto.start()
    after = cluster.write_wal(1)[0]  # a new segment also wakes the archiver for its retry
    cluster.wait_archived(after)
    for segment in (first, during, after):
        assert archived_in(cluster, "s3", segment), f"{segment} missing from S3"
        assert fetch(cluster, segment, tmp_path / segment).returncode == 0


def test_background_helpers_index_and_upload_on_their_own(cluster_s3: Cluster) -> None:
    names = cluster_s3.write_wal(2)
    cluster_s3.wait_archived(names[-1])
    index = cluster_s3.local_repo / "main" / "walindex" / names[0][:16] / f"{names[0]}.json"
    wait_for(index.exists, 60, "the background indexer started by wal-push")
    wait_for(lambda: archived_in(cluster_s3, "s3", names[-1]), 60, "the background uploader")
    queue = cluster_s3.local_repo / "main" / "queue"
    wait_for(lambda: not [p for p in queue.rglob("0*")], 60, "the queue to drain")


def test_history_backup_and_partial_files_round_trip(cluster: Cluster, tmp_path: Path) -> None:
    """The other files PostgreSQL archives come back byte for byte, under their own names."""
    (segment,) = cluster.write_wal(1)
    cluster.wait_archived(segment)
    segment_copy = tmp_path / segment
    assert fetch(cluster, segment, segment_copy).returncode == 0
    files = {
        "00000002.history": b"1\t0/3000000\tbefore 2026-12-05 12:00:00+00\n",
        f"{segment}.00000028.backup": b"START WAL LOCATION: 0/2000028 (file " + segment.encode() + b")\n",
        f"{segment}.partial": segment_copy.read_bytes(),
    }
    for name, data in files.items():
        source = tmp_path / "push" / name
        source.parent.mkdir(exist_ok=True)
        source.write_bytes(data)
        pushed = cluster.pgdr("wal-push", str(source), check=False)
        assert pushed.returncode == 0, pushed.stderr
        back = tmp_path / "fetched" / name
        back.parent.mkdir(exist_ok=True)
        fetched = fetch(cluster, name, back)
        assert fetched.returncode == 0, fetched.stderr
        assert back.read_bytes() == data, name


def test_backup_into_another_clusters_repository_is_refused(cluster: Cluster) -> None:
    """A repository that records another system identifier takes no backup of this cluster."""
    (segment,) = cluster.write_wal(1)
    cluster.wait_archived(segment)
    record = cluster.local_repo / "main" / "repo.json"
    identity = json.loads(record.read_text())
    identity["system_identifier"] = "7000000000000000001"
    record.write_text(json.dumps(identity))

    result = cluster.pgdr("backup", check=False)
    assert result.returncode not in (0, 1)
    assert "7000000000000000001" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    # Nothing written for the backup, and the record of the other cluster left as it was (the WAL
    # archiver and its background indexer may still be at work beside it).
    assert not (cluster.local_repo / "main" / "backups").exists() or not any(
        (cluster.local_repo / "main" / "backups").iterdir()
    )
    assert json.loads(record.read_text())["system_identifier"] == "7000000000000000001"
    assert json.loads(cluster.pgdr("list", "--json").stdout)["backups"] == []
