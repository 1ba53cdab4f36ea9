"""WAL file names and LSNs, checked against PostgreSQL's own naming (access/xlog_internal.h)."""

from __future__ import annotations

import pytest

from backend.walnames import (
    DEFAULT_SEGMENT_SIZE,
    SegmentName,
    WalKind,
    format_lsn,
    parse_lsn,
    wal_directory,
    wal_kind,
)

MB = 1024 * 1024
GB = 1024 * MB


@pytest.mark.parametrize(
    ("name", "size", "timeline", "number"),
    [
        ("000000010000000000000001", 16 * MB, 1, 1),
        ("000000010000000000000000", 16 * MB, 1, 0),
        ("0000000100000000000000FF", 16 * MB, 1, 255),
        ("000000010000000100000000", 16 * MB, 1, 256),
        ("0000000A0000001600000003", 16 * MB, 10, 0x16 * 256 + 3),
        ("000000010000000000000100", 1 * MB, 1, 256),
        ("000000010000000000000FFF", 1 * MB, 1, 4095),
        ("000000010000000100000000", 1 * MB, 1, 4096),
        ("00000003000000020000000A", 1 * MB, 3, 2 * 4096 + 10),
        ("000000010000000100000003", 1 * GB, 1, 4 + 3),
    ],
)
def test_name_to_number_and_back(name: str, size: int, timeline: int, number: int) -> None:
    seg = SegmentName.parse(name, size)
    assert (seg.timeline, seg.number, seg.segment_size) == (timeline, number, size)
    assert seg.name == name
    assert str(seg) == name
    assert SegmentName(timeline, number, size).name == name
    assert seg.start_lsn == number * size


def test_default_segment_size_is_16mb() -> None:
    assert DEFAULT_SEGMENT_SIZE == 16 * MB
    seg = SegmentName.parse("000000010000000000000005")
    assert seg.segment_size == 16 * MB
    assert seg.per_log == 256


@pytest.mark.parametrize(
    ("name", "size"),
    [
        ("000000010000000000000100", 16 * MB),  # 16 MB: the seg part stops at 0xFF
        ("0000000100000000FFFFFFFF", 16 * MB),
        ("000000010000000000001000", 1 * MB),  # 1 MB: the seg part stops at 0xFFF
        ("000000010000000000000004", 1 * GB),  # 1 GB: the seg part stops at 3
    ],
)
def test_seg_part_out_of_range_for_segment_size(name: str, size: int) -> None:
    with pytest.raises(ValueError, match=name):
        SegmentName.parse(name, size)


@pytest.mark.parametrize(
    "junk",
    [
        "",
        "00000001000000000000001",  # 23 digits
        "0000000100000000000000001",  # 25 digits
        "0000000100000000000000ff",  # lower case: PostgreSQL never writes it
        "00000001000000000000000G",
        "000000010000000000000001.partial",
        "00000002.history",
        " 000000010000000000000001",
        "000000010000000000000001 ",
        "000000010000000000000001\n",
        "pg_wal/000000010000000000000001",
    ],
)
def test_parse_refuses_non_segment_names(junk: str) -> None:
    with pytest.raises(ValueError):
        SegmentName.parse(junk)


@pytest.mark.parametrize(
    ("name", "size", "following"),
    [
        ("000000010000000000000001", 16 * MB, "000000010000000000000002"),
        ("0000000100000000000000FE", 16 * MB, "0000000100000000000000FF"),
        ("0000000100000000000000FF", 16 * MB, "000000010000000100000000"),
        ("00000002000000FF000000FF", 16 * MB, "000000020000010000000000"),
        ("0000000100000000000000FF", 1 * MB, "000000010000000000000100"),
        ("000000010000000000000FFF", 1 * MB, "000000010000000100000000"),
        ("000000010000000000000003", 1 * GB, "000000010000000100000000"),
    ],
)
def test_next_crosses_log_boundary(name: str, size: int, following: str) -> None:
    seg = SegmentName.parse(name, size)
    nxt = seg.next()
    assert nxt.name == following
    assert nxt.timeline == seg.timeline
    assert nxt.segment_size == size
    assert nxt.number == seg.number + 1
    assert nxt > seg
    assert SegmentName.parse(following, size) == nxt


@pytest.mark.parametrize(
    ("lsn", "size", "name"),
    [
        ("0/0", 16 * MB, "000000010000000000000000"),
        ("0/FFFFFF", 16 * MB, "000000010000000000000000"),
        ("0/1000000", 16 * MB, "000000010000000000000001"),
        ("0/1A2B3C8", 16 * MB, "000000010000000000000001"),
        ("0/FFFFFFFF", 16 * MB, "0000000100000000000000FF"),
        ("1/0", 16 * MB, "000000010000000100000000"),
        ("16/B374D848", 16 * MB, "0000000100000016000000B3"),
        ("0/100000", 1 * MB, "000000010000000000000001"),
        ("0/FFFFF", 1 * MB, "000000010000000000000000"),
        ("16/B374D848", 1 * MB, "000000010000001600000B37"),
        ("16/B374D848", 1 * GB, "000000010000001600000002"),
    ],
)
def test_containing(lsn: str, size: int, name: str) -> None:
    seg = SegmentName.containing(1, parse_lsn(lsn), size)
    assert seg.name == name
    assert seg.start_lsn <= parse_lsn(lsn) < seg.next().start_lsn


