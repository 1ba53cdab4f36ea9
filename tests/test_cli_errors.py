"""Every bad input is one clear line on stderr and a non-zero exit, with no secret in it."""

from __future__ import annotations

import importlib.metadata
import subprocess
from pathlib import Path

import pytest

from tests.conftest import s3_settings
from tests.harness.cluster import Cluster, clean_env, pgdr_executable
from tests.harness.s3 import MotoEndpoint

SECRET = "s3cr3t-never-printed"


def pgdr(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(pgdr_executable()), "--config", str(config), *args],
        capture_output=True,
        text=True,
        env=clean_env(),
        check=False,
        timeout=120,
    )


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode not in (0, None), result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("pgdr: error: ")
    assert SECRET not in result.stderr and SECRET not in result.stdout
    return lines[0]


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ('[cluster]\nname = "main"\n[local]\npaht = "/x"\n', ["local.paht", "did you mean 'path'"]),
        ('[cluster]\nname = "main"\n[postgres]\nport = "five"\n[local]\npath = "/x"\n', ["postgres.port", "integer"]),
        ('[local]\npath = "/x"\n', ["cluster.name is missing"]),
        ('[cluster]\nname = "main"\n', ["no repository configured"]),
        (
            f'[cluster]\nname = "main"\n[local]\npath = "/x"\n[postgres]\npassword = 5\n# {SECRET}\n',
            ["postgres.password", "string"],
        ),
        ("[cluster\nname =", ["not valid TOML"]),
    ],
)
def test_bad_config_is_one_line_naming_key_and_file(tmp_path: Path, body: str, words: list[str]) -> None:
    config = tmp_path / "pgdr.toml"
    config.write_text(body)
    line = one_line_error(pgdr(config, "list"))
    assert str(config) in line
    for word in words:
        assert word in line


def test_config_of_random_bytes(tmp_path: Path) -> None:
    config = tmp_path / "pgdr.toml"
    config.write_bytes(bytes(range(256)) * 4)
    assert "not valid TOML" in one_line_error(pgdr(config, "list"))


def test_missing_config_file(tmp_path: Path) -> None:
    line = one_line_error(pgdr(tmp_path / "nope.toml", "list"))
    assert "does not exist" in line and "init" in line


def s3_config(tmp_path: Path, moto: MotoEndpoint, bucket: str, **overrides: str) -> Path:
    settings = {**s3_settings(moto, bucket), **overrides}
    config = tmp_path / "s3.toml"
    config.write_text('[cluster]\nname = "main"\n\n[s3]\n' + "".join(f'{k} = "{v}"\n' for k, v in settings.items()))
    config.chmod(0o600)  # it holds the S3 keys
    return config


def test_missing_bucket(tmp_path: Path, moto: MotoEndpoint) -> None:
    moto.start()
    line = one_line_error(pgdr(s3_config(tmp_path, moto, "no-such-bucket"), "list"))
    assert "no-such-bucket" in line and "does not exist" in line


def test_wrong_credentials(tmp_path: Path, moto: MotoEndpoint, bucket: str) -> None:
    config = s3_config(tmp_path, moto, bucket, access_key_id="AKIAWRONGWRONGWRONG1", secret_access_key=SECRET)
    with moto.require_auth():
        line = one_line_error(pgdr(config, "list"))
    assert "credentials" in line and "AKIAWRONGWRONGWRONG1" not in line


def test_unreachable_s3_endpoint(tmp_path: Path, moto: MotoEndpoint) -> None:
    config = s3_config(tmp_path, moto, "b", endpoint_url="http://127.0.0.1:9")
    line = one_line_error(pgdr(config, "list"))
    assert "cannot reach S3 endpoint" in line


def test_unreachable_server(cluster: Cluster, tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(cluster.base_config().replace(f"port = {cluster.port}", "port = 1") + f"\n# {SECRET}\n")
    line = one_line_error(pgdr(config, "backup"))
    assert "cannot connect" in line and "port 1" in line


def test_help_and_version() -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(pgdr_executable()), *args], capture_output=True, text=True, env=clean_env(), check=False
        )

    version = run("--version")
    assert version.returncode == 0 and version.stdout.strip() == f"pgdr {importlib.metadata.version('pgdr')}"
    usage = run("--help")
    assert usage.returncode == 0
    for command in ("wal-push", "wal-fetch", "backup", "list", "timeline", "restore", "verify", "expire", "check"):
        assert command in usage.stdout
    # without a terminal, plain `pgdr` prints the same help instead of opening the console
    bare = run()
    assert bare.returncode == 0 and bare.stdout == usage.stdout


def test_garbage_arguments_are_refused(tmp_path: Path) -> None:
    for args in (["wal-push"], ["wal-fetch", "x"], ["frobnicate"], ["list", "--repo", "ftp"]):
        result = subprocess.run(
            [str(pgdr_executable()), *args], capture_output=True, text=True, env=clean_env(), check=False
        )
        assert result.returncode == 2 and "usage: pgdr" in result.stderr
    config = tmp_path / "c.toml"
    config.write_text(f'[cluster]\nname = "main"\n[local]\npath = "{tmp_path}/repo"\n')
    line = one_line_error(pgdr(config, "wal-push", str(tmp_path / "not-a-wal-file")))
    assert "not a WAL file name" in line


def test_a_config_holding_secrets_must_be_private(tmp_path: Path) -> None:
    config = tmp_path / "pgdr.toml"
    config.write_text(f'[cluster]\nname = "main"\n[local]\npath = "{tmp_path}"\n[postgres]\npassword = "{SECRET}"\n')
    config.chmod(0o644)
    line = one_line_error(pgdr(config, "list"))
    assert "postgres.password" in line and f"chmod 600 {config}" in line
    config.chmod(0o600)
    assert pgdr(config, "list").returncode == 0
