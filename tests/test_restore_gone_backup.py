"""A restore whose backup was removed after the plan was made stops before it touches anything.

The catalog a plan comes from can be older than the repository (another host's expire; the S3
listing cache trusts a listing for up to an hour): the restore checks the backup is still whole first,
and says so in one line, with the data directory and the server left as they were.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from backend import listcache
from backend.catalog import read_catalog, recovery_timeline
from backend.config import ClusterConfig, Config, LocalConfig
from backend.errors import PgdrError
from backend.recovery import RecoveryView, perform_restore
from backend.repository.local import LocalRepository
from tests.harness.plans import immediate_plan
from tests.test_listcache import add_backup


def test_a_restore_of_a_backup_gone_since_planning_changes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = Config(cluster=ClusterConfig(name="main"), local=LocalConfig(path=str(tmp_path / "repo")))
    repo = LocalRepository(tmp_path / "repo", "main")
    name = add_backup(repo, 0)
    catalog = read_catalog([repo])
    view = RecoveryView(catalog, recovery_timeline(catalog), [repo], [])
    data_dir = tmp_path / "data"
    safety = tmp_path / "data.before-restore"
    data_dir.mkdir()
    (data_dir / "PG_VERSION").write_text("15\n")
    plan = immediate_plan(catalog.backups[0].manifest, data_dir, in_place=True, safety_copy=safety, space_free=1 << 30)
    told: list[str] = []
    monkeypatch.setattr(listcache, "invalidate", told.append)

    repo.delete([f"backups/{name}/base.tar.zst"])  # expired elsewhere, half-way
    with pytest.raises(PgdrError, match=f"backup {name} is no longer complete in any repository"):
        perform_restore(cfg, view, plan)
    assert (data_dir / "PG_VERSION").read_text() == "15\n"
    assert not safety.exists()
    assert told == [repo.location()]
