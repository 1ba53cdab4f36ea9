"""A cluster of thousands of files, backed up, rehearsed and restored as its owner under a small
open-files limit: a third of such restores once failed with "Too many open files", and verify --deep
then called the backup BAD."""

from __future__ import annotations

import json
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from backend import limits
from tests.harness.cluster import Cluster

TABLES = 800  # each a heap, its primary key, a toast table and the toast table's index: 3,200 files

MAKE_TABLES = f"""
DO $$
BEGIN
    FOR i IN 1..{TABLES} LOOP
        EXECUTE format('CREATE TABLE many_%s (id int PRIMARY KEY, note text)', i);
        EXECUTE format('INSERT INTO many_%s VALUES (%s, repeat(''x'', %s))', i, i, i);
    END LOOP;
END $$
"""

#: The sum of every table's id, read table by table: every relation file is there and readable.
SUM_OF_IDS = """
SELECT sum((xpath('/row/s/text()', query_to_xml(format('SELECT sum(id) AS s FROM %I', relname), false, true, '')))[1]
           ::text::bigint)
FROM pg_class WHERE relname LIKE 'many\\_%' AND relkind = 'r'
"""


def files_under(folder: Path) -> int:
    return sum(1 for p in folder.rglob("*") if p.is_file())


def test_thousands_of_files_back_up_rehearse_and_restore_under_256_open_files(cluster: Cluster) -> None:
    before = files_under(cluster.data_dir)
    cluster.sql(MAKE_TABLES)
    assert files_under(cluster.data_dir) - before >= 3000
    expected = TABLES * (TABLES + 1) // 2
    assert cluster.sql(SUM_OF_IDS)[0][0] == expected

    name = json.loads(cluster.pgdr_as_owner("backup", "--json", nofile=256, hard=True).stdout)["name"]
    deep = cluster.pgdr_as_owner("verify", "--deep", "--json", nofile=256, hard=True, check=False, timeout=600)
    report = json.loads(deep.stdout)
    assert deep.returncode == 0, json.dumps(report, indent=2)
    (result,) = report["backups"]
    assert result["name"] == name and result["level"] == "deep" and result["rehearsal"]["ok"]

    restored = cluster.pgdr_as_owner("restore", "--latest", "--yes", nofile=256, hard=True, timeout=600)
    assert "Restore finished" in restored.stdout, restored.stdout
    assert cluster.sql("SELECT timeline_id FROM pg_control_checkpoint()")[0][0] == 2, "restored, recovered, promoted"
    assert cluster.sql(SUM_OF_IDS)[0][0] == expected


#: In a child with a soft limit of 64: what main() leaves it at, for a command and for wal-push.
LIMIT_AFTER_MAIN = """
import resource, sys
from pgdr_tui.cli import main
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (64, hard))
try:
    main(sys.argv[1:])
except SystemExit:
    pass
print(resource.getrlimit(resource.RLIMIT_NOFILE)[0], file=sys.stderr)
"""


@pytest.mark.parametrize(("argv", "raised"), [(["--help"], True), (["wal-push", "/nonexistent"], False)])
def test_pgdr_raises_its_soft_limit_to_the_hard_limit_except_on_the_wal_hot_path(
    tmp_path: Path, argv: list[str], raised: bool
) -> None:
    child = subprocess.run(
        [sys.executable, "-c", LIMIT_AFTER_MAIN, "--config", str(tmp_path / "none.toml"), *argv],
        cwd=Path(__file__).parent.parent,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    soft = int(child.stderr.strip().splitlines()[-1])
    assert soft == (resource.getrlimit(resource.RLIMIT_NOFILE)[1] if raised else 64), child.stderr


def test_an_unlimited_hard_limit_is_capped_and_a_refusal_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[tuple[int, int]] = []

    def setrlimit(which: int, limit: tuple[int, int]) -> None:
        asked.append(limit)
        raise ValueError("not allowed")

    monkeypatch.setattr(resource, "getrlimit", lambda which: (1024, resource.RLIM_INFINITY))
    monkeypatch.setattr(resource, "setrlimit", setrlimit)
    limits.raise_open_files_limit()
    nr_open = int(Path("/proc/sys/fs/nr_open").read_text())
    assert asked == [(min(nr_open, limits.UNLIMITED_CAP), resource.RLIM_INFINITY)]
