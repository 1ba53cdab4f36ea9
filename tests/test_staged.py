"""Following pg_basebackup's archives: a look that cannot read its descriptors for a moment is no failure."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from backend.backup import staged
from backend.errors import PgdrError


def test_descriptors_unreadable_while_pg_basebackup_execs_are_waited_out_then_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        archives = staged._Archives(folder, [], "backups/x/", spill=False)
        monkeypatch.setattr(staged, "_held_open", lambda pid: None)
        clock = [1000.0]
        monkeypatch.setattr(staged.time, "monotonic", lambda: clock[0])
        archives.follow(os.getpid())  # the first look: the kernel refuses, as during setpriv's exec
        clock[0] += staged.UNREADABLE_FOR / 2
        archives.follow(os.getpid())
        monkeypatch.setattr(staged, "_held_open", lambda pid: set())
        archives.follow(os.getpid())  # readable again: the count starts over
        monkeypatch.setattr(staged, "_held_open", lambda pid: None)
        archives.follow(os.getpid())
        clock[0] += staged.UNREADABLE_FOR + 1
        with pytest.raises(PgdrError, match="permission denied"):
            archives.follow(os.getpid())
    finally:
        os.close(folder)
