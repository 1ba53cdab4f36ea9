"""What ``pgdr init`` says is left to do, from the flags it was given.

Apart from the config module: it asks where the PostgreSQL programs are (``backend.postgres``),
which itself reads the config.
"""

from __future__ import annotations

import shlex
from pathlib import Path

from backend.config import Config, LocalConfig, PostgresConfig
from backend.errors import ConfigError
from backend.postgres import program


def next_steps(path: Path, *, data_dir: str, local_path: str, bin_dir: str, pgdr: str) -> list[str]:
    """What is left to do after ``pgdr init`` wrote the starting config at ``path`` with these flags.

    ``pgdr`` is the command the server's user runs (archive_command), as the operator typed it. Read
    from the flags, not the file: a starting config without a repository does not load yet.
    """
    cfg = Config(
        postgres=PostgresConfig(data_dir=data_dir, bin_dir=bin_dir), local=LocalConfig(path=local_path), source=path
    )
    where = cfg.where()
    command = f"{pgdr} --config {shlex.quote(str(cfg.source))}" if cfg.source else pgdr
    steps = []
    if not cfg.local.path and not cfg.s3.bucket:
        steps.append(f"set [local] path and/or [s3] bucket in {where}: where backups and WAL go")
    elif cfg.local.path and not Path(cfg.local.path).is_dir():
        steps.append(f"create the local repository {cfg.local.path}, writable by the server's user")
    if cfg.local.path and not cfg.s3.bucket:
        steps.append(f"for a copy off this host, set [s3] bucket (and its keys) in {where}")
    if not cfg.postgres.data_dir:
        steps.append(f"set [postgres] data_dir in {where}: check, restore and the timeline need it")
    try:
        program(cfg, "pg_basebackup")
    except ConfigError as exc:
        steps.append(str(exc))
    quoted = f"{command} wal-push %p".replace("'", "''")  # a quote inside a postgresql.conf string is doubled
    steps.append(
        f"turn archiving on: archive_mode = on, archive_command = '{quoted}' (postgresql.conf, "
        "or ALTER SYSTEM SET) and archive_timeout = 60 (a quiet server's commits archived within a minute), "
        "then restart the server"
    )
    steps.append(f"check it, then take the first base backup: `{command} check`, `{command} backup`")
    return steps
