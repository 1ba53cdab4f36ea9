"""TarScanner: pick a member out of a tar stream fed in chunks of any size."""

from __future__ import annotations

import io
import random
import tarfile
from collections.abc import Sequence

import pytest

from backend.backup.tarscan import TarScanner

SIZES = [0, 1, 511, 512, 513, 10 * 1024]
CHUNKS = [1, 7, 512, 4096, None]  # None: the whole stream in one call
WANTED = "backup_manifest"


def content(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


def build_tar(
    members: list[tuple[str, bytes]], *, fmt: int = tarfile.GNU_FORMAT, extra: Sequence[tarfile.TarInfo] = ()
) -> tuple[bytes, int]:
    """The tar stream, and the offset of its end-of-archive zero blocks."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w|", format=fmt) as tar:
        for info in extra:
            tar.addfile(info)
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o600
            info.mtime = 1_700_000_000
            tar.addfile(info, io.BytesIO(data))
        end = tar.offset
    return buf.getvalue(), end


def feed(scanner: TarScanner, stream: bytes, chunk: int | None) -> None:
    if chunk is None:
        scanner.feed(stream)
        return
    for start in range(0, len(stream), chunk):
        scanner.feed(stream[start : start + chunk])


def members_with_wanted(wanted_size: int, position: str) -> tuple[list[tuple[str, bytes]], bytes]:
    others = [(f"base/1/{1000 + i}", content(size, seed=i)) for i, size in enumerate(SIZES)]
    wanted = content(wanted_size, seed=99)
    index = {"first": 0, "middle": len(others) // 2, "last": len(others)}[position]
    members = [*others[:index], (WANTED, wanted), *others[index:]]
    return members, wanted


@pytest.mark.parametrize("chunk", CHUNKS, ids=lambda c: "whole" if c is None else f"chunk{c}")
@pytest.mark.parametrize("position", ["first", "middle", "last"])
@pytest.mark.parametrize("wanted_size", SIZES, ids=lambda s: f"size{s}")
def test_captures_wanted_member(wanted_size: int, position: str, chunk: int | None) -> None:
    members, wanted = members_with_wanted(wanted_size, position)
    stream, _ = build_tar(members)
    scanner = TarScanner({WANTED})
    feed(scanner, stream, chunk)
    assert scanner.found == {WANTED: wanted}
    assert scanner.members == len(members)
    assert scanner.ended


@pytest.mark.parametrize("chunk", CHUNKS, ids=lambda c: "whole" if c is None else f"chunk{c}")
def test_ended_only_at_zero_blocks(chunk: int | None) -> None:
    members, wanted = members_with_wanted(513, "last")
    stream, end = build_tar(members)
    scanner = TarScanner({WANTED})
    feed(scanner, stream[:end], chunk)
    assert not scanner.ended
    assert scanner.members == len(members)
    assert scanner.found == {WANTED: wanted}
    feed(scanner, stream[end:], chunk)
    assert scanner.ended


def test_not_ended_inside_a_member() -> None:
    """A member's data full of zero blocks is data, not the end of the archive."""
    zeros = bytes(4096)
    stream, _ = build_tar([("zeros", zeros), (WANTED, b"manifest")])
    scanner = TarScanner({WANTED})
    scanner.feed(stream[: 512 + 2048])
    assert not scanner.ended
    scanner.feed(stream[512 + 2048 :])
    assert scanner.ended
    assert scanner.members == 2
    assert scanner.found == {WANTED: b"manifest"}


def test_bytes_after_the_end_are_ignored() -> None:
    members, wanted = members_with_wanted(10, "first")
    stream, _ = build_tar(members)
    scanner = TarScanner({WANTED})
    scanner.feed(stream)
    scanner.feed(b"garbage that is not a tar header" * 100)
    assert scanner.ended
    assert scanner.members == len(members)
    assert scanner.found == {WANTED: wanted}


def test_wanted_member_missing() -> None:
    stream, _ = build_tar([("a", b"1"), ("b", b"22")])
    scanner = TarScanner({WANTED})
    scanner.feed(stream)
    assert scanner.found == {}
    assert scanner.members == 2
    assert scanner.ended


def test_several_wanted_and_dot_slash_prefix() -> None:
    stream, _ = build_tar([("./backup_label", b"START WAL LOCATION"), ("a", b"x" * 700), ("./tablespace_map", b"")])
    scanner = TarScanner({"backup_label", "tablespace_map", "absent"})
    feed(scanner, stream, 7)
    assert scanner.found == {"backup_label": b"START WAL LOCATION", "tablespace_map": b""}
    assert scanner.members == 3


def test_only_regular_files_are_counted() -> None:
    folder = tarfile.TarInfo("base")
    folder.type = tarfile.DIRTYPE
    link = tarfile.TarInfo("pg_tblspc/16384")
    link.type = tarfile.SYMTYPE
    link.linkname = "/srv/tblspc"
    stream, _ = build_tar([(WANTED, b"{}")], extra=[folder, link])
    scanner = TarScanner({WANTED})
    feed(scanner, stream, 1)
    assert scanner.members == 1
    assert scanner.found == {WANTED: b"{}"}
    assert scanner.ended


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_tar_formats(fmt: int) -> None:
    members, wanted = members_with_wanted(512, "middle")
    stream, _ = build_tar(members, fmt=fmt)
    scanner = TarScanner({WANTED})
    feed(scanner, stream, 4096)
    assert scanner.found == {WANTED: wanted}
    assert scanner.members == len(members)
    assert scanner.ended


def test_memoryview_chunks() -> None:
    members, wanted = members_with_wanted(10 * 1024, "middle")
    stream, _ = build_tar(members)
    view = memoryview(stream)
    scanner = TarScanner({WANTED})
    for start in range(0, len(stream), 1000):
        scanner.feed(view[start : start + 1000])
    assert scanner.found == {WANTED: wanted}
    assert scanner.ended
