"""An incremental backup is only as good as its chain: verify checks every link in every repository,
rehearses the combined restore, and the planner refuses a chain with a link that has no intact copy."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from backend.errors import PgdrError
from backend.repository.local import LocalRepository
from backend.restore.copies import avoid_damaged_copies
from backend.verify.records import record_key
from tests.conftest import pg_bin
from tests.harness.cluster import Cluster, running_cluster


@pytest.fixture
def chained(shared_dir: Path, pgdr_for_server: Path) -> Iterator[tuple[Cluster, list[str]]]:
    """A PostgreSQL 18 cluster archiving into a local repository, with a full backup and two incrementals
    on it (the names, full first)."""
    with running_cluster(shared_dir, pgdr_for_server, pg_bin=pg_bin("18"), settings={"summarize_wal": "on"}) as c:
        c.write_config(c.base_config())
        c.start()
        c.sql("CREATE TABLE ledger (id int PRIMARY KEY, note text)")
        c.sql("INSERT INTO ledger SELECT g, 'full' FROM generate_series(1, 1000) g")
        names = [str(json.loads(c.pgdr("backup", "--json").stdout)["name"])]
        for step in ("first", "second"):
            c.sql("UPDATE ledger SET note = %s WHERE id %% 10 = 0", step)
            made = json.loads(c.pgdr("backup", "--json", "--incremental").stdout)
            assert made["parent"] == names[-1]
            names.append(str(made["name"]))
        c.wait_archived(c.switch_wal())
        yield c, names


def test_a_link_deleted_from_the_repository_breaks_the_chain_above_it(chained: tuple[Cluster, list[str]]) -> None:
    c, (full, middle, top) = chained
    shutil.rmtree(c.local_repo / "main" / "backups" / middle)

    verified = c.pgdr("verify", check=False)
    assert verified.returncode == 1, verified.stdout
    assert f"BAD    backup {top} (physical) in local:" in verified.stdout
    assert (
        f"local: chain broken: {middle} is missing in the local repository (expired or deleted): this backup "
        "cannot be restored from it"
    ) in verified.stdout
    assert f"ok     backup {full}" in verified.stdout
    record = json.loads((c.local_repo / "main" / "verify" / f"{top}.json").read_text())
    assert not record["copy_ok"] and [p["kind"] for p in record["copy_problems"]] == ["chain"]

    plan = json.loads(c.pgdr("restore", "--latest", "--dry-run", "--json").stdout)
    assert plan["chain"] == [full], plan
    named = c.pgdr("restore", "--latest", "--dry-run", "--backup", top, check=False)
    assert named.returncode != 0
    assert f"backup {top} cannot be restored" in named.stderr and middle in named.stderr, named.stderr


def test_deep_rehearses_the_combined_chain_and_a_corrupt_full_backup_breaks_every_incremental_above_it(
    chained: tuple[Cluster, list[str]],
) -> None:
    c, (full, middle, top) = chained
    deep = c.pgdr("verify", "--deep", top, check=False, timeout=600)
    assert deep.returncode == 0, deep.stdout + deep.stderr
    rehearsed = next(line for line in deep.stdout.splitlines() if line.startswith(f"  ok     backup {top} "))
    assert "rehearsal ok from local" in rehearsed, deep.stdout
    # Read with its chain, each link in its own line.
    assert f"ok     backup {full}" in deep.stdout and f"ok     backup {middle}" in deep.stdout

    tar = c.local_repo / "main" / "backups" / full / "base.tar.zst"
    data = bytearray(tar.read_bytes())
    data[len(data) // 2] ^= 0xFF
    tar.write_bytes(bytes(data))

    verified = c.pgdr("verify", check=False)
    assert verified.returncode == 1, verified.stdout
    assert f"CORRUPT local: backups/{full}/base.tar.zst" in verified.stdout
    for above in (middle, top):
        assert f"BAD    backup {above} (physical) in local:" in verified.stdout
    damaged = (
        f"local: chain broken: {full}, a backup it builds on, is damaged in the local repository "
        "(base.tar.zst: checksum): this backup cannot be restored from it"
    )
    assert verified.stdout.count(damaged) == 2, verified.stdout

    refused = c.pgdr("restore", "--latest", "--dry-run", "--backup", top, check=False)
    assert refused.returncode != 0, refused.stdout
    assert (
        f"backup {top} cannot be restored: {full}, the full backup its chain starts from, has no intact copy: "
        "verify found every copy corrupt (local on "
    ) in refused.stderr, refused.stderr
    assert "run `pgdr verify` again if a copy was repaired" in refused.stderr


def _chain_plan(tmp_path: Path, damaged: dict[str, list[str]]) -> tuple[Any, Any]:
    """A plan of incremental T on F (full), an older full O before them, all in local and s3 (local first), and
    what verify recorded: per backup, the repositories whose copy it found with a checksum mismatch."""
    found = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    older = SimpleNamespace(name="O", kind="physical", parent=None, stop_time=found - timedelta(days=2))
    full = SimpleNamespace(name="F", kind="physical", parent=None, stop_time=found - timedelta(days=1))
    top = SimpleNamespace(name="T", kind="physical", parent="F", stop_time=found)
    repos = []
    for repository in ("local", "s3"):
        repo = LocalRepository(tmp_path / repository, "main")
        repo.name = repository
        for name in ("O", "F", "T"):
            bad = repository in damaged.get(name, [])
            problems = [{"repository": repository, "object": "base.tar.zst", "kind": "checksum", "detail": "..."}]
            record = {"backup": name, "time": found.isoformat(), "ok": not bad, "copy_ok": not bad}
            repo.put(record_key(name), json.dumps({**record, "copy_problems": problems if bad else []}).encode())
        repos.append(repo)
    plan = SimpleNamespace(backup=top, chain=[full, top], backup_repository="local", wal=[], notes=[])
    entries = [SimpleNamespace(manifest=m, repositories=["local", "s3"]) for m in (older, full, top)]
    view = SimpleNamespace(
        repositories=repos, catalog=SimpleNamespace(backups=entries), timeline=SimpleNamespace(disowned={})
    )
    return plan, view


def test_the_plan_takes_every_backup_of_the_chain_from_a_sound_copy_or_refuses_the_chain(tmp_path: Path) -> None:
    # The full backup is damaged in local: s3 goes first, whose copies of both are sound.
    plan, view = _chain_plan(tmp_path / "one", {"F": ["local"]})
    avoid_damaged_copies(plan, view)
    assert plan.backup_repository == "s3"
    assert plan.notes == [
        "avoided the local copy of backup F: verify on 2024-05-01 12:00 UTC found it corrupt "
        "(base.tar.zst: sha256 mismatch); taking s3's"
    ]
    # No repository has both sound: the restore must read one damaged copy first, and the plan says which.
    plan, view = _chain_plan(tmp_path / "two", {"F": ["local"], "T": ["s3"]})
    avoid_damaged_copies(plan, view)
    assert plan.backup_repository == "local"
    (note,) = plan.notes
    assert note.startswith("the restore reads the local copy of backup F first, which verify found corrupt")
    assert note.endswith("before it takes s3's: no repository holds a sound copy of every backup of the chain")
    # The full backup is damaged everywhere: the chain cannot be combined, and O is what is left.
    plan, view = _chain_plan(tmp_path / "three", {"F": ["local", "s3"]})
    with pytest.raises(PgdrError) as refused:
        avoid_damaged_copies(plan, view)
    assert str(refused.value) == (
        "backup T cannot be restored: F, the full backup its chain starts from, has no intact copy: verify found "
        "every copy corrupt (local on 2024-05-01 12:00 UTC: base.tar.zst: sha256 mismatch; s3 on 2024-05-01 12:00 "
        "UTC: base.tar.zst: sha256 mismatch); restore an older backup instead (--backup O, a full one), or run "
        "`pgdr verify` again if a copy was repaired"
    )
