"""Events on the timeline whose WAL holds them, each record once: read from a made-up repository.

Timeline 2 branched off timeline 1 in segment 5; timeline 1 ran on (the server of a killed restore
promoted, the operator rolled back). Timeline 2's segment 5 is a copy of timeline 1's up to the
switch, so the WAL index reads the restore point made before the switch twice; after the switch each
branch has records of its own, at times, LSNs and xids the other branch reuses.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from backend.archive.index import index_key
from backend.archive.walfile import WalObject
from backend.config import load_config
from backend.recovery import load_view
from backend.repository import IDENTITY_KEY, REPOSITORY_FORMAT
from backend.repository.local import LocalRepository
from backend.walindex import EventKind, SegmentIndex, TimeSource, WalEvent
from backend.walnames import SegmentName, format_lsn
from pgdr_tui import cli

SEG = 16 << 20
T0 = datetime(2026, 11, 20, 12, tzinfo=UTC)
SWITCH = 5 * SEG + 0x2000


def event(kind: EventKind, lsn: int, minutes: float, *, name: str | None = None, xid: int | None = None) -> WalEvent:
    source: TimeSource = "record" if kind == "restore_point" else "commit"
    return WalEvent(kind, lsn, T0 + timedelta(minutes=minutes), xid, name, time_source=source)


#: Per segment (timeline, number), the events its WAL holds.
EVENTS = {
    (1, 3): [event("drop", 3 * SEG + 0x100, 3, xid=700)],
    (1, 5): [event("restore_point", 5 * SEG + 0x1000, 5, name="before_switch")],
    (2, 5): [event("restore_point", 5 * SEG + 0x1000, 5, name="before_switch")],  # the copy
    (1, 6): [event("restore_point", 6 * SEG + 0x100, 6, name="nightly"), event("drop", 6 * SEG + 0x200, 6.5, xid=900)],
    (2, 6): [
        event("restore_point", 6 * SEG + 0x100, 26, name="nightly"),
        event("drop", 6 * SEG + 0x200, 26.5, xid=900),
    ],
}


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("PGDR_STATE_DIR", str(tmp_path / "state"))
    repo = LocalRepository(tmp_path / "repo", "main")
    identity = {"format": REPOSITORY_FORMAT, "cluster": "main", "system_identifier": "1", "wal_segment_size": SEG}
    repo.put(IDENTITY_KEY, json.dumps(identity).encode())
    history = f"1\t{format_lsn(SWITCH)}\tno recovery target specified\n".encode()
    repo.put(WalObject("00000002.history", hashlib.sha256(history).hexdigest(), "none").key, history)
    segments = [(1, n) for n in range(1, 9)] + [(2, n) for n in range(5, 8)]
    for tli, number in segments:
        name = SegmentName(tli, number, SEG).name
        data = name.encode() * 8
        repo.put(WalObject(name, hashlib.sha256(data).hexdigest(), "none").key, data)
        when = T0 + timedelta(minutes=number + (20 if tli == 2 else 0))
        index = SegmentIndex(
            segment=name,
            first_commit=when,
            last_commit=when + timedelta(seconds=50),
            commits=10,
            events=EVENTS.get((tli, number), []),
            tail_complete=True,
        )
        repo.put(index_key(name), json.dumps(index.to_json()).encode())
    path = tmp_path / "pgdr.toml"
    path.write_text(f'[cluster]\nname = "main"\n\n[local]\npath = "{tmp_path / "repo"}"\n')
    return path


def test_each_event_is_on_the_timeline_whose_wal_holds_it_and_listed_once(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    events = load_view(load_config(config)).events
    assert [(e.timeline, e.name or f"xid {e.xid}", e.time) for e in events] == [
        (1, "xid 700", T0 + timedelta(minutes=3)),
        (1, "before_switch", T0 + timedelta(minutes=5)),  # once, the parent's: timeline 2 replays it too
        (1, "nightly", T0 + timedelta(minutes=6)),
        (2, "nightly", T0 + timedelta(minutes=26)),  # the same LSN on another branch: another record
        (1, "xid 900", T0 + timedelta(minutes=6.5)),
        (2, "xid 900", T0 + timedelta(minutes=26.5)),
    ]
    assert events[1].replayed_on(2, {2: {1: SWITCH}}) and not events[2].replayed_on(2, {2: {1: SWITCH}})

    assert cli.main(["--config", str(config), "timeline", "--events"]) == 0
    listed = capsys.readouterr().out
    assert listed.count("restore point 'before_switch'") == 1, listed
    assert listed.count("restore point 'nightly'") == 2, listed
    assert "restore point 'before_switch' at " in listed and " on timeline 1" in listed, "two branches: each named"
    assert len([line for line in listed.splitlines() if "'nightly'" in line and "on timeline 2" in line]) == 1

    assert cli.main(["--config", str(config), "timeline", "--events", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)["events"]
    assert [(e["timeline"], e["name"]) for e in shown if e["kind"] == "restore_point"] == [
        (1, "before_switch"),
        (1, "nightly"),
        (2, "nightly"),
    ]


def test_an_older_entry_without_event_timelines_reads_them_from_its_segment() -> None:
    """Entries stored before events named their timeline (in every repository, and in the local cache)."""
    stored = SegmentIndex("000000020000000000000006", events=EVENTS[(2, 6)]).to_json()
    for item in stored["events"]:
        del item["timeline"]
    assert {e.timeline for e in SegmentIndex.from_json(stored).events} == {2}
