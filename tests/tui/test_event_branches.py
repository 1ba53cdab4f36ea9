"""After a branch, the panel and the restore it offers keep each event on the timeline whose WAL holds it.

The archive of ``tests.test_restore_plan.promoted``: timeline 2 branched off timeline 1 at 12:05 and
began at 12:15, its WAL archived to 12:30; timeline 1 ran on to 12:40, and the cluster runs on it (the
server of a killed restore promoted, the operator rolled back). From 12:15 to 12:30 both timelines
hold every instant, each with events of its own (``BRANCH_EVENTS``).
"""

from __future__ import annotations

from datetime import UTC, timedelta

from backend.catalog import Catalog, CatalogBackup
from backend.recovery import RecoveryView
from pgdr_tui.glyphs import UNICODE
from pgdr_tui.model import TimelineModel
from pgdr_tui.widgets.details import details_text
from tests.test_restore_plan import BRANCH, BRANCH_EVENTS, T0, at, promoted


def branched() -> TimelineModel:
    manifests, archive = promoted()
    archive.current = 1
    catalog = Catalog(
        backups=[CatalogBackup(m, ["local"]) for m in manifests],
        wal=[],
        history_files={},
        histories={2: BRANCH},
        history_times={2: T0 + timedelta(minutes=15)},
    )
    return TimelineModel(RecoveryView(catalog, archive, [], list(BRANCH_EVENTS)))


def panel(model: TimelineModel, minutes: int, seconds: int) -> tuple[str, int]:
    d = model.details(at(minutes, seconds))
    return details_text(d, zone=UTC, now=at(45, 0), glyphs=UNICODE, zoom="1 min", width=118).plain, d.timeline


def test_on_an_event_the_restore_offered_is_on_its_timeline() -> None:
    """Timeline 1's restore point "nightly" at 12:19:30: timeline 2 (newer) holds the instant too, but
    its WAL never has that record (its own "nightly" is at 12:26:30)."""
    model = branched()
    d = model.details(at(19, 30))
    assert (d.recoverable, d.timeline, d.target_timeline) == (True, 1, "1")
    # What the timeline screen turns into the restore request: the name, on timeline 1.
    event = model.event_at(at(19, 30).timestamp(), d.timeline)
    assert event is not None and (event.name, event.timeline) == ("nightly", 1)
    text, _ = panel(model, 19, 30)
    assert "RECOVERABLE on timeline 1" in text
    assert "restore point 'nightly': a restore here stops at it" in text


def test_the_events_around_the_cursor_are_those_of_the_timeline_restored() -> None:
    """At 12:25 on timeline 2, timeline 1's events since the branch (12:19:30, 12:19:40, 12:24:30) are
    neither replayed nor skipped: the event before is the restore point made before the branch."""
    text, timeline = panel(branched(), 25, 0)
    assert timeline == 2
    before = next(line for line in text.splitlines() if line.startswith("Event before"))
    after = next(line for line in text.splitlines() if line.startswith("Event after"))
    assert "restore point 'before_switch'" in before and "12:04:30" in before, text
    assert "restore point 'nightly'" in after and "12:26:30" in after, text
