"""Retention as pure logic: which backups and WAL files ``plan_expiry`` keeps, with synthetic inputs."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime, timedelta

import pytest

from backend.config import ClusterConfig, Config, S3Config
from backend.errors import PgdrError
from backend.manifest import BackupManifest
from backend.retention import ExpiryPlan, lifecycle_policy, plan_expiry
from backend.timeline import History
from backend.walnames import DEFAULT_SEGMENT_SIZE, SegmentName, format_lsn

NOW = datetime(2025, 6, 30, 12, 0, tzinfo=UTC)


def seg(number: int, timeline: int = 1) -> str:
    return SegmentName(timeline, number).name


def backup_file(number: int, timeline: int = 1) -> str:
    return f"{seg(number, timeline)}.00000028.backup"


def physical(age_days: float, start: int, *, timeline: int = 1, length: int = 1) -> BackupManifest:
    """A physical backup that stopped ``age_days`` before NOW, needing segments start .. start+length."""
    stop = NOW - timedelta(days=age_days)
    return BackupManifest(
        name=stop.strftime("%Y%m%dT%H%M%SZ"),
        kind="physical",
        cluster="main",
        system_identifier=1,
        pg_version="15",
        start_time=stop - timedelta(seconds=5),
        stop_time=stop,
        objects=[],
        timeline=timeline,
        start_lsn=format_lsn(start * DEFAULT_SEGMENT_SIZE + 0x28),
        stop_lsn=format_lsn((start + length) * DEFAULT_SEGMENT_SIZE + 0x100),
        wal_start=seg(start, timeline),
        wal_stop=seg(start + length, timeline),
        wal_segment_size=DEFAULT_SEGMENT_SIZE,
    )


def logical(age_days: float, database: str = "app") -> BackupManifest:
    stop = NOW - timedelta(days=age_days)
    return BackupManifest(
        name=stop.strftime("%Y%m%dT%H%M%SZ") + "-logical",
        kind="logical",
        cluster="main",
        system_identifier=1,
        pg_version="15",
        start_time=stop - timedelta(seconds=5),
        stop_time=stop,
        objects=[],
        database=database,
    )


def history(timeline: int, *switches: tuple[int, int]) -> History:
    """A .history file: (parent timeline, segment number where it was left), oldest first."""
    text = "".join(f"{p}\t{format_lsn(n * DEFAULT_SEGMENT_SIZE)}\tno recovery target specified\n" for p, n in switches)
    return History.parse(timeline, text)


def names(plan: ExpiryPlan) -> tuple[set[str], set[str]]:
    return {m.name for m in plan.expired}, {k.manifest.name for k in plan.kept}


def test_keeps_what_the_policy_says_and_the_wal_from_the_oldest_kept_backup() -> None:
    b20, b10, b5, b1 = physical(20, 2), physical(10, 10), physical(5, 20), physical(1, 30)
    wal = [seg(n) for n in range(1, 41)] + [backup_file(n) for n in (2, 10, 20, 30)] + ["00000002.history"]
    plan = plan_expiry([b1, b20, b5, b10], wal, {}, retention_days=7, now=NOW)

    assert names(plan) == ({b20.name, b10.name}, {b5.name, b1.name})
    assert [m.name for m in plan.expired] == [b20.name, b10.name]  # oldest first
    assert all(k.reason == "within the retention" and not k.overdue for k in plan.kept)
    # Everything before the oldest kept backup's wal_start goes, with the .backup files; nothing after.
    expected = sorted([*(seg(n) for n in range(1, 20)), backup_file(2), backup_file(10)])
    assert plan.wal_delete == tuple(expected)
    assert plan.wal_delete.index(backup_file(2)) == plan.wal_delete.index(seg(2)) + 1  # oldest first
    assert plan.deleted_segments == [seg(n) for n in range(1, 20)]
    assert plan.wal_floors == ((1, 20), (1, 30))
    assert "00000002.history" not in plan.wal_delete
    assert plan.keeps_segment(1, 20) and not plan.keeps_segment(1, 19)
    assert not plan.keep_all_wal and plan.note == ""


def test_a_backup_exactly_at_the_retention_is_kept() -> None:
    edge, old = physical(7, 10), physical(7.001, 5)
    plan = plan_expiry([edge, old], [], {}, retention_days=7, now=NOW)
    assert names(plan) == ({old.name}, {edge.name})


def test_never_removes_the_newest_physical_backup_even_when_older_than_the_retention() -> None:
    older, newest = physical(40, 3), physical(12, 8)
    wal = [seg(n) for n in range(1, 15)]
    plan = plan_expiry([older, newest], wal, {}, retention_days=7, now=NOW)

    assert names(plan) == ({older.name}, {newest.name})
    (kept,) = plan.kept
    assert kept.reason == "newest physical backup" and kept.overdue
    assert plan.deleted_segments == [seg(n) for n in range(1, 8)]


def test_the_newest_restorable_backup_is_protected_not_a_newer_broken_one() -> None:
    good = physical(12, 8)
    broken = dataclasses.replace(physical(9, 20), wal_start=None)  # no WAL information: not restorable
    plan = plan_expiry([good, broken], [seg(n) for n in range(1, 25)], {}, retention_days=7, now=NOW)
    assert names(plan) == ({broken.name}, {good.name})
    assert plan.deleted_segments == [seg(n) for n in range(1, 8)]


def test_keeps_the_newest_logical_dump_of_each_database_and_it_protects_no_wal() -> None:
    old_app, new_app, only_shop = logical(30), logical(20), logical(25, "shop")
    plan = plan_expiry([old_app, new_app, only_shop], [seg(n) for n in range(1, 5)], {}, retention_days=7, now=NOW)
    assert names(plan) == ({old_app.name}, {new_app.name, only_shop.name})
    assert {k.reason for k in plan.kept} == {"newest logical dump of app", "newest logical dump of shop"}
    # Only logical dumps are kept: no physical backup, so no WAL is deleted at all.
    assert plan.wal_delete == () and plan.keep_all_wal
    assert "no physical backup is kept" in plan.note


@pytest.mark.parametrize("backups", [[], [logical(3)], [dataclasses.replace(physical(3, 5), wal_stop=None)]])
def test_no_physical_backup_kept_means_no_wal_deleted(backups: list[BackupManifest]) -> None:
    wal = [seg(n) for n in range(1, 10)] + [backup_file(5)]
    plan = plan_expiry(backups, wal, {}, retention_days=7, now=NOW)
    assert plan.wal_delete == ()
    assert plan.keeps_segment(1, 1)


def test_a_tl1_backup_keeps_the_wal_of_the_tl2_branch() -> None:
    old, kept = physical(20, 1), physical(3, 5)
    # Promotion to timeline 2 at segment 8: TL1 ends with a .partial, TL2 goes on from segment 8.
    wal = [seg(n) for n in range(1, 8)] + [f"{seg(8)}.partial", *(seg(n, 2) for n in range(8, 13)), "00000002.history"]
    plan = plan_expiry([old, kept], wal, {2: history(2, (1, 8))}, retention_days=7, now=NOW)

    assert names(plan) == ({old.name}, {kept.name})
    assert plan.wal_delete == tuple(seg(n) for n in range(1, 5))
    assert all(plan.keeps_segment(2, n) for n in range(8, 13))


def test_timeline_ancestry_follows_history_files() -> None:
    kept = physical(3, 10, timeline=2)
    histories = {2: history(2, (1, 8)), 3: history(3, (1, 8), (2, 14)), 5: history(5, (1, 6))}
    wal = [
        *(seg(n, 1) for n in range(1, 12)),  # TL1: the parent, and its old primary kept going past 8
        *(seg(n, 2) for n in range(8, 16)),
        *(seg(n, 3) for n in range(14, 18)),  # descends from TL2: kept
        *(seg(n, 4) for n in range(12, 14)),  # no history here: unknown ancestry, kept to be safe
        *(seg(n, 5) for n in range(6, 12)),  # a sibling branch off TL1: no kept backup replays it
    ]
    plan = plan_expiry([kept], wal, histories, retention_days=7, now=NOW)
    deleted = set(plan.wal_delete)
    assert deleted == {seg(n, 1) for n in range(1, 12)} | {seg(8, 2), seg(9, 2)} | {seg(n, 5) for n in range(6, 12)}


def test_after_a_pitr_the_backup_reaching_the_new_timeline_is_kept() -> None:
    # B1 restored to segment 20 made timeline 2; B2 (newer) is on the abandoned rest of timeline 1.
    b1, b2 = physical(20, 10), physical(10, 50)
    wal = [*(seg(n) for n in range(10, 60)), *(seg(n, 2) for n in range(20, 31)), "00000002.history"]
    plan = plan_expiry([b1, b2], wal, {2: history(2, (1, 20))}, retention_days=7, now=NOW)

    assert names(plan) == (set(), {b1.name, b2.name})
    reasons = {k.manifest.name: k.reason for k in plan.kept}
    assert reasons == {b1.name: "newest backup that reaches timeline 2", b2.name: "newest physical backup"}
    assert plan.wal_delete == ()  # B1 needs TL1 from 10 and all of TL2


def test_a_timeline_without_its_history_here_stops_the_expiry() -> None:
    # The S3 copy got timeline 2's segments before its .history (it is queued): which backup reaches
    # timeline 2 cannot be told, so nothing physical is removed.
    b1, b2 = physical(20, 10), physical(10, 50)
    wal = [*(seg(n) for n in range(1, 60)), *(seg(n, 2) for n in range(20, 31))]
    plan = plan_expiry([b1, b2], wal, {}, retention_days=7, now=NOW)
    assert names(plan) == (set(), {b1.name, b2.name})
    assert plan.wal_delete == () and "timeline 2 has no .history" in plan.note


def test_retention_is_per_repository() -> None:
    backups = [physical(40, 2), physical(20, 10), physical(10, 20), physical(2, 30)]
    wal = [seg(n) for n in range(1, 35)]
    local = plan_expiry(backups, wal, {}, retention_days=7, now=NOW)
    s3 = plan_expiry(backups, wal, {}, retention_days=30, now=NOW)
    assert [m.name for m in local.expired] == [backups[0].name, backups[1].name, backups[2].name]
    assert [m.name for m in s3.expired] == [backups[0].name]
    assert local.deleted_segments == [seg(n) for n in range(1, 30)]
    assert s3.deleted_segments == [seg(n) for n in range(1, 10)]


def test_naive_now_is_utc_and_junk_names_are_kept() -> None:
    plan = plan_expiry([physical(10, 5), physical(1, 6)], ["README", seg(1), seg(6)], {}, retention_days=7,
                       now=NOW.replace(tzinfo=None))  # fmt: skip
    assert plan.now == NOW
    assert plan.wal_delete == (seg(1),)


# --- the S3 lifecycle rule ---


def config(prefix: str = "pg", bucket: str = "backups", retention_days: int = 30) -> Config:
    return Config(
        cluster=ClusterConfig("main"), s3=S3Config(bucket=bucket, prefix=prefix, retention_days=retention_days)
    )


def test_lifecycle_is_the_memecoin_rule_for_this_clusters_prefix() -> None:
    policy = lifecycle_policy(config("/memecoin-lending//postgres/"))
    json.dumps(policy)
    (rule,) = policy["Rules"]
    assert rule == {
        "ID": "pgdr-main",
        "Status": "Enabled",
        "Filter": {"Prefix": "memecoin-lending/postgres/main/"},
        "Transitions": [{"Days": 30, "StorageClass": "GLACIER"}],
        "Expiration": {"Days": 365},
        "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 7},
    }
    assert lifecycle_policy(config(""))["Rules"][0]["Filter"] == {"Prefix": "main/"}


def test_lifecycle_never_outruns_a_longer_s3_retention() -> None:
    (rule,) = lifecycle_policy(config(retention_days=400))["Rules"]
    assert rule["Transitions"][0]["Days"] == 400 and rule["Expiration"]["Days"] == 490
    (rule,) = lifecycle_policy(config(retention_days=7))["Rules"]
    assert rule["Transitions"][0]["Days"] == 30 and rule["Expiration"]["Days"] == 365


def test_lifecycle_without_a_bucket_is_one_line() -> None:
    with pytest.raises(PgdrError) as caught:
        lifecycle_policy(config(bucket=""))
    assert "s3.bucket" in str(caught.value) and "\n" not in str(caught.value)
