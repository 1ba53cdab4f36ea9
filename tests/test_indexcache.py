"""The local WAL-index cache: used when it knows the very segment, ignored when the segment differs."""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime
from pathlib import Path

from backend.archive.index import ensure_indexes, index_key
from backend.archive.indexcache import IndexCache
from backend.config import ClusterConfig, Config, LocalConfig
from backend.repository.local import LocalRepository
from backend.walindex import SegmentIndex

NAMES = ["000000010000000000000001", "000000010000000000000002", "000000010000000000000003"]


def test_cached_entries_serve_the_same_segment_only(tmp_path: Path) -> None:
    cfg = Config(cluster=ClusterConfig(name="main"), local=LocalConfig(path=str(tmp_path)))
    repo = LocalRepository(tmp_path, "main")
    for i, name in enumerate(NAMES):
        when = datetime(2026, 11, 25, 12, i, tzinfo=UTC)
        index = SegmentIndex(segment=name, first_commit=when, last_commit=when, commits=1, tail_complete=True)
        repo.put(index_key(name), json.dumps(index.to_json()).encode())
    holders = {name: ["local"] for name in NAMES}
    sums = {name: f"{i:064x}" for i, name in enumerate(NAMES)}

    first = ensure_indexes(cfg, [repo], holders, 16 << 20, checksums=sums)
    assert sorted(first) == NAMES
    shutil.rmtree(tmp_path / "main" / "walindex")  # from now on only the cache knows them

    again = ensure_indexes(cfg, [repo], holders, 16 << 20, checksums=sums)
    assert {n: i.last_commit for n, i in again.items()} == {n: i.last_commit for n, i in first.items()}

    other = {**sums, NAMES[1]: "f" * 64}  # another segment under the same name: not from the cache
    third = ensure_indexes(cfg, [repo], holders, 16 << 20, checksums=other)
    assert NAMES[1] not in third and NAMES[0] in third
    # It could not be indexed (no such WAL object): remembered, so the next command does not retry it.
    cache = IndexCache()
    assert cache.recently_failed(repo.location(), within=60) == {NAMES[1]: "f" * 64}
    cache.close()
