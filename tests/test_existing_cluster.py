"""The README's recipe for an existing cluster, run as its owner with no root: init, archive_command, check, backup."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness.cluster import Cluster, running_cluster


@pytest.fixture
def unarchived(shared_dir: Path, pgdr_for_server: Path) -> Iterator[Cluster]:
    """A running cluster nobody set archiving up for yet."""
    with running_cluster(shared_dir, pgdr_for_server, settings={"archive_mode": "off"}) as c:
        c.start()
        yield c


def test_init_prints_the_steps_left_and_following_them_as_the_owner_archives_and_backs_up(unarchived: Cluster) -> None:
    c = unarchived
    config = c.root / "pgdr.toml"
    repo = c.root / "backups"
    init = c.pgdr_as_owner(
        "--config", str(config), "init", "--data-dir", str(c.data_dir), "--host", str(c.socket_dir),
        "--port", str(c.port), "--local-path", str(repo), "--bin-dir", str(c.pg_bin),
    ).stdout  # fmt: skip
    assert "data_dir" not in init and "not found" not in init, init  # given by the flags
    (archive_command,) = re.findall(r"archive_command = '(.*)' \(postgresql.conf", init)
    assert "archive_timeout = 60" in init
    assert archive_command.startswith(str(c.pgdr_for_server)) and f"--config {config} wal-push %p" in archive_command

    c.sql("ALTER SYSTEM SET archive_mode = on")
    c.sql("ALTER SYSTEM SET archive_timeout = 60")
    c.sql(f"ALTER SYSTEM SET archive_command = '{archive_command}'")
    c.stop()
    c.start()
    assert f"create the local repository {repo}" in init
    repo.mkdir(mode=0o700)
    shutil.chown(repo, c.data_dir.owner(), c.data_dir.group())
    checked = c.pgdr_as_owner("--config", str(config), "check")
    assert "FAIL" not in checked.stdout, checked.stdout
    taken = json.loads(c.pgdr_as_owner("--config", str(config), "backup", "--json").stdout)
    listed = json.loads(c.pgdr_as_owner("--config", str(config), "list", "--json").stdout)
    assert [b["name"] for b in listed["backups"]] == [taken["name"]] and listed["wal"], listed
