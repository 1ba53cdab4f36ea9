"""The local repository: atomic writes, key-ordered listing, private folders, nothing left by a crash."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import textwrap
from datetime import UTC
from pathlib import Path

import pytest

from backend.errors import ObjectNotFound, RepositoryError
from backend.repository.local import TEMP_PREFIX, LocalRepository

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def repo(tmp_path: Path) -> LocalRepository:
    return LocalRepository(tmp_path / "repo", "main")


def keys(repo: LocalRepository, prefix: str = "") -> list[str]:
    return [info.key for info in repo.list(prefix)]


def temp_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.startswith(TEMP_PREFIX)] if root.exists() else []


def test_put_get(repo: LocalRepository, tmp_path: Path) -> None:
    repo.put("repo.json", b'{"format": 1}\n')
    repo.put("wal/0000000100000000/000000010000000000000001.abc.zst", b"\x00" * 70_000)
    assert repo.get("repo.json") == b'{"format": 1}\n'
    assert repo.get("wal/0000000100000000/000000010000000000000001.abc.zst") == b"\x00" * 70_000
    assert (tmp_path / "repo" / "main" / "repo.json").read_bytes() == b'{"format": 1}\n'
    assert repo.location() == str(tmp_path / "repo" / "main")
    with repo.open("repo.json") as fh:
        assert fh.read(3) == b'{"f'
    assert repo.exists("repo.json")
    assert not repo.exists("repo.js")


def test_put_empty_and_replace(repo: LocalRepository) -> None:
    repo.put("queue/s3/000000010000000000000001", b"")
    assert repo.get("queue/s3/000000010000000000000001") == b""
    repo.put("a/b", b"first")
    repo.put("a/b", b"second, longer")
    assert repo.get("a/b") == b"second, longer"
    assert keys(repo, "a/") == ["a/b"]


def test_get_missing(repo: LocalRepository) -> None:
    with pytest.raises(ObjectNotFound) as info:
        repo.get("backups/nope/manifest.json")
    assert info.value.exit_code == 1
    assert "backups/nope/manifest.json" in str(info.value)
    with pytest.raises(ObjectNotFound), repo.open("nope"):
        pass


@pytest.mark.parametrize("key", ["", "/etc/passwd", "../escape", "a/../../escape", "a/.."])
def test_invalid_keys(repo: LocalRepository, key: str, tmp_path: Path) -> None:
    with pytest.raises(RepositoryError):
        repo.put(key, b"x")
    with pytest.raises(RepositoryError):
        repo.get(key)
    assert not (tmp_path / "escape").exists()


def test_writer_streams(repo: LocalRepository) -> None:
    with repo.writer("backups/b1/base.tar.zst") as out:
        for i in range(10):
            out.write(bytes([i]) * 300_000)
        assert keys(repo) == []  # not visible until the block exits
    assert repo.get("backups/b1/base.tar.zst") == b"".join(bytes([i]) * 300_000 for i in range(10))


@pytest.mark.parametrize("error", [RuntimeError("boom"), KeyboardInterrupt()], ids=["exception", "interrupt"])
def test_writer_failure_leaves_nothing(repo: LocalRepository, tmp_path: Path, error: BaseException) -> None:
    with pytest.raises(type(error)), repo.writer("backups/b1/base.tar.zst") as out:
        out.write(b"x" * 2_000_000)
        raise error
    with pytest.raises(ObjectNotFound):
        repo.get("backups/b1/base.tar.zst")
    assert keys(repo) == []
    assert keys(repo, "backups/") == []
    assert temp_files(tmp_path / "repo") == []
    assert not repo.exists("backups/b1/base.tar.zst")


def test_writer_failure_keeps_previous_object(repo: LocalRepository, tmp_path: Path) -> None:
    repo.put("repo.json", b"old")
    with pytest.raises(RuntimeError), repo.writer("repo.json") as out:
        out.write(b"new, half written")
        raise RuntimeError("boom")
    assert repo.get("repo.json") == b"old"
    assert keys(repo) == ["repo.json"]
    assert temp_files(tmp_path / "repo") == []


def test_list_hides_temporary_files(repo: LocalRepository, tmp_path: Path) -> None:
    repo.put("wal/0000000100000000/000000010000000000000001.abc.zst", b"1")
    folder = tmp_path / "repo" / "main" / "wal" / "0000000100000000"
    (folder / f"{TEMP_PREFIX}000000010000000000000002.abc.zst.123.deadbeef").write_bytes(b"half")
    assert keys(repo) == ["wal/0000000100000000/000000010000000000000001.abc.zst"]
    assert keys(repo, "wal/0000000100000000/000000010000000000000002") == []


ALL_KEYS = [
    "backups/b1/base.tar.zst",
    "backups/b1/manifest.json",
    "backups/b1-2/manifest.json",
    "backups/b1.old/manifest.json",
    "backups/b10/manifest.json",
    "queue/s3/000000010000000000000001",
    "queue/s3/00000002.history",
    "repo.json",
    "repo.json.bak",
    "wal/0000000100000000/000000010000000000000001.aaa.zst",
    "wal/0000000100000000/000000010000000000000001.partial.bbb.zst",
    "wal/0000000100000000/000000010000000000000002.ccc.raw",
    "wal/0000000100000001/000000010000000100000000.ddd.zst",
    "wal/history/00000002.history.eee.raw",
]


@pytest.fixture
def filled(repo: LocalRepository) -> LocalRepository:
    for key in reversed(ALL_KEYS):
        repo.put(key, key.encode())
    return repo


def test_list_everything_in_key_order(filled: LocalRepository) -> None:
    listed = keys(filled)
    assert sorted(listed) == sorted(ALL_KEYS)
    assert listed == sorted(ALL_KEYS)


@pytest.mark.parametrize(
    "prefix",
    [
        "",
        "backups/",
        "backups/b1/",
        "backups/b1",
        "backups/b1-",
        "backups/b1/m",
        "queue/s3/",
        "repo",
        "repo.json",
        "wal/",
        "wal/0000000100000000/",
        "wal/0000000100000000/000000010000000000000001.",
        "wal/00000001",
        "w",
        "wal/history/",
        "nothing/",
        "nothing",
        "repo.json/",
        "backups/b1/base.tar.zst/x",
    ],
)
def test_list_prefix(filled: LocalRepository, prefix: str) -> None:
    expected = sorted(k for k in ALL_KEYS if k.startswith(prefix))
    assert keys(filled, prefix) == expected


def test_list_info(filled: LocalRepository) -> None:
    (info,) = filled.list("repo.json.bak")
    assert info.key == "repo.json.bak"
    assert info.size == len(b"repo.json.bak")
    assert info.modified.tzinfo is UTC


def test_list_missing_root(repo: LocalRepository) -> None:
    assert keys(repo) == []
    assert keys(repo, "wal/") == []


def test_delete_is_idempotent(filled: LocalRepository) -> None:
    gone = ["backups/b1/base.tar.zst", "backups/b1/manifest.json"]
    filled.delete(gone)
    assert keys(filled) == sorted(k for k in ALL_KEYS if k not in gone)
    filled.delete(gone)  # already gone
    filled.delete(["no/such/folder/key", "repo.json", "repo.json"])
    filled.delete([])
    filled.delete(iter(["repo.json.bak"]))
    assert keys(filled, "repo") == []
    with pytest.raises(ObjectNotFound):
        filled.get("backups/b1/manifest.json")


def test_folders_and_files_are_private(repo: LocalRepository, tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        repo.put("wal/0000000100000000/000000010000000000000001.abc.zst", b"x")
    finally:
        os.umask(old)
    folder = tmp_path / "repo"
    for part in ["", "main", "wal", "0000000100000000"]:
        folder = folder / part if part else folder
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder
    segment = folder / "000000010000000000000001.abc.zst"
    assert stat.S_IMODE(segment.stat().st_mode) == 0o600


CRASHING_WRITER = textwrap.dedent(
    """
    import os, signal, sys
    from backend.repository.local import LocalRepository

    repo = LocalRepository(sys.argv[1], "main")
    repo.put("backups/b1/base.tar.zst.before", b"complete")
    with repo.writer(sys.argv[2]) as out:
        out.write(b"x" * 3_000_000)
        out.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    """
)


@pytest.mark.parametrize("key", ["backups/b1/base.tar.zst", "repo.json"])
def test_killed_writer_leaves_nothing_under_the_key(tmp_path: Path, key: str) -> None:
    base = tmp_path / "repo"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    result = subprocess.run(
        [sys.executable, "-c", CRASHING_WRITER, str(base), key],
        env=env,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == -signal.SIGKILL, result.stderr.decode()
    # The half-written data is on disk, but only in a temporary file.
    leftovers = temp_files(base)
    assert len(leftovers) == 1
    assert leftovers[0].stat().st_size == 3_000_000

    repo = LocalRepository(base, "main")
    with pytest.raises(ObjectNotFound):
        repo.get(key)
    assert not repo.exists(key)
    assert keys(repo) == ["backups/b1/base.tar.zst.before"]
    assert keys(repo, key) == ([] if key == "repo.json" else ["backups/b1/base.tar.zst.before"])

    # The next writer of the same key is not disturbed by the debris.
    repo.put(key, b"retried")
    assert repo.get(key) == b"retried"
    assert key in keys(repo)
