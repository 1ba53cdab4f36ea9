"""The audit log notices config changes: which keys, when, who noticed; never a secret's value."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from tests.harness.cluster import pgdr_executable

SECRET = "token-value-never-logged"


def write(path: Path, retention: int, token: str) -> None:
    path.write_text(
        f'[cluster]\nname = "main"\n\n[local]\npath = "{path.parent}/repo"\nretention_days = {retention}\n\n'
        f'[telegram]\nbot_token = "{token}"\nchat_id = "1"\n'
    )
    path.chmod(0o600)
    (path.parent / "repo").mkdir(exist_ok=True)


def entries(state: Path) -> list[dict[str, object]]:
    log = state / "audit.log"
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def test_config_changes_are_audited_by_key_without_values(tmp_path: Path) -> None:
    config, state = tmp_path / "pgdr.toml", tmp_path / "state"
    env = {**os.environ, "PGDR_STATE_DIR": str(state)}

    def pgdr(*args: str) -> None:
        subprocess.run(
            [str(pgdr_executable()), "--config", str(config), *args], env=env, check=True, capture_output=True
        )

    write(config, 7, SECRET)
    pgdr("config")
    pgdr("config")
    assert [e["action"] for e in entries(state)] == ["config first seen"], "an unchanged config adds nothing"

    write(config, 14, SECRET + "-rotated")
    pgdr("list")
    last = entries(state)[-1]
    assert last["action"] == "config change" and last["source"] == str(config)
    assert last["changed"] == ["local.retention_days", "telegram.bot_token"]
    assert "file_modified" in last and last["user"]
    assert SECRET not in (state / "audit.log").read_text() + (state / "config-seen.json").read_text()
    assert (state / "config-seen.json").stat().st_mode & 0o077 == 0


def test_the_audit_switch_must_be_a_boolean(tmp_path: Path) -> None:
    config = tmp_path / "pgdr.toml"
    config.write_text(
        f'[cluster]\nname = "main"\n[local]\npath = "{tmp_path}"\n[audit]\ncopy_to_repositories = "yes"\n'
    )
    result = subprocess.run(
        [str(pgdr_executable()), "--config", str(config), "list"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"pgdr: error: audit.copy_to_repositories in {config} must be true or false (got 'yes')"
    )


def test_entries_are_copied_to_the_repositories_and_read_back(tmp_path: Path) -> None:
    config, state = tmp_path / "pgdr.toml", tmp_path / "state"
    key_file = tmp_path / "local.key"
    key_file.write_text(os.urandom(32).hex())
    key_file.chmod(0o600)
    config.write_text(
        f'[cluster]\nname = "main"\n\n[local]\npath = "{tmp_path}/repo"\nencryption = "aes-256-gcm"\n'
        f'encryption_key_file = "{key_file}"\n\n[audit]\ncopy_to_repositories = true\n'
    )
    (tmp_path / "repo").mkdir()
    env = {**os.environ, "PGDR_STATE_DIR": str(state)}

    def pgdr(*args: str) -> str:
        return subprocess.run(
            [str(pgdr_executable()), "--config", str(config), *args],
            env=env,
            check=True,
            capture_output=True,
            text=True,
        ).stdout

    pgdr("expire")
    stored = sorted((tmp_path / "repo" / "main" / "audit").iterdir())
    assert stored[-2].name.endswith("-expire-started.json") and stored[-1].name.endswith("-expire-ok.json")
    assert all(p.read_bytes().startswith(b"PGDRENC") for p in stored), "encrypted like every other object"
    copies = [json.loads(line) for line in pgdr("audit", "--repo", "local", "--json").splitlines()]
    here = [json.loads(line) for line in pgdr("audit", "--json").splitlines()]
    assert copies == here[-len(copies) :] and [c["action"] for c in copies][-2:] == ["expire", "expire"]
    assert "expire: ok" in pgdr("audit").splitlines()[-1]
