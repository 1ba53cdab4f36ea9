"""Writing the config file from the settings view: only the keys the operator changed, secrets kept.

The view shows the effective configuration with secrets masked (``Config.to_dict()``). Writing
starts from the file's own TOML, not from the effective values: environment overrides are not baked
into the file, and a masked secret can never be written back over the real one. The new text is
validated by loading it with the backend's own loader before it replaces the file; the old file is
kept beside it. TOML comments are not preserved by tomli-w, which the view says before writing.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tomllib
import typing
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import tomli_w

from backend.config import MASK, SECRET_KEYS, Config, load_config
from backend.errors import ConfigError

Key = tuple[str, str]


def field_type(section: str, key: str) -> Any:
    hints = typing.get_type_hints(Config)
    return typing.get_type_hints(hints[section])[key]


def coerce(section: str, key: str, text: str) -> Any:
    """The typed value for what the operator typed, by the config field's type."""
    expected = field_type(section, key)
    if expected is int:
        value = text.strip()
        if not value.lstrip("-").isdigit():
            raise ConfigError(f"{section}.{key} must be an integer, not {text!r}")
        return int(value)
    if expected is bool:
        word = text.strip().lower()
        if word not in {"true", "false"}:
            raise ConfigError(f"{section}.{key} must be true or false, not {text!r}")
        return word == "true"
    if typing.get_origin(expected) is list:
        return [part.strip() for part in text.split(",") if part.strip()]
    return text


def render(value: Any) -> str:
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    return str(value)


def is_secret(section: str, key: str) -> bool:
    return (section, key) in SECRET_KEYS


def updated_document(raw: dict[str, Any], edits: dict[Key, Any]) -> dict[str, Any]:
    out = {section: dict(values) if isinstance(values, dict) else values for section, values in raw.items()}
    for (section, key), value in edits.items():
        if is_secret(section, key) and value in {MASK, ""}:
            continue  # never write a mask (or an untouched blank) over the file's real secret
        table = out.setdefault(section, {})
        if isinstance(table, dict):
            table[key] = value
    return out


def write_config(path: Path, edits: dict[Key, Any], *, now: datetime | None = None) -> tuple[Config, Path | None]:
    """Apply ``edits`` to the file at ``path``; returns the reloaded config and the kept old copy."""
    raw: dict[str, Any] = {}
    if path.exists():
        with path.open("rb") as fh:
            raw = tomllib.load(fh)
    text = tomli_w.dumps(updated_document(raw, edits))
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")
    temp = path.with_name(f".{path.name}.new-{stamp}")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write("# written by the pgdr console (comments of the previous version are in the .bak file)\n")
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    try:
        cfg = load_config(temp)
    except ConfigError:
        temp.unlink(missing_ok=True)
        raise
    kept = None
    if path.exists():
        kept = path.with_name(f"{path.name}.bak-{stamp}")
        shutil.copy2(path, kept)
        os.chmod(kept, 0o600)
        st = path.stat()
        if os.geteuid() == 0:
            os.chown(temp, st.st_uid, st.st_gid)
    os.replace(temp, path)
    cfg = dataclasses.replace(cfg, source=path)
    from backend import audit

    audit.note_config(cfg, written_by="the console", kept=str(kept) if kept else None)
    return cfg, kept
