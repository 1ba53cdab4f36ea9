"""Configuration: finding the file, one-line errors that name key and file, environment overrides, secrets."""

from __future__ import annotations

import json
import os
import shlex
import stat
import subprocess
import sys
import tomllib
import typing
from pathlib import Path

import pytest

from backend import config as config_module
from backend.config import MASK, load_config, starter_config
from backend.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parent.parent

#: Variables that change what pgdr reads; every test starts without them.
ENV_PREFIXES = ("PG", "AWS_", "TELEGRAM_")
ENV_NAMES = ("DB_PASSWORD", "BACKUP_S3_BUCKET", "PGDR_CONFIG")

MINIMAL = """\
[cluster]
name = "main"

[local]
path = "/srv/pgdr"
"""


def _is_pgdr_variable(name: str) -> bool:
    return name.startswith(ENV_PREFIXES) or name in ENV_NAMES


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No PG*/AWS_*/TELEGRAM_* variables, an empty user config dir and no system config file."""
    for name in list(os.environ):
        if _is_pgdr_variable(name):
            monkeypatch.delenv(name)
    xdg = tmp_path / "xdg"
    monkeypatch.setenv("XDG_CONFIG_HOME", str(xdg))
    monkeypatch.setattr(config_module, "SYSTEM_CONFIG", tmp_path / "etc" / "pgdr.toml")
    return xdg


def write(path: Path, text: str | bytes) -> Path:
    """A config file as pgdr init writes one: private (files holding secrets must be)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    path.chmod(0o600)
    return path


def config_error(path: Path | None = None) -> str:
    """Load and return the ConfigError's message, checking it is one line."""
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert "\n" not in message and "\r" not in message, message
    assert message.strip()
    return message


# --- finding the file ---------------------------------------------------------------------------


def test_explicit_path(tmp_path: Path) -> None:
    path = write(tmp_path / "explicit.toml", MINIMAL)
    cfg = load_config(path)
    assert cfg.source == path
    assert cfg.cluster.name == "main"
    assert cfg.local.path == "/srv/pgdr"
    assert cfg.repository_names == ["local"]
    assert cfg.where() == str(path)


def test_explicit_path_as_string(tmp_path: Path) -> None:
    path = write(tmp_path / "explicit.toml", MINIMAL)
    assert load_config(str(path)).source == path


def test_pgdr_config_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path / "from-env.toml", MINIMAL.replace('"main"', '"envcluster"'))
    monkeypatch.setenv("PGDR_CONFIG", str(path))
    cfg = load_config()
    assert cfg.source == path
    assert cfg.cluster.name == "envcluster"


def test_user_config_dir(clean_env: Path) -> None:
    path = write(clean_env / "pgdr" / "pgdr.toml", MINIMAL.replace('"main"', '"usercluster"'))
    cfg = load_config()
    assert cfg.source == path
    assert cfg.cluster.name == "usercluster"


