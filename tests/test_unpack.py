"""Unpacking a base backup: every byte, mode and link as backed up, durable, and nothing from a bad copy."""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import random
import subprocess
import sys
import tarfile
from datetime import UTC, datetime
from pathlib import Path

import pytest
import zstandard

from backend.backup.pgbasebackup import TAR_OBJECT
from backend.errors import PgdrError
from backend.manifest import BackupManifest, StoredObject
from backend.repository.local import LocalRepository
from backend.restore import unpack
from backend.restore.unpack import MAX_OPEN_FILES, restore_base_backup

MTIME = 1_700_000_000
STEP = 64 * 1024  # writeback step for these tests: files of several steps stay small


@pytest.fixture(autouse=True)
def small_steps(monkeypatch: pytest.MonkeyPatch) -> None:
    # Reads that are not a multiple of 512 put headers and file ends across read boundaries.
    monkeypatch.setattr(unpack, "READ_SIZE", 4096 + 3)
    monkeypatch.setattr(unpack, "WRITEBACK_STEP", STEP)


def entry(name: str, kind: bytes = tarfile.REGTYPE, *, data: bytes = b"", mode: int = 0o600, link: str = "") -> tuple:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.mtime = MTIME
    info.size = len(data)
    info.linkname = link
    return info, data


def cluster_files() -> list[tuple]:
    rng = random.Random(5)
    return [
        entry("base", tarfile.DIRTYPE, mode=0o700),
        entry("base/1", tarfile.DIRTYPE, mode=0o700),
        entry("PG_VERSION", data=b"15\n"),
        entry("base/1/empty"),
        entry("base/1/1259", data=rng.randbytes(511)),
        entry("base/1/1249", data=rng.randbytes(512)),
        entry("base/1/16384", data=rng.randbytes(3 * STEP + 7)),
        entry("postgresql.conf", data=b"port = 5432\n", mode=0o640),
        entry("pg_tblspc", tarfile.DIRTYPE, mode=0o700),
        entry("pg_tblspc/16400", tarfile.SYMTYPE, link="/srv/tblspc"),
    ]


