"""Configuration: one TOML file, overridden by the environment variables the Memecoin deployment uses.

The file is found at ``--config PATH``, else ``$PGDR_CONFIG``, else the platformdirs user config dir,
else ``/etc/pgdr/pgdr.toml``. Every mistake is reported as one line naming the key and the file, and
secret values never appear in an error, a log line or ``--json`` output.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from backend.errors import ConfigError

SYSTEM_CONFIG = Path("/etc/pgdr/pgdr.toml")
MASK = "********"

#: Keys whose values are secrets: masked in every output, never echoed in errors.
SECRET_KEYS = frozenset(
    {
        ("postgres", "password"),
        ("s3", "access_key_id"),
        ("s3", "secret_access_key"),
        ("local", "encryption_passphrase"),
        ("s3", "encryption_passphrase"),
        ("telegram", "bot_token"),
    }
)


@dataclass(frozen=True)
class ClusterConfig:
    name: str = ""


@dataclass(frozen=True)
class PostgresConfig:
    host: str = ""
    port: int = 5432
    user: str = ""
    dbname: str = "postgres"
    password: str = ""
    data_dir: str = ""
    bin_dir: str = ""
    #: postgresql.conf when it is not in the data directory (Debian: /etc/postgresql/<ver>/<name>/);
    #: empty: the data directory's own, else the Debian cluster whose data_directory is data_dir.
    config_file: str = ""


@dataclass(frozen=True)
class LocalConfig:
    path: str = ""
    retention_days: int = 7
    #: Client-side encryption of every stored object: "" (off) or "aes-256-gcm" (docs/encryption.md).
    encryption: str = ""
    encryption_passphrase: str = ""
    #: A file holding a 256-bit key as 64 hex digits; no passphrase stretching on the archive hot path.
    encryption_key_file: str = ""


@dataclass(frozen=True)
class S3Config:
    bucket: str = ""
    prefix: str = ""
    region: str = ""
    endpoint_url: str = ""
    storage_class: str = "STANDARD_IA"
    sse: str = ""
    kms_key_id: str = ""
    retention_days: int = 30
    #: Multipart upload part size (S3's minimum is 5 MiB); bigger parts, fewer requests.
    upload_chunk_mb: int = 16
    access_key_id: str = ""
    secret_access_key: str = ""
    encryption: str = ""
    encryption_passphrase: str = ""
    encryption_key_file: str = ""


@dataclass(frozen=True)
class ArchiveConfig:
    #: Repositories a segment must reach before ``wal-push`` acknowledges it. Empty means the
    #: default: the local repository when one is configured, else S3.
    sync: list[str] = field(default_factory=list)
    compression: str = "zstd"
    #: 1, not zstd's usual 3: WAL compresses almost as well at 1 (about 13x either way) in half the
    #: time, and PostgreSQL's archiver waits for every segment.
    compression_level: int = 1
    #: Segments a background pusher stores ahead of PostgreSQL's archiver (0: push one at a time).
    push_ahead: int = 8
    #: Parallel pushes of that background pusher.
    workers: int = 2
    #: Where push-ahead notes live; empty: the state dir of the user running the server.
    spool_path: str = ""
    #: A resident push server answers ``wal-push``, so a stream of segments pays Python's start-up
    #: (and S3's client) once instead of per segment (backend/archive/pushd.py).
    server: bool = True
    #: Seconds the push server waits for the next segment before it exits.
    server_idle: int = 10


@dataclass(frozen=True)
class BackupConfig:
    #: "fast" asks for an immediate checkpoint; "spread" lets it take checkpoint_timeout.
    checkpoint: str = "fast"
    compression_level: int = 3


@dataclass(frozen=True)
class RestoreConfig:
    #: The zone a timestamp without an offset is read in (an IANA name).
    timezone: str = "UTC"
    #: Segments wal-fetch downloads ahead of recovery in the background (0: one at a time).
    prefetch: int = 16
    prefetch_workers: int = 4


@dataclass(frozen=True)
class TelegramConfig:
    bot_token: str = ""
    chat_id: str = ""
    api_url: str = "https://api.telegram.org"
    #: A failure (or alarm) of the same kind for the same cluster is sent at most once per this many
    #: minutes; the next one says how often it repeated meanwhile. 0 sends every one.
    repeat_minutes: int = 60


@dataclass(frozen=True)
class ScheduleConfig:
    """The daemon's cron schedules (5 fields, or 6 with a leading seconds field); "" disables a job."""

    base_backup: str = "0 */6 * * *"
    #: PostgreSQL 17+ (summarize_wal = on): a backup of only the blocks changed since the newest backup,
    #: between the full ones ``base_backup`` takes; off by default, since 15 and 16 cannot take one.
    incremental_backup: str = ""
    logical_dump: str = "30 */6 * * *"
    verify: str = "15 3 * * *"
    verify_deep: str = "45 3 * * 0"
    #: Retention; it also runs after every scheduled backup unless this is "".
    expire: str = "0 4 * * *"
    rpo_check: str = "* * * * *"
    #: Index archived WAL nothing indexed yet (an S3-only archive has no background indexer).
    wal_index: str = "*/15 * * * *"
    #: The RPO alarm: the newest archived WAL is older than this.
    rpo_alarm_minutes: int = 10
    #: The zone the schedules are read in (an IANA name).
    timezone: str = "UTC"


