"""The code stays ruff- and mypy-clean: CI runs this, so a lint slip is a red build, not a review note."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, check=False)


def test_ruff_check_and_format() -> None:
    folders = [name for name in ("backend", "pgdr_tui", "tests", "bench", "docs") if (ROOT / name).is_dir()]
    check = run(str(BIN / "ruff"), "check", *folders)
    assert check.returncode == 0, check.stdout
    fmt = run(str(BIN / "ruff"), "format", "--check", "backend", "pgdr_tui")
    assert fmt.returncode == 0, fmt.stdout


def test_mypy_strict() -> None:
    result = run(str(BIN / "mypy"))
    assert result.returncode == 0, result.stdout
