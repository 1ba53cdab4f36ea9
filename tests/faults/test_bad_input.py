"""Garbage in: every command fed random arguments, damaged manifests, odd paths. Always one clear
line and a non-zero exit, never a traceback, never a change."""

from __future__ import annotations

import contextlib
import io
import json
import os
import random
import shutil
import subprocess
from pathlib import Path

from pgdr_tui.cli import main
from tests.harness.cluster import Cluster, give_to_server_user, server_user, wait_for

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


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode not in (0, None), result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pgdr: error: "), result.stderr
    return lines[0]


#: Ways repo.json gets damaged: cut short, another JSON value, fields that are not numbers, numbers no
#: cluster has, bytes that are not text.
DAMAGED_IDENTITIES = [
    b'{"system_ident',
    b"[1]",
    b'{"system_identifier": "x", "wal_segment_size": 16777216}',
    b'{"system_identifier": "1", "wal_segment_size": 5}',
    b"\xff\xfe\x00",
]


def test_damaged_identity_is_one_line_and_archiving_waits(cluster: Cluster) -> None:
    """repo.json tells this cluster's repository from another's: damaged, every command refuses in one line
    naming it (archive_command too: PostgreSQL keeps the segment and retries), and removing it as the line
    says lets the next wal-push write it again."""
    cluster.pgdr("backup")
    identity = cluster.local_repo / "main" / "repo.json"
    for damage in DAMAGED_IDENTITIES:
        identity.write_bytes(damage)
        line = one_line(cluster.pgdr("list", check=False))
        assert f"{identity} is damaged" in line and "remove it" in line, damage
    for args in (["backup"], ["timeline"], ["restore", "--latest", "--dry-run"], ["expire", "--dry-run"]):
        assert f"{identity} is damaged" in one_line(cluster.pgdr(*args, check=False)), args
    verified = cluster.pgdr("verify", check=False)  # a report: the damage is one of its findings
    assert verified.returncode == 1 and verified.stderr == ""
    assert f"{identity} is damaged" in verified.stdout
    checked = cluster.pgdr("check", "--timeout", "5", check=False)
    assert checked.returncode == 1 and checked.stderr == ""
    failed = [line for line in checked.stdout.splitlines() if line.startswith("[FAIL] local repository: ")]
    assert len(failed) == 1 and f"{identity} is damaged" in failed[0], checked.stdout

    (failed_before,) = cluster.sql("SELECT failed_count FROM pg_stat_archiver")[0]
    (segment,) = cluster.write_wal(1)
    wait_for(
        lambda: cluster.sql("SELECT failed_count FROM pg_stat_archiver")[0][0] > failed_before, 60, "a failed push"
    )
    log = cluster.log_path.read_text()
    assert f"pgdr: error: {identity} is damaged" in log and "Traceback" not in log

    identity.unlink()
    cluster.wait_archived(segment)
    assert json.loads(identity.read_text())["wal_segment_size"] == 16 << 20


def test_backup_without_repository_access(cluster: Cluster) -> None:
    """Run as a user the repository does not let in: one line naming the path and the user."""
    repo = cluster.local_repo
    owner = repo.stat()
    os.chown(repo, 0, 0)
    repo.chmod(0o700)
    try:
        line = one_line(cluster.pgdr_as_owner("backup", check=False))
    finally:
        os.chown(repo, owner.st_uid, owner.st_gid)
        repo.chmod(owner.st_mode & 0o7777)
    assert str(repo) in line and "Permission denied" in line and f"user {server_user().pw_name}" in line


def test_check_names_a_wrong_data_dir(cluster: Cluster) -> None:
    def data_dir_line(data_dir: Path) -> str:
        text = cluster.base_config().replace(f'data_dir = "{cluster.data_dir}"', f'data_dir = "{data_dir}"')
        cluster.write_config(text)
        result = cluster.pgdr("check", "--timeout", "20", check=False)
        assert result.stderr == "", result.stderr
        (line,) = [line for line in result.stdout.splitlines() if "postgres.data_dir" in line]
        return line

    assert data_dir_line(cluster.data_dir).startswith("[ok  ] ")
    for wrong, words in ((cluster.root / "nope", "does not exist"), (cluster.root, "holds no PostgreSQL cluster")):
        line = data_dir_line(wrong)
        assert line.startswith(f"[FAIL] postgres.data_dir {wrong} {words}") and "SHOW data_directory" in line