def test_explicit_beats_variable_beats_user_dir(
    tmp_path: Path, clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(clean_env / "pgdr" / "pgdr.toml", MINIMAL.replace('"main"', '"user"'))
    from_env = write(tmp_path / "env.toml", MINIMAL.replace('"main"', '"env"'))
    explicit = write(tmp_path / "explicit.toml", MINIMAL.replace('"main"', '"explicit"'))
    assert load_config().cluster.name == "user"
    monkeypatch.setenv("PGDR_CONFIG", str(from_env))
    assert load_config().cluster.name == "env"
    assert load_config(explicit).cluster.name == "explicit"


def test_missing_explicit_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    message = config_error(path)
    assert str(path) in message
    assert "pgdr" in message and "init" in message


def test_missing_pgdr_config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "gone.toml"
    monkeypatch.setenv("PGDR_CONFIG", str(path))
    message = config_error()
    assert str(path) in message
    assert "PGDR_CONFIG" in message


def test_no_config_anywhere() -> None:
    message = config_error()
    assert "pgdr init" in message


def test_no_file_allowed_when_not_required() -> None:
    cfg = load_config(require_file=False)
    assert cfg.source is None
    assert cfg.where() == "the environment"


# --- one-line errors naming the key and the file -------------------------------------------------


def test_unknown_key_suggests_close_match(tmp_path: Path) -> None:
    path = write(tmp_path / "typo.toml", MINIMAL + '\n[s3]\nbuckt = "backups"\n')
    message = config_error(path)
    assert "buckt" in message
    assert str(path) in message
    assert "'bucket'" in message
    assert "did you mean" in message


def test_unknown_section_suggests_close_match(tmp_path: Path) -> None:
    path = write(tmp_path / "typo.toml", MINIMAL + '\n[telegarm]\nchat_id = "1"\n')
    message = config_error(path)
    assert "telegarm" in message
    assert str(path) in message
    assert "'telegram'" in message


def test_wrong_type_names_key_and_file(tmp_path: Path) -> None:
    path = write(tmp_path / "port.toml", MINIMAL + '\n[postgres]\nport = "abc"\n')
    message = config_error(path)
    assert "postgres.port" in message
    assert str(path) in message
    assert "integer" in message


@pytest.mark.parametrize(
    ("snippet", "key"),
    [
        ("[local]\nretention_days = true\n", "local.retention_days"),
        ("[local]\nretention_days = -1\n", "local.retention_days"),
        ("[postgres]\nhost = 5\n", "postgres.host"),
        ('[archive]\nsync = "local"\n', "archive.sync"),
        ('[archive]\ncompression = "gzip"\n', "archive.compression"),
        ('[backup]\ncheckpoint = "slow"\n', "backup.checkpoint"),
    ],
)
def test_other_bad_values(tmp_path: Path, snippet: str, key: str) -> None:
    text = '[cluster]\nname = "main"\n\n' + snippet
    if not snippet.startswith("[local]"):
        text += '\n[local]\npath = "/srv/pgdr"\n'
    path = write(tmp_path / "bad.toml", text)
    message = config_error(path)
    assert key in message
    assert str(path) in message


def test_section_that_is_a_value(tmp_path: Path) -> None:
    path = write(tmp_path / "flat.toml", 's3 = "bucket"\n' + MINIMAL)
    message = config_error(path)
    assert "[s3]" in message
    assert str(path) in message


def test_missing_cluster_name(tmp_path: Path) -> None:
    path = write(tmp_path / "noname.toml", '[local]\npath = "/srv/pgdr"\n')
    message = config_error(path)
    assert "cluster.name" in message
    assert str(path) in message


def test_no_repository(tmp_path: Path) -> None:
    path = write(tmp_path / "norepo.toml", '[cluster]\nname = "main"\n')
    message = config_error(path)
    assert "no repository" in message
    assert str(path) in message
    assert "[local] path" in message and "[s3] bucket" in message


def test_sync_names_unconfigured_repository(tmp_path: Path) -> None:
    path = write(tmp_path / "sync.toml", MINIMAL + '\n[archive]\nsync = ["s3"]\n')
    message = config_error(path)
    assert "archive.sync" in message
    assert "'s3'" in message
    assert str(path) in message


def test_sync_names_configured_repositories(tmp_path: Path) -> None:
    path = write(tmp_path / "sync.toml", MINIMAL + '\n[s3]\nbucket = "b"\n\n[archive]\nsync = ["s3", "local"]\n')
    cfg = load_config(path)
    assert cfg.repository_names == ["local", "s3"]
    assert cfg.sync_repositories == ["s3", "local"]


def test_default_sync_is_local_then_s3(tmp_path: Path) -> None:
    both = load_config(write(tmp_path / "both.toml", MINIMAL + '\n[s3]\nbucket = "b"\n'))
    assert both.sync_repositories == ["local"]
    s3_only = load_config(write(tmp_path / "s3.toml", '[cluster]\nname = "main"\n\n[s3]\nbucket = "b"\n'))
    assert s3_only.sync_repositories == ["s3"]


def test_sse_not_allowed(tmp_path: Path) -> None:
    path = write(tmp_path / "sse.toml", MINIMAL + '\n[s3]\nbucket = "b"\nsse = "AES128"\n')
    message = config_error(path)
    assert "s3.sse" in message
    assert str(path) in message
    assert "'AES256'" in message and "'aws:kms'" in message


def test_sse_kms_needs_key_id(tmp_path: Path) -> None:
    path = write(tmp_path / "kms.toml", MINIMAL + '\n[s3]\nbucket = "b"\nsse = "aws:kms"\n')
    message = config_error(path)
    assert "kms_key_id" in message
    ok = write(tmp_path / "kms-ok.toml", MINIMAL + '\n[s3]\nbucket = "b"\nsse = "aws:kms"\nkms_key_id = "k"\n')
    assert load_config(ok).s3.sse == "aws:kms"


@pytest.mark.parametrize(
    "content",
    [
        b"[cluster\nname = 'main'\n",
        b'[cluster]\nname = "unterminated\n',
        b"name = = 1\n",
        b"\x00\x01\x02 binary",
        bytes(range(256)) * 4,
        b"\xff\xfe\x00p\x00g\x00",
    ],
    ids=["bad-table", "unterminated-string", "double-equals", "nul-bytes", "all-bytes", "utf16-bom"],
)
def test_invalid_toml_is_one_line(tmp_path: Path, content: bytes) -> None:
    path = write(tmp_path / "broken.toml", content)
    message = config_error(path)
    assert str(path) in message
    assert "not valid TOML" in message


def test_cluster_name_with_slash(tmp_path: Path) -> None:
    path = write(tmp_path / "slash.toml", MINIMAL.replace('"main"', '"a/b"'))
    message = config_error(path)
    assert "cluster.name" in message


@pytest.mark.parametrize(
    "name",
    [
        "a\\u0000b",
        "main\\n",
        "tab\\there",
        " main",
        "main ",
        ".hidden",
        "..",
        "x" * 65,
        "zero\\u200bwidth",
        "\\u202eniam",
    ],
    ids=["nul", "newline", "tab", "leading-space", "trailing-space", "dot", "dotdot", "too-long", "invisible", "bidi"],
)
def test_cluster_name_that_breaks_paths_or_logs(tmp_path: Path, name: str) -> None:
    path = write(tmp_path / "name.toml", MINIMAL.replace('"main"', f'"{name}"'))
    message = config_error(path)
    assert "cluster.name" in message and str(path) in message
    assert "at most 64 printable characters" in message or "must not contain a NUL" in message
    assert "\x00" not in message  # an escaped value, never the raw character


@pytest.mark.parametrize("name", ["prod-1", "main_2", "Zoë's cluster", "x" * 64, "db.example"])
def test_cluster_names_that_are_fine(tmp_path: Path, name: str) -> None:
    assert load_config(write(tmp_path / "name.toml", MINIMAL.replace('"main"', f'"{name}"'))).cluster.name == name


@pytest.mark.parametrize(
    ("snippet", "key", "bounds"),
    [
        ("[archive]\ncompression_level = 99\n", "archive.compression_level", "between 1 and 22"),
        ("[archive]\ncompression_level = 0\n", "archive.compression_level", "between 1 and 22"),
        ("[backup]\ncompression_level = 23\n", "backup.compression_level", "between 1 and 22"),
        ("[archive]\npush_ahead = 100000000000000000000\n", "archive.push_ahead", "between 0 and 1000"),
        ("[archive]\nworkers = 0\n", "archive.workers", "between 1 and 64"),
        ("[archive]\nworkers = 10000\n", "archive.workers", "between 1 and 64"),
        ("[archive]\nserver_idle = 0\n", "archive.server_idle", "between 1 and 86400"),
        ("[restore]\nprefetch = 1000000\n", "restore.prefetch", "between 0 and 1000"),
        ("[restore]\nprefetch_workers = 0\n", "restore.prefetch_workers", "between 1 and 64"),
        ("[daemon]\nmetrics_port = 70000\n", "daemon.metrics_port", "between 0 and 65535"),
        ("[postgres]\nport = 0\n", "postgres.port", "between 1 and 65535"),
        ("[postgres]\nport = 70000\n", "postgres.port", "between 1 and 65535"),
        ("[s3]\nretention_days = 10000000000\n", "s3.retention_days", "between 0 and 36500"),
        ("[s3]\nupload_chunk_mb = 4\n", "s3.upload_chunk_mb", "between 5 and 5120"),
        ("[telegram]\nrepeat_minutes = 99999999\n", "telegram.repeat_minutes", "between 0 and 10080"),
        ("[schedule]\nrpo_alarm_minutes = 0\n", "schedule.rpo_alarm_minutes", "between 1 and 10080"),
        ("[verify]\nreread_days = -1\n", "verify.reread_days", "between 0 and 3650"),
        ("[verify]\nreread_days = 3651\n", "verify.reread_days", "between 0 and 3650"),
    ],
)
def test_numbers_out_of_range(tmp_path: Path, snippet: str, key: str, bounds: str) -> None:
    path = write(tmp_path / "range.toml", MINIMAL + "\n" + snippet)
    message = config_error(path)
    assert key in message and str(path) in message and bounds in message


def test_every_integer_key_has_a_range() -> None:
    """A new integer key without a range would be a KeyError on load, not a one-line message."""
    hints = typing.get_type_hints(config_module.Config)
    for section in config_module.SECTIONS:
        cls = hints[section]
        for name, kind in typing.get_type_hints(cls).items():
            if kind is int:
                low, high, meaning = config_module.RANGES[(section, name)]
                assert low <= getattr(cls(), name) <= high and meaning, (section, name)


def test_range_bounds_are_accepted(tmp_path: Path) -> None:
    text = MINIMAL + (
        "\n[postgres]\nport = 65535\n[archive]\ncompression_level = 22\npush_ahead = 0\nworkers = 64\n"
        "[daemon]\nmetrics_port = 0\n[restore]\nprefetch = 1000\n"
    )
    cfg = load_config(write(tmp_path / "edges.toml", text))
    assert (cfg.postgres.port, cfg.archive.compression_level, cfg.daemon.metrics_port) == (65535, 22, 0)


def test_pgport_out_of_range(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PGPORT", "70000")
    message = config_error(write(tmp_path / "min.toml", MINIMAL))
    assert "$PGPORT" in message and "postgres.port" in message and "between 1 and 65535" in message


def test_nul_in_a_string(tmp_path: Path) -> None:
    path = write(tmp_path / "nul.toml", MINIMAL.replace('"/srv/pgdr"', '"/srv/\\u0000pgdr"'))
    message = config_error(path)
    assert "local.path" in message and "NUL" in message and str(path) in message
    secret = write(tmp_path / "secret.toml", MINIMAL + '\n[postgres]\npassword = "hunter2\\u0000x"\n')
    message = config_error(secret)
    assert "postgres.password" in message and "hunter2" not in message


# --- environment overrides -----------------------------------------------------------------------

FULL = """\
[cluster]
name = "main"

[postgres]
host = "file-host"
port = 5432
password = "file-password"

[local]
path = "/srv/pgdr"

[s3]
bucket = "file-bucket"
region = "eu-west-1"
access_key_id = "FILEKEYID"
secret_access_key = "file-secret"

[telegram]
bot_token = "file-token"
chat_id = "111"
"""


@pytest.mark.parametrize(
    ("variable", "setting", "expected"),
    [
        ("DB_PASSWORD", "postgres.password", "env-password"),
        ("BACKUP_S3_BUCKET", "s3.bucket", "env-bucket"),
        ("AWS_ACCESS_KEY_ID", "s3.access_key_id", "ENVKEYID"),
        ("AWS_SECRET_ACCESS_KEY", "s3.secret_access_key", "env-secret"),
        ("AWS_REGION", "s3.region", "us-east-2"),
        ("TELEGRAM_BOT_TOKEN", "telegram.bot_token", "env-token"),
        ("TELEGRAM_CHAT_ID", "telegram.chat_id", "-100222"),
        ("PGHOST", "postgres.host", "/var/run/postgresql"),
        ("PGPORT", "postgres.port", 6543),
    ],
)
def test_environment_wins_over_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, variable: str, setting: str, expected: object
) -> None:
    section, key = setting.split(".")
    path = write(tmp_path / "full.toml", FULL)
    before = getattr(getattr(load_config(path), section), key)
    assert before != expected
    monkeypatch.setenv(variable, str(expected))
    assert getattr(getattr(load_config(path), section), key) == expected


def test_empty_environment_variable_does_not_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path / "full.toml", FULL)
    monkeypatch.setenv("BACKUP_S3_BUCKET", "")
    assert load_config(path).s3.bucket == "file-bucket"


