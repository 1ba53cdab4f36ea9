"""Where a restore puts a backup's tablespaces, and the moves that make room for them (and undo it).

Each tablespace goes to its original location, or where ``--tablespace-map`` says; a restore beside
the running cluster never uses an original location by default (that is the running cluster's
tablespace), but ``<data dir>-tablespaces/<name>``, and a mapping onto a location the running
cluster uses is refused. What is written at a destination is the tablespace's version folder
(``PG_15_202209061``) only. A restore in place moves the version folder the current data directory
links to aside, as it moves the data directory aside, with the same suffix; any other version
folder already at a destination belongs to something else, and the restore is refused before
anything is touched.

When a restore in place is forced over an unfinished one (killed half-way), the version folders
are half-restored: they are moved aside again, and every roll-back instruction keeps naming the
copies made before the first restore, which hold the real data (``real_copy``, from the note the
first restore left, ``backend.restore.marker``).
"""

from __future__ import annotations

import os
import shlex
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from backend.errors import PgdrError
from backend.manifest import BackupManifest
from backend.restore.disk import existing_parent
from backend.tablespaces import Tablespace, recorded

#: The suffix of safety copies (the data directory's too), before the restore's UTC time.
SAFETY_SUFFIX = ".pgdr-safety-"
#: A restore beside puts unmapped tablespaces in this sibling of its data directory, one folder per name.
BESIDE_SUFFIX = "-tablespaces"


@dataclass(frozen=True)
class Placement:
    """One tablespace's destination; ``safety_copy`` is where its current version folder is moved (in place)."""

    tablespace: Tablespace
    destination: Path
    safety_copy: Path | None = None
    #: Where the version folder's contents from before any unfinished restore are (roll-backs name it).
    real_copy: Path | None = None

    @property
    def folder(self) -> Path:
        """What the restore writes: the version folder inside the destination."""
        return self.destination / self.tablespace.version_dir

    def describe(self) -> str:
        moved = f" (its current contents moved aside to {self.safety_copy})" if self.safety_copy else ""
        return f"{self.tablespace.name} ({self.tablespace.location}) -> {self.destination}{moved}"

    def to_json(self) -> dict[str, Any]:
        return {
            **self.tablespace.to_json(),
            "destination": str(self.destination),
            "safety_copy": str(self.safety_copy) if self.safety_copy else None,
            "real_copy": str(self.real_copy) if self.real_copy else None,
        }


def place(
    manifest: BackupManifest,
    mapping: Mapping[str, str],
    data_dir: Path,
    *,
    in_place: bool,
    suffix: str,
    earlier: Mapping[Path, Path] | None = None,
) -> list[Placement]:
    """Each tablespace's destination; ``suffix`` names safety copies, as the data directory's is named.

    ``earlier``: an unfinished restore's real copies, by version folder (in place only).
    """
    spaces = recorded(manifest)
    known = {t.name for t in spaces} | {t.location for t in spaces}
    unknown = sorted(set(mapping) - known)
    if unknown:
        listed = ", ".join(f"{t.name} ({t.location})" for t in spaces) or "none"
        raise PgdrError(
            f"--tablespace-map names {', '.join(unknown)}, which backup {manifest.name} does not hold "
            f"(its tablespaces: {listed}): map a tablespace by its name or its original location"
        )
    earlier = earlier or {}
    placements = []
    for space in spaces:
        new = mapping.get(space.name) or mapping.get(space.location)
        if new is not None:
            destination = Path(new)
        elif in_place:
            destination = Path(space.location)
        else:
            plain = space.name not in (".", "..") and "/" not in space.name
            destination = data_dir.with_name(data_dir.name + BESIDE_SUFFIX) / (space.name if plain else str(space.oid))
        current = destination / space.version_dir
        safety = None
        if in_place and os.path.lexists(current) and (current in earlier or _linked(data_dir, destination)):
            safety = current.with_name(current.name + suffix)
        real = earlier.get(current, safety) if in_place else None
        placements.append(Placement(space, destination, safety, real))
    return placements


def _linked(data_dir: Path, destination: Path) -> bool:
    """Whether a tablespace of the cluster in ``data_dir`` lives at ``destination`` (whatever its oid now)."""
    try:
        links = list((data_dir / "pg_tblspc").iterdir())
    except OSError:
        return False
    return any(os.path.realpath(link) == os.path.realpath(destination) for link in links)


