"""A console that dies of an exception exits non-zero (issue 16): ``run_app`` and ``pgdr tui``."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
from textual.app import App

from backend.config import load_config
from pgdr_tui import cli
from pgdr_tui.app import PgdrApp, run_app


def _config(tmp_path: Path) -> Path:
    path = tmp_path / "pgdr.toml"
    path.write_text(f'[cluster]\nname = "main"\n\n[local]\npath = "{tmp_path / "backups"}"\n')
    return path


@pytest.fixture
def headless(monkeypatch: pytest.MonkeyPatch) -> None:
    """``run_app`` as the CLI calls it, without a terminal."""
    monkeypatch.setattr(PgdrApp, "run", functools.partialmethod(App.run, headless=True))


def test_missing_stylesheet_exits_non_zero(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, headless: None, capsys: pytest.CaptureFixture[str]
) -> None:
    """The non-editable install's crash: the stylesheet cannot be read."""
    monkeypatch.setattr(PgdrApp, "CSS_PATH", str(tmp_path / "missing.tcss"))
    assert run_app(load_config(_config(tmp_path))) == 1
    assert "unable to read CSS file" in capsys.readouterr().err  # Textual says what failed


def test_crash_at_mount_exits_non_zero_from_the_cli(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, headless: None
) -> None:
    def boom(self: PgdrApp) -> None:
        raise RuntimeError("mount failed")

    monkeypatch.setattr(PgdrApp, "on_mount", boom)
    assert cli.main(["--config", str(_config(tmp_path)), "tui"]) == 1


def test_error_exit_without_a_message_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, headless: None, capsys: pytest.CaptureFixture[str]
) -> None:
    def leave(self: PgdrApp) -> None:
        self.exit(return_code=3)

    monkeypatch.setattr(PgdrApp, "on_mount", leave)
    assert run_app(load_config(_config(tmp_path))) == 3
    assert capsys.readouterr().err.strip() == "pgdr: the console stopped with an error (exit status 3)"
