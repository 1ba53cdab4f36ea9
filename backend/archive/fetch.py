"""``pgdr wal-fetch %f %p``: PostgreSQL's restore_command.

Exit 0: the file is at %p, byte-identical to what was archived (sha256 checked). Exit 1: no
repository has it, which is how recovery learns the archive ends here. Exit 2: it exists but no copy
could be read intact; the message names each bad copy, and nothing is written to %p.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from backend.archive.walfile import checksum, decode, find_archived
from backend.config import Config
from backend.errors import ObjectNotFound, PgdrError, RepositoryError
from backend.repository import open_repositories
from backend.walnames import wal_kind


def fetch(cfg: Config, filename: str, destination: str | os.PathLike[str], *, prefetch: bool = True) -> str:
    """Write ``filename`` to ``destination``; returns where it came from (a repository, or "prefetch").

    With ``prefetch`` (restore_command), a segment the background prefetcher already fetched and
    verified is taken from there, and the prefetcher is started for the segments after it.
    """
    try:
        wal_kind(filename)
    except ValueError as exc:
        raise PgdrError(str(exc)) from None
    if prefetch and cfg.restore.prefetch > 0:
        from backend.archive import prefetch as ahead

        target = Path(destination)
        source = "prefetch" if ahead.take(filename, target) else _fetch(cfg, filename, target)
        with contextlib.suppress(OSError):
            ahead.kick(cfg, filename, target)  # never let the optimisation fail the fetch
        return source
    return _fetch(cfg, filename, Path(destination))


def _fetch(cfg: Config, filename: str, destination: Path) -> str:
    problems: list[str] = []
    for repo in open_repositories(cfg):
        try:
            for obj in find_archived(repo, filename):
                data = decode(repo.get(obj.key), obj.compression)
                if checksum(data) != obj.checksum:
                    problems.append(f"{repo.name} copy fails its sha256 check")
                    continue
                _write_atomically(Path(destination), data)
                return repo.name
        except ValueError as exc:
            problems.append(f"{repo.name} copy is corrupt ({exc})")
        except RepositoryError as exc:
            problems.append(str(exc))
    if problems:
        raise PgdrError(f"{filename}: no intact copy could be fetched: {'; '.join(problems)}", exit_code=2)
    raise ObjectNotFound(f"{filename} is not in any repository")


def _write_atomically(path: Path, data: bytes) -> None:
    temp = path.with_name(f".{path.name}.pgdr-fetch.{os.getpid()}")
    try:
        with temp.open("wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.rename(temp, path)
    except OSError as exc:
        temp.unlink(missing_ok=True)
        raise PgdrError(f"cannot write {path}: {exc.strerror}") from None
