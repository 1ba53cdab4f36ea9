"""Plain ``pgdr verify`` reads every object it claims to check, remembers what it found intact so a year of
history is not read every day, and restore plans avoid the copies it found corrupt.

Against a real cluster archiving into a local repository and a real S3 endpoint (moto): bytes are
flipped in the stored objects by hand, as a disk would, and the restore that follows is real.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import psycopg

from backend.archive import queue
from backend.archive.walfile import WalObject, find_archived
from backend.config import load_config
from backend.manifest import BackupManifest
from backend.repository import ObjectInfo, Repository, open_repositories, open_repository
from backend.repository.local import LocalRepository
from backend.restore.copies import NAMED_SEGMENTS, avoid_damaged_copies
from backend.timeline import SegmentInfo
from backend.verify.command import verify
from backend.verify.records import (
    CORRUPT_WAL_KEY,
    MEMORY_KEY,
    Memory,
    corrupt_wal,
    read_memory,
    record_key,
    reread_due,
)
from backend.walnames import SegmentName
from tests.harness.cluster import PG_BIN, Cluster, as_server_user, wait_for

DAY = timedelta(days=1)


def run_verify(cluster: Cluster, *args: str) -> tuple[int, dict[str, Any]]:
    result = cluster.pgdr("verify", "--json", *args, check=False, timeout=300)
    assert result.returncode in (0, 1), result.stderr
    return result.returncode, json.loads(result.stdout)


def flip_a_byte(path: Path) -> bytes:
    """Flip one byte in the middle of a stored object, as a disk would; returns the bytes it held."""
    original = path.read_bytes()
    damaged = bytearray(original)
    damaged[len(damaged) // 2] ^= 0xFF
    path.write_bytes(bytes(damaged))
    return original


def stored_objects(repos: list[Repository], backup: BackupManifest) -> int:
    """What a full verify reads: every object of the backup and every WAL object, in every repository."""
    wal = sum(1 for repo in repos for info in repo.list("wal/") if WalObject.parse_key(info.key) is not None)
    return wal + len(repos) * len(backup.objects)


def test_plain_verify_reads_every_object_remembers_and_the_restore_avoids_the_corrupt_copies(
    cluster_s3: Cluster,
) -> None:
    c = cluster_s3
    cfg = load_config(c.config_path)
    c.sql("CREATE TABLE loans AS SELECT g AS id, g * 10 AS amount FROM generate_series(1, 1000) g")
    name = json.loads(c.pgdr("backup", "--json").stdout)["name"]
    c.sql("INSERT INTO loans SELECT g, g * 10 FROM generate_series(1001, 1500) g")
    c.sql("CREATE TABLE filler (x int)")
    segments = []
    for _ in range(3):
        c.sql("INSERT INTO filler SELECT generate_series(1, 100)")
        segments.append(c.switch_wal())
    c.wait_archived(segments[-1])
    s3 = open_repository(cfg, "s3")
    wait_for(
        lambda: bool(find_archived(s3, segments[-1])) and not queue.pending(cfg, "s3"), 60, "S3 to hold every segment"
    )
    repos = open_repositories(cfg)
    local = repos[0]
    manifest = BackupManifest.from_json(local.get(f"backups/{name}/manifest.json"), "manifest")
    total = stored_objects(repos, manifest)

    # One flipped byte in the local copy of the base backup and of a segment the restore replays.
    tar_key = f"backups/{name}/base.tar.zst"
    flip_a_byte(c.local_repo / "main" / tar_key)
    (wal_obj,) = find_archived(local, segments[0])
    wal_original = flip_a_byte(c.local_repo / "main" / wal_obj.key)

    code, first = run_verify(c)
    assert code == 1 and not first["ok"]
    assert first["objects_read"] == total and first["objects_remembered"] == 0, first
    assert {(x["repository"], x["key"]) for x in first["corrupt"]} == {("local", tar_key), ("local", wal_obj.key)}
    text = c.pgdr("verify", check=False)
    assert text.returncode == 1, text.stdout
    assert f"CORRUPT local: {tar_key}" in text.stdout and f"CORRUPT local: {wal_obj.key}" in text.stdout

    # Nothing changed: only the corrupt objects (never remembered as intact) are read again, and at most
    # one object whose turn to be read again happened to come in these seconds.
    code, again = run_verify(c)
    assert code == 1 and {(x["repository"], x["key"]) for x in again["corrupt"]} == {
        ("local", tar_key),
        ("local", wal_obj.key),
    }
    assert 2 <= again["objects_read"] <= 3, again
    assert again["objects_read"] + again["objects_remembered"] == total
    (backup_entry,) = [b for b in again["backups"] if b["name"] == name]
    assert (backup_entry["objects_checked"], backup_entry["objects_remembered"]) in ((1, 3), (2, 2))

    # --full reads everything now.
    code, full = run_verify(c, "--full")
    assert code == 1 and full["full"] and full["objects_read"] == total and full["objects_remembered"] == 0

    # The restore plan takes S3's copies and says which local ones it avoided, when and why.
    plan = json.loads(c.pgdr("restore", "--latest", "--dry-run", "--json").stdout)
    assert plan["base_backup"] == name and plan["base_backup_repository"] == "s3"
    notes = plan["notes"]
    assert any(
        n.startswith(f"avoided the local copy of backup {name}: verify on ")
        and "base.tar.zst: sha256 mismatch" in n
        and n.endswith("taking s3's")
        for n in notes
    ), notes
    assert any(
        n.startswith(f"avoided the local copy of WAL segment {segments[0]}: verify on ") and n.endswith("taking s3's")
        for n in notes
    ), notes
    assert plan["wal_sources"]["s3"] >= 1
    shown = c.pgdr("restore", "--latest", "--dry-run").stdout
    assert f"{name} (stopped" in shown and "from the s3 repository" in shown
    # Limited to the local repository, no intact copy is left: the plan stands, and says so loudly.
    alone = json.loads(c.pgdr("restore", "--latest", "--dry-run", "--json", "--repo", "local").stdout)
    assert alone["base_backup_repository"] == "local"
    assert any(n.startswith(f"NO INTACT COPY of backup {name}") for n in alone["notes"]), alone["notes"]
    assert any(n.startswith(f"NO INTACT COPY of WAL segment {segments[0]}") for n in alone["notes"])

    # A real restore beside the cluster reaches every row.
    beside = c.root / "beside"
    restored = c.pgdr("restore", "--latest", "--yes", "--target-dir", str(beside), "--port", "5451", timeout=600)
    assert "Restore finished" in restored.stdout, restored.stdout
    assert "base backup: from the s3 repository" in restored.stdout
    try:
        with psycopg.connect(host=str(c.socket_dir), port=5451, user="postgres", dbname="postgres") as conn:
            assert conn.execute("SELECT count(*), sum(amount) FROM loans").fetchone() == (1500, 11257500)
            assert conn.execute("SELECT count(*) FROM filler").fetchone() == (300,)
    finally:
        subprocess.run(
            as_server_user([str(PG_BIN / "pg_ctl"), "-D", str(beside), "-m", "immediate", "stop"]),
            capture_output=True,
            check=False,
        )

    # A rewritten object (same size) is read again: here the segment, repaired with its original bytes.
    (c.local_repo / "main" / wal_obj.key).write_bytes(wal_original)
    later = time.time() + 5
    os.utime(c.local_repo / "main" / wal_obj.key, (later, later))
    before = int(time.time())
    code, repaired = run_verify(c)
    assert code == 1 and [x["key"] for x in repaired["corrupt"]] == [tar_key]
    remembered = read_memory(local)
    assert remembered[wal_obj.key][0] == len(wal_original) and remembered[wal_obj.key][2] >= before
    assert tar_key not in remembered  # damaged: never remembered as intact
    assert corrupt_wal(local) == []
    replanned = json.loads(c.pgdr("restore", "--latest", "--dry-run", "--json").stdout)
    assert not any("WAL segment" in n for n in replanned["notes"]), replanned["notes"]


def test_a_run_a_period_later_reads_everything_and_runs_in_between_read_their_share(cluster: Cluster) -> None:
    """In process, with the clock moved: the turns of the objects come once per period, at the run after."""
    json.loads(cluster.pgdr("backup", "--json").stdout)
    for _ in range(4):
        cluster.sql("CREATE TABLE IF NOT EXISTS t (x int); INSERT INTO t VALUES (1)")
        cluster.wait_archived(cluster.switch_wal())
    cfg = load_config(cluster.config_path)
    t0 = datetime.now(UTC)
    first = verify(cfg, now=t0)
    assert first.ok, first.render()
    total = first.objects_read
    assert total >= 6 and first.objects_remembered == 0
    # Daily runs for a period: each object is read once, at the run after its turn.
    reads = sum(verify(cfg, now=t0 + day * DAY).objects_read for day in range(1, 31))
    assert reads == total
    # A run a period and more after the last: every object's turn has come.
    assert verify(cfg, now=t0 + 62 * DAY).objects_read == total
    # A memory that cannot be read is said, and everything is read (then remembered again).
    (cluster.local_repo / "main" / MEMORY_KEY).write_bytes(b"not zstd")
    fresh = verify(cfg, now=t0 + 63 * DAY)
    assert fresh.objects_read == total and any("cannot be read" in n for n in fresh.notes), fresh.notes
    assert verify(cfg, now=t0 + 63 * DAY).objects_read == 0


def test_what_another_host_found_damaged_meanwhile_is_not_remembered_as_intact(tmp_path: Path) -> None:
    """Two hosts verify the same repository at once: the one storing last keeps the other's finding."""
    repo = LocalRepository(tmp_path, "main")
    now = datetime(2024, 5, 1, tzinfo=UTC)
    infos = {key: ObjectInfo(key, 10, now - DAY) for key in ("wal/a", "wal/b", "wal/c")}
    seed = Memory(repo, infos, now=now - DAY, reread_days=30)
    for info in infos.values():
        seed.found_intact(info)
    seed.save()
    scan: Any = SimpleNamespace(repo=repo, folders={}, wal=[(None, info) for info in infos.values()])
    host_a = Memory.load(scan, now=now, reread_days=30)
    host_b = Memory.load(scan, now=now, reread_days=30)
    host_b.found_damaged(infos["wal/a"], wal_file="a", detail="sha256 mismatch")
    host_b.found_damaged(infos["wal/c"])  # no corrupt-WAL record: only the merge keeps it out of the memory
    host_b.save()
    host_a.found_intact(infos["wal/b"])
    host_a.save()  # it did not read wal/a nor wal/c: what host B stored about them stands
    assert set(read_memory(repo)) == {"wal/b"}
    assert [e["key"] for e in corrupt_wal(repo)] == ["wal/a"]


