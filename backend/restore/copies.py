"""Which copies a restore takes: never one the last ``pgdr verify`` found damaged while another is sound.

The catalog names a backup's and each segment's copies in the configured order (local first), and
the plan takes the first: right while every copy is intact. A copy verify found corrupt still looks
whole in a listing, so without this the plan would name it, and the restore would spend the time
to read it (all of a base backup, before its checksum fails) before it turned to the other copy. So
the plan reads what verify recorded in each repository it reads (each backup's
``verify/<name>.json``, ``verify/corrupt-wal.json``), puts the sound copies first, and says in a note
which copies it avoided (the damaged ones it would have taken), when verify found them damaged, and
whose copy it takes instead. When every copy is damaged the plan is kept (a copy may have been
repaired since) but says so loudly.

An incremental backup is restored with its whole chain, each backup of it judged the same way. One
with no intact copy anywhere breaks the chain: PostgreSQL cannot combine the others without it, so the
plan is refused in one line naming that link, when verify found it damaged, and the older backup to
restore instead; verify also reports the incrementals above such a link as BAD.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from typing import TYPE_CHECKING, Any

from backend.errors import PgdrError
from backend.manifest import BrokenChain, chain
from backend.repository import Repository
from backend.verify.records import corrupt_wal, read_record, record_time

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
#: missing or corrupt in that repository, and a restore fetches each segment from any repository; or,
#: for an incremental, its chain is broken there, and the plan judges each backup of the chain itself.
_NOT_THE_COPY = frozenset({"wal", "chain"})
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
    """Reorder ``plan``'s copies so sound ones come first, and note each copy avoided (see the module).

    Raises PgdrError when a backup of an incremental's chain has no intact copy left (see the module).
    """
    repos = {repo.name: repo for repo in view.repositories}
    _avoid_backup_copies(plan, view, repos)
    _avoid_wal_copies(plan, repos)


@dataclass
class _Member:
    """One backup of the chain a restore unpacks: its copies (in catalog order) and those verify found damaged."""

    name: str
    copies: list[str]
    damaged: dict[str, _Damage]

    @property
    def sound(self) -> list[str]:
        return [r for r in self.copies if r not in self.damaged]

    def taken(self, order: list[str]) -> str | None:
        """The copy a restore that tries the repositories in ``order`` takes (the first sound one it holds)."""
        return next((r for r in order if r in self.copies and r not in self.damaged), None)

    def wasted(self, order: list[str]) -> list[str]:
        """The damaged copies such a restore reads in vain (whole, until a checksum fails) before that one."""
        taken = self.taken(order)
        tried = order[: order.index(taken)] if taken in order else order
        return [r for r in tried if r in self.damaged]

    def found(self, repositories: list[str] | None = None) -> str:
        """What verify found, and when, for these damaged copies (all of them by default)."""
        names = self.damaged if repositories is None else repositories
        return "; ".join(f"{r} on {self.damaged[r].when}: {self.damaged[r].why}" for r in names)


def _member(name: str, view: RecoveryView, repos: dict[str, Repository], fallback: str) -> _Member:
    entry = next((b for b in view.catalog.backups if b.manifest.name == name), None)
    copies = list(entry.repositories) if entry is not None else [fallback]
    damaged: dict[str, _Damage] = {}
    for repository in copies:
        repo = repos.get(repository)
        record = read_record(repo, name) if repo is not None else None
        why = _copy_damage(record, repository) if record is not None else None
        if record is not None and why is not None:
            damaged[repository] = _Damage(record_time(record), why)
    return _Member(name, copies, damaged)


def _order(first: str, repos: dict[str, Repository]) -> list[str]:
    """The repositories in the order the restore tries them for every backup of the chain: ``first``
    (the plan's ``backup_repository``), then the others as configured (``backend.restore.run``)."""
    return [first, *(r for r in repos if r != first)]


def _avoid_backup_copies(plan: RestorePlan, view: RecoveryView, repos: dict[str, Repository]) -> None:
    """Choose the repository the restore tries first so that no backup of the chain is read from a damaged copy.

    The restore takes each backup of the chain from the first repository, in one order for all of
    them, whose copy verifies, ``plan.backup_repository`` first: that is the one choice the plan
    has. It goes to the repository with a sound copy of the newest backup from which the fewest
    damaged copies are read in vain (none, when one repository's copies are all sound). A chain a
    backup of which has no intact copy anywhere cannot be combined at all: refused, naming the link,
    before anything is stopped or moved. A full backup alone with none keeps the plan (a copy may
    have been repaired since verify ran) and says so loudly.
    """
    members = [_member(m.name, view, repos, plan.backup_repository) for m in plan.chain]
    if not any(m.damaged for m in members):
        return
    broken = [m for m in members if not m.sound]
    if broken and len(members) > 1:
        raise PgdrError(_refusal(plan, view, repos, members))
    newest = members[-1]
    if not newest.sound:
        plan.notes.append(
            f"NO INTACT COPY of backup {newest.name}: verify found every copy corrupt ({newest.found()}); the "
            "restore checks each copy as it unpacks it and stops when none is intact: restore from another "
            "backup (--backup), or verify again if a copy was repaired"
        )
        return
    before = _order(plan.backup_repository, repos)
    sound = newest.sound
    first = min(sound, key=lambda r: (sum(len(m.wasted(_order(r, repos))) for m in members), sound.index(r)))
    plan.backup_repository = first
    after = _order(first, repos)
    for member in members:
        taken = member.taken(after)
        still = member.wasted(after)
        for repository in member.wasted(before):
            if repository not in still:  # damaged, and what the plan took before
                damage = member.damaged[repository]
                plan.notes.append(
                    f"avoided the {repository} copy of backup {member.name}: verify on {damage.when} found it "
                    f"corrupt ({damage.why}); taking {taken}'s"
                )
        if still:
            plan.notes.append(
                f"the restore reads the {', '.join(still)} copy of backup {member.name} first, which verify found "
                f"corrupt ({member.found(still)}), before it takes {taken}'s: no repository holds a sound copy "
                "of every backup of the chain"
            )


def _refusal(
    plan: RestorePlan,
    view: RecoveryView,
    repos: dict[str, Repository],
    members: list[_Member],
) -> str:
    """Why the chain of ``plan.backup`` cannot be restored, and what to restore instead, in one line.

    It names the lowest link with no intact copy (every backup above it needs it) and counts the others.
    """
    broken, *rest = [m for m in members if not m.sound]
    newest = members[-1]
    if broken is newest:
        link = "it has no intact copy"
    elif broken is members[0]:
        link = f"{broken.name}, the full backup its chain starts from, has no intact copy"
    else:
        link = f"{broken.name}, a backup its chain builds on, has no intact copy"
    also = f" (and {len(rest)} more of its chain {'has' if len(rest) == 1 else 'have'} none)" if rest else ""
    older = _older_whole(plan, view, repos)
    instead = (
        f"restore an older backup instead (--backup {older[0]}, {older[1]}), or run `pgdr verify` again if a "
        "copy was repaired"
        if older is not None
        else "no older backup is whole to restore instead: run `pgdr verify` again if a copy was repaired"
    )
    return (
        f"backup {newest.name} cannot be restored: {link}{also}: verify found every copy corrupt "
        f"({broken.found()}); {instead}"
    )


def _older_whole(plan: RestorePlan, view: RecoveryView, repos: dict[str, Repository]) -> tuple[str, str] | None:
    """The newest backup older than the plan's whose every chain backup has a copy verify did not find damaged.

    Returns its name and what it is ("a full one", "an incremental whose chain is whole"); None when none is.
    """
    manifests = {b.manifest.name: b.manifest for b in view.catalog.backups}
    disowned = view.timeline.disowned
    known: dict[str, _Member] = {}
    for entry in sorted(view.catalog.backups, key=lambda b: b.manifest.stop_time, reverse=True):
        candidate = entry.manifest
        if candidate.kind != "physical" or candidate.stop_time >= plan.backup.stop_time or candidate.name in disowned:
            continue
        try:
            members = chain(candidate, manifests)
        except BrokenChain:
            continue
        for m in members:
            if m.name not in known:
                known[m.name] = _member(m.name, view, repos, plan.backup_repository)
        if all(known[m.name].sound for m in members):
            return candidate.name, "a full one" if len(members) == 1 else "an incremental whose chain is whole"
    return None


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
