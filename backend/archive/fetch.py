"""``pgdr wal-fetch %f %p``: PostgreSQL's restore_command.

Exit 0: the file is at %p, byte-identical to what was archived (sha256 checked). Exit 1: no
repository has it, which is how recovery learns the archive ends here. Exit 2: it exists but no copy
could be read intact; the message names each bad copy, and nothing is written to %p.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from pathlib import Path

from backend.archive.walfile import WalObject, checksum, decode, find_archived
from backend.config import Config
from backend.errors import ObjectNotFound, PgdrError, RepositoryError
from backend.repository import Repository, open_repositories
from backend.walnames import wal_kind


def fetch(cfg: Config, filename: str, destination: str | os.PathLike[str], *, prefetch: bool = True) -> str:
    """Write ``filename`` to ``destination``; returns where it came from (a repository, or "prefetch").

    With ``prefetch`` (restore_command), a running prefetcher is asked first: a file it fetched and
    verified is taken from it, and its fresh "absent" is the answer; when none runs, one is started,
    so the next segments are downloaded while PostgreSQL replays this one.
    """
    try:
        wal_kind(filename)
    except ValueError as exc:
        raise PgdrError(str(exc)) from None
    target = Path(destination)
    if prefetch and cfg.restore.prefetch > 0:
        from backend.archive import prefetch as ahead

        answer = ahead.obtain(filename, target, ahead.identity(cfg))
        if answer == ahead.TAKEN:
            return "prefetch"
        if answer == ahead.ABSENT:
            raise ObjectNotFound(f"{filename} is not in any repository")
        with contextlib.suppress(OSError):  # never let the optimisation fail the fetch
            ahead.start(cfg, filename, target)
    return fetch_from(open_repositories(cfg), filename, target)


def fetch_from(
    repos: list[Repository],
    filename: str,
    destination: Path,
    find: Callable[[Repository, str], list[WalObject]] = find_archived,
    *,
    owner: tuple[int, int] | None = None,
    sync: bool = True,
) -> str:
    """Write the first intact copy in ``repos`` to ``destination``; returns the repository's name.

    ``find`` lists a file's stored versions (the prefetcher passes one that lists a folder once);
    ``owner`` gets the file (pgdr as root writing for the server, which must own its WAL); without
    ``sync`` it is not fsynced (the prefetcher's answer to a request, taken at once).
    """
    problems: list[str] = []
    for repo in repos:
        try:
            for obj in find(repo, filename):
                data = decode(repo.get(obj.key), obj.compression)
                if checksum(data) != obj.checksum:
                    problems.append(f"{repo.name} copy fails its sha256 check")
                    continue
                _write_atomically(destination, data, owner, sync=sync)
                return repo.name
        except ValueError as exc:
            problems.append(f"{repo.name} copy is corrupt ({exc})")
        except RepositoryError as exc:
            problems.append(str(exc))
    if problems:
        raise PgdrError(f"{filename}: no intact copy could be fetched: {'; '.join(problems)}", exit_code=2)
    raise ObjectNotFound(f"{filename} is not in any repository")


def _write_atomically(path: Path, data: bytes, owner: tuple[int, int] | None = None, *, sync: bool = True) -> None:
    temp = path.with_name(f".{path.name}.pgdr-fetch.{os.getpid()}")
    try:
        with temp.open("wb") as fh:
            if owner is not None:
                os.fchown(fh.fileno(), *owner)
            fh.write(data)
            if sync:
                fh.flush()
                os.fsync(fh.fileno())
        os.rename(temp, path)
    except OSError as exc:
        temp.unlink(missing_ok=True)
        raise PgdrError(f"cannot write {path}: {exc.strerror}") from None
