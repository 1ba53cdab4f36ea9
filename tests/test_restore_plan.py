"""The restore planner on a made-up archive: plain and fast, no server.

Made-up archives reach shapes a real cluster needs minutes to build (a promotion with backups on
both timelines, a segment missing between two backups) and let the test say exactly what recovery
will be told.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from backend.catalog import Catalog, CatalogBackup
from backend.config import ClusterConfig, Config, PostgresConfig
from backend.errors import PgdrError
from backend.manifest import BackupManifest
from backend.restore.plan import RestorePlan, make_plan
from backend.restore.run import write_recovery_settings
from backend.restore.target import make_target, parse_timestamp
from backend.timeline import History, RecoveryTimeline, SegmentTable, build_timeline
from backend.walindex import WalEvent, WalEvents, XidFate, XidSightings
from backend.walnames import SegmentName, format_lsn

SEG = 16 << 20
T0 = datetime(2024, 1, 15, 12, 0, tzinfo=UTC)


def table(timeline: int, numbers: list[int], *, minutes_from: int = 0) -> SegmentTable:
    """Segments archived one a minute (no WAL index: their archive time is their latest instant)."""
    t = SegmentTable(timeline)
    t.numbers = numbers
    t.stored_bytes = [SEG // 4] * len(numbers)
    t.archived_at = [(T0 + timedelta(minutes=minutes_from + n)).timestamp() for n in numbers]
    t.first_commit = [math.nan] * len(numbers)
    t.last_commit = [math.nan] * len(numbers)
    t.indexed = [False] * len(numbers)
    t.repositories = [("local",)] * len(numbers)
    return t


def backup(name: str, timeline: int, segment: int, stopped: datetime) -> BackupManifest:
    stop_lsn = segment * SEG + 0x1000
    return BackupManifest(
        name=name,
        kind="physical",
        cluster="main",
        system_identifier=1,
        pg_version="15.0",
        start_time=stopped - timedelta(seconds=5),
        stop_time=stopped,
        objects=[],
        timeline=timeline,
        start_lsn=format_lsn(segment * SEG + 0x28),
        stop_lsn=format_lsn(stop_lsn),
        wal_start=SegmentName(timeline, segment, SEG).name,
        wal_stop=SegmentName(timeline, segment, SEG).name,
        wal_segment_size=SEG,
    )


def config(tmp_path: Path) -> Config:
    return Config(cluster=ClusterConfig(name="main"), postgres=PostgresConfig(data_dir=str(tmp_path / "data")))


def plan_for(
    tmp_path: Path,
    manifests: list[BackupManifest],
    archive: RecoveryTimeline,
    timestamp: str,
    timeline: str | None = None,
) -> RestorePlan:
    catalog = Catalog(backups=[CatalogBackup(m, ["local"]) for m in manifests], wal=[], history_files={})
    return make_plan(config(tmp_path), catalog, archive, make_target(timestamp=timestamp, timeline=timeline))


def test_target_timeline_current_names_the_planned_timeline(tmp_path: Path) -> None:
    """A timeline-1 backup whose window runs on into timeline 2 must be told to follow timeline 2.

    Timeline 2 began at segment 5 (promoted at 12:15); b1 was taken on timeline 1, b2 on timeline 2
    at 12:27:50. 12:20 lies on timeline 2 before b2, so only b1 reaches it, through timeline 2's WAL.
    PostgreSQL reads ``recovery_target_timeline = 'current'`` as b1's own timeline (1) and would
    replay timeline 1's abandoned future instead.
    """
    promoted = T0 + timedelta(minutes=15)
    history = History.parse(2, f"1\t{format_lsn(5 * SEG + 0x2000)}\tno recovery target specified\n", created=promoted)
    tables = {1: table(1, [1, 2, 3, 4]), 2: table(2, [5, 6, 7, 8, 9, 10], minutes_from=20)}
    b1 = backup("20240115T120230Z", 1, 2, T0 + timedelta(minutes=2, seconds=30))
    b2 = backup("20240115T122750Z", 2, 8, T0 + timedelta(minutes=27, seconds=50))
    timeline = build_timeline([b1, b2], tables, {2: history}, SEG)

    plan = plan_for(tmp_path, [b1, b2], timeline, timestamp="2024-01-15 12:20:00", timeline="current")

    assert (plan.backup.name, plan.timeline) == (b1.name, 2)
    assert plan.wal[-1].segment.timeline == 2  # the plan counted timeline 2's WAL ...
    data = tmp_path / "restored"
    data.mkdir()
    write_recovery_settings(config(tmp_path), plan, data)
    written = (data / "postgresql.auto.conf").read_text()
    assert "recovery_target_timeline = '2'\n" in written  # ... and recovery is told to follow it
    assert "recovery_target_timeline = 2)" in plan.render()
    assert plan.to_json()["target"]["settings"]["recovery_target_timeline"] == "2"

    # After b2 stopped, b2 (on timeline 2 itself) is chosen, with the same explicit timeline.
    chosen = plan_for(tmp_path, [b1, b2], timeline, timestamp="2024-01-15 12:29:00", timeline="current")
    assert chosen.backup.name == b2.name
    assert chosen.target.recovery_settings()["recovery_target_timeline"] == "2"


def test_a_gap_between_two_backups_is_named_with_the_reachable_instants_around_it(tmp_path: Path) -> None:
    """Segment 5 is missing: b1's window ends at segment 4, b2's begins at 12:08:30."""
    b1 = backup("20240115T120230Z", 1, 2, T0 + timedelta(minutes=2, seconds=30))
    b2 = backup("20240115T120830Z", 1, 8, T0 + timedelta(minutes=8, seconds=30))
    timeline = build_timeline([b1, b2], {1: table(1, [1, 2, 3, 4, 6, 7, 8, 9, 10])}, {}, SEG)

    with pytest.raises(PgdrError) as refused:
        plan_for(tmp_path, [b1, b2], timeline, timestamp="2024-01-15 12:06:00")
    message = str(refused.value)
    assert "the archived WAL has a gap: 000000010000000000000005 is missing" in message
    assert "latest reachable before it: 2024-01-15 12:03:59.999999 UTC (backup 20240115T120230Z)" in message
    assert "earliest reachable after it: 2024-01-15 12:08:30.000000 UTC (backup 20240115T120830Z)" in message
    assert "\n" not in message

    # Both instants the refusal names can be pasted back as --timestamp and are planned.
    for pasted, name in (("2024-01-15 12:03:59.999999 UTC", b1.name), ("2024-01-15 12:08:30.000000 UTC", b2.name)):
        assert plan_for(tmp_path, [b1, b2], timeline, timestamp=pasted).backup.name == name


def test_a_time_after_the_newest_archived_commit_says_how_to_archive_it(tmp_path: Path) -> None:
    """The commits of the segment the server is writing are not archived: the fix is on the server."""
    b1 = backup("20240115T120230Z", 1, 2, T0 + timedelta(minutes=2, seconds=30))
    segments = table(1, [1, 2, 3, 4, 5, 6])
    segments.indexed = [True] * 6
    segments.last_commit = [(T0 + timedelta(minutes=n, seconds=-20)).timestamp() for n in segments.numbers]
    segments.last_commit[-1] = (T0 + timedelta(minutes=5, seconds=42, microseconds=123456)).timestamp()
    timeline = build_timeline([b1], {1: segments}, {}, SEG)

    with pytest.raises(PgdrError) as refused:
        plan_for(tmp_path, [b1], timeline, timestamp="2024-01-15 12:07:00")
    message = str(refused.value)
    assert message.startswith("2024-01-15 12:07:00.000000 UTC is not reachable on timeline 1 (")
    assert "after the newest archived commit, 2024-01-15 12:05:42.123456 UTC: the WAL after it is not" in message
    assert "run SELECT pg_switch_wal() on the server, or wait for archive_timeout, then plan again" in message
    assert "latest reachable before it: 2024-01-15 12:05:42.123455 UTC (backup 20240115T120230Z)" in message
    assert "\n" not in message
    assert plan_for(tmp_path, [b1], timeline, timestamp="2024-01-15 12:05:42.123455 UTC").backup.name == b1.name


#: Timeline 2's .history: it left timeline 1 in segment 5.
BRANCH = f"1\t{format_lsn(5 * SEG + 0x2000)}\tno recovery target specified\n"


def promoted() -> tuple[list[BackupManifest], RecoveryTimeline]:
    """Timeline 2 branched off timeline 1 in segment 5 and began at 12:15; timeline 1 ran on to 12:40.

    Timeline 1's segments 5..40 after the branch are an abandoned future (archived at 12:05..12:40);
    timeline 2's own segments 5..10 were archived at 12:25..12:30. One backup, b1, on timeline 1.
    """
    history = History.parse(2, BRANCH, created=T0 + timedelta(minutes=15))
    tables = {1: table(1, list(range(1, 41))), 2: table(2, [5, 6, 7, 8, 9, 10], minutes_from=20)}
    b1 = backup("20240115T120230Z", 1, 2, T0 + timedelta(minutes=2, seconds=30))
    return [b1], build_timeline([b1], tables, {2: history}, SEG)


@pytest.mark.parametrize("timeline", [None, "latest"])
def test_a_time_before_the_branch_is_planned_on_the_older_timeline(tmp_path: Path, timeline: str | None) -> None:
    """Timeline 2's history reads timeline 1's WAL before the branch, so both reach the same state.

    Unnamed, the timeline current at 12:03:30 (1) is named in the settings; an explicit latest is
    kept, since following it reaches the instant too (through segment 4 of timeline 1).
    """
    manifests, archive = promoted()

    plan = plan_for(tmp_path, manifests, archive, timestamp="2024-01-15 12:03:30", timeline=timeline)

    assert plan.timeline == 1
    assert [s.segment.name[:8] for s in plan.wal] == ["00000001"] * 3  # segments 2..4, all before the branch
    assert plan.target.recovery_settings()["recovery_target_timeline"] == (timeline or "1")


def test_an_explicit_latest_is_not_traded_for_an_abandoned_timeline(tmp_path: Path) -> None:
    """12:07 lies on timeline 1 after timeline 2 branched off it: following latest never reaches it.

    Unnamed, the timeline current then (1) is followed; named latest, the plan refuses, naming the
    timeline that holds the instant and the first instant timeline 2 holds.
    """
    manifests, archive = promoted()

    unnamed = plan_for(tmp_path, manifests, archive, timestamp="2024-01-15 12:07:00")
    assert (unnamed.timeline, unnamed.target.recovery_settings()["recovery_target_timeline"]) == (1, "1")

    with pytest.raises(PgdrError) as refused:
        plan_for(tmp_path, manifests, archive, timestamp="2024-01-15 12:07:00", timeline="latest")
    message = str(refused.value)
    assert message.startswith("2024-01-15 12:07:00.000000 UTC is not reachable on timeline 2 (")
    assert "it lies on timeline 1; pass --target-timeline 1 to restore that timeline's state" in message
    assert "earliest reachable after it: 2024-01-15 12:15:00.000000 UTC (backup 20240115T120230Z)" in message
    assert "\n" not in message


def test_after_the_newest_timeline_began_its_unarchived_wal_is_named_not_an_older_timeline(tmp_path: Path) -> None:
    """12:35 is after timeline 2's newest commit (12:30) but on timeline 1's abandoned future (to 12:40).

    PostgreSQL's default follows timeline 2, whose WAL after 12:30 is not archived yet: the plan says
    so rather than restoring timeline 1's abandoned state at 12:35.
    """
    manifests, archive = promoted()

    with pytest.raises(PgdrError) as refused:
        plan_for(tmp_path, manifests, archive, timestamp="2024-01-15 12:35:00")
    message = str(refused.value)
    assert "is not reachable on timeline 2 (it is after the newest archived commit, 2024-01-15 12:30:00" in message
    assert "pg_switch_wal()" in message
    # Named, timeline 1's abandoned future is restored as asked.
    assert plan_for(tmp_path, manifests, archive, timestamp="2024-01-15 12:35:00", timeline="1").timeline == 1


def xid_plan(
    tmp_path: Path,
    manifests: list[BackupManifest],
    archive: RecoveryTimeline,
    ends: list[tuple[str, XidFate]],
    *,
    unlisted: tuple[str, ...] = (),
    backup_name: str | None = None,
    timeline: str | None = None,
) -> RestorePlan:
    """A plan for transaction 4321, which the WAL index saw end as ``ends`` say (no event names it)."""

    def find_xid(xid: int) -> XidSightings:
        assert xid == 4321
        return XidSightings(ends, list(unlisted), 0, 9000)

    catalog = Catalog(backups=[CatalogBackup(m, ["local"]) for m in manifests], wal=[], history_files={})
    target = make_target(xid="4321", timeline=timeline)
    return make_plan(
        config(tmp_path), catalog, archive, target, backup_name=backup_name, events=WalEvents([], find_xid)
    )


def test_an_ordinary_xid_is_planned_from_the_segment_its_commit_lies_in(tmp_path: Path) -> None:
    """Transaction 4321 committed in segment 6. b1 stopped in segment 2, b2 inside segment 6 (before or
    after the commit: the WAL index does not say where in the segment), b3 in segment 8."""
    b1 = backup("20240115T120230Z", 1, 2, T0 + timedelta(minutes=2, seconds=30))
    b2 = backup("20240115T120630Z", 1, 6, T0 + timedelta(minutes=6, seconds=30))
    b3 = backup("20240115T120830Z", 1, 8, T0 + timedelta(minutes=8, seconds=30))
    archive = build_timeline([b1, b2, b3], {1: table(1, list(range(1, 11)))}, {}, SEG)
    ends: list[tuple[str, XidFate]] = [(SegmentName(1, 6, SEG).name, "committed")]

    plan = xid_plan(tmp_path, [b1, b2, b3], archive, ends)

    assert plan.backup.name == b1.name
    assert [s.segment.number for s in plan.wal] == [2, 3, 4, 5, 6] and plan.wal_complete
    assert plan.target.recovery_settings()["recovery_target_xid"] == "4321"
    assert "(5 segments," in plan.render()

    with pytest.raises(PgdrError) as refused:
        xid_plan(tmp_path, [b1, b2, b3], archive, ends, backup_name=b2.name)
    message = str(refused.value)
    assert message.startswith("transaction 4321 committed in WAL segment 000000010000000000000006, which is not")
    assert f"backup {b2.name} stopped inside that segment" in message and "\n" not in message


def test_an_xid_committed_on_another_branch_names_that_timeline(tmp_path: Path) -> None:
    """Timeline 2 branched off timeline 1 in segment 5: a commit in timeline 1's segment 3 is in timeline
    2's history too, one in its segment 7 only on the abandoned branch."""
    manifests, archive = promoted()
    before = xid_plan(tmp_path, manifests, archive, [(SegmentName(1, 3, SEG).name, "committed")])
    assert (before.timeline, before.wal[-1].segment.name) == (2, SegmentName(1, 3, SEG).name)

    branch: list[tuple[str, XidFate]] = [(SegmentName(1, 7, SEG).name, "committed")]
    with pytest.raises(PgdrError) as refused:
        xid_plan(tmp_path, manifests, archive, branch)
    assert "committed on timeline 1 (WAL segment 000000010000000000000007), which timeline 2's history" in str(
        refused.value
    )
    named = xid_plan(tmp_path, manifests, archive, branch, timeline="1")
    assert (named.timeline, named.wal[-1].segment.number) == (1, 7)


