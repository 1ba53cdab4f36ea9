"""Garbage in: every command fed random arguments, damaged manifests, odd paths. Always one clear
line and a non-zero exit, never a traceback, never a change."""

from __future__ import annotations

import contextlib
import io
import json
import random
import shutil
from pathlib import Path

from pgdr_tui.cli import main
from tests.harness.cluster import Cluster, give_to_server_user

COMMANDS = ["init", "wal-push", "wal-fetch", "wal-upload", "backup", "list", "check", "timeline", "restore",
            "verify", "expire", "s3-lifecycle", "status", "config", "audit", "decrypt"]
WORDS = ["--json", "--repo", "local", "s3", "ftp", "--latest", "--timestamp", "2024-13-45 25:61", "--xid", "-5",
         "--lsn", "zz/zz", "--name", "", "--backup", "19700101T000000Z", "--dry-run", "--deep", "--tz", "Nowhere/X",
         "--target-timeline", "banana", "--target-action", "explode", "--port", "99999999", "--target-dir",
         "/proc/nope", "000000010000000000000001", "../../etc/passwd", "\u00fcml\u00e4ut", "x" * 300, "%p", "--logical",
         "--from-s3", "s3://", "--events", "--timeout", "-1", "--print", "--force", "--cluster", "a/b",
         "--file", "-o", "-"]


def run(args: list[str]) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        try:
            code = main(args)
        except SystemExit as exc:  # argparse's own usage errors
            code = exc.code if isinstance(exc.code, int) else 2
    return code, err.getvalue()


def test_random_arguments_never_crash(tmp_path: Path) -> None:
    config = tmp_path / "pgdr.toml"
    base = f'[cluster]\nname = "main"\n[postgres]\nhost = "{tmp_path}"\nport = 1\n[local]\npath = "{tmp_path}/repo"\n'
    rng = random.Random(20261125)
    for _ in range(250):
        config.write_text(base)
        args = ["--config", str(config), rng.choice(COMMANDS), *rng.sample(WORDS, rng.randint(0, 4))]
        code, err = run(args)
        assert "Traceback" not in err, (args, err)
        assert code in (0, 1, 2, 3), (args, code, err)
        if code not in (0, 1) and "usage:" not in err:
            assert len(err.strip().splitlines()) == 1 and err.startswith("pgdr"), (args, err)


def test_damaged_manifest_is_not_a_backup(cluster: Cluster) -> None:
    cluster.pgdr("backup")
    name = json.loads(cluster.pgdr("list", "--json").stdout)["backups"][0]["name"]
    manifest = cluster.local_repo / "main" / "backups" / name / "manifest.json"
    data = json.loads(manifest.read_text())
    data["objects"][0]["size"] = "lots"
    data["timeline"] = "one"
    manifest.write_text(json.dumps(data))
    assert json.loads(cluster.pgdr("list", "--json").stdout)["backups"] == []
    refused = cluster.pgdr("restore", "--latest", "--dry-run", check=False)
    assert refused.returncode == 2 and len(refused.stderr.strip().splitlines()) == 1


def test_paths_with_spaces_and_unicode(cluster: Cluster) -> None:
    odd = cluster.root / "backups of Zoë's cluster"
    odd.mkdir()
    give_to_server_user(odd)
    config = cluster.root / "pgdr config ü.toml"
    shutil.copy(cluster.config_path, config)
    cluster.config_path.unlink()
    text = cluster.base_config(local=False) + f'\n[local]\npath = "{odd}"\n'
    config.write_text(text)
    config.chmod(0o600)
    give_to_server_user(config)
    cluster.config_path.symlink_to(config)  # the server's archive_command keeps its path; both work
    cluster.wait_archived(cluster.switch_wal())
    cluster.pgdr("backup")
    listing = json.loads(cluster.pgdr("list", "--json").stdout)
    assert listing["backups"] and listing["wal"]
    assert (odd / "main" / "repo.json").is_file()
    assert "Dry run" in cluster.pgdr("restore", "--latest", "--dry-run").stdout
