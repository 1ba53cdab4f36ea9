"""``pgdr backup`` while a real ``pgdr expire`` is mid-way: refused with one line naming the expire.

The expire is frozen (``PGDR_FAULT_STOP=repository-delete``) holding the repository lock, with its
plan made and the first removal about to happen, so "during" is exact, not a race.
"""

from __future__ import annotations

import json
import os
import signal

from tests.faults.test_killed_jobs import start_frozen
from tests.harness.cluster import Cluster


def test_backup_during_expire_is_refused_clearly_and_works_after(cluster: Cluster) -> None:
    old_segment = cluster.switch_wal()
    cluster.wait_archived(old_segment)  # older than the backup: the expire has it to remove
    kept = json.loads(cluster.pgdr("backup", "--json").stdout)["name"]

    expire = start_frozen(cluster, "repository-delete", "expire", "--json")
    try:
        refused = cluster.pgdr("backup", check=False)
        assert refused.returncode == 2
        (line,) = refused.stderr.strip().splitlines()
        assert f"cannot start base backup: expire (pid {expire.pid}," in line, line
        assert "holds the main repository lock" in line, line
        assert [b["name"] for b in json.loads(cluster.pgdr("list", "--json").stdout)["backups"]] == [kept]
    finally:
        os.kill(expire.pid, signal.SIGCONT)
    out, err = expire.communicate(timeout=120)
    assert expire.returncode == 0, err
    (local,) = json.loads(out)["repositories"]
    assert local["wal"]["first"] <= old_segment <= local["wal"]["last"], local  # the expire did its work

    taken = json.loads(cluster.pgdr("backup", "--json").stdout)["name"]
    assert [b["name"] for b in json.loads(cluster.pgdr("list", "--json").stdout)["backups"]] == [kept, taken]