def tar_bytes(entries: list[tuple]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w|", format=tarfile.USTAR_FORMAT) as tar:  # pg_basebackup writes ustar
        for info, data in entries:
            tar.addfile(info, io.BytesIO(data) if data else None)
    return buf.getvalue()


def store(repo: LocalRepository, raw: bytes, *, stored: bytes | None = None, raw_hash: bool = True) -> BackupManifest:
    """A manifest for ``raw`` compressed; ``stored`` replaces what is written (a damaged copy)."""
    compressed = zstandard.ZstdCompressor().compress(raw)
    obj = StoredObject(
        key=TAR_OBJECT,
        size=len(compressed),
        sha256=hashlib.sha256(compressed).hexdigest(),
        raw_size=len(raw),
        raw_sha256=hashlib.sha256(raw).hexdigest() if raw_hash else "",
        compression="zstd",
    )
    now = datetime(2026, 12, 6, tzinfo=UTC)
    manifest = BackupManifest("b1", "physical", "main", 1, "15", now, now, [obj])
    repo.put(manifest.object_key(obj), compressed if stored is None else stored)
    return manifest


@pytest.fixture
def repo(tmp_path: Path) -> LocalRepository:
    return LocalRepository(tmp_path / "repo", "main")


@pytest.fixture
def target(tmp_path: Path) -> Path:
    path = tmp_path / "data"
    path.mkdir()
    return path


@pytest.mark.parametrize("raw_hash", [True, False], ids=["pgdr-compressed", "server-compressed"])
def test_every_file_mode_time_and_link_as_backed_up(repo: LocalRepository, target: Path, raw_hash: bool) -> None:
    entries = cluster_files()
    manifest = store(repo, tar_bytes(entries), raw_hash=raw_hash)
    assert restore_base_backup(manifest, [repo], target) == repo.name
    for info, data in entries:
        path = target / info.name
        if info.isreg():
            assert path.read_bytes() == data, info.name
            assert path.stat().st_mode & 0o7777 == info.mode, info.name
            assert path.stat().st_mtime == MTIME, info.name
        elif info.isdir():
            assert path.is_dir() and not path.is_symlink()
        else:
            assert os.readlink(path) == info.linkname
    assert sorted(p.relative_to(target).as_posix() for p in target.rglob("*")) == sorted(i.name for i, _ in entries)


def test_each_file_is_durable_and_large_ones_written_back_as_they_grow(
    repo: LocalRepository, target: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    entries = cluster_files()
    manifest = store(repo, tar_bytes(entries))
    synced: list[int] = []
    written_back: list[int] = []
    real_fsync, real_fdatasync = os.fsync, os.fdatasync

    def fsync(fd: int) -> None:
        synced.append(os.fstat(fd).st_size)
        real_fsync(fd)

    def fdatasync(fd: int) -> None:
        written_back.append(os.fstat(fd).st_ino)
        real_fdatasync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "fdatasync", fdatasync)
    restore_base_backup(manifest, [repo], target)
    files = [(i, d) for i, d in entries if i.isreg()]
    assert sorted(synced) == sorted(len(d) for _, d in files), "every file fsynced once, complete"
    big = (target / entries[6][0].name).stat().st_ino
    assert len(written_back) >= 2 and set(written_back) == {big}, "writeback asked for while the large file grew"


def test_a_truncated_copy_is_refused_and_emptied_out(repo: LocalRepository, target: Path) -> None:
    raw = tar_bytes(cluster_files())
    whole = zstandard.ZstdCompressor().compress(raw)
    manifest = store(repo, raw, stored=whole[: len(whole) // 2])
    with pytest.raises(
        PgdrError,
        match=r"^no intact copy of backup b1 could be restored \(local: backups/b1/base.tar.zst ends before the end",
    ):
        restore_base_backup(manifest, [repo], target)
    assert list(target.iterdir()) == []


def test_a_damaged_copy_gives_way_to_the_other_repository(repo: LocalRepository, target: Path, tmp_path: Path) -> None:
    entries = cluster_files()
    raw = tar_bytes(entries)
    good = LocalRepository(tmp_path / "other", "main")
    manifest = store(good, raw)
    damaged = bytearray(zstandard.ZstdCompressor().compress(raw))
    damaged[len(damaged) // 2] ^= 1
    repo.put(manifest.object_key(manifest.objects[0]), bytes(damaged))
    refused: list[str] = []
    assert restore_base_backup(manifest, [repo, good], target, refused=refused) == good.name
    (problem,) = refused
    assert problem.startswith(f"{repo.name}: backups/b1/{TAR_OBJECT} ")
    assert (target / "base/1/16384").read_bytes() == entries[6][1]


@pytest.mark.parametrize(
    ("bad", "words"),
    [
        (entry("../outside", data=b"x"), "holds an unsafe path '../outside'"),
        (entry("/etc/evil", data=b"x"), "holds an unsafe path '/etc/evil'"),
        (entry("base/1/hard", tarfile.LNKTYPE, link="PG_VERSION"), "a kind of tar entry pg_basebackup never writes"),
    ],
)
def test_entries_pg_basebackup_never_writes_are_refused(
    repo: LocalRepository, target: Path, tmp_path: Path, bad: tuple, words: str
) -> None:
    manifest = store(repo, tar_bytes([*cluster_files(), bad]))
    with pytest.raises(PgdrError, match=words):
        restore_base_backup(manifest, [repo], target)
    assert list(target.iterdir()) == []
    assert not (tmp_path / "outside").exists()


def test_a_full_disk_stops_at_once_naming_the_file(
    repo: LocalRepository, target: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another repository's copy cannot help a target that cannot take the files: no second attempt."""
    other = LocalRepository(tmp_path / "other", "main")
    raw = tar_bytes(cluster_files())
    manifest = store(repo, raw)
    store(other, raw)
    real_write = os.write

    def write(fd: int, data: bytes) -> int:
        if os.fstat(fd).st_size > STEP:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", write)
    with pytest.raises(PgdrError) as caught:
        restore_base_backup(manifest, [repo, other], target)
    assert str(caught.value) == (
        f"cannot write {target / 'base/1/16384'}: No space left on device; "
        "free space on that file system, then restore again"
    )


def test_a_failing_sync_fails_the_restore(repo: LocalRepository, target: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The error a sync thread meets fails the restore: a file that is not durable is not restored."""
    manifest = store(repo, tar_bytes(cluster_files()))

    def fsync(fd: int) -> None:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(PgdrError, match=r"^cannot make a restored file durable: Input/output error"):
        restore_base_backup(manifest, [repo], target)


#: Run in a child whose open-files limit (soft and hard) is far below the cluster's file count: 3,000
#: files, each fsync as slow as a busy disk's (hashing 256 KiB, without the GIL, beside the real fsync),
#: counting the fds open whenever one is synced.
MANY_FILES = """
import hashlib, json, os, resource, sys, tarfile
from pathlib import Path
from backend.repository.local import LocalRepository
from backend.restore.unpack import MAX_OPEN_FILES, restore_base_backup
from tests.test_unpack import entry, store, tar_bytes

resource.setrlimit(resource.RLIMIT_NOFILE, (int(sys.argv[2]), int(sys.argv[2])))
root = Path(sys.argv[1])
repo = LocalRepository(root / "repo", "main")
entries = [entry("base", tarfile.DIRTYPE, mode=0o700)]
entries += [entry(f"base/{i}", data=os.urandom(i % 900)) for i in range(3000)]
manifest = store(repo, tar_bytes(entries))
(root / "data").mkdir()
before = len(os.listdir("/proc/self/fd"))
peak = 0
real_fsync = os.fsync

def fsync(fd):
    global peak
    peak = max(peak, len(os.listdir("/proc/self/fd")) - 1)  # less the listing's own fd
    hashlib.sha256(bytes(1 << 18))
    real_fsync(fd)

os.fsync = fsync
restore_base_backup(manifest, [repo], root / "data")
files = sum(1 for p in (root / "data" / "base").iterdir() if p.is_file())
print(json.dumps({"files": files, "before": before, "peak": peak}))
"""


def test_thousands_of_files_unpack_within_a_small_open_files_limit(tmp_path: Path) -> None:
    """Restores of a cluster of ~2,000 files failed with "Too many open files" under runuser's 1024."""
    child = subprocess.run(
        [sys.executable, "-c", MANY_FILES, str(tmp_path), "128"],
        cwd=Path(__file__).parent.parent,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert child.returncode == 0, child.stderr[-2000:]
    found = json.loads(child.stdout)
    assert found["files"] == 3000
    assert found["peak"] <= found["before"] + 1 + MAX_OPEN_FILES, found  # and the stored tar
