"""pgdr's local caches: SQLite files in the state dir that only remember what was already read.

A cache file carries its layout's version (``PRAGMA user_version``); a file of another version is
emptied and laid out again, never migrated: deleting a cache loses nothing. Where the state dir
cannot hold one (a read-only home, say) there is no cache, and commands read everything again.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from pathlib import Path


def cache_path(name: str) -> Path:
    from backend.statedir import state_dir

    return state_dir() / "cache" / name


def open_cache(path: Path, version: int, tables: Sequence[str]) -> sqlite3.Connection | None:
    """The cache at ``path`` with ``tables`` (their CREATE statements) at layout ``version``, or None."""
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        db = sqlite3.connect(path, timeout=10)
        if db.execute("PRAGMA user_version").fetchone()[0] != version:
            _lay_out(db, version, tables)
    except (OSError, sqlite3.Error):
        return None
    return db


def _lay_out(db: sqlite3.Connection, version: int, tables: Sequence[str]) -> None:
    """Empty the file and create ``tables``, once, whichever process gets there first."""
    db.execute("BEGIN IMMEDIATE")
    try:
        if db.execute("PRAGMA user_version").fetchone()[0] != version:
            for (table,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall():
                db.execute(f'DROP TABLE "{table}"')
            for create in tables:
                db.execute(create)
            db.execute(f"PRAGMA user_version = {int(version)}")
    except BaseException:
        db.rollback()
        raise
    db.commit()
