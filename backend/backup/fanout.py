"""Write one stream into several repositories at once, with a checksum of what is stored.

Objects are all-or-nothing in every repository: if the stream fails or is cancelled, every
repository's writer is aborted and none of them shows the object.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator, Sequence

from backend.repository import ObjectWriter, Repository


class FanOut:
    """A writable sink (what zstd's stream_writer writes into) that tees to several writers."""

    def __init__(self, writers: Sequence[ObjectWriter]) -> None:
        self._writers = writers
        self._hash = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes | memoryview, /) -> int:
        self._hash.update(data)
        self.size += len(data)
        for writer in self._writers:
            writer.write(bytes(data) if isinstance(data, memoryview) else data)
        return len(data)

    def flush(self) -> None:
        """zstd's stream_writer flushes its sink; the repository writers flush on commit."""

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest()


@contextlib.contextmanager
def fan_out(repos: Sequence[Repository], key: str) -> Iterator[FanOut]:
    with contextlib.ExitStack() as stack:
        writers = [stack.enter_context(repo.writer(key)) for repo in repos]
        yield FanOut(writers)
