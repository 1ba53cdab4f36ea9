"""``pgdr wal-fetch %f %p``: PostgreSQL's restore_command.

Exit 0: the file is at %p, byte-identical to what was archived (sha256 checked). Exit 1: no
repository has it, which is how recovery learns the archive ends here. Exit 2: it exists but no copy
could be read intact; the message names each bad copy, and nothing is written to %p.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from backend.archive.retrieve import fetch_from
from backend.config import Config
from backend.errors import ObjectNotFound, PgdrError
from backend.repository import open_repositories
from backend.walnames import wal_kind


def fetch(
    cfg: Config,
    filename: str,
    destination: str | os.PathLike[str],
    *,
    prefetch: bool = True,
    config: str | None = None,
    asked: bool = False,
) -> str:
    """Write ``filename`` to ``destination``; returns where it came from (a repository, or "prefetch").

    With ``prefetch`` (restore_command), a running prefetcher of this config (``pgdr restore``'s) is
    asked first, unless ``asked`` (the plain ``wal-fetch`` asked one already, which could not help):
    a file it fetched and verified is taken from it, and its fresh "absent" is the answer. When none
    runs, a detached one is started once the file is here (named by ``config``, the command's
    ``--config``), so the next segments are downloaded while PostgreSQL replays this one.
    """
    try:
        wal_kind(filename)
    except ValueError as exc:
        raise PgdrError(str(exc)) from None
    target = Path(destination)
    if prefetch and cfg.restore.prefetch > 0:
        from backend.archive import prefetch as ahead

        answer = "" if asked else ahead.obtain(filename, target, ahead.identity(cfg))
        if answer == ahead.TAKEN:
            return "prefetch"
        if answer == ahead.ABSENT:
            raise ObjectNotFound(f"{filename} is not in any repository")
    source = fetch_from(open_repositories(cfg), filename, target)
    if prefetch and cfg.restore.prefetch > 0:
        # Only once a segment was found: a file asked for that is not there (the end of the archive, a
        # standby waiting for the next one) starts nothing; recovery that goes on finds one running.
        with contextlib.suppress(OSError):  # never let the optimisation fail the fetch
            ahead.start(cfg, filename, target, config=config)
    return source
