"""Every bad input is one clear line on stderr and a non-zero exit, with no secret in it."""

from __future__ import annotations

import errno
import importlib.metadata
import os
import socket
import subprocess
from pathlib import Path

import pytest

from pgdr_tui import cli
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


@pytest.mark.parametrize(
    ("snippet", "args", "words"),
    [
        ("[archive]\ncompression_level = 99\n", ["wal-push", "pg_wal/000000010000000000000001"], ["compression_level"]),
        ("[archive]\npush_ahead = 100000000000000000000\n", ["wal-push", "x"], ["archive.push_ahead", "1000"]),
        ("[daemon]\nmetrics_port = 70000\n", ["--daemon"], ["daemon.metrics_port", "65535"]),
        ("[postgres]\nport = -1\n", ["backup"], ["postgres.port", "65535"]),
    ],
)
def test_numbers_out_of_range_fail_at_load(tmp_path: Path, snippet: str, args: list[str], words: list[str]) -> None:
    config = tmp_path / "pgdr.toml"
    config.write_text(f'[cluster]\nname = "main"\n[local]\npath = "{tmp_path}/repo"\n{snippet}')
    line = one_line_error(pgdr(config, *args))
    assert str(config) in line and "between" in line
    for word in words:
        assert word in line
    assert not (tmp_path / "repo").exists()  # refused before anything was written


def test_cluster_name_with_a_nul(tmp_path: Path) -> None:
    config = tmp_path / "pgdr.toml"
    config.write_text(f'[cluster]\nname = "ma\\u0000in"\n[local]\npath = "{tmp_path}/repo"\n')
    line = one_line_error(pgdr(config, "wal-push", "x"))
    assert "cluster.name" in line and "NUL" in line


@pytest.mark.parametrize(
    ("args", "argument"),
    [
        (["restore", "--latest", "--target-dir", "/tmp/x", "--port", "70000"], "--port"),
        (["restore", "--latest", "--port", "-1"], "--port"),
        (["init", "--port", "0"], "--port"),
        (["check", "--timeout", "nan"], "--timeout"),
    ],
)
def test_out_of_range_arguments_are_refused_while_parsing(tmp_path: Path, args: list[str], argument: str) -> None:
    """argparse's usual answer: the usage, then one line naming the argument and its range (exit 2)."""
    result = pgdr(tmp_path / "never-read.toml", *args)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if ": error: " in line]
    assert len(errors) == 1 and errors[0] == result.stderr.strip().splitlines()[-1]
    assert f"argument {argument}: " in errors[0] and ("65535" in errors[0] or "86400" in errors[0])


def minimal_config(tmp_path: Path) -> Path:
    config = tmp_path / "pgdr.toml"
    config.write_text(f'[cluster]\nname = "main"\n[local]\npath = "{tmp_path}/repo"\n')
    return config


@pytest.mark.parametrize(
    ("error", "words"),
    [
        (PermissionError(errno.EACCES, "Permission denied", "/srv/pgdr/main"), ["/srv/pgdr/main", "pgdr runs as user"]),
        (FileNotFoundError(errno.ENOENT, "No such file or directory", "/gone"), ["/gone: No such file or directory"]),
        (OSError(errno.ENOSPC, "No space left on device", "/srv/full"), ["/srv/full", "free space"]),
    ],
)
def test_an_unexpected_os_error_is_one_line(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    error: OSError,
    words: list[str],
) -> None:
    """The safety net: whatever OSError a command did not turn into a message itself."""

    def fails(args: object) -> int:
        raise error

    monkeypatch.setattr(cli, "cmd_config", fails)
    assert cli.main(["--config", str(minimal_config(tmp_path)), "config"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pgdr: error: ")
    for word in words:
        assert word in lines[0]


def test_a_bug_says_so_after_its_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def fails(args: object) -> int:
        raise KeyError("wal_segment_size")

    monkeypatch.setattr(cli, "cmd_config", fails)
    assert cli.main(["--config", str(minimal_config(tmp_path)), "config"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err  # what a bug report needs
    last = err.strip().splitlines()[-1]
    assert last.startswith("pgdr: internal error (KeyError") and "a bug in pgdr" in last


def test_a_reader_that_goes_away_is_not_an_error(tmp_path: Path) -> None:
    """`pgdr config | head -1`: the pipe breaks, and that is the reader's choice."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    with os.fdopen(write_end, "wb") as out:
        result = subprocess.run(
            [str(pgdr_executable()), "--config", str(minimal_config(tmp_path)), "config"],
            stdout=out,
            stderr=subprocess.PIPE,
            text=True,
            env=clean_env(),
            check=False,
            timeout=60,
        )
    assert result.returncode == 141 and result.stderr == ""


def test_metrics_port_in_use(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = minimal_config(tmp_path)
        config.write_text(config.read_text() + f"[daemon]\nmetrics_port = {port}\n")
        line = one_line_error(pgdr(config, "--daemon"))
    assert f"port {port}" in line and "daemon.metrics_port" in line and str(config) in line