def test_an_xid_the_index_cannot_place_names_the_backups_that_could_reach_it(tmp_path: Path) -> None:
    """Segments 7 and 8 were indexed by a pgdr that did not list ended transactions: the commit may lie
    there. b1 and b2 reach them, b3 (stopped in segment 9) does not."""
    b1 = backup("20240115T120230Z", 1, 2, T0 + timedelta(minutes=2, seconds=30))
    b2 = backup("20240115T120430Z", 1, 4, T0 + timedelta(minutes=4, seconds=30))
    b3 = backup("20240115T120930Z", 1, 9, T0 + timedelta(minutes=9, seconds=30))
    archive = build_timeline([b1, b2, b3], {1: table(1, list(range(1, 11)))}, {}, SEG)
    unlisted = (SegmentName(1, 7, SEG).name, SegmentName(1, 8, SEG).name)

    with pytest.raises(PgdrError) as refused:
        xid_plan(tmp_path, [b1, b2, b3], archive, [], unlisted=unlisted)
    message = str(refused.value)
    assert message.startswith("the WAL index does not show where transaction 4321 committed; 2 archived segments")
    assert f"backups that reach them: {b1.name}, {b2.name}: pass --backup NAME" in message

    plan = xid_plan(tmp_path, [b1, b2, b3], archive, [], unlisted=unlisted, backup_name=b2.name)
    assert (plan.backup.name, plan.wal_complete) == (b2.name, False)  # replays on until it meets the commit