def test_environment_can_configure_the_repository(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path / "norepo.toml", '[cluster]\nname = "main"\n')
    monkeypatch.setenv("BACKUP_S3_BUCKET", "env-bucket")
    assert load_config(path).repository_names == ["s3"]


@pytest.mark.parametrize("port", ["abc", "-1", "5432x", "²"])
def test_bad_pgport(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, port: str) -> None:
    path = write(tmp_path / "full.toml", FULL)
    monkeypatch.setenv("PGPORT", port)
    message = config_error(path)
    assert "$PGPORT" in message
    assert "postgres.port" in message


# --- secrets -------------------------------------------------------------------------------------


def test_secrets_masked_in_to_dict(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path / "full.toml", FULL)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "env-secret")
    cfg = load_config(path)
    shown = cfg.to_dict()
    assert shown["postgres"]["password"] == MASK
    assert shown["s3"]["access_key_id"] == MASK
    assert shown["s3"]["secret_access_key"] == MASK
    assert shown["telegram"]["bot_token"] == MASK
    dumped = json.dumps(shown)
    for secret in ("file-password", "FILEKEYID", "file-secret", "env-secret", "file-token"):
        assert secret not in dumped
    # Non-secrets are shown as they are.
    assert shown["s3"]["bucket"] == "file-bucket"
    assert shown["telegram"]["chat_id"] == "111"
    assert shown["postgres"]["host"] == "file-host"
    # Unredacted on request (for writing the file back).
    raw = cfg.to_dict(redact=False)
    assert raw["postgres"]["password"] == "file-password"
    assert raw["s3"]["secret_access_key"] == "env-secret"


