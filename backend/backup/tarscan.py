"""Pick members out of a tar stream as it flows past, without buffering the archive.

pg_basebackup writing to stdout injects its ``backup_manifest`` (every file's checksum, the WAL
range) as a tar member; pgdr stores the stream compressed and needs that member's content.
"""

from __future__ import annotations

import tarfile

from backend.tarstream import MemberSink, TarStream


class _Capture:
    def __init__(self, found: dict[str, bytes], name: str) -> None:
        self._found = found
        self._name = name
        self._data = bytearray()

    def write(self, data: memoryview) -> None:
        self._data += data

    def close(self) -> None:
        self._found[self._name] = bytes(self._data)


class TarScanner:
    """Feed it the stream in chunks of any size; ``members`` counts regular files seen."""

    def __init__(self, wanted: set[str]) -> None:
        self._wanted = wanted
        self._stream = TarStream(self._open)
        self.found: dict[str, bytes] = {}
        self.members = 0

    @property
    def ended(self) -> bool:
        return self._stream.ended

    def feed(self, chunk: bytes | memoryview) -> None:
        self._stream.feed(chunk)

    def _open(self, info: tarfile.TarInfo) -> MemberSink | None:
        if info.isreg():
            self.members += 1
        name = info.name.removeprefix("./")
        return _Capture(self.found, name) if name in self._wanted else None
