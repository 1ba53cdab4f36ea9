"""The encrypted object format and the encrypting repository, against a real local repository."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from backend.config import load_config
from backend.errors import ConfigError, ObjectNotFound, PgdrError, RepositoryError
from backend.repository import read_identity
from backend.repository.crypt import (
    CHUNK_EXPONENT,
    HEADER_SIZE,
    MAGIC,
    DamagedObject,
    Decryptor,
    Encryptor,
    KeyMismatch,
    Keys,
    Secret,
    decrypt,
    encrypt,
    plaintext_size,
)
from backend.repository.encrypted import ENCRYPTION_KEY, EncryptedRepository
from backend.repository.local import LocalRepository
from tests.harness.cluster import pgdr_executable

CHUNK = 1 << CHUNK_EXPONENT
PASSPHRASE = "correct horse battery staple"
ROOT = Path(__file__).resolve().parents[1]
PGDR = str(pgdr_executable())


@pytest.fixture(scope="module")
def keys() -> Keys:
    return Keys(Secret("local", passphrase=PASSPHRASE))


SALT = bytes(range(16))


@pytest.mark.parametrize("size", [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK + 17])
def test_round_trip_and_exact_plaintext_size(keys: Keys, size: int) -> None:
    data = os.urandom(size)
    parts: list[bytes] = []
    writer = Encryptor(keys, SALT, parts.append)
    for start in range(0, size, 99_991):  # odd write sizes straddle chunk boundaries
        writer.write(data[start : start + 99_991])
    writer.finish()
    blob = b"".join(parts)
    assert (blob.startswith(MAGIC) and data[:64] not in blob) or size < 64
    assert plaintext_size(len(blob)) == size
    reader = io.BufferedReader(Decryptor(keys, io.BytesIO(blob), "obj"))
    assert reader.read(5) == data[:5] and reader.read() == data[5:]


def tampered(blob: bytes) -> list[tuple[str, bytes]]:
    """Every way an attacker or a bad disk can change a three-chunk object."""
    sealed = CHUNK + 16
    first, second = HEADER_SIZE, HEADER_SIZE + sealed

    def flip(at: int) -> bytes:
        return blob[:at] + bytes([blob[at] ^ 1]) + blob[at + 1 :]

    return [
        ("header salt", flip(30)),
        ("header chunk size", blob[:9] + bytes([19]) + blob[10:]),
        ("ciphertext", flip(first + 1000)),
        ("tag", flip(second - 1)),
        ("truncated mid-chunk", blob[:-5]),
        ("truncated at a chunk boundary", blob[: second + sealed]),
        ("last chunk dropped", blob[: -(len(blob) - second - sealed)]),
        (
            "chunks swapped",
            blob[:first] + blob[second : second + sealed] + blob[first:second] + blob[second + sealed :],
        ),
        ("empty body", blob[:HEADER_SIZE]),
    ]


def test_every_tampering_is_detected(keys: Keys) -> None:
    blob = encrypt(keys, SALT, os.urandom(2 * CHUNK + 100))
    other = encrypt(keys, SALT, os.urandom(2 * CHUNK + 100))
    cases = [
        *tampered(blob),
        ("chunk spliced from another object", blob[: HEADER_SIZE + CHUNK + 16] + other[HEADER_SIZE + CHUNK + 16 :]),
    ]
    for what, bad in cases:
        try:
            decrypt(keys, bad, "obj")
        except DamagedObject as exc:
            assert "fails authentication" in str(exc) or "damaged encryption header" in str(exc)
        else:
            pytest.fail(f"{what}: not detected")


def test_a_wrong_key_is_named_as_such_not_as_damage(keys: Keys, tmp_path: Path) -> None:
    blob = encrypt(keys, SALT, b"data")
    with pytest.raises(KeyMismatch, match=r"another key: set \[local\] encryption_passphrase"):
        decrypt(Keys(Secret("local", passphrase="another passphrase entirely")), blob, "obj")
    key_file = tmp_path / "key"
    key_file.write_text(os.urandom(32).hex())
    key_file.chmod(0o600)
    with pytest.raises(KeyMismatch, match=r"encrypted with a passphrase: set \[local\] encryption_passphrase"):
        decrypt(Keys(Secret("local", key_file=str(key_file))), blob, "obj")


def test_a_key_file_must_be_private_and_hold_a_256_bit_key(tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text("not hex\n")
    key_file.chmod(0o600)
    with pytest.raises(ConfigError, match=r"64 hexadecimal digits.*openssl rand -hex 32"):
        encrypt(Keys(Secret("s3", key_file=str(key_file))), SALT, b"x")
    key_file.write_text(os.urandom(32).hex() + "\n")
    key_file.chmod(0o644)
    with pytest.raises(ConfigError, match=r"readable by others.*chmod 600"):
        encrypt(Keys(Secret("s3", key_file=str(key_file))), SALT, b"x")
    with pytest.raises(ConfigError, match="cannot read"):
        encrypt(Keys(Secret("s3", key_file=str(tmp_path / "missing"))), SALT, b"x")


def open_encrypted(path: Path, secret: Secret) -> EncryptedRepository:
    return EncryptedRepository(LocalRepository(path, "main"), secret)


def test_the_repository_stores_ciphertext_and_lists_plaintext_sizes(tmp_path: Path) -> None:
    repo = open_encrypted(tmp_path, Secret("local", passphrase=PASSPHRASE))
    secret_text = b"account 42 balance 1000000 " * 5000
    repo.put("backups/b1/manifest.json", secret_text)
    with repo.writer("backups/b1/base.tar.zst") as out:
        for _ in range(3):
            out.write(secret_text)
    stored = (tmp_path / "main" / "backups" / "b1" / "base.tar.zst").read_bytes()
    assert stored.startswith(MAGIC) and b"account 42" not in stored
    assert {(i.key, i.size) for i in repo.list("backups/")} == {
        ("backups/b1/base.tar.zst", 3 * len(secret_text)),
        ("backups/b1/manifest.json", len(secret_text)),
    }
    with repo.open("backups/b1/base.tar.zst") as fh:
        assert fh.read(len(secret_text)) == secret_text
    assert repo.get("backups/b1/manifest.json") == secret_text
    record = json.loads((tmp_path / "main" / ENCRYPTION_KEY).read_text())
    assert record["kdf"] == "scrypt" and record["cipher"] == "aes-256-gcm"
    assert PASSPHRASE not in (tmp_path / "main" / ENCRYPTION_KEY).read_text()
    assert [i.key for i in repo.list()] == ["backups/b1/base.tar.zst", "backups/b1/manifest.json"]


def test_a_wrong_passphrase_writes_nothing(tmp_path: Path) -> None:
    open_encrypted(tmp_path, Secret("local", passphrase=PASSPHRASE)).put("repo.json", b"{}")
    wrong = open_encrypted(tmp_path, Secret("local", passphrase="not the passphrase"))
    with pytest.raises(KeyMismatch, match="key check does not match"):
        wrong.put("backups/b2/manifest.json", b"{}")
    assert not (tmp_path / "main" / "backups").exists()


def test_encryption_is_refused_for_a_repository_holding_plaintext(tmp_path: Path) -> None:
    LocalRepository(tmp_path, "main").put("repo.json", b"{}")
    with pytest.raises(RepositoryError, match=r"already holds unencrypted objects.*empty location"):
        open_encrypted(tmp_path, Secret("local", passphrase=PASSPHRASE)).put("wal/x", b"x")


def test_a_plain_config_on_an_encrypted_repository_says_so(tmp_path: Path) -> None:
    open_encrypted(tmp_path, Secret("local", passphrase=PASSPHRASE)).put("repo.json", b"{}")
    with pytest.raises(ConfigError, match=r'is encrypted: set \[local\] encryption = "aes-256-gcm"'):
        read_identity(LocalRepository(tmp_path, "main"))


def test_a_plaintext_object_planted_in_an_encrypted_repository_is_refused(tmp_path: Path) -> None:
    repo = open_encrypted(tmp_path, Secret("local", passphrase=PASSPHRASE))
    repo.put("wal/a", b"genuine")
    LocalRepository(tmp_path, "main").put("wal/a", b"planted")
    with pytest.raises(DamagedObject, match="not encrypted"):
        repo.get("wal/a")


def write_config(path: Path, local: str) -> Path:
    path.write_text(f'[cluster]\nname = "main"\n\n[local]\npath = "{path.parent}/repo"\n{local}')
    path.chmod(0o600)
    return path


def test_config_needs_one_key_source_and_a_long_enough_passphrase(tmp_path: Path) -> None:
    cfg = tmp_path / "pgdr.toml"
    with pytest.raises(ConfigError, match=r"needs exactly one of local.encryption_passphrase"):
        load_config(write_config(cfg, 'encryption = "aes-256-gcm"\n'))
    with pytest.raises(ConfigError, match="shorter than 12 characters"):
        load_config(write_config(cfg, 'encryption = "aes-256-gcm"\nencryption_passphrase = "short"\n'))
    with pytest.raises(ConfigError, match=r"local.encryption"):
        load_config(write_config(cfg, 'encryption = "aes-128"\n'))


def test_the_passphrase_comes_from_the_environment_and_is_never_shown(tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "pgdr.toml", 'encryption = "aes-256-gcm"\n')
    env = {**os.environ, "PGDR_LOCAL_ENCRYPTION_PASSPHRASE": PASSPHRASE}
    shown = subprocess.run(
        [PGDR, "--config", str(cfg), "config"],
        capture_output=True,
        text=True,
        env=env,
        check=True,
        cwd=ROOT,
    ).stdout
    assert PASSPHRASE not in shown and 'encryption_passphrase = "********"' in shown


def test_pgdr_decrypt_and_the_standalone_script_agree(tmp_path: Path) -> None:
    key_file = tmp_path / "local.key"
    key_file.write_text(os.urandom(32).hex() + "\n")
    key_file.chmod(0o600)
    cfg = write_config(tmp_path / "pgdr.toml", f'encryption = "aes-256-gcm"\nencryption_key_file = "{key_file}"\n')
    repo = EncryptedRepository(LocalRepository(tmp_path / "repo", "main"), Secret("local", key_file=str(key_file)))
    data = os.urandom(CHUNK + 12345)
    repo.put("wal/0000000100000000/segment", data)
    stored = tmp_path / "repo" / "main" / "wal" / "0000000100000000" / "segment"

    def run(*argv: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(argv, capture_output=True, text=True, env={**os.environ, **env}, check=False, cwd=ROOT)

    by_key = run(PGDR, "--config", str(cfg), "decrypt", "wal/0000000100000000/segment", "-o", str(tmp_path / "by-key"))
    by_file = run(PGDR, "--config", str(cfg), "decrypt", "--file", str(stored), "-o", str(tmp_path / "by-file"))
    script = run(
        sys.executable,
        str(ROOT / "docs" / "decrypt_object.py"),
        "--key-file",
        str(key_file),
        str(stored),
        str(tmp_path / "by-script"),
    )
    assert (by_key.returncode, by_file.returncode, script.returncode) == (0, 0, 0), by_key.stderr + script.stderr
    for name in ("by-key", "by-file", "by-script"):
        assert (tmp_path / name).read_bytes() == data

    stored.write_bytes(stored.read_bytes()[:-1] + b"!")  # tampered: both refuse and leave no output
    bad = run(PGDR, "--config", str(cfg), "decrypt", "--file", str(stored), "-o", str(tmp_path / "bad"))
    assert bad.returncode == 2 and "fails authentication" in bad.stderr and not (tmp_path / "bad").exists()
    bad_script = run(
        sys.executable,
        str(ROOT / "docs" / "decrypt_object.py"),
        "--key-file",
        str(key_file),
        str(stored),
        str(tmp_path / "bad2"),
    )
    assert bad_script.returncode != 0 and not (tmp_path / "bad2").exists()


def test_the_standalone_script_reads_passphrase_objects(tmp_path: Path) -> None:
    keys = Keys(Secret("s3", passphrase=PASSPHRASE))
    data = b"manifest" * 1000
    blob = encrypt(keys, SALT, data)
    src, out = tmp_path / "obj", tmp_path / "plain"
    src.write_bytes(blob)
    done = subprocess.run(
        [sys.executable, str(ROOT / "docs" / "decrypt_object.py"), str(src), str(out)],
        env={**os.environ, "PGDR_PASSPHRASE": PASSPHRASE},
        capture_output=True,
        check=False,
    )
    assert done.returncode == 0 and out.read_bytes() == data
    wrong = subprocess.run(
        [sys.executable, str(ROOT / "docs" / "decrypt_object.py"), str(src), str(out) + "2"],
        env={**os.environ, "PGDR_PASSPHRASE": "wrong"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert wrong.returncode != 0 and "wrong passphrase or key" in wrong.stderr


def test_damaged_manifest_errors_stay_one_line(keys: Keys) -> None:
    from backend.manifest import BackupManifest

    with pytest.raises(PgdrError, match="is encrypted: set that repository's encryption"):
        BackupManifest.from_json(encrypt(keys, SALT, b"{}"), "backups/x/manifest.json in the s3 repository")


def test_two_first_writers_racing_both_succeed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The uploader and a backup may both write first to an empty repository: neither is refused."""
    secret = Secret("s3", passphrase=PASSPHRASE)
    first, second = open_encrypted(tmp_path, secret), open_encrypted(tmp_path, secret)
    real_get = second.inner.get

    def get_while_the_other_writes(key: str) -> bytes:
        if key == ENCRYPTION_KEY and not (tmp_path / "main" / "repo.json").exists():
            first.put("repo.json", b'{"first": true}')  # it creates the repository between our look and our listing
            raise ObjectNotFound(key)
        return real_get(key)

    monkeypatch.setattr(second.inner, "get", get_while_the_other_writes)
    second.put("wal/a", b"second")
    assert first.get("wal/a") == b"second" and second.get("repo.json") == b'{"first": true}'