def test_empty_secret_is_not_masked(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path / "min.toml", MINIMAL))
    assert cfg.to_dict()["postgres"]["password"] == ""


@pytest.mark.parametrize(
    ("section", "key"),
    [("postgres", "password"), ("s3", "access_key_id"), ("s3", "secret_access_key"), ("telegram", "bot_token")],
)
def test_type_error_on_secret_does_not_echo_value(tmp_path: Path, section: str, key: str) -> None:
    text = MINIMAL + f"\n[{section}]\n{key} = 987654321\n"
    path = write(tmp_path / "secret.toml", text)
    message = config_error(path)
    assert f"{section}.{key}" in message
    assert str(path) in message
    assert "987654321" not in message


def test_type_error_on_non_secret_echoes_value(tmp_path: Path) -> None:
    path = write(tmp_path / "port.toml", MINIMAL + "\n[postgres]\nport = 3.5\n")
    assert "3.5" in config_error(path)


# --- the starter config --------------------------------------------------------------------------


def test_starter_config_parses_and_loads_defaults(tmp_path: Path) -> None:
    text = starter_config()
    parsed = tomllib.loads(text)
    assert parsed["cluster"]["name"] == "main"
    # Without a repository it is refused; with a local path it loads into the defaults.
    path = write(tmp_path / "starter.toml", text)
    assert "no repository" in config_error(path)
    path = write(tmp_path / "starter.toml", starter_config(local_path=str(tmp_path / "repo")))
    cfg = load_config(path)
    assert cfg.cluster.name == "main"
    assert cfg.local.path == str(tmp_path / "repo")
    assert cfg.local.retention_days == 7
    assert cfg.s3.retention_days == 30
    assert cfg.s3.storage_class == "STANDARD_IA"
    assert cfg.schedule.base_backup == "0 */6 * * *"
    assert cfg.postgres.port == 5432
    assert cfg.postgres.user == "postgres"
    assert cfg.archive.compression == "zstd"
    assert cfg.backup.checkpoint == "fast"
    assert cfg.verify.reread_days == 30
    assert cfg.repository_names == ["local"]