def test_turns_spread_reads_over_the_period_and_reach_every_object() -> None:
    keys = [f"wal/0000000100000001/{n:024X}.{n:064x}.zst" for n in range(3000)]
    t0 = datetime(2024, 1, 1, 3, 15, tzinfo=UTC)
    read_at = dict.fromkeys(keys, t0)
    gaps: list[timedelta] = []
    per_run = []
    for day in range(1, 91):
        now = t0 + day * DAY
        due = [k for k in keys if reread_due(k, read_at[k], now, 30)]
        per_run.append(len(due))
        for k in due:
            gaps.append(now - read_at[k])
            read_at[k] = now
    # About 1/30 of the objects each day (3000 / 30 = 100), never all at once...
    assert all(50 <= n <= 150 for n in per_run), per_run
    # ...and each one is read again once every 30 days.
    assert sum(per_run[:30]) == len(keys)
    assert max(gaps) <= 30 * DAY and min(gaps[len(keys) :]) >= 29 * DAY
    assert not reread_due(keys[0], t0, t0, 30) and reread_due(keys[0], t0, t0 + 30 * DAY, 30)
    assert reread_due(keys[0], t0, t0, 0)  # reread_days = 0: every run reads everything


def _plan(
    tmp_path: Path, *, backup_problems: dict[str, list[dict[str, str]]], wal_damage: dict[str, list[int]]
) -> tuple[Any, Any]:
    """A plan over two repositories (local first) of backup B, replaying segments 1..8, and what verify
    recorded: per repository, the problems of its copy of B and which segments it found corrupt."""
    now = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    repos = []
    for repository in ("local", "s3"):
        repo = LocalRepository(tmp_path / repository, "main")
        repo.name = repository
        problems = backup_problems.get(repository, [])
        record = {"backup": "B", "time": now.isoformat(), "ok": False, "copy_ok": not problems}
        repo.put(record_key("B"), json.dumps({**record, "copy_problems": problems}).encode())
        corrupt = [
            {
                "key": f"wal/{SegmentName(1, n).name}.zst",
                "file": SegmentName(1, n).name,
                "size": 1,
                "modified": 1,
                "time": now.isoformat(),
                "detail": "decodes to bytes with sha256 0000..., its name says 1111...",
            }
            for n in wal_damage.get(repository, [])
        ]
        repo.put(CORRUPT_WAL_KEY, json.dumps({"objects": corrupt}).encode())
        repos.append(repo)
    wal = [SegmentInfo(SegmentName(1, n), ("local", "s3"), 1, now) for n in range(1, 9)]
    backup = SimpleNamespace(name="B")
    plan = SimpleNamespace(backup=backup, chain=[backup], backup_repository="local", wal=wal, notes=[])
    view = SimpleNamespace(
        repositories=repos,
        catalog=SimpleNamespace(backups=[SimpleNamespace(manifest=plan.backup, repositories=["local", "s3"])]),
    )
    return plan, view


