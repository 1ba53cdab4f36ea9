"""``pgdr decrypt`` is all or nothing: an object damaged in its last chunk leaves no output at all.

The chunks before the damage authenticate, so a decrypter that streams would already have written
them: a pipe (``-o -``) would have passed most of the object on before the error.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from backend.repository.crypt import CHUNK_EXPONENT, Secret
from backend.repository.encrypted import EncryptedRepository
from backend.repository.local import LocalRepository
from tests.harness.cluster import pgdr_executable

CHUNK = 1 << CHUNK_EXPONENT
KEY = "wal/0000000100000000/000000010000000000000001"


@pytest.fixture
def damaged(tmp_path: Path) -> tuple[Path, bytes]:
    """A config and the plaintext of an object of three chunks whose last chunk has a flipped byte."""
    key_file = tmp_path / "local.key"
    key_file.write_text(os.urandom(32).hex())
    key_file.chmod(0o600)
    config = tmp_path / "pgdr.toml"
    config.write_text(
        f'[cluster]\nname = "main"\n\n[local]\npath = "{tmp_path}/repo"\nencryption = "aes-256-gcm"\n'
        f'encryption_key_file = "{key_file}"\n'
    )
    config.chmod(0o600)
    plaintext = os.urandom(2 * CHUNK + 4321)
    EncryptedRepository(LocalRepository(tmp_path / "repo", "main"), Secret("local", key_file=str(key_file))).put(
        KEY, plaintext
    )
    stored = tmp_path / "repo" / "main" / KEY
    blob = bytearray(stored.read_bytes())
    blob[-10] ^= 0x01  # inside the last chunk
    stored.write_bytes(bytes(blob))
    return config, plaintext


def decrypt(config: Path, output: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [str(pgdr_executable()), "--config", str(config), "decrypt", KEY, "-o", output],
        capture_output=True,
        env={**os.environ, "PGDR_STATE_DIR": str(config.parent / "state")},
        check=False,
    )


def test_a_damaged_last_chunk_writes_nothing_to_stdout(damaged: tuple[Path, bytes]) -> None:
    config, _ = damaged
    result = decrypt(config, "-")
    assert result.returncode == 2
    assert result.stdout == b"", f"{len(result.stdout)} bytes of a damaged object went out"
    (line,) = result.stderr.decode().strip().splitlines()
    assert "fails authentication" in line and "at chunk 2" in line


def test_a_damaged_last_chunk_creates_no_file(damaged: tuple[Path, bytes]) -> None:
    config, _ = damaged
    folder = config.parent / "out"
    folder.mkdir()
    result = decrypt(config, str(folder / "segment"))
    assert result.returncode == 2 and b"fails authentication" in result.stderr
    assert list(folder.iterdir()) == [], "an output or a temporary file was left"


def test_a_good_object_goes_out_whole(damaged: tuple[Path, bytes]) -> None:
    config, plaintext = damaged
    stored = config.parent / "repo" / "main" / KEY
    blob = bytearray(stored.read_bytes())
    blob[-10] ^= 0x01  # undamaged again
    stored.write_bytes(bytes(blob))
    assert decrypt(config, "-").stdout == plaintext
    output = config.parent / "plain"
    result = decrypt(config, str(output))
    assert result.returncode == 0 and output.read_bytes() == plaintext
    assert output.stat().st_mode & 0o077 == 0, "the plaintext is readable by others"
    again = decrypt(config, str(output))
    assert again.returncode == 2 and b"pgdr never overwrites a file" in again.stderr