def _occupied(path: Path) -> bool:
    try:
        return any(path.iterdir())
    except FileNotFoundError:
        return False
    except NotADirectoryError:
        return True


def problems(placements: Sequence[Placement], data_dir: Path, running: Path | None) -> list[str]:
    """What stops the tablespaces from being laid down, one line each (nothing is touched to find out).

    ``running``: the running cluster's data directory, whose tablespaces a restore beside must not touch.
    """
    found = []
    seen: dict[Path, str] = {}
    for p in placements:
        name = p.tablespace.name
        if p.folder in seen:
            found.append(f"tablespaces {seen[p.folder]} and {name} would both be restored into {p.destination}")
        seen[p.folder] = name
        destination = Path(os.path.realpath(p.destination))
        if destination == Path(os.path.realpath(data_dir)) or Path(os.path.realpath(data_dir)) in destination.parents:
            found.append(f"tablespace {name}'s destination {p.destination} is inside the data directory")
        if p.safety_copy is None and running is not None and data_dir != running and _linked(running, p.destination):
            found.append(
                f"tablespace {name}: {p.destination} is a tablespace of the running cluster ({running}): "
                f"restore it elsewhere with --tablespace-map {name}=/new/empty/dir"
            )
        elif p.safety_copy is None and _occupied(p.folder):
            earlier = sorted(p.folder.parent.glob(f"{p.folder.name}{SAFETY_SUFFIX}*"))
            whose = (
                f"perhaps an unfinished restore's: earlier contents are in {earlier[-1]}"
                if earlier
                else "not the current data directory's tablespace"
            )
            found.append(
                f"tablespace {name}: {p.folder} exists and is not empty ({whose}): move it away, or restore "
                f"it elsewhere with --tablespace-map {name}=/new/empty/dir"
            )
        if p.safety_copy is not None and os.path.lexists(p.safety_copy):
            found.append(
                f"tablespace {name}: its safety copy {p.safety_copy} already exists: wait a second and plan again"
            )
        parent = existing_parent(p.destination if p.safety_copy is None else p.folder.parent)
        if not os.access(parent, os.W_OK | os.X_OK):
            found.append(
                f"tablespace {name}: {parent} is not writable by this user, so {p.folder} cannot be made: "
                "run the restore as the cluster's owner or root, or map the tablespace elsewhere"
            )
    return found


def space_by_device(placements: Sequence[Placement]) -> dict[int, tuple[Path, int]]:
    """What the tablespaces need per file system (device): a folder on it, and the bytes."""
    need: dict[int, tuple[Path, int]] = {}
    for p in placements:
        where = existing_parent(p.destination)
        device = where.stat().st_dev
        before = need.get(device, (where, 0))[1]
        need[device] = (where, before + p.tablespace.size)
    return need


def make_room(placements: Sequence[Placement], owner: tuple[int, int] | None) -> None:
    """Move the current version folders aside and create the destinations (given to the server's user)."""
    for p in placements:
        if p.safety_copy is not None:
            os.rename(p.folder, p.safety_copy)
        missing = [d for d in (p.destination, *p.destination.parents) if not d.exists()]
        p.destination.mkdir(mode=0o700, parents=True, exist_ok=True)
        for created in missing:
            if owner is not None:
                os.chown(created, *owner)


def undo(placements: Sequence[Placement]) -> list[str]:
    """Remove what a failed restore wrote and put the moved version folders back; what could not be undone."""
    left = []
    for p in placements:
        try:
            if p.safety_copy is not None and p.safety_copy.exists():
                shutil.rmtree(p.folder, ignore_errors=True)
                os.rename(p.safety_copy, p.folder)
            elif p.safety_copy is None:
                shutil.rmtree(p.folder, ignore_errors=True)  # it was absent, or empty and unused
        except OSError as exc:
            left.append(f"mv {shlex.quote(str(p.safety_copy))} {shlex.quote(str(p.folder))} ({exc.strerror})")
    return left


def real_copies(placements: Sequence[Placement]) -> dict[Path, Path]:
    """Each version folder a restore in place replaces, and where its real contents are."""
    return {p.folder: p.real_copy for p in placements if p.real_copy is not None}
