"""The local WAL-index cache: used when it knows the very segment, ignored when the segment differs,
and read again when an entry was waiting for the segment after it."""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from pytest import MonkeyPatch

from backend.archive import index
from backend.archive.index import ensure_indexes, index_key
from backend.archive.indexcache import IndexCache
from backend.archive.walfile import WalObject
from backend.catalog import WalColumns
from backend.config import ClusterConfig, Config, LocalConfig
from backend.repository.local import LocalRepository
from backend.walindex import SegmentIndex, WalEvent

SIZE = 16 << 20
# Two WAL folders: the cache keeps one row per folder.
NAMES = ["000000010000000000000001", "000000010000000000000002", "000000010000000100000000"]
NUMBERS = [1, 2, 256]
START = datetime(2026, 11, 25, 12, tzinfo=UTC)


def columns(sums: dict[str, str]) -> list[WalColumns]:
    names = sorted(sums)
    numbers = [NUMBERS[NAMES.index(n)] for n in names]
    return [WalColumns("local", 1, names, numbers, [sums[n] for n in names], [1] * len(names), [0.0] * len(names))]


def store_entry(repo: LocalRepository, name: str, *, tail: bool = True, events: list[WalEvent] | None = None) -> None:
    when = START + timedelta(minutes=NAMES.index(name))
    index = SegmentIndex(
        segment=name, first_commit=when, last_commit=when, commits=1, tail_complete=tail, events=events or []
    )
    repo.put(index_key(name), json.dumps(index.to_json()).encode())


def setup(tmp_path: Path) -> tuple[Config, LocalRepository, dict[str, str]]:
    cfg = Config(cluster=ClusterConfig(name="main"), local=LocalConfig(path=str(tmp_path)))
    return cfg, LocalRepository(tmp_path, "main"), {name: f"{i:064x}" for i, name in enumerate(NAMES)}


def test_cached_entries_serve_the_same_segment_only(tmp_path: Path) -> None:
    cfg, repo, sums = setup(tmp_path)
    point = WalEvent("restore_point", lsn=0x1000100, time=START, name="before", time_source="record", timeline=1)
    drop = WalEvent(
        "drop",
        lsn=0x1000200,
        time=START + timedelta(microseconds=123457),
        xid=901,
        relations=["public.loans"],
        oids=[16384, 16390],
        time_source="commit",
        timeline=1,
    )
    unknown = WalEvent("restore_point", lsn=0x1000300, time=None, name="when?", timeline=1)
    for name in NAMES:
        store_entry(repo, name, events=[point, drop, unknown] if name == NAMES[1] else None)

    first = ensure_indexes(cfg, [repo], columns(sums), SIZE)
    assert sorted(first) == NAMES
    shutil.rmtree(tmp_path / "main" / "walindex")  # from now on only the cache knows them

    again = ensure_indexes(cfg, [repo], columns(sums), SIZE)
    assert {n: i.last_commit for n, i in again.items()} == {n: i.last_commit for n, i in first.items()}
    assert again.commit_columns(NAMES) == first.commit_columns(NAMES)
    # Every field, to the microsecond; the timeline (not kept per event) is the segment's.
    assert again.events({}) == first.events({}) == [point, drop, unknown]

    other = {**sums, NAMES[1]: "f" * 64}  # another segment under the same name: not from the cache
    third = ensure_indexes(cfg, [repo], columns(other), SIZE)
    assert NAMES[1] not in third and NAMES[0] in third
    indexed, firsts, _ = third.commit_columns(NAMES)
    assert indexed == [True, False, True] and math.isnan(firsts[1])
    # It could not be read (no such WAL object, a listing gone stale): waiting, and remembered with
    # when to try again, so the next command does not.
    assert (third.pending, third.unreadable) == (1, 0)
    cache = IndexCache.open()
    assert cache is not None
    (failed,) = cache.failures(repo.location()).values()
    names, retries, _ = failed
    assert names == [NAMES[1]] and time.time() < retries[0] < math.inf
    cache.close()


def test_an_entry_waiting_for_the_next_segment_is_read_again_when_it_arrives(tmp_path: Path) -> None:
    cfg, repo, sums = setup(tmp_path)
    store_entry(repo, NAMES[0], tail=False)  # its last record runs into a segment not yet archived
    only_first = {NAMES[0]: sums[NAMES[0]]}
    assert not ensure_indexes(cfg, [repo], columns(only_first), SIZE)[NAMES[0]].tail_complete

    store_entry(repo, NAMES[0])  # the background indexer completed it once the next one came
    store_entry(repo, NAMES[1])
    both = {name: sums[name] for name in NAMES[:2]}
    assert ensure_indexes(cfg, [repo], columns(both), SIZE)[NAMES[0]].tail_complete


def test_segments_gone_from_a_folder_are_gone_from_its_entries(tmp_path: Path) -> None:
    cfg, repo, sums = setup(tmp_path)
    for name in NAMES:
        store_entry(repo, name)
    ensure_indexes(cfg, [repo], columns(sums), SIZE)
    expired = {name: sums[name] for name in NAMES[1:]}
    assert sorted(ensure_indexes(cfg, [repo], columns(expired), SIZE)) == NAMES[1:]
    cache = IndexCache.open()
    assert cache is not None
    assert {folder: entries[0] for folder, entries in cache.load(repo.location()).items()} == {
        NAMES[1][:16]: [NAMES[1]],
        NAMES[2][:16]: [NAMES[2]],
    }
    cache.close()


def test_a_budget_indexes_the_newest_first_and_counts_the_rest(tmp_path: Path, monkeypatch: MonkeyPatch) -> None:
    """An archive nobody indexed: the timeline answers within its budget, newest segments first."""
    cfg, repo, _ = setup(tmp_path)
    sums = {}
    for name in NAMES:
        data = name.encode()
        sums[name] = hashlib.sha256(data).hexdigest()
        repo.put(WalObject(name, sums[name], "none").key, data)
    tried: list[str] = []

    def index_segment(path: Path, pg_waldump: str) -> SegmentIndex:
        tried.append(path.name)
        when = START + timedelta(minutes=NAMES.index(path.name))
        return SegmentIndex(segment=path.name, first_commit=when, last_commit=when, commits=1, tail_complete=True)

    monkeypatch.setattr(index, "index_segment", index_segment)
    monkeypatch.setattr(index, "program", lambda cfg, name: name)
    nothing = ensure_indexes(cfg, [repo], columns(sums), SIZE, budget_s=0.0)
    assert tried == [] and nothing.pending == len(NAMES)
    assert nothing.commit_columns(NAMES)[0] == [False, False, False]

    everything = ensure_indexes(cfg, [repo], columns(sums), SIZE, budget_s=60.0)
    assert tried == NAMES[::-1] and everything.pending == 0
    assert everything.commit_columns(NAMES)[0] == [True, True, True]
    assert all(repo.exists(index_key(name)) for name in NAMES)  # for every host reading the repository
