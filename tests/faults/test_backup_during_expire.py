"""``pgdr backup`` while ``pgdr expire`` holds the repository: refused with one line naming the holder."""

from __future__ import annotations

import json

from backend.config import load_config
from backend.locks import job_lock
from tests.harness.cluster import Cluster


def test_backup_during_expire_is_refused_clearly_and_works_after(cluster: Cluster) -> None:
    cfg = load_config(cluster.config_path)
    with job_lock(cfg, "expire"):  # what a running `pgdr expire` holds
        refused = cluster.pgdr("backup", check=False)
        assert refused.returncode == 2
        (line,) = refused.stderr.strip().splitlines()
        assert "cannot start base backup: expire (pid" in line and "holds the main repository lock" in line
        assert json.loads(cluster.pgdr("list", "--json").stdout)["backups"] == []
    taken = json.loads(cluster.pgdr("backup", "--json").stdout)
    assert [b["name"] for b in json.loads(cluster.pgdr("list", "--json").stdout)["backups"]] == [taken["name"]]
