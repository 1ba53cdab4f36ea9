"""What a restore says to the operator: commands that paste, a confirmation that says what happens.

The console logs the command line equivalent to the restore it started, for doing it again by hand;
a timestamp holds a space, and paths hold anything, so it must survive a shell. The confirmation is
read at the worst moment: a restore beside must not read as if it replaced anything.
"""

from __future__ import annotations

import io
import shlex
from datetime import UTC, datetime
from pathlib import Path

import pytest

from backend.errors import PgdrError
from backend.manifest import BackupManifest
from backend.restore.plan import RestorePlan
from backend.restore.target import make_target
from pgdr_tui import cli
from pgdr_tui.request import RestoreRequest
from pgdr_tui.restorejob import command_line
from tests.harness.plans import immediate_plan

CONFIG = "/etc/pgdr configs/it's main.toml"


@pytest.mark.parametrize(
    "request_",
    [
        RestoreRequest.at(datetime(2026, 12, 7, 9, 50, 3, tzinfo=UTC)).placed_beside("/srv/pg restored/main", 5433),
        RestoreRequest("name", "before the 'big' drop; $HOME", timeline="2", backup="20261207T000000Z"),
        RestoreRequest("xid", "4711", exclusive=True),
    ],
    ids=["time beside", "restore point", "xid"],
)
def test_the_equivalent_command_pastes_back_to_the_same_restore(request_: RestoreRequest) -> None:
    line = command_line(request_, "--yes", config=CONFIG)

    argv = shlex.split(line)
    assert argv == ["pgdr", "--config", CONFIG, "restore", *request_.cli_args(), "--yes"]
    args = cli.build_parser().parse_args(argv[1:])
    assert (args.config, args.yes, args.exclusive, args.backup) == (CONFIG, True, request_.exclusive, request_.backup)
    typed = {"time": args.timestamp, "name": args.name, "xid": args.xid}[request_.kind]
    assert typed == request_.value
    assert (args.target_dir or "", args.port) == (request_.target_dir, request_.port)
    assert args.target_timeline == (None if request_.timeline == "latest" else request_.timeline)


def test_only_a_typed_target_timeline_is_explicit() -> None:
    """PostgreSQL's default is latest; an operator who types latest means it even for an older instant."""
    assert cli.build_parser().parse_args(["restore", "--latest"]).target_timeline is None
    assert not make_target(latest=True).timeline_named
    typed = make_target(latest=True, timeline="latest")
    assert typed.timeline_named and typed.recovery_settings()["recovery_target_timeline"] == "latest"
    assert make_target(latest=True).recovery_settings() == typed.recovery_settings()


def a_plan(tmp_path: Path, **changes: object) -> RestorePlan:
    now = datetime(2026, 12, 7, tzinfo=UTC)
    backup = BackupManifest("20261207T000000Z", "physical", "main", 1, "15", now, now, [], wal_segment_size=16 << 20)
    return immediate_plan(backup, tmp_path / "pg data", **changes)


def asked(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], plan: RestorePlan | str) -> str:
    """The question ``pgdr restore`` asks before ``plan``, answered with the cluster name."""
    monkeypatch.setattr("sys.stdin", io.StringIO("main\n"))
    cli._confirm("main", plan)
    question = capsys.readouterr().out.strip()
    assert "\n" not in question
    return question


def test_a_restore_beside_is_confirmed_as_creating_not_replacing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    question = asked(monkeypatch, capsys, a_plan(tmp_path, in_place=False, port=5433))

    assert "replace" not in question.lower()
    assert question.startswith(f"This creates a new cluster in {tmp_path / 'pg data'} (port 5433); the running")


def test_a_restore_in_place_is_confirmed_as_replacing_with_the_safety_copy_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    safety = tmp_path / "pg data.pgdr-safety-20261207T000000Z"
    question = asked(monkeypatch, capsys, a_plan(tmp_path, in_place=True, safety_copy=safety))
    assert question.startswith(f"This replaces the data directory {tmp_path / 'pg data'} (the server is stopped")
    assert f"kept as the safety copy {safety}, never deleted" in question

    empty = asked(monkeypatch, capsys, a_plan(tmp_path, in_place=True))
    assert "empty or missing: there is nothing to keep" in empty

    assert asked(monkeypatch, capsys, "database app").startswith("This replaces database app.")


def test_any_other_answer_cancels(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("yes\n"))
    with pytest.raises(PgdrError, match="cancelled: 'main' was not typed, nothing was changed"):
        cli._confirm("main", a_plan(tmp_path, in_place=False, port=5433))
