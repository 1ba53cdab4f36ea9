"""Every ``pgdr`` command line the README shows is one the real CLI accepts.

Operators copy these lines at 3 a.m.; an option renamed in the code and not in the README would fail
them exactly then. Lines with placeholders (``<name>``, ``[--deep]``, ``$VAR``, ``...``) are prose
about a command, not a command, and are left out.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from pgdr_tui.cli import build_parser

README = Path(__file__).resolve().parents[1] / "README.md"
PGDR = re.compile(r"(?:^|\s)(?:[\w./-]*/bin/)?pgdr\s+(.*)$")
#: The ``postgres-restore`` service (docker-compose.backup.yml) has ``pgdr restore`` as its entrypoint.
RESTORE_SERVICE = re.compile(r"run --rm postgres-restore\s*(.*)$")


def code_lines(text: str) -> list[str]:
    """The lines inside fenced code blocks, with backslash continuations joined."""
    lines: list[str] = []
    inside, pending = False, ""
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            inside = not inside
            continue
        if not inside:
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        lines.append(pending + line)
        pending = ""
    return lines


def readme_commands() -> list[tuple[str, list[str]]]:
    """(the README's line, the arguments it gives pgdr) for every pgdr command in a code block."""
    found = []
    for line in code_lines(README.read_text()):
        code = re.sub(r"\s+#.*$", "", line).strip()
        if code.startswith("#") or "--entrypoint" in code:
            continue
        if m := PGDR.search(code):
            rest = m.group(1)
        elif m := RESTORE_SERVICE.search(code):
            rest = "restore " + m.group(1)
        else:
            continue
        rest = re.split(r"\s*(?:>|\||&&|;)\s*", rest)[0]  # what the shell does with the output is not pgdr's
        if any(c in rest for c in "<[$`") or "..." in rest:
            continue
        found.append((code, shlex.split(rest)))
    return found


COMMANDS = readme_commands()


def test_the_readme_shows_commands() -> None:
    """The extraction finds the runbook's commands (an empty list would pass every check below)."""
    verbs = {build_parser().parse_args(words).command for _, words in COMMANDS if "--version" not in words}
    assert {"restore", "list", "timeline", "verify", "check", "status", "config"} <= verbs, verbs


@pytest.mark.parametrize(("line", "words"), COMMANDS, ids=[line for line, _ in COMMANDS])
def test_readme_command_parses(line: str, words: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    try:
        build_parser().parse_args(words)
    except SystemExit as exc:  # --help / --version exit 0; a bad option exits 2
        assert not exc.code, f"the README's `{line}` is refused: {capsys.readouterr().err.strip()}"
