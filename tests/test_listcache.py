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
from typing import TYPE_CHECKING, Any

import pytest
from moto.core.models import DEFAULT_ACCOUNT_ID
from moto.s3.models import s3_backends

from backend import listcache
from backend.archive.walfile import WalObject
from backend.catalog import read_catalog
from backend.manifest import BackupManifest, StoredObject
from backend.repository import ClusterIdentity, ObjectInfo, ensure_identity
from backend.repository.local import LocalRepository
from backend.repository.s3 import S3Repository
from backend.walnames import SegmentName
from tests.harness.s3 import MotoEndpoint

if TYPE_CHECKING:
    from types_boto3_s3.client import S3Client

SIZE = 16 << 20
START = datetime(2026, 1, 5, tzinfo=UTC)


class CountingRepository(LocalRepository):
    """The local repository, recording where each listing started."""

    listed: list[str]

    def list(self, prefix: str = "", *, start_after: str = "") -> Iterator[ObjectInfo]:
        self.listed.append(start_after or prefix)
        return super().list(prefix, start_after=start_after)


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
    # Only the newest backup and the two WAL folders archiving writes to now are listed again (one
    # listing resuming at the first); the other backups and older WAL come cached.
    assert local.listed == ["backups/20260105T000000Z/", "wal/0000000100000001/"]


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


class Clock:
    """What the listing cache takes for now: moved on by hand, never slept for."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(listcache, "clock", fake)
    return fake


@pytest.fixture
def s3(moto: MotoEndpoint, bucket: str) -> S3Repository:
    repo = S3Repository(moto.client(), bucket, "pg", "main")
    ensure_identity(repo, ClusterIdentity(1, SIZE), "main")
    return repo


def delete_elsewhere(repo: S3Repository, keys: list[str]) -> None:
    """Delete as another host would: straight through S3, unseen by this host's cache."""
    for key in keys:
        repo.client.delete_object(Bucket=repo.bucket, Key=repo.root + key)


def test_s3_changes_by_another_host(s3: S3Repository, clock: Clock) -> None:
    backups = [add_backup(s3, hours) for hours in (0, 6, 12)]
    names = [add_segment(s3, n) for n in (2, 3, 0x100, 0x200, 0x300)]
    assert shown(s3) == (backups, names)

    # Additions show at once: a new backup, a segment in the newest folder and one in a new folder.
    newest = add_backup(s3, 18)
    added = [add_segment(s3, n) for n in (0x301, 0x400)]
    assert shown(s3) == ([*backups, newest], [*names, *added])

    # Another host expires: a whole backup (its folder is gone, so it goes at once), the manifest of
    # the next one and an old segment (their folders remain: seen at the next full listing).
    delete_elsewhere(s3, [info.key for info in s3.list(f"backups/{backups[0]}/")])
    delete_elsewhere(s3, [f"backups/{backups[1]}/manifest.json", WalObject(names[0], f"{2:064x}", "zstd").key])
    assert shown(s3) == ([*backups[1:], newest], [*names, *added])
    clock.now += listcache.RELIST_S - 1
    assert shown(s3)[0] == [*backups[1:], newest]
    clock.now += 2
    assert shown(s3) == ([backups[2], newest], [*names[1:], *added])


def test_s3_deletions_by_this_host_show_at_once(s3: S3Repository, clock: Clock) -> None:
    backups = [add_backup(s3, hours) for hours in (0, 6, 12)]
    names = [add_segment(s3, n) for n in (2, 3, 0x100)]
    assert shown(s3) == (backups, names)
    s3.delete([f"backups/{backups[1]}/manifest.json", WalObject(names[0], f"{2:064x}", "zstd").key])
    assert shown(s3) == ([backups[0], backups[2]], names[1:])


class Requests:
    """Counts what a client asks S3 (boto3's event hooks): calls per operation, keys listed."""

    def __init__(self, client: S3Client) -> None:
        self.calls: dict[str, int] = {}
        self.keys = 0
        client.meta.events.register("after-call.s3", self._seen)

    def _seen(self, *, model: Any, parsed: dict[str, Any], **_: Any) -> None:
        self.calls[model.name] = self.calls.get(model.name, 0) + 1
        self.keys += len(parsed.get("Contents", []))

    def take(self) -> tuple[dict[str, int], int]:
        seen = (self.calls, self.keys)
        self.calls, self.keys = {}, 0
        return seen


def test_s3_warm_listing_asks_for_little(s3: S3Repository, clock: Clock) -> None:
    backups = [add_backup(s3, hours) for hours in range(0, 60, 6)]
    # A year's worth of keys would take minutes to send to moto: 4,100 segments (17 folders, five
    # pages of keys) go straight into its store.
    store = s3_backends[DEFAULT_ACCOUNT_ID]["aws"]
    for n in range(2, 4102):
        name = SegmentName(1, n, SIZE).name
        store.put_object(s3.bucket, s3.root + WalObject(name, f"{n:064x}", "zstd").key, b"segment")
    requests = Requests(s3.client)

    cold = shown(s3)
    calls, keys = requests.take()
    assert calls["ListObjectsV2"] == 6  # five pages of WAL, one of backups
    assert calls["GetObject"] == 1 + len(backups)  # the identity, every manifest
    assert keys > 4100

    late = add_segment(s3, 4102)
    requests.take()
    assert shown(s3) == (cold[0], [*cold[1], late])
    calls, keys = requests.take()
    # The folders of each prefix, then one listing of the newest backup, one of the two newest WAL folders.
    assert calls == {"ListObjectsV2": 4, "GetObject": 1}
    assert keys <= 2 + 2 * 256
