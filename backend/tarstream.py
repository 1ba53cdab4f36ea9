"""Parse a tar stream as it flows past, fed in chunks of any size, without buffering the archive.

pgdr reads pg_basebackup's tar this way twice: while a backup streams (to pick out the
``backup_manifest`` member) and while a restore unpacks it. Python's tarfile parses the headers
(``TarInfo.frombuf``: ustar prefixes, base-256 sizes, checksums) and pgdr uses it for exactly that;
its stream mode, though, moves member data through 10 KB reads and bytes joins, which made the
interpreter, not the disk, the bottleneck of a restore. Here member data passes to the consumer as
slices of whatever chunk the caller read, never copied.
"""

from __future__ import annotations

import tarfile
from collections.abc import Callable
from typing import Protocol

BLOCK = tarfile.BLOCKSIZE
_ZERO_BLOCK = bytes(BLOCK)


class MemberSink(Protocol):
    """Receives one member's data (without the tar padding), then ``close()``, even when it is empty."""

    def write(self, data: memoryview) -> None: ...

    def close(self) -> None: ...


Opener = Callable[[tarfile.TarInfo], "MemberSink | None"]


class TarStream:
    """Calls ``open_member(info)`` at each header; its sink (or nobody, for None) gets the data.

    ``ended`` turns true at the first all-zero header block, the end-of-archive marker; what follows
    is ignored. A damaged header raises tarfile's ``HeaderError``.
    """

    def __init__(self, open_member: Opener) -> None:
        self._open = open_member
        self._pending = bytearray()  # bytes of an incomplete header
        self._data_left = 0  # data bytes of the current member still to come
        self._pad_left = 0  # padding after them
        self._sink: MemberSink | None = None
        self.ended = False

    def feed(self, chunk: bytes | bytearray | memoryview) -> None:
        view = memoryview(chunk)
        while view and not self.ended:
            if self._data_left:
                take = min(self._data_left, len(view))
                if self._sink is not None:
                    self._sink.write(view[:take])
                self._data_left -= take
                view = view[take:]
                if not self._data_left:
                    self._close_member()
            elif self._pad_left:
                take = min(self._pad_left, len(view))
                self._pad_left -= take
                view = view[take:]
            elif not self._pending and len(view) >= BLOCK:
                self._header(bytes(view[:BLOCK]))
                view = view[BLOCK:]
            else:
                need = BLOCK - len(self._pending)
                self._pending += view[:need]
                view = view[need:]
                if len(self._pending) == BLOCK:
                    block = bytes(self._pending)
                    self._pending.clear()
                    self._header(block)

    def _header(self, block: bytes) -> None:
        if block == _ZERO_BLOCK:
            self.ended = True
            return
        info = tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
        self._data_left = info.size
        self._pad_left = -info.size % BLOCK
        self._sink = self._open(info)
        if not info.size:
            self._close_member()

    def _close_member(self) -> None:
        sink, self._sink = self._sink, None
        if sink is not None:
            sink.close()