def test_containing_keeps_timeline() -> None:
    assert SegmentName.containing(7, parse_lsn("0/3000028")).name == "000000070000000000000003"


def test_segments_order_by_timeline_then_number() -> None:
    names = ["000000020000000000000001", "000000010000000100000000", "0000000100000000000000FF"]
    ordered = sorted(SegmentName.parse(n) for n in names)
    assert [s.name for s in ordered] == [
        "0000000100000000000000FF",
        "000000010000000100000000",
        "000000020000000000000001",
    ]


# --- LSNs ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("0/0", 0),
        ("16/B374D848", 0x16_B374_D848),
        ("16/b374d848", 0x16_B374_D848),
        ("0/1A2B3C8", 0x1A2B3C8),
        ("FFFFFFFF/FFFFFFFF", 2**64 - 1),
        ("  1/2  ", (1 << 32) | 2),
    ],
)
def test_parse_lsn(text: str, value: int) -> None:
    assert parse_lsn(text) == value


@pytest.mark.parametrize("value", [0, 1, 0x1A2B3C8, 0xFFFFFFFF, 1 << 32, 0x16_B374_D848, 2**64 - 1])
def test_format_parse_round_trip(value: int) -> None:
    text = format_lsn(value)
    assert "/" in text
    assert text == text.upper()
    assert parse_lsn(text) == value


@pytest.mark.parametrize("text", ["16/B374D848", "0/0", "FFFFFFFF/FFFFFFFF", "A/1"])
def test_parse_format_round_trip(text: str) -> None:
    assert parse_lsn(format_lsn(parse_lsn(text))) == parse_lsn(text)
    high, low = format_lsn(parse_lsn(text)).split("/")
    text_high, text_low = text.split("/")
    assert int(high, 16) == int(text_high, 16)
    assert int(low, 16) == int(text_low, 16)


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "16",
        "16/",
        "/B374D848",
        "16B374D848",
        "16-B374D848",
        "G/0",
        "0x16/0",
        "123456789/0",
        "0/123456789",
        "0/0/0",
        "-1/0",
        "1 /0",
    ],
)
def test_parse_lsn_refuses_bad_input(bad: str) -> None:
    with pytest.raises(ValueError, match="not an LSN"):
        parse_lsn(bad)


# --- classifying what archive_command is handed --------------------------------------------------


@pytest.mark.parametrize(
    ("filename", "kind"),
    [
        ("000000010000000000000001", WalKind.SEGMENT),
        ("0000000A00000016000000B3", WalKind.SEGMENT),
        ("000000010000000000000001.partial", WalKind.PARTIAL),
        ("000000010000000000000002.00000028.backup", WalKind.BACKUP),
        ("00000002.history", WalKind.HISTORY),
        ("0000000A.history", WalKind.HISTORY),
    ],
)
def test_wal_kind(filename: str, kind: WalKind) -> None:
    assert wal_kind(filename) is kind


@pytest.mark.parametrize(
    "junk",
    [
        "",
        "RECOVERYXLOG",
        "RECOVERYHISTORY",
        "archive_status",
        "00000001000000000000001",
        "0000000100000000000000010",
        "0000000100000000000000ff",
        "000000010000000000000001.gz",
        "000000010000000000000001.partial.gz",
        "000000010000000000000002.backup",
        "000000010000000000000002.0000028.backup",
        "00000002.history.tmp",
        "0000002.history",
        "00000002.HISTORY",
        ".000000010000000000000001",
        "../000000010000000000000001",
        "pg_wal/000000010000000000000001",
        "000000010000000000000001\n",
        "000000010000000000000001.partial\n",
        "000000010000000000000002.00000028.backup\n",
        "00000002.history\n",
    ],
)
def test_wal_kind_refuses_junk(junk: str) -> None:
    with pytest.raises(ValueError) as info:
        wal_kind(junk)
    message = str(info.value)
    assert repr(junk) in message
    assert "%p" in message


@pytest.mark.parametrize(
    ("filename", "folder"),
    [
        ("0000000100000016000000B3", "0000000100000016"),
        ("000000010000000000000001.partial", "0000000100000000"),
        ("000000010000000000000002.00000028.backup", "0000000100000000"),
        ("00000002.history", "history"),
    ],
)
def test_wal_directory(filename: str, folder: str) -> None:
    assert wal_directory(filename) == folder
