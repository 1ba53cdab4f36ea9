"""Retention and incremental backups (PostgreSQL 17+): a chain is never broken by an expire.

Pure logic with synthetic manifests (``plan_expiry``), then the real ``expire`` on a local
repository for the deletion order an interrupted expire depends on.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from backend.archive.walfile import WalObject, checksum
from backend.catalog import read_catalog
from backend.config import Config, load_config
from backend.errors import RepositoryError
from backend.manifest import BackupManifest, BrokenChain, StoredObject, chain
from backend.repository import Repository
from backend.repository.local import LocalRepository
from backend.retention import ExpireError, ExpiryPlan, KeptBackup, expire, plan_expiry
from backend.walnames import DEFAULT_SEGMENT_SIZE, SegmentName, format_lsn

NOW = datetime(2025, 6, 30, 12, 0, tzinfo=UTC)


def seg(number: int) -> str:
    return SegmentName(1, number).name


def name_at(age_days: float) -> str:
    return (NOW - timedelta(days=age_days)).strftime("%Y%m%dT%H%M%SZ")


def physical(
    age_days: float, start: int, parent: BackupManifest | str | None = None, objects: list[StoredObject] | None = None
) -> BackupManifest:
    """A physical backup on timeline 1 that stopped ``age_days`` before NOW and starts in segment ``start``.

    ``parent`` makes it an incremental building on that backup (a name alone: a backup not held).
    """
    stop = NOW - timedelta(days=age_days)
    return BackupManifest(
        name=name_at(age_days), kind="physical", cluster="main", system_identifier=1, pg_version="17",
        start_time=stop - timedelta(seconds=5), stop_time=stop, objects=objects or [], timeline=1,
        start_lsn=format_lsn(start * DEFAULT_SEGMENT_SIZE + 0x28),
        stop_lsn=format_lsn(start * DEFAULT_SEGMENT_SIZE + 0x2000),
        wal_start=seg(start), wal_stop=seg(start), wal_segment_size=DEFAULT_SEGMENT_SIZE,
        parent=parent.name if isinstance(parent, BackupManifest) else parent,
    )  # fmt: skip


def kept(plan: ExpiryPlan) -> dict[str, KeptBackup]:
    return {k.manifest.name: k for k in plan.kept}


def expired(plan: ExpiryPlan) -> list[str]:
    return [m.name for m in plan.expired]


# --- the plan ---


def test_a_kept_incremental_keeps_its_old_chain_and_only_its_own_wal_floor() -> None:
    older = physical(30, 1)
    full = physical(20, 2)
    i1 = physical(12, 10, full)
    i2 = physical(3, 20, i1)  # the only backup within the retention
    plan = plan_expiry([i2, older, i1, full], [seg(n) for n in range(1, 25)], {}, retention_days=7, now=NOW)

    assert expired(plan) == [older.name]
    keep = kept(plan)
    assert set(keep) == {full.name, i1.name, i2.name}
    assert keep[i2.name] == KeptBackup(i2, "within the retention")
    assert keep[i1.name] == KeptBackup(i1, f"incremental {i2.name} builds on it", overdue=True, chain_link=True)
    assert keep[full.name] == KeptBackup(
        full, f"incremental {i1.name} builds on it (restoring {i2.name} needs it)", overdue=True, chain_link=True
    )
    # A restore of I2 replays WAL from I2's start: the links hold no WAL of their own.
    assert plan.wal_floors == ((1, 20),)
    assert plan.deleted_segments == [seg(n) for n in range(1, 20)]
    assert not plan.keeps_segment(1, 2) and plan.keeps_segment(1, 20)


def test_a_parent_within_the_retention_is_a_restore_start_of_its_own() -> None:
    full = physical(20, 2)
    i1 = physical(5, 10, full)  # within the retention: restorable, and its WAL floor stays
    i2 = physical(2, 20, i1)
    plan = plan_expiry([full, i1, i2], [seg(n) for n in range(1, 25)], {}, retention_days=7, now=NOW)

    assert expired(plan) == []
    keep = kept(plan)
    assert keep[i1.name] == KeptBackup(i1, "within the retention")
    assert keep[full.name] == KeptBackup(full, f"incremental {i1.name} builds on it", overdue=True, chain_link=True)
    assert plan.wal_floors == ((1, 10), (1, 20))
    assert plan.deleted_segments == [seg(n) for n in range(1, 10)]


def test_everything_overdue_and_the_newest_is_incremental_keeps_its_whole_chain() -> None:
    older = physical(50, 1)
    full = physical(40, 2)
    i1 = physical(30, 10, full)
    i2 = physical(20, 20, i1)
    plan = plan_expiry([older, full, i1, i2], [seg(n) for n in range(1, 25)], {}, retention_days=7, now=NOW)

    assert expired(plan) == [older.name]
    keep = kept(plan)
    assert keep[i2.name] == KeptBackup(i2, "newest physical backup", overdue=True)
    assert keep[i1.name].chain_link and keep[i1.name].overdue
    assert keep[full.name].chain_link and keep[full.name].reason.startswith(f"incremental {i1.name} builds on it")
    assert [m.name for m in chain(i2, {k: v.manifest for k, v in keep.items()})] == [full.name, i1.name, i2.name]
    assert plan.wal_floors == ((1, 20),)
    assert plan.broken_chains == {}


def test_an_incremental_with_a_broken_chain_is_not_the_newest_restorable() -> None:
    whole = physical(30, 2)
    gone = name_at(25)  # its parent: not in this repository
    broken = physical(12, 20, gone)
    plan = plan_expiry([whole, broken], [seg(n) for n in range(1, 25)], {}, retention_days=7, now=NOW)

    assert expired(plan) == [broken.name]  # removed by its age, like any backup
    assert kept(plan) == {whole.name: KeptBackup(whole, "newest physical backup", overdue=True)}
    assert plan.broken_chains == {broken.name: gone}
    assert plan.wal_floors == ((1, 2),)


def test_a_broken_incremental_within_the_retention_keeps_what_it_still_has() -> None:
    whole = physical(30, 2)
    i1 = physical(20, 10, name_at(25))  # builds on a full this repository does not hold
    i2 = physical(3, 20, i1)
    plan = plan_expiry([whole, i1, i2], [seg(n) for n in range(1, 25)], {}, retention_days=7, now=NOW)

    assert expired(plan) == []
    keep = kept(plan)
    assert keep[whole.name].reason == "newest physical backup"
    assert keep[i2.name].reason == "within the retention"
    assert keep[i1.name] == KeptBackup(i1, f"incremental {i2.name} builds on it", overdue=True, chain_link=True)
    assert plan.broken_chains == {i1.name: name_at(25), i2.name: name_at(25)}


def test_expired_incrementals_go_before_their_parents() -> None:
    full_a = physical(40, 1)
    a1 = physical(35, 3, full_a)
    a2 = physical(30, 5, a1)
    full_b = physical(25, 7)
    b1 = physical(20, 9, full_b)
    newest = physical(2, 20)
    plan = plan_expiry([full_a, a1, a2, full_b, b1, newest], [], {}, retention_days=7, now=NOW)

    assert expired(plan) == [a2.name, a1.name, full_a.name, b1.name, full_b.name]


# --- the real expire on a local repository ---


def store_wal(repo: Repository, filename: str) -> None:
    data = b"x" * 100
    repo.put(WalObject(filename, checksum(data + filename.encode()), "none").key, data)


def store_backup(repo: Repository, age_days: float, start: int, parent: BackupManifest | None = None) -> BackupManifest:
    name = name_at(age_days)
    body = b"b" * 1000
    repo.put(f"backups/{name}/base.tar.zst", body)
    stored = [StoredObject("base.tar.zst", len(body), checksum(body), len(body), checksum(body), "none")]
    manifest = physical(age_days, start, parent, stored)
    repo.put(manifest.key, manifest.to_json())
    store_wal(repo, f"{seg(start)}.00000028.backup")
    return manifest


@pytest.fixture
def local_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Config:
    monkeypatch.setenv("PGDR_STATE_DIR", str(tmp_path / "state"))
    path = tmp_path / "pgdr.toml"
    path.write_text(f'[cluster]\nname = "main"\n\n[local]\npath = "{tmp_path / "repo"}"\nretention_days = 7\n')
    return load_config(path)


def listed_chains_whole(repo: Repository) -> bool:
    backups = {b.manifest.name: b.manifest for b in read_catalog([repo]).backups}
    try:
        for m in backups.values():
            chain(m, backups)
    except BrokenChain:
        return False
    return True


def test_expire_deletes_children_before_parents(local_config: Config, monkeypatch: pytest.MonkeyPatch) -> None:
    repo = LocalRepository(local_config.local.path, "main")
    full = store_backup(repo, 20, 2)
    i1 = store_backup(repo, 15, 5, full)
    i2 = store_backup(repo, 10, 8, i1)
    store_backup(repo, 3, 12)
    for n in range(1, 15):
        store_wal(repo, seg(n))
    deletes: list[list[str]] = []
    inner = repo.delete

    def delete(keys: Iterable[str]) -> None:
        deletes.append(list(keys))
        inner(deletes[-1])

    monkeypatch.setattr(repo, "delete", delete)

    report = expire(local_config, now=NOW, repos=[repo])
    (result,) = report.repositories
    assert [b.name for b in result.removed_backups] == [i2.name, i1.name, full.name]
    manifests = [keys[0] for keys in deletes if len(keys) == 1 and keys[0].endswith("/manifest.json")]
    assert manifests == [i2.key, i1.key, full.key]
    assert listed_chains_whole(repo)


def test_an_interrupted_expire_leaves_no_incremental_without_its_parent(
    local_config: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = LocalRepository(local_config.local.path, "main")
    full = store_backup(repo, 20, 2)
    i1 = store_backup(repo, 15, 5, full)
    store_backup(repo, 10, 8, i1)
    store_backup(repo, 3, 12)
    calls = 0
    inner = repo.delete

    def delete(keys: Iterable[str]) -> None:
        nonlocal calls
        calls += 1
        if calls > 1:  # the first manifest goes, then the expire is cut short
            raise RepositoryError("disk went away")
        inner(keys)

    monkeypatch.setattr(repo, "delete", delete)
    with pytest.raises(ExpireError):
        expire(local_config, now=NOW, repos=[repo])
    assert len(read_catalog([repo]).backups) == 3  # one backup unlisted
    assert listed_chains_whole(repo)


def test_the_dry_run_says_why_a_parent_is_kept(local_config: Config) -> None:
    repo = LocalRepository(local_config.local.path, "main")
    full = store_backup(repo, 20, 2)
    i1 = store_backup(repo, 15, 5, full)
    i2 = store_backup(repo, 3, 8, i1)
    for n in range(1, 12):
        store_wal(repo, seg(n))

    dry = expire(local_config, dry_run=True, now=NOW, repos=[repo])
    text = dry.render()
    assert "no backup to remove" in text
    assert (
        f"would keep {full.name} (physical): incremental {i1.name} builds on it (restoring {i2.name} needs it), "
        "older than the retention; a link of the chain only" in text
    )
    assert f"would keep {i1.name} (physical): incremental {i2.name} builds on it, older than the retention" in text
    assert f"would keep all WAL from {seg(8)} on" in text
    (result,) = dry.repositories
    assert (result.wal_first, result.wal_last) == (seg(1), seg(7))
    links = {k["name"]: k["chain_link"] for k in result.to_json()["kept_backups"]}
    assert links == {full.name: True, i1.name: True, i2.name: False}
