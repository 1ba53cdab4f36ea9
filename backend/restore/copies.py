"""Which copies a restore takes: never one the last ``pgdr verify`` found damaged while another is sound.

The catalog names a backup's and each segment's copies in the configured order (local first), and
the plan takes the first: right while every copy is intact. A copy verify found corrupt still looks
whole in a listing, so without this the plan would name it, and the restore would spend the time
to read it (all of a base backup, before its checksum fails) before it turned to the other copy. So
the plan reads what verify recorded in each repository it reads (each backup's
``verify/<name>.json``, ``verify/corrupt-wal.json``), puts the sound copies first, and says in a note
which copies it avoided (the damaged ones it would have taken), when verify found them damaged, and
whose copy it takes instead. When every
copy is damaged the plan is kept (a copy may have been repaired since) but says so loudly.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from typing import TYPE_CHECKING, Any

from backend.repository import Repository
from backend.verify import corrupt_wal, read_record, record_time

if TYPE_CHECKING:
    from backend.recovery import RecoveryView
    from backend.restore.plan import RestorePlan

#: What a damaged object of a backup copy is called in a note.
_WHAT = {
    "checksum": "sha256 mismatch",
    "size": "size mismatch",
    "content": "decompresses to other bytes",
    "undecodable": "cannot be decompressed",
    "missing": "missing",
    "unreadable": "cannot be read",
    "manifest": "damaged manifest",
    "pg_restore": "pg_restore cannot read it",
}
#: A problem verify reports about a backup copy that is not about its own bytes: the WAL it needs is
#: missing or corrupt in that repository, and a restore fetches each segment from any repository.
_NOT_THE_COPY = frozenset({"wal"})
#: Avoided WAL copies named one by one, per repository; the rest are counted in one note.
NAMED_SEGMENTS = 5


@dataclass(frozen=True)
class _Damage:
    found: datetime
    why: str

    @property
    def when(self) -> str:
        return f"{self.found:%Y-%m-%d %H:%M} UTC"


def avoid_damaged_copies(plan: RestorePlan, view: RecoveryView) -> None:
    """Reorder ``plan``'s copies so sound ones come first, and note each copy avoided (see the module)."""
    repos = {repo.name: repo for repo in view.repositories}
    entry = next((b for b in view.catalog.backups if b.manifest.name == plan.backup.name), None)
    _avoid_backup_copies(plan, entry.repositories if entry is not None else [plan.backup_repository], repos)
    _avoid_wal_copies(plan, repos)


def _avoid_backup_copies(plan: RestorePlan, copies: list[str], repos: dict[str, Repository]) -> None:
    name = plan.backup.name
    damaged: dict[str, _Damage] = {}
    for repository in copies:
        repo = repos.get(repository)
        record = read_record(repo, name) if repo is not None else None
        why = _copy_damage(record, repository) if record is not None else None
        if record is not None and why is not None:
            damaged[repository] = _Damage(record_time(record), why)
    if not damaged:
        return
    sound = [r for r in copies if r not in damaged]
    if not sound:
        found = "; ".join(f"{r} on {d.when}: {d.why}" for r, d in damaged.items())
        plan.notes.append(
            f"NO INTACT COPY of backup {name}: verify found every copy corrupt ({found}); the restore checks "
            "each copy as it unpacks it and stops when none is intact: restore from another backup (--backup), "
            "or verify again if a copy was repaired"
        )
        return
    plan.backup_repository = sound[0]
    for repository in copies[: copies.index(sound[0])]:  # damaged, and before it: what the plan took before
        damage = damaged[repository]
        plan.notes.append(
            f"avoided the {repository} copy of backup {name}: verify on {damage.when} found it corrupt "
            f"({damage.why}); taking {sound[0]}'s"
        )


def _copy_damage(record: dict[str, Any], repository: str) -> str | None:
    """What the verify ``record`` found wrong with this repository's copy's own bytes, or None."""
    if record.get("copy_ok") is not False:
        return None
    problems = record.get("copy_problems")
    if not isinstance(problems, list):
        # A record written before copy_problems was: its problem lines start with the repository.
        lines = [p for p in record.get("problems", []) if isinstance(p, str) and p.startswith(f"{repository}: ")]
        return "; ".join(line.removeprefix(f"{repository}: ") for line in lines) or "see `pgdr verify`"
    own = [p for p in problems if isinstance(p, dict) and p.get("kind") not in _NOT_THE_COPY]
    if not own:
        return None
    return "; ".join(f"{p.get('object') or 'the copy'}: {_WHAT.get(str(p.get('kind')), p.get('kind'))}" for p in own)


def _avoid_wal_copies(plan: RestorePlan, repos: dict[str, Repository]) -> None:
    damaged: dict[tuple[str, str], _Damage] = {}
    for repository, repo in repos.items():
        for entry in corrupt_wal(repo):
            damaged[(repository, entry["file"])] = _Damage(datetime.fromisoformat(entry["time"]), entry["detail"])
    if not damaged:
        return
    avoided: dict[str, list[tuple[str, _Damage, str]]] = {}
    for index, seg in enumerate(plan.wal):
        name = seg.segment.name
        bad = [r for r in seg.repositories if (r, name) in damaged]
        if not bad:
            continue
        sound = [r for r in seg.repositories if r not in bad]
        if not sound:
            found = "; ".join(f"{r} on {damaged[(r, name)].when}: {damaged[(r, name)].why}" for r in bad)
            plan.notes.append(
                f"NO INTACT COPY of WAL segment {name}: verify found every copy corrupt ({found}); recovery "
                "cannot replay it and stops there, short of the target: put an intact copy back into the "
                "archive first if one exists anywhere"
            )
            continue
        plan.wal[index] = replace(seg, repositories=(*sound, *bad))
        for repository in seg.repositories[: seg.repositories.index(sound[0])]:
            avoided.setdefault(repository, []).append((name, damaged[(repository, name)], sound[0]))
    for repository, segments in avoided.items():
        for name, damage, taken in segments[:NAMED_SEGMENTS]:
            plan.notes.append(
                f"avoided the {repository} copy of WAL segment {name}: verify on {damage.when} found it corrupt "
                f"({damage.why}); taking {taken}'s"
            )
        rest = segments[NAMED_SEGMENTS:]
        if rest:
            takers = ", ".join(sorted({taken for _, _, taken in rest}))
            plan.notes.append(
                f"avoided the {repository} copies of {len(rest)} more WAL segments verify found corrupt "
                f"({rest[0][0]} .. {rest[-1][0]}); taking {takers}'s"
            )