def at(minutes: int, seconds: int) -> datetime:
    return T0 + timedelta(minutes=minutes, seconds=seconds)


#: In ``promoted()``: a restore point before the branch (timeline 2 replays it), and after it, on each
#: branch, a restore point "nightly" and a transaction 900 of its own; one more only on timeline 1.
BRANCH_EVENTS = [
    WalEvent("restore_point", 5 * SEG + 0x1000, at(4, 30), name="before_switch", time_source="record", timeline=1),
    WalEvent("restore_point", 7 * SEG + 0x100, at(26, 30), name="nightly", time_source="record", timeline=2),
    WalEvent("drop", 8 * SEG + 0x100, at(27, 40), 900, time_source="commit", timeline=2),
    WalEvent("restore_point", 20 * SEG + 0x100, at(19, 30), name="nightly", time_source="record", timeline=1),
    WalEvent("drop", 20 * SEG + 0x200, at(19, 40), 900, time_source="commit", timeline=1),
    WalEvent("restore_point", 25 * SEG + 0x100, at(24, 30), name="rolled_back_onto", time_source="record", timeline=1),
]


def branch_plan(tmp_path: Path, **target: str) -> RestorePlan:
    manifests, archive = promoted()
    catalog = Catalog(
        backups=[CatalogBackup(m, ["local"]) for m in manifests], wal=[], history_files={}, histories={2: BRANCH}
    )
    return make_plan(config(tmp_path), catalog, archive, make_target(**target), events=BRANCH_EVENTS)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("target", "on_two", "on_one"),
    [({"name": "nightly"}, at(26, 30), at(19, 30)), ({"xid": "900"}, at(27, 40), at(19, 40))],
    ids=["name", "xid"],
)
def test_a_name_or_xid_both_branches_hold_is_found_on_the_timeline_restored(
    tmp_path: Path, target: dict[str, str], on_two: datetime, on_one: datetime
) -> None:
    """Timeline 2 (followed: the newest) stops at its own record, though timeline 1's comes later in
    LSN order; named, timeline 1 stops at its own."""
    plan = branch_plan(tmp_path, **target)
    assert (plan.timeline, plan.target_instant, plan.wal[-1].segment.timeline) == (2, on_two, 2)
    assert f"  reaches:         {on_two:%Y-%m-%d %H:%M:%S} UTC\n" in plan.render()
    named = branch_plan(tmp_path, **target, timeline="1")
    assert (named.timeline, named.target_instant, named.wal[-1].segment.timeline) == (1, on_one, 1)