@dataclass(frozen=True)
class DaemonConfig:
    #: Prometheus metrics over HTTP on this port (0: no HTTP endpoint, the textfile only).
    metrics_port: int = 0
    metrics_address: str = "127.0.0.1"
    #: The Prometheus textfile; empty: ``pgdr.prom`` in the state dir.
    metrics_textfile: str = ""


@dataclass(frozen=True)
class AuditConfig:
    #: Also store each audit entry in every configured repository (``audit/``), so the record of
    #: restores and expiries survives the host; encrypted with the repository when it is.
    copy_to_repositories: bool = False


@dataclass(frozen=True)
class VerifyConfig:
    #: A plain ``pgdr verify`` reads every new or changed object, and each object it remembers as
    #: verified again once every this many days, at a turn of its own, so each run reads about
    #: 1/reread_days of the history instead of all of it (0: every object on every run).
    reread_days: int = 30


@dataclass(frozen=True)
class Config:
    """The effective configuration. ``source`` is the file it came from (None: environment only)."""

    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    postgres: PostgresConfig = field(default_factory=PostgresConfig)
    local: LocalConfig = field(default_factory=LocalConfig)
    s3: S3Config = field(default_factory=S3Config)
    archive: ArchiveConfig = field(default_factory=ArchiveConfig)
    backup: BackupConfig = field(default_factory=BackupConfig)
    restore: RestoreConfig = field(default_factory=RestoreConfig)
    telegram: TelegramConfig = field(default_factory=TelegramConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    daemon: DaemonConfig = field(default_factory=DaemonConfig)
    audit: AuditConfig = field(default_factory=AuditConfig)
    verify: VerifyConfig = field(default_factory=VerifyConfig)
    source: Path | None = None

    @property
    def repository_names(self) -> list[str]:
        """Configured repositories, local first: the order reads and restores prefer."""
        names = []
        if self.local.path:
            names.append("local")
        if self.s3.bucket:
            names.append("s3")
        return names

    @property
    def sync_repositories(self) -> list[str]:
        """Repositories ``wal-push`` must reach before it acknowledges a segment."""
        if self.archive.sync:
            return list(self.archive.sync)
        return self.repository_names[:1]

    def where(self) -> str:
        return str(self.source) if self.source else "the environment"

    def to_dict(self, *, redact: bool = True) -> dict[str, dict[str, Any]]:
        """The configuration as TOML-ready tables; secrets are masked unless ``redact`` is False."""
        out: dict[str, dict[str, Any]] = {}
        for section in SECTIONS:
            values = dataclasses.asdict(getattr(self, section))
            for key, value in values.items():
                if redact and (section, key) in SECRET_KEYS and value:
                    values[key] = MASK
            out[section] = values
        return out


SECTIONS = (
    "cluster",
    "postgres",
    "local",
    "s3",
    "archive",
    "backup",
    "restore",
    "telegram",
    "schedule",
    "daemon",
    "audit",
    "verify",
)

#: Values a few keys may take; anything else is a one-line error.
CHOICES: dict[tuple[str, str], tuple[str, ...]] = {
    ("s3", "sse"): ("", "AES256", "aws:kms"),
    ("local", "encryption"): ("", "aes-256-gcm"),
    ("s3", "encryption"): ("", "aes-256-gcm"),
    ("archive", "compression"): ("zstd", "none"),
    ("backup", "checkpoint"): ("fast", "spread"),
}

#: The range of every integer key, and what the bounds mean. Checked when the config is loaded, so a
#: value no code could use (a zstd level of 99 fails every push, a port of 70000 the daemon, a
#: push_ahead of 10**20 the memory) is one line naming the key, not a failure at 3 a.m. in a job.
RANGES: dict[tuple[str, str], tuple[int, int, str]] = {
    ("postgres", "port"): (1, 65535, "a TCP port"),
    ("local", "retention_days"): (0, 36500, "days"),
    ("s3", "retention_days"): (0, 36500, "days"),
    ("s3", "upload_chunk_mb"): (5, 5120, "MiB, S3's part size limits"),
    ("archive", "compression_level"): (1, 22, "zstd's levels: 1 is the fastest, 22 the smallest"),
    ("archive", "push_ahead"): (0, 1000, "segments; 0 turns pushing ahead off"),
    ("archive", "workers"): (1, 64, "parallel pushes"),
    ("archive", "server_idle"): (1, 86400, "seconds; server = false turns the push server off"),
    ("backup", "compression_level"): (1, 22, "zstd's levels: 1 is the fastest, 22 the smallest"),
    ("restore", "prefetch"): (0, 1000, "segments; 0 turns prefetching off"),
    ("restore", "prefetch_workers"): (1, 64, "parallel downloads"),
    ("telegram", "repeat_minutes"): (0, 10080, "minutes, at most a week; 0 sends every message"),
    ("schedule", "rpo_alarm_minutes"): (1, 10080, "minutes, at most a week"),
    ("daemon", "metrics_port"): (0, 65535, "a TCP port; 0 turns the HTTP endpoint off"),
    ("verify", "reread_days"): (0, 3650, "days, at most ten years; 0 reads every object on every run"),
}

#: A cluster name is a folder and an S3 key component, a log and message word, and what is typed to
#: confirm a restore (read back stripped): so no '/', no leading '.', nothing invisible, no outer spaces.
MAX_CLUSTER_NAME = 64

#: Environment variables that override file values, as the Memecoin deployment's ``.env`` names them.
ENVIRONMENT: dict[str, tuple[str, str]] = {
    "PGHOST": ("postgres", "host"),
    "PGPORT": ("postgres", "port"),
    "PGUSER": ("postgres", "user"),
    "PGDATABASE": ("postgres", "dbname"),
    "PGPASSWORD": ("postgres", "password"),
    "DB_PASSWORD": ("postgres", "password"),
    "PGDATA": ("postgres", "data_dir"),
    "BACKUP_S3_BUCKET": ("s3", "bucket"),
    "AWS_ACCESS_KEY_ID": ("s3", "access_key_id"),
    "AWS_SECRET_ACCESS_KEY": ("s3", "secret_access_key"),
    "AWS_REGION": ("s3", "region"),
    "PGDR_LOCAL_ENCRYPTION_PASSPHRASE": ("local", "encryption_passphrase"),
    "PGDR_S3_ENCRYPTION_PASSPHRASE": ("s3", "encryption_passphrase"),
    "TELEGRAM_BOT_TOKEN": ("telegram", "bot_token"),
    "TELEGRAM_CHAT_ID": ("telegram", "chat_id"),
}


def user_config_path() -> Path:
    import platformdirs

    return Path(platformdirs.user_config_dir("pgdr")) / "pgdr.toml"


def find_config(explicit: str | os.PathLike[str] | None = None) -> Path | None:
    """The config file to read, in the documented order; None when there is none at all."""
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist: create it with `pgdr --config {path} init`")
        return path
    env = os.environ.get("PGDR_CONFIG")
    if env:
        path = Path(env)
        if not path.is_file():
            raise ConfigError(f"config file {path} (from $PGDR_CONFIG) does not exist: fix PGDR_CONFIG")
        return path
    for candidate in (user_config_path(), SYSTEM_CONFIG):
        if candidate.is_file():
            return candidate
    return None


def load_config(explicit: str | os.PathLike[str] | None = None, *, require_file: bool = True) -> Config:
    """Read, validate and apply environment overrides.

    ``require_file`` is False only for commands that make sense without one (``init``).
    """
    path = find_config(explicit)
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            with path.open("rb") as fh:
                raw = tomllib.load(fh)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(
                f"{path} is not valid TOML ({exc}): fix the file or rewrite it with `pgdr init`"
            ) from None
        except UnicodeDecodeError:
            raise ConfigError(
                f"{path} is not valid TOML (not UTF-8 text): fix the file or rewrite it with `pgdr init`"
            ) from None
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    elif require_file:
        raise ConfigError(
            f"no config file found ({user_config_path()} or {SYSTEM_CONFIG}): "
            "run `pgdr init`, or pass --config PATH / set PGDR_CONFIG"
        )
    where = str(path) if path else "the environment"
    cfg = _build(raw, where, source=path.absolute() if path else None)
    if path is not None:
        _check_secret_file(path, raw)
    return _validate(cfg, where)


def _check_secret_file(path: Path, raw: dict[str, Any]) -> None:
    """A file holding secrets must be readable by its owner alone: whoever reads it reads the backups."""
    held = [f"{section}.{key}" for section, key in sorted(SECRET_KEYS) if (raw.get(section) or {}).get(key)]
    if not held:
        return
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise ConfigError(
            f"{path} holds secrets ({', '.join(held)}) but is readable by others (mode {mode:04o}): "
            f"run `chmod 600 {path}` (and chown it to the user running pgdr), or move the secrets to the environment"
        )


def _build(raw: dict[str, Any], where: str, *, source: Path | None) -> Config:
    for section in raw:
        if section not in SECTIONS:
            raise ConfigError(f"unknown section [{section}] in {where}{_hint(section, SECTIONS)}")
    sections: dict[str, Any] = {}
    hints = typing.get_type_hints(Config)
    for section in SECTIONS:
        cls = hints[section]
        table = raw.get(section, {})
        if not isinstance(table, dict):
            raise ConfigError(f"[{section}] in {where} must be a table, not a value")
        values = {name: _coerce(section, name, value, cls, where) for name, value in table.items()}
        for var, (sec, key) in ENVIRONMENT.items():
            if sec == section and os.environ.get(var):
                values[key] = _coerce(section, key, os.environ[var], cls, f"${var}", from_env=True)
        sections[section] = cls(**values)
    return Config(**sections, source=source)


def _coerce(section: str, key: str, value: Any, cls: type, where: str, *, from_env: bool = False) -> Any:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    if key not in fields:
        raise ConfigError(f"unknown key {section}.{key} in {where}{_hint(key, fields)}")
    expected = typing.get_type_hints(cls)[key]
    shown = "" if (section, key) in SECRET_KEYS else f" (got {value!r})"
    if expected is int:
        if from_env and isinstance(value, str) and value.strip().isdecimal():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{section}.{key} in {where} must be an integer{shown}")
        low, high, meaning = RANGES[(section, key)]
        if not low <= value <= high:
            raise ConfigError(f"{section}.{key} in {where} must be between {low} and {high} ({meaning}; got {value})")
        return value
    if expected is str:
        if not isinstance(value, str):
            raise ConfigError(f"{section}.{key} in {where} must be a string{shown}")
        if "\0" in value:  # no path, host or password can hold one, and os calls raise on it
            raise ConfigError(f"{section}.{key} in {where} must not contain a NUL character{shown}")
        choices = CHOICES.get((section, key))
        if choices is not None and value not in choices:
            allowed = ", ".join(repr(c) for c in choices)
            raise ConfigError(f"{section}.{key} in {where} must be one of {allowed}{shown}")
        return value
    if expected is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{section}.{key} in {where} must be true or false{shown}")
        return value
    if typing.get_origin(expected) is list or isinstance(expected, types.GenericAlias):
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{section}.{key} in {where} must be a list of strings{shown}")
        return list(value)
    raise AssertionError(f"unhandled config type {expected!r}")  # pragma: no cover


def _hint(word: str, options: Any) -> str:
    import difflib  # only for a mistake: not on wal-push's path

    close = difflib.get_close_matches(word, list(options), n=1)
    return f": did you mean {close[0]!r}?" if close else f": known are {', '.join(options)}"


def _validate(cfg: Config, where: str) -> Config:
    if cfg.source is None:
        return cfg
    _validate_cluster_name(cfg.cluster.name, where)
    if not cfg.repository_names:
        raise ConfigError(f"no repository configured in {where}: set [local] path and/or [s3] bucket")
    for name in cfg.archive.sync:
        if name not in cfg.repository_names:
            raise ConfigError(
                f"archive.sync in {where} names repository {name!r}, which is not configured "
                f"(configured: {', '.join(cfg.repository_names)})"
            )
    for name, repo in (("local", cfg.local), ("s3", cfg.s3)):
        _validate_encryption(name, repo.encryption, repo.encryption_passphrase, repo.encryption_key_file, where)
    if cfg.s3.sse == "aws:kms" and not cfg.s3.kms_key_id:
        raise ConfigError(f's3.kms_key_id is missing in {where}: s3.sse = "aws:kms" needs the KMS key id')
    return cfg


def _validate_cluster_name(name: str, where: str) -> None:
    if not name:
        raise ConfigError(f'cluster.name is missing in {where}: set [cluster] name = "..." (e.g. "main")')
    if (
        len(name) > MAX_CLUSTER_NAME
        or not name.isprintable()
        or "/" in name
        or name.startswith(".")
        or name != name.strip()
    ):
        shown = repr(name) if len(name) <= MAX_CLUSTER_NAME else f"{len(name)} characters"
        raise ConfigError(
            f"cluster.name in {where} must be at most {MAX_CLUSTER_NAME} printable characters, without '/', "
            f"a leading '.', control characters or spaces at either end (got {shown})"
        )


#: Shorter passphrases fall to an offline guess at scrypt's cost; a key file is the way to go below this.
MIN_PASSPHRASE = 12


def _validate_encryption(name: str, encryption: str, passphrase: str, key_file: str, where: str) -> None:
    if not encryption:
        return
    env = f"PGDR_{name.upper()}_ENCRYPTION_PASSPHRASE"
    if bool(passphrase) == bool(key_file):
        raise ConfigError(
            f"{name}.encryption is on in {where} and needs exactly one of {name}.encryption_passphrase "
            f"(or ${env}) and {name}.encryption_key_file"
        )
    if passphrase and len(passphrase) < MIN_PASSPHRASE:
        raise ConfigError(
            f"{name}.encryption_passphrase is shorter than {MIN_PASSPHRASE} characters: use a longer one, "
            f"or a key file ({name}.encryption_key_file, made with `openssl rand -hex 32`)"
        )


STARTER = """\
# pgdr configuration. Environment variables override these values:
# DB_PASSWORD, BACKUP_S3_BUCKET, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION,
# TELEGRAM_BOT_TOKEN, TELEGRAM_CHAT_ID and libpq's PGHOST, PGPORT, PGUSER, PGDATABASE, PGPASSWORD.

[cluster]
# The name everything is stored under, and the word typed to confirm a restore.
name = {name}

[postgres]
host = {host}          # a socket directory or a host name; empty: libpq's default
port = {port}
user = {user}
dbname = {dbname}
data_dir = {data_dir}  # needed by check and restore
bin_dir = {bin_dir}    # PostgreSQL programs; empty: /usr/lib/postgresql/<data_dir's major>/bin, else PATH
config_file = ""       # postgresql.conf outside the data directory; empty: found (Debian: /etc/postgresql)

[local]
path = {local_path}    # local repository; empty: no local repository
retention_days = 7
encryption = ""        # "aes-256-gcm": encrypt every object pgdr stores here (docs/encryption.md)
encryption_passphrase = ""  # or $PGDR_LOCAL_ENCRYPTION_PASSPHRASE; keep a copy somewhere safe
encryption_key_file = ""    # or a file of 64 hex digits: `openssl rand -hex 32`

[s3]
bucket = ""            # empty: no S3 repository
prefix = ""
region = ""
endpoint_url = ""      # any S3-compatible endpoint, e.g. "http://127.0.0.1:9000"
storage_class = "STANDARD_IA"
sse = ""               # "", "AES256" or "aws:kms"
kms_key_id = ""
retention_days = 30
encryption = ""        # client-side, as for [local]; may be on together with sse
encryption_passphrase = ""  # or $PGDR_S3_ENCRYPTION_PASSPHRASE
encryption_key_file = ""

[archive]
sync = []              # repositories wal-push must reach before it answers; [] = local, else s3
compression = "zstd"   # "zstd" or "none"
compression_level = 1  # WAL compresses almost as well at 1 as at 3, in half the time
push_ahead = 8         # segments pushed ahead in the background, 2 at a time (0: off)
workers = 2
server = true          # a resident push server answers wal-push: Python starts once per burst, not per segment
server_idle = 10       # seconds the push server waits for the next segment before it exits

[backup]
checkpoint = "fast"    # "fast" or "spread"
compression_level = 3

[restore]
timezone = "UTC"       # the zone of a --timestamp typed without an offset
prefetch = 16          # WAL segments fetched ahead of recovery, 4 at a time (0: off)
prefetch_workers = 4

[telegram]
# Messages for backups, failures, restores and alarms; empty token or chat: no messages.
bot_token = ""
chat_id = ""
api_url = "https://api.telegram.org"
repeat_minutes = 60    # the same failure at most once per this many minutes (0: every time)

[schedule]
# The daemon (`pgdr --daemon`): cron expressions, 5 fields (or 6 with a leading seconds field),
# read in `timezone`; "" disables a job.
base_backup = "0 */6 * * *"      # physical base backup
# PostgreSQL 17+ with summarize_wal = on: incremental backups (only the blocks changed since the newest
# backup) between the full ones, e.g. a weekly full and an incremental every 6 hours:
#   base_backup = "0 1 * * 0"  and  incremental_backup = "0 */6 * * *"
# (when both are due at once, the full one runs and that incremental is skipped)
incremental_backup = ""          # "": none
logical_dump = "30 */6 * * *"    # pg_dump .dump and .sql.gz
verify = "15 3 * * *"            # checksums and WAL continuity
verify_deep = "45 3 * * 0"       # a restore rehearsal
expire = "0 4 * * *"             # retention; also after every scheduled backup
rpo_check = "* * * * *"          # alarm when the newest archived WAL is too old
wal_index = "*/15 * * * *"       # commit times of WAL no background indexer reached (S3-only archives)
rpo_alarm_minutes = 10
timezone = "UTC"

[daemon]
metrics_port = 0                 # Prometheus /metrics over HTTP; 0: off
metrics_address = "127.0.0.1"
metrics_textfile = ""            # empty: pgdr.prom in the state dir

[audit]
# Restores, expiries and config changes go to audit.log in the state dir; also keep a copy of each
# entry in the repositories (audit/), where it outlives the host:
copy_to_repositories = false

[verify]
# A plain `pgdr verify` reads every new or changed object and remembers what it found intact (in each
# repository, verify/objects.json.zst); each remembered object is read again once every reread_days
# days, a few each run. `pgdr verify --full` reads everything now.
reread_days = 30                 # 0: read every object on every run
"""


def starter_config(
    *,
    name: str = "main",
    host: str = "",
    port: int = 5432,
    user: str = "postgres",
    dbname: str = "postgres",
    data_dir: str = "",
    local_path: str = "",
    bin_dir: str = "",
) -> str:
    """A commented starting config; values are quoted with tomli-w so any path round-trips."""
    import tomli_w

    def q(value: str) -> str:
        return tomli_w.dumps({"v": value}).split("=", 1)[1].strip()

    return STARTER.format(
        name=q(name),
        host=q(host),
        port=port,
        user=q(user),
        dbname=q(dbname),
        data_dir=q(data_dir),
        local_path=q(local_path),
        bin_dir=q(bin_dir),
    )
