"""The catalog's listing cache never shows a backup or WAL that is gone, nor hides one that was added.

Folders are aged after every change (their time set well in the past, as on a repository that has
sat for a while), so the cache trusts them: what a later read shows comes from the cache unless the
change itself was seen.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from backend.archive.walfile import WalObject
from backend.catalog import read_catalog
from backend.manifest import BackupManifest, StoredObject
from backend.repository import ClusterIdentity, ObjectInfo, ensure_identity
from backend.repository.local import LocalRepository
from backend.repository.s3 import S3Repository
from backend.walnames import SegmentName
from tests.harness.s3 import MotoEndpoint

SIZE = 16 << 20
START = datetime(2026, 1, 5, tzinfo=UTC)


class CountingRepository(LocalRepository):
    """The local repository, recording which prefixes were listed."""

    listed: list[str]

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        self.listed.append(prefix)
        return super().list(prefix)


def add_backup(repo: LocalRepository | S3Repository, hours: int) -> str:
    began = START + timedelta(hours=hours)
    name = began.strftime("%Y%m%dT%H%M%SZ")
    stored = StoredObject("base.tar.zst", 10, "a" * 64, 20, "b" * 64, "zstd")
    manifest = BackupManifest(
        name=name,
        kind="physical",
        cluster="main",
        system_identifier=1,
        pg_version="15.18",
        start_time=began,
        stop_time=began + timedelta(seconds=5),
        objects=[stored],
        timeline=1,
        start_lsn="0/2000028",
        stop_lsn="0/2000100",
        wal_start="000000010000000000000002",
        wal_stop="000000010000000000000002",
        wal_segment_size=SIZE,
    )
    repo.put(manifest.object_key(stored), b"x" * 10)
    repo.put(manifest.key, manifest.to_json())
    return name


def add_segment(repo: LocalRepository | S3Repository, number: int) -> str:
    name = SegmentName(1, number, SIZE).name
    repo.put(WalObject(name, f"{number:064x}", "zstd").key, b"segment")
    return name


def delete_backup(repo: LocalRepository | S3Repository, name: str) -> None:
    repo.delete([info.key for info in repo.list(f"backups/{name}/")])


def age(repo: LocalRepository) -> None:
    """Set every folder's time an hour back: a repository at rest, whose folders the cache trusts."""
    old = (datetime.now(UTC) - timedelta(hours=1)).timestamp()
    for folder, _, _ in os.walk(repo.root):
        os.utime(folder, (old, old))


def shown(repo: LocalRepository | S3Repository) -> tuple[list[str], list[str]]:
    catalog = read_catalog([repo])
    return [b.manifest.name for b in catalog.backups], [s.segment.name for s in catalog.segments]


@pytest.fixture
def local(tmp_path: Path) -> CountingRepository:
    repo = CountingRepository(tmp_path / "repo", "main")
    repo.listed = []
    ensure_identity(repo, ClusterIdentity(1, SIZE), "main")
    return repo


def test_local_added_and_deleted_backups_and_wal_show_at_once(local: CountingRepository) -> None:
    first, second = add_backup(local, 0), add_backup(local, 6)
    # Segments in three folders (256 per folder): the first two are no longer written to.
    names = [add_segment(local, n) for n in (2, 3, 0x100, 0x200)]
    age(local)
    assert shown(local) == ([first, second], names)

    third = add_backup(local, 12)
    delete_backup(local, first)
    age(local)
    assert shown(local)[0] == [second, third]

    # A segment removed from and one added to an old folder (an expire, a late upload).
    local.delete([WalObject(names[0], f"{2:064x}", "zstd").key])
    late = add_segment(local, 4)
    age(local)
    assert shown(local)[1] == [names[1], late, names[2], names[3]]


def test_an_unchanged_repository_is_not_listed_again(local: CountingRepository) -> None:
    add_backup(local, 0)
    for n in (2, 0x100, 0x200):
        add_segment(local, n)
    age(local)
    before = shown(local)
    local.listed.clear()
    assert shown(local) == before
    # Only the folder archiving writes to now is listed again; the backups and older WAL come cached.
    assert local.listed == ["wal/0000000100000002/"]


def test_a_damaged_manifest_replaced_by_a_good_one_is_listed(local: CountingRepository) -> None:
    name = add_backup(local, 0)
    local.put(f"backups/{name}/manifest.json", b"{not json")
    age(local)
    assert shown(local)[0] == []
    add_backup(local, 0)  # the same name, written again
    age(local)
    assert shown(local)[0] == [name]


def test_s3_added_and_deleted_backups_and_wal_show_at_once(moto: MotoEndpoint, bucket: str) -> None:
    repo = S3Repository(moto.client(), bucket, "pg", "main")
    ensure_identity(repo, ClusterIdentity(1, SIZE), "main")
    first = add_backup(repo, 0)
    names = [add_segment(repo, n) for n in (2, 0x100)]
    assert shown(repo) == ([first], names)

    second = add_backup(repo, 6)
    delete_backup(repo, first)
    repo.delete([WalObject(names[0], f"{2:064x}", "zstd").key])
    late = add_segment(repo, 3)
    assert shown(repo) == ([second], [late, names[1]])
