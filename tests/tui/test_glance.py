"""Every screen read at a glance at 80x24: whole sentences, separated header parts, whole footer keys."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import timedelta

import pytest
from rich.text import Text
from textual.screen import ModalScreen
from textual.widgets._footer import FooterKey  # the footer's key widget has no public name

from pgdr_tui.app import PgdrApp
from pgdr_tui.glyphs import UNICODE
from pgdr_tui.model import TimelineModel
from pgdr_tui.widgets.details import details_text
from pgdr_tui.widgets.keys import KeysFooter
from pgdr_tui.widgets.statusbar import StatusFacts, status_text
from pgdr_tui.widgets.wrap import labelled, lines_of, wrap
from tests.tui.conftest import ZONE, run_async, screen_lines
from tests.tui.fixture_repo import NOW, Story
from tests.tui.scenes import SCENES, Scene, staged

MakeApp = Callable[..., PgdrApp]


@pytest.mark.parametrize("scene", SCENES, ids=[s.name for s in SCENES])
@run_async
async def test_nothing_is_cut_at_80x24(scene: Scene, make_app: MakeApp, story: Story) -> None:
    """No ellipsis anywhere on any screen (the reason an instant is or is not recoverable above all),
    the header's five parts apart, and every key in the footer whole."""
    with staged(scene, story):
        app = make_app(ascii_only=scene.ascii_only)
        async with app.run_test(size=(80, 24)) as pilot:
            await scene.run_before(story)(pilot)
            lines = screen_lines(app)
            cut = [line for line in lines if "…" in line or (scene.ascii_only and line.endswith("..."))]
            assert not cut, "\n".join(lines)
            if isinstance(app.screen, ModalScreen):
                return  # the screen under it was read as a scene of its own
            header = lines[:2]
            sep = re.escape(app.glyphs.sep)
            for part in ("server ", "RPO ", "backup ", "verify "):
                assert any(re.search(rf"({sep} |^ ){part}", line) for line in header), header
            footer = app.screen.query_one(KeysFooter)
            shown = [key for key in footer.query(FooterKey) if key.description]
            assert shown and all(f"{key.description}" in lines[-1] for key in shown), lines[-1]
            palette = next(key for key in shown if key.has_class("-command-palette"))
            assert palette.region.x >= max(k.region.right for k in shown if k is not palette), "keys under ^p"


def test_the_header_chooses_shorter_words_then_a_second_line_never_a_cut() -> None:
    facts = StatusFacts(
        cluster="main",
        server="up, PG 18.1, primary, TL 3",
        server_short="primary, TL 3",
        server_ok=True,
        newest_archive=NOW - timedelta(minutes=10),
        last_backup=NOW - timedelta(hours=5),
        last_verify=NOW - timedelta(hours=12),
        last_verify_ok=True,
        loading=False,
    )
    wide = status_text(facts, NOW, 120).plain
    assert wide == (
        " pgdr  main │ server up, PG 18.1, primary, TL 3 │ RPO 10 minutes │ backup 5 hours ago │ verify 12 hours ago"
    )
    narrow = status_text(facts, NOW, 80).plain
    assert narrow == " main │ server primary, TL 3 │ RPO 10 min │ backup 5 h ago │ verify 12 h ago"
    facts.restore = "replaying WAL 1204 of 18233"
    two = status_text(facts, NOW, 80).plain.splitlines()
    assert len(two) == 2 and all(len(line) <= 80 for line in two)
    assert two[1].startswith(" ") and "verify 12 h ago" in two[1], two  # a part moves down whole
    assert "server RESTORE: replaying WAL 1204 of 18233" in two[0]
    ascii_header = status_text(facts, NOW, 200, separator="|").plain
    assert " | server " in ascii_header and "│" not in ascii_header


def test_wrapping_keeps_words_and_styles_and_indents_under_the_value() -> None:
    text = Text.assemble(("✗ NOT RECOVERABLE", "bold red"), ": in a WAL gap: segments are missing from the archive")
    lines = wrap(text, 30)
    assert [line.plain for line in lines] == [
        "✗ NOT RECOVERABLE: in a WAL",
        "gap: segments are missing from",
        "the archive",
    ]
    assert lines[0].spans[0].style == "bold red"
    assert [line.plain for line in wrap(Text("x" * 25), 10)] == ["x" * 10, "x" * 10, "x" * 5]  # a path: cut, kept
    rows = [line.plain for line in labelled("Status", text, label_width=14, width=50)]
    assert rows == [
        "Status        ✗ NOT RECOVERABLE: in a WAL gap:",
        "              segments are missing from the",
        "              archive",
    ]
    parts = [Text("aaaa"), Text("bbbbbb"), Text("cc")]
    assert [line.plain for line in lines_of(parts, 12, separator=Text(" | "), indent=" ")] == ["aaaa", " bbbbbb | cc"]


def test_the_status_reason_is_whole_at_80_columns(story: Story, model: TimelineModel) -> None:
    gap = model.details(story.gap_start + timedelta(minutes=40))
    assert not gap.recoverable
    text = details_text(gap, zone=ZONE, now=NOW, glyphs=UNICODE, zoom="1 h", width=78, height=11).plain
    status = " ".join(line[14:].strip() for line in _block(text, "Status"))
    assert status == f"{UNICODE.bad} NOT RECOVERABLE: {gap.reason}"
    assert all(len(line) <= 78 for line in text.splitlines())


def test_a_short_panel_drops_the_least_needed_lines_never_the_status(story: Story, model: TimelineModel) -> None:
    d = model.details(story.drop)
    full = details_text(d, zone=ZONE, now=NOW, glyphs=UNICODE, zoom="1 h", width=78).plain
    short = details_text(d, zone=ZONE, now=NOW, glyphs=UNICODE, zoom="1 h", width=78, height=5).plain
    assert len(short.splitlines()) <= 5 < len(full.splitlines())
    assert "RECOVERABLE" in short and "a restore here stops just before it" in short
    assert ".." not in short  # the WAL file range went first


def test_labels_never_run_into_their_values(story: Story, model: TimelineModel) -> None:
    """ "Event before2026-..." or "Repositorieslocal" when a copy or a screen reader drops the padding."""
    text = details_text(
        model.details(story.drop - timedelta(hours=1)), zone=ZONE, now=NOW, glyphs=UNICODE, zoom="1 h"
    ).plain
    for line in text.splitlines():
        label, value = line[:14], line[14:]
        assert not label.strip() or label.endswith("  "), line
        assert not value.startswith(" ") or not label.strip(), line


def _block(text: str, label: str) -> list[str]:
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(label))
    out = [lines[start]]
    for line in lines[start + 1 :]:
        if line[:14].strip():
            break
        out.append(line)
    return out


@pytest.fixture(scope="module")
def model(story: Story) -> TimelineModel:
    from backend.config import load_config
    from backend.recovery import load_view

    return TimelineModel(load_view(load_config(story.config)))
