"""The timeline model on a repository the backend wrote: windows, gaps and events where the story put them."""

from __future__ import annotations

from datetime import timedelta

import pytest

from backend.config import load_config
from backend.recovery import load_view
from backend.walnames import SegmentName
from pgdr_tui.model import Cell, Intervals, TimelineModel
from pgdr_tui.timescale import Viewport, level_named
from tests.tui.fixture_repo import SEGMENT_SIZE, Story


@pytest.fixture(scope="module")
def model(story: Story) -> TimelineModel:
    return TimelineModel(load_view(load_config(story.config)))


def test_intervals_union_and_overlap() -> None:
    iv = Intervals.union([(10, 20), (15, 30), (40, 50), (50, 55)])
    assert (iv.starts, iv.ends) == ([10, 40], [30, 55])
    assert iv.overlap(12, 18) == (True, True)
    assert iv.overlap(25, 45) == (True, False)
    assert iv.overlap(31, 39) == (False, False)
    assert iv.contains(40) and not iv.contains(35)


def test_rows_per_timeline_with_the_gap(model: TimelineModel, story: Story) -> None:
    assert [r.timeline for r in model.rows] == [1, 2]
    tl1 = model.rows[0]
    middle = (story.gap_start + (story.gap_end - story.gap_start) / 2).timestamp()
    assert tl1.gaps.contains(middle)
    assert tl1.cell(middle - 60, middle + 60) is Cell.GAP
    # A coarse column holding the gap and recoverable time still shows the gap.
    assert tl1.cell(middle - 86400, middle + 86400) is Cell.GAP
    day_before = (story.gap_start - timedelta(days=1)).timestamp()
    assert tl1.cell(day_before, day_before + 600) is Cell.FULL


def test_a_gap_is_unrecoverable_and_says_why(model: TimelineModel, story: Story) -> None:
    d = model.details(story.gap_start + timedelta(minutes=30))
    assert not d.recoverable
    assert "gap" in d.reason
    early = model.details(story.start + timedelta(minutes=10))
    assert not early.recoverable and "before the first base backup" in early.reason


def test_details_name_the_backup_and_wal_to_replay(model: TimelineModel, story: Story) -> None:
    instant = story.drop - timedelta(minutes=1)
    d = model.details(instant)
    assert d.recoverable and d.timeline == 1 and d.target_timeline == "1"
    assert d.backup is not None
    m = d.backup.manifest
    assert m.stop_time <= instant
    newer = [
        b for b in model.backup_order if b.manifest.kind == "physical" and m.stop_time < b.manifest.stop_time <= instant
    ]
    assert not newer, "the newest backup before the instant is the one to use"
    assert d.first_segment == m.wal_start
    first = SegmentName.parse(d.first_segment or "", SEGMENT_SIZE).number
    last = SegmentName.parse(d.last_segment or "", SEGMENT_SIZE).number
    assert d.segments == last - first + 1 and d.wal_bytes == d.segments * SEGMENT_SIZE
    assert d.after is not None and d.after.kind == "drop" and d.after.time == story.drop
    assert d.before is not None and d.before.kind == "restore_point"


def test_after_the_promotion_the_newest_backup_is_used(model: TimelineModel, story: Story) -> None:
    d = model.details(story.promotion + timedelta(hours=3))
    assert d.recoverable and d.timeline == 2 and d.target_timeline == "latest"
    assert d.backup is not None
    assert d.backup.manifest.stop_time > story.promotion - timedelta(hours=7)
    latest = model.details(story.promotion, latest=True)
    assert latest.latest and latest.recoverable


def test_marks_and_columns(model: TimelineModel, story: Story) -> None:
    t = story.drop.timestamp()
    assert model.event_at(t) is not None
    assert model.next_mark(t - 3600) is not None
    assert model.previous_mark(model.backup_times[0]) is None
    v = Viewport(level=level_named("1 h"), left=story.start.timestamp(), width=120)
    cols = model.columns(v)
    assert len(cols.rows) == 2 and all(len(r) == 120 for r in cols.rows)
    assert sum(1 for m in cols.backups if m) > 10


def test_a_timeline_the_running_cluster_does_not_continue_is_marked_abandoned(story: Story) -> None:
    view = load_view(load_config(story.config))
    view.timeline.current = 1  # the cluster rolled back onto timeline 1
    rows = {row.timeline: row.abandoned for row in TimelineModel(view).rows}
    assert rows == {1: False, 2: True}
    view.timeline.current = 2
    assert not any(row.abandoned for row in TimelineModel(view).rows)
