"""config-seen.json keeps secrets only as scrypt fingerprints, and a file of the first version is migrated.

The file lies in the state dir, often on the same volume as an encrypted repository: a salted
SHA-256 of the passphrase there (version 1) could be guessed at millions of tries a second.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path
from typing import Any

from backend import audit
from backend.config import SECRET_KEYS, load_config
from tests.harness.cluster import pgdr_executable

PASSPHRASE = "correct horse battery staple"


def write(config: Path, passphrase: str, retention: int = 7) -> None:
    config.write_text(
        f'[cluster]\nname = "main"\n\n[local]\npath = "{config.parent}/repo"\nretention_days = {retention}\n'
        f'encryption = "aes-256-gcm"\nencryption_passphrase = "{passphrase}"\n'
    )
    config.chmod(0o600)
    (config.parent / "repo").mkdir(exist_ok=True)


def pgdr(config: Path, state: Path, *args: str) -> None:
    subprocess.run(
        [str(pgdr_executable()), "--config", str(config), *args],
        env={**os.environ, "PGDR_STATE_DIR": str(state)},
        check=True,
        capture_output=True,
    )


def actions(state: Path) -> list[Any]:
    log = state / "audit.log"
    return [json.loads(line)["action"] for line in log.read_text().splitlines()] if log.exists() else []


def first_version(config: Path, salt: str) -> dict[str, Any]:
    """What the first version wrote for this config: every secret as sha256("<salt>:<json value>")."""
    values = {}
    for section, table in load_config(config).to_dict(redact=False).items():
        for key, value in table.items():
            shown = json.dumps(value, default=str)
            if (section, key) in SECRET_KEYS:
                shown = hashlib.sha256(f"{salt}:{shown}".encode()).hexdigest()
            values[f"{section}.{key}"] = shown
    return {"salt": salt, "values": values}


def test_the_passphrase_is_kept_as_a_slow_fingerprint(tmp_path: Path) -> None:
    config, state = tmp_path / "pgdr.toml", tmp_path / "state"
    write(config, PASSPHRASE)
    pgdr(config, state, "config")
    seen = json.loads((state / "config-seen.json").read_text())
    assert seen["version"] == audit.SEEN_VERSION
    fast = hashlib.sha256(f"{seen['salt']}:{json.dumps(PASSPHRASE)}".encode()).hexdigest()
    stored = seen["values"]["local.encryption_passphrase"]
    assert stored != fast and PASSPHRASE not in json.dumps(seen)
    slow = hashlib.scrypt(
        f"local.encryption_passphrase={json.dumps(PASSPHRASE)}".encode(),
        salt=seen["salt"].encode(),
        n=1 << 15,
        r=8,
        p=1,
        maxmem=64 << 20,
        dklen=32,
    )
    assert stored == slow.hex()

    pgdr(config, state, "config")
    write(config, PASSPHRASE + " rotated")
    pgdr(config, state, "list")
    assert actions(state) == ["config first seen", "config change"]
    assert json.loads((state / "audit.log").read_text().splitlines()[-1])["changed"] == ["local.encryption_passphrase"]


def test_a_first_version_file_is_migrated_without_a_false_change(tmp_path: Path) -> None:
    config, state = tmp_path / "pgdr.toml", tmp_path / "state"
    write(config, PASSPHRASE)
    state.mkdir()
    old = first_version(config, "0123456789abcdef")
    (state / "config-seen.json").write_text(json.dumps(old))
    pgdr(config, state, "config")
    assert actions(state) == [], "the same config, seen by a newer pgdr, is not a change"
    seen = json.loads((state / "config-seen.json").read_text())
    assert seen["version"] == audit.SEEN_VERSION
    assert old["values"]["local.encryption_passphrase"] not in json.dumps(seen), "the fast hash is still there"

    (state / "config-seen.json").write_text(json.dumps(old))
    write(config, PASSPHRASE + " rotated", retention=14)
    pgdr(config, state, "config")
    entry = json.loads((state / "audit.log").read_text().splitlines()[-1])
    assert entry["action"] == "config change"
    assert entry["changed"] == ["local.encryption_passphrase", "local.retention_days"]


def test_a_damaged_file_is_seen_afresh(tmp_path: Path) -> None:
    config, state = tmp_path / "pgdr.toml", tmp_path / "state"
    write(config, PASSPHRASE)
    state.mkdir()
    for damaged in (b"[]", b'{"salt": 1, "values": []}', b"{", b"\xff"):
        (state / "config-seen.json").write_bytes(damaged)
        pgdr(config, state, "config")
    assert actions(state) == ["config first seen"] * 4
