"""WAL file names and LSN arithmetic, as PostgreSQL defines them (access/xlog_internal.h).

A segment name is TTTTTTTTXXXXXXXXYYYYYYYY: timeline, then the segment number split into a "log"
part (segment_no // segments_per_log) and a "seg" part, where segments_per_log = 4 GiB / segment size.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from enum import Enum

DEFAULT_SEGMENT_SIZE = 16 * 1024 * 1024

SEGMENT_RE = re.compile(r"^([0-9A-F]{8})([0-9A-F]{8})([0-9A-F]{8})\Z")
PARTIAL_RE = re.compile(r"^([0-9A-F]{24})\.partial\Z")
BACKUP_RE = re.compile(r"^([0-9A-F]{24})\.([0-9A-F]{8})\.backup\Z")
HISTORY_RE = re.compile(r"^([0-9A-F]{8})\.history\Z")
LSN_RE = re.compile(r"([0-9A-Fa-f]{1,8})/([0-9A-Fa-f]{1,8})")


class WalKind(Enum):
    SEGMENT = "segment"
    PARTIAL = "partial"
    BACKUP = "backup"
    HISTORY = "history"


@dataclass(frozen=True, order=True)
class SegmentName:
    """A WAL segment's position: its timeline and absolute segment number."""

    timeline: int
    number: int
    segment_size: int = DEFAULT_SEGMENT_SIZE

    @property
    def per_log(self) -> int:
        return 0x1_0000_0000 // self.segment_size

    @functools.cached_property
    def name(self) -> str:
        """Computed once per object: catalogs of a year's WAL ask for it hundreds of thousands of times."""
        log, seg = divmod(self.number, self.per_log)
        return f"{self.timeline:08X}{log:08X}{seg:08X}"

    @property
    def start_lsn(self) -> int:
        return self.number * self.segment_size

    def next(self) -> SegmentName:
        return SegmentName(self.timeline, self.number + 1, self.segment_size)

    def __str__(self) -> str:
        return self.name

    @classmethod
    def parse(cls, name: str, segment_size: int = DEFAULT_SEGMENT_SIZE) -> SegmentName:
        match = SEGMENT_RE.match(name)
        if not match:
            raise ValueError(f"not a WAL segment name: {name!r}")
        tli, log, seg = (int(g, 16) for g in match.groups())
        per_log = 0x1_0000_0000 // segment_size
        if seg >= per_log:
            raise ValueError(f"{name!r} is not a valid segment name for {segment_size}-byte segments")
        return cls(tli, log * per_log + seg, segment_size)

    @classmethod
    def containing(cls, timeline: int, lsn: int, segment_size: int = DEFAULT_SEGMENT_SIZE) -> SegmentName:
        return cls(timeline, lsn // segment_size, segment_size)


def wal_kind(filename: str) -> WalKind:
    """Classify a file PostgreSQL hands to archive_command; anything else is refused."""
    if SEGMENT_RE.match(filename):
        return WalKind.SEGMENT
    if PARTIAL_RE.match(filename):
        return WalKind.PARTIAL
    if BACKUP_RE.match(filename):
        return WalKind.BACKUP
    if HISTORY_RE.match(filename):
        return WalKind.HISTORY
    raise ValueError(
        f"{filename!r} is not a WAL file name (segment, .partial, .backup or .history): archive_command must pass %p"
    )


def wal_directory(filename: str) -> str:
    """The repository folder a WAL file lives in: one per timeline and 4 GiB of WAL, like pg_wal's names."""
    if HISTORY_RE.match(filename):
        return "history"
    return filename[:16]


def parse_lsn(text: str) -> int:
    """'16/B374D848' -> int; raises ValueError on anything else."""
    match = LSN_RE.fullmatch(text.strip())
    if not match:
        raise ValueError(f"not an LSN: {text!r} (expected the form 16/B374D848)")
    return (int(match.group(1), 16) << 32) | int(match.group(2), 16)


def format_lsn(lsn: int) -> str:
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:08X}"
