"""Pick members out of a tar stream as it flows past, without buffering the archive.

pg_basebackup writing to stdout injects its ``backup_manifest`` (every file's checksum, the WAL
range) as a tar member; pgdr stores the stream compressed and needs that member's content.
"""

from __future__ import annotations

import tarfile

BLOCK = tarfile.BLOCKSIZE


class TarScanner:
    """Feed it the stream in chunks of any size; ``members`` counts regular files seen."""

    def __init__(self, wanted: set[str]) -> None:
        self._wanted = wanted
        self._pending = bytearray()  # bytes of an incomplete header
        self._skip = 0  # data bytes (incl. padding) still to pass over
        self._capture: tuple[str, int] | None = None
        self._captured = bytearray()
        self.found: dict[str, bytes] = {}
        self.members = 0
        self.ended = False

    def feed(self, chunk: bytes | memoryview) -> None:
        view = memoryview(chunk)
        while view and not self.ended:
            if self._skip:
                take = min(self._skip, len(view))
                if self._capture is not None:
                    name, remaining = self._capture
                    keep = min(remaining, take)
                    self._captured += view[:keep]
                    self._capture = (name, remaining - keep)
                self._skip -= take
                view = view[take:]
                if not self._skip and self._capture is not None:
                    self.found[self._capture[0]] = bytes(self._captured)
                    self._capture = None
                    self._captured = bytearray()
                continue
            need = BLOCK - len(self._pending)
            self._pending += view[:need]
            view = view[need:]
            if len(self._pending) == BLOCK:
                self._header(bytes(self._pending))
                self._pending.clear()

    def _header(self, block: bytes) -> None:
        if block == b"\0" * BLOCK:
            self.ended = True
            return
        info = tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
        if info.isreg():
            self.members += 1
        padded = (info.size + BLOCK - 1) // BLOCK * BLOCK
        self._skip = padded
        name = info.name.removeprefix("./")
        if name in self._wanted and info.size:
            self._capture = (name, info.size)
        elif name in self._wanted:
            self.found[name] = b""
