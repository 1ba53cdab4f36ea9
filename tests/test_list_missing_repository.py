"""`pgdr list` with the local repository's directory missing (an unmounted disk, a typo in [local] path).

It used to list an empty repository ("none yet"), the one thing it must not say when the backups may
well be where the directory should be. Now it names the directory and the fix, exits non-zero when
nothing can be listed, and lists the S3 repository (with the local one named) when there is one.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from tests.conftest import s3_settings
from tests.harness.cluster import Cluster, clean_env, pgdr_executable
from tests.harness.s3 import MotoEndpoint


def pgdr(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(pgdr_executable()), "--config", str(config), *args],
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=120,
        check=False,
    )


def test_list_names_the_missing_local_directory_and_fails(tmp_path: Path) -> None:
    missing = tmp_path / "mnt" / "backups"
    config = tmp_path / "pgdr.toml"
    config.write_text(f'[cluster]\nname = "main"\n\n[local]\npath = "{missing}"\n')
    for args in (["list"], ["list", "--json"], ["list", "--repo", "local"], ["restore", "--list"]):
        result = pgdr(config, *args)
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        assert result.stdout == "", (args, result.stdout)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, result.stderr
        assert f"the local repository's directory {missing} does not exist" in lines[0], lines[0]
        assert "mkdir -p" in lines[0] and "[local] path" in lines[0], lines[0]
    assert not missing.exists()  # listing never creates it

    # A file where the directory should be fails the reading, in one line naming it.
    missing.parent.mkdir()
    missing.write_text("")
    result = pgdr(config, "list")
    assert result.returncode == 2 and len(result.stderr.splitlines()) == 1, result.stderr
    assert str(missing) in result.stderr and "Not a directory" in result.stderr, result.stderr

    # An existing directory nothing was stored in yet is empty, not missing.
    missing.unlink()
    missing.mkdir()
    result = pgdr(config, "list")
    assert result.returncode == 0 and "none yet: run `pgdr backup`" in result.stdout, result.stderr


def test_list_shows_s3_and_names_the_missing_local_directory(
    cluster_s3: Cluster, moto: MotoEndpoint, bucket: str, tmp_path: Path
) -> None:
    cluster_s3.sql("CREATE TABLE t (x int)")
    name = json.loads(cluster_s3.pgdr("backup", "--logical", "--json").stdout)["name"]
    missing = tmp_path / "unmounted"
    # A config of its own: the server's archive_command reads the cluster's, and would create the folder.
    config = tmp_path / "pgdr.toml"
    config.write_text(
        cluster_s3.base_config(local=False, s3=s3_settings(moto, bucket)) + f'\n[local]\npath = "{missing}"\n'
    )
    config.chmod(0o600)

    listed = pgdr(config, "list", "--json")
    assert listed.returncode == 0, listed.stderr
    catalog = json.loads(listed.stdout)
    assert [b["name"] for b in catalog["backups"]] == [name]
    assert catalog["backups"][0]["repositories"] == ["s3"]
    assert f"the local repository's directory {missing} does not exist" in catalog["unreadable_repositories"]["local"]

    text = pgdr(config, "list")
    assert text.returncode == 0 and name in text.stdout, text.stderr

    only_local = pgdr(config, "list", "--repo", "local")
    assert only_local.returncode == 2 and str(missing) in only_local.stderr, only_local.stderr
    assert not missing.exists()