def test_a_restore_point_made_before_the_branch_is_on_both_timelines(tmp_path: Path) -> None:
    plan = branch_plan(tmp_path, name="before_switch")
    assert (plan.timeline, plan.target_instant) == (2, at(4, 30))


def test_a_restore_point_only_the_other_branch_holds_names_that_timeline(tmp_path: Path) -> None:
    with pytest.raises(PgdrError) as refused:
        branch_plan(tmp_path, name="rolled_back_onto")
    assert str(refused.value) == (
        "restore point 'rolled_back_onto' is on timeline 1 (at LSN 0/19000100), which timeline 2's history does "
        "not pass through: pass --target-timeline 1 to restore that branch"
    )
    assert branch_plan(tmp_path, name="rolled_back_onto", timeline="1").target_instant == at(24, 30)


def test_a_restore_point_name_made_twice_on_the_path_is_refused_with_their_lsns(tmp_path: Path) -> None:
    """PostgreSQL stops at the first restore point of that name it replays, whichever one was meant."""
    assert branch_plan(tmp_path, name="before_switch", timeline="1").target_instant == at(4, 30)  # once: planned
    again = WalEvent(
        "restore_point", 22 * SEG + 0x100, at(21, 0), name="before_switch", time_source="record", timeline=1
    )
    manifests, archive = promoted()
    catalog = Catalog(
        backups=[CatalogBackup(m, ["local"]) for m in manifests], wal=[], history_files={}, histories={2: BRANCH}
    )
    events = [*BRANCH_EVENTS, again]
    with pytest.raises(PgdrError) as refused:
        make_plan(config(tmp_path), catalog, archive, make_target(name="before_switch", timeline="1"), events=events)  # type: ignore[arg-type]
    assert str(refused.value) == (
        "restore point 'before_switch' was made 2 times on timeline 1's path (at LSN 0/05001000, "
        f"{at(4, 30):%Y-%m-%d %H:%M:%S} UTC; at LSN 0/16000100, {at(21, 0):%Y-%m-%d %H:%M:%S} UTC) and recovery stops "
        "at the first one after the base backup's start: pass --lsn with the LSN of the one you mean"
    )
    # On timeline 2 the second one is not on the path: the name is plain again.
    assert make_plan(
        config(tmp_path), catalog, archive, make_target(name="before_switch"), events=events
    ).target_instant == at(4, 30)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("typed", "zone", "utc"),
    [
        ("2024-01-15 14:30:00", "Asia/Kolkata", "2024-01-15 09:00:00"),  # no offset: read in the zone
        ("2024-01-15 14:30:00", "UTC", "2024-01-15 14:30:00"),
        ("2024-01-15T14:30:00Z", "Asia/Kolkata", "2024-01-15 14:30:00"),  # an offset wins over the zone
        ("2024-01-15 14:30:00+02", "Asia/Kolkata", "2024-01-15 12:30:00"),
        ("2024-01-15 14:30:00.250000 UTC", "Asia/Kolkata", "2024-01-15 14:30:00.250000"),  # as pgdr prints it
        ("2024-01-15 14:30:00 utc", "Asia/Kolkata", "2024-01-15 14:30:00"),
    ],
)
def test_timestamps_are_read_in_the_zone_unless_they_carry_an_offset(typed: str, zone: str, utc: str) -> None:
    assert parse_timestamp(typed, zone) == datetime.fromisoformat(utc).replace(tzinfo=UTC)