def test_the_plan_avoids_damaged_copies_names_them_and_says_when_none_is_left(tmp_path: Path) -> None:
    checksum = {"repository": "local", "object": "base.tar.zst", "kind": "checksum", "detail": "..."}
    plan, view = _plan(
        tmp_path, backup_problems={"local": [checksum]}, wal_damage={"local": list(range(1, 9)), "s3": [8]}
    )
    avoid_damaged_copies(plan, view)
    assert plan.backup_repository == "s3"
    assert plan.notes[0] == (
        "avoided the local copy of backup B: verify on 2024-05-01 12:00 UTC found it corrupt "
        "(base.tar.zst: sha256 mismatch); taking s3's"
    )
    assert [seg.repositories for seg in plan.wal] == [("s3", "local")] * 7 + [("local", "s3")]
    named = [n for n in plan.notes if n.startswith("avoided the local copy of WAL segment")]
    assert len(named) == NAMED_SEGMENTS and "(decodes to bytes with sha256 0000..." in named[0]
    assert f"avoided the local copies of 2 more WAL segments verify found corrupt ({SegmentName(1, 6).name} .." in (
        " ".join(plan.notes)
    )
    # Segment 8: the local copy is damaged too, so nothing better is left, and the plan says so.
    (loud,) = [n for n in plan.notes if n.startswith("NO INTACT COPY")]
    assert loud.startswith(f"NO INTACT COPY of WAL segment {SegmentName(1, 8).name}: verify found every copy corrupt")


def test_wal_missing_from_a_repository_does_not_make_its_backup_copy_avoided(tmp_path: Path) -> None:
    wal = {"repository": "local", "object": "000000010000000000000002", "kind": "wal", "detail": "lost"}
    plan, view = _plan(tmp_path, backup_problems={"local": [wal]}, wal_damage={})
    avoid_damaged_copies(plan, view)
    assert plan.backup_repository == "local" and plan.notes == []


def test_every_copy_of_the_backup_damaged_keeps_the_plan_and_says_so(tmp_path: Path) -> None:
    size = {"object": "backup_manifest", "kind": "size", "detail": "..."}
    plan, view = _plan(tmp_path, backup_problems={"local": [size], "s3": [size]}, wal_damage={})
    avoid_damaged_copies(plan, view)
    assert plan.backup_repository == "local"
    (note,) = plan.notes
    assert note.startswith("NO INTACT COPY of backup B: verify found every copy corrupt (local on 2024-05-01 12:00")
    assert "backup_manifest: size mismatch" in note