@pytest.mark.parametrize(
    "weird",
    [
        "/srv/with space/repo",
        '/srv/"double" quotes',
        "/srv/'single' quotes",
        "/srv/ünïcödé/☃/仓库",
        "C:\\back\\slash",
        "/srv/tab\there",
        "/srv/#not a comment",
    ],
)
def test_starter_config_round_trips_paths(tmp_path: Path, weird: str) -> None:
    text = starter_config(name="prod-1", local_path=weird, data_dir=weird + "/data", host=weird, port=6000)
    parsed = tomllib.loads(text)
    assert parsed["local"]["path"] == weird
    path = write(tmp_path / "weird.toml", text)
    cfg = load_config(path)
    assert cfg.local.path == weird
    assert cfg.postgres.data_dir == weird + "/data"
    assert cfg.postgres.host == weird
    assert cfg.postgres.port == 6000
    assert cfg.cluster.name == "prod-1"


# --- the command line ----------------------------------------------------------------------------


def clean_subprocess_env(tmp_path: Path) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if not _is_pgdr_variable(name)}
    env["XDG_CONFIG_HOME"] = str(tmp_path / "cli-xdg")
    env["PYTHONPATH"] = str(REPO_ROOT)
    return env


def pgdr(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pgdr_tui", *args],
        env=env if env is not None else clean_subprocess_env(tmp_path),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_cli_config_json_masks_secrets(tmp_path: Path) -> None:
    path = write(tmp_path / "full.toml", FULL)
    env = clean_subprocess_env(tmp_path)
    env["DB_PASSWORD"] = "env-db-password"
    result = pgdr(tmp_path, "--config", str(path), "config", "--json", env=env)
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    assert shown["postgres"]["password"] == MASK
    assert shown["s3"]["secret_access_key"] == MASK
    assert shown["s3"]["access_key_id"] == MASK
    assert shown["telegram"]["bot_token"] == MASK
    assert shown["s3"]["bucket"] == "file-bucket"
    for secret in ("file-password", "env-db-password", "FILEKEYID", "file-secret", "file-token"):
        assert secret not in result.stdout
        assert secret not in result.stderr


def test_cli_config_error_is_one_line(tmp_path: Path) -> None:
    path = write(tmp_path / "typo.toml", MINIMAL + '\n[s3]\nbuckt = "b"\n')
    result = pgdr(tmp_path, "--config", str(path), "config", "--json")
    assert result.returncode != 0
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert "buckt" in lines[0] and "'bucket'" in lines[0] and str(path) in lines[0]


def test_cli_init_writes_private_file_and_refuses_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "conf dir" / "pgdr.toml"
    repo = tmp_path / "repo"
    result = pgdr(tmp_path, "--config", str(path), "init", "--cluster", "prod", "--local-path", str(repo))
    assert result.returncode == 0, result.stderr
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    cfg = load_config(path)
    assert cfg.cluster.name == "prod"
    assert cfg.local.path == str(repo)
    # The next steps follow from the flags: the repository was given (it does not exist yet), the
    # data directory was not; archive_command names this config.
    steps = result.stdout.splitlines()
    assert steps[0] == f"wrote {path}; next:"
    assert f"create the local repository {repo}" in steps[1] and "set [local] path" not in result.stdout
    assert any("set [postgres] data_dir" in line for line in steps)
    assert any(f"--config ''{path}'' wal-push %p'" in line for line in steps), result.stdout  # quotes doubled
    original = path.read_bytes()

    again = pgdr(tmp_path, "--config", str(path), "init", "--cluster", "other")
    assert again.returncode != 0
    lines = again.stderr.splitlines()
    assert len(lines) == 1, again.stderr
    assert str(path) in lines[0] and "--force" in lines[0]
    assert path.read_bytes() == original

    forced = pgdr(tmp_path, "--config", str(path), "init", "--cluster", "other", "--force")
    assert forced.returncode == 0, forced.stderr
    assert tomllib.loads(path.read_text(encoding="utf-8"))["cluster"]["name"] == "other"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_cli_init_uses_pgdr_config(tmp_path: Path) -> None:
    path = tmp_path / "via-env.toml"
    env = clean_subprocess_env(tmp_path)
    env["PGDR_CONFIG"] = str(path)
    result = pgdr(tmp_path, "init", "--local-path", str(tmp_path / "repo"), env=env)
    assert result.returncode == 0, result.stderr
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_config(path).cluster.name == "main"


def test_cli_missing_file_suggestion_works(tmp_path: Path) -> None:
    """The command the "does not exist" error suggests really creates the file."""
    path = tmp_path / "suggested.toml"
    with pytest.raises(ConfigError) as info:
        load_config(path)
    suggested = shlex.split(str(info.value).split("`")[1])
    assert suggested[0] == "pgdr"
    result = pgdr(tmp_path, *suggested[1:])
    assert result.returncode == 0, result.stderr
    assert path.is_file()


def test_cli_init_accepts_config_after_the_command(tmp_path: Path) -> None:
    path = tmp_path / "after.toml"
    result = pgdr(tmp_path, "init", "--config", str(path))
    assert result.returncode == 0, result.stderr
    assert path.is_file()


def test_verify_reread_days_is_read_and_zero_is_allowed(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path / "verify.toml", MINIMAL + "\n[verify]\nreread_days = 0\n"))
    assert cfg.verify.reread_days == 0
    message = config_error(write(tmp_path / "typo.toml", MINIMAL + "\n[verify]\nreread_day = 7\n"))
    assert "verify.reread_day" in message and "did you mean 'reread_days'" in message
    message = config_error(write(tmp_path / "type.toml", MINIMAL + '\n[verify]\nreread_days = "7"\n'))
    assert "verify.reread_days" in message and "must be an integer" in message
