"""pgdr's encrypted object format: AES-256-GCM over fixed-size chunks, authenticated end to end.

The format is documented byte for byte in docs/encryption.md, with a standalone decryption script,
so a key holder can always read a repository without pgdr. In short::

    header (72 bytes, also the associated data of every chunk)
      0   8  magic b"PGDRENC" + version 0x01
      8   1  key derivation: 0 = key file (the 256-bit key itself), 1 = scrypt(passphrase, N=2^15, r=8, p=1)
      9   1  log2 of the chunk size (20: 1 MiB)
      10  2  zero
      12  16 scrypt salt (the repository's; zero for a key file)
      28  32 object salt (random): object key = HKDF-SHA256(master key, object salt, "pgdr object v1")
      60  12 key check: HMAC-SHA256(master key, "pgdr key check")[:12]
    chunks: AES-256-GCM(object key, nonce = 11-byte big-endian chunk number + 1 byte "last" flag)
      every chunk but the last holds exactly a chunk size of plaintext; the last holds less (maybe 0)

Why this shape: a per-object key makes counter nonces safe forever; the "last" flag and the counter
in the nonce make truncation, reordering and splicing chunks between objects fail authentication;
the header as associated data makes a tampered header fail too; and the key check tells a wrong key
apart from a damaged object, so the operator gets the right one-line error.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import os
import secrets
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from backend.errors import ConfigError, RepositoryError
from backend.repository.base import ENCRYPTED_MAGIC

SCHEME = "aes-256-gcm"
MAGIC = ENCRYPTED_MAGIC
HEADER_SIZE = 72
TAG_SIZE = 16
CHUNK_EXPONENT = 20
KDF_KEY_FILE = 0
KDF_SCRYPT = 1
SCRYPT_N, SCRYPT_R, SCRYPT_P = 1 << 15, 8, 1
_OBJECT_INFO = b"pgdr object v1"
_KEY_CHECK = b"pgdr key check"


class KeyMismatch(RepositoryError):
    """The configured passphrase or key is not the one an object (or the repository) was made with."""


class DamagedObject(RepositoryError):
    """An encrypted object failed authentication: tampered with, truncated or corrupt."""


def looks_encrypted(blob: bytes) -> bool:
    """Whether bytes read as stored are a pgdr encrypted object (for "set the key" errors)."""
    return blob[: len(MAGIC)] == MAGIC


@dataclass(frozen=True)
class Secret:
    """Where a repository's key comes from; the value itself never reaches a message."""

    repository: str
    passphrase: str = ""
    key_file: str = ""

    @property
    def kdf(self) -> int:
        return KDF_KEY_FILE if self.key_file else KDF_SCRYPT

    def master_key(self, salt: bytes) -> bytes:
        if self.key_file:
            return read_key_file(Path(self.key_file), self.repository)
        return hashlib.scrypt(
            self.passphrase.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, maxmem=64 << 20, dklen=32
        )


def read_key_file(path: Path, repository: str) -> bytes:
    """A key file holds 64 hex digits (``openssl rand -hex 32``); only its owner may read it."""
    setting = f"[{repository}] encryption_key_file"
    try:
        st = path.stat()
        text = path.read_text().strip()
    except OSError as exc:
        raise ConfigError(f"cannot read the {setting} {path}: {exc.strerror}") from None
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(
            f"the {setting} {path} is readable by others (mode {stat.S_IMODE(st.st_mode):04o}): run `chmod 600 {path}`"
        )
    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = b""
    if len(key) != 32:
        raise ConfigError(
            f"the {setting} {path} must hold 64 hexadecimal digits (a 256-bit key): "
            f"create one with `openssl rand -hex 32 > {path}`"
        )
    return key


def key_check(master: bytes) -> bytes:
    return hmac.new(master, _KEY_CHECK, hashlib.sha256).digest()[:12]


def plaintext_size(stored: int) -> int:
    """The plaintext size of a stored object of ``stored`` bytes (the chunking makes it exact)."""
    chunk = 1 << CHUNK_EXPONENT
    sealed = stored - HEADER_SIZE - TAG_SIZE  # every object has a last chunk, however short
    if sealed < 0:
        return 0  # damaged: reading it says so
    full, last = divmod(sealed, chunk + TAG_SIZE)
    return full * chunk + last


class Keys:
    """Master keys by (derivation, salt): one scrypt per process and salt, however many objects."""

    def __init__(self, secret: Secret) -> None:
        self.secret = secret
        self._masters: dict[tuple[int, bytes], bytes] = {}

    def master(self, kdf: int, salt: bytes) -> bytes:
        found = self._masters.get((kdf, salt))
        if found is None:
            if kdf != self.secret.kdf:
                made = "a key file" if kdf == KDF_KEY_FILE else "a passphrase"
                setting = "encryption_key_file" if kdf == KDF_KEY_FILE else "encryption_passphrase"
                raise KeyMismatch(
                    f"the {self.secret.repository} repository was encrypted with {made}: "
                    f"set [{self.secret.repository}] {setting} to it"
                )
            found = self._masters[(kdf, salt)] = self.secret.master_key(salt)
        return found


def _object_key(master: bytes, salt: bytes) -> bytes:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=_OBJECT_INFO).derive(master)


def _nonce(counter: int, last: bool) -> bytes:
    return counter.to_bytes(11, "big") + (b"\x01" if last else b"\x00")


class Encryptor:
    """Encrypts one object as it is written; ``finish`` seals the last chunk."""

    def __init__(self, keys: Keys, repo_salt: bytes, sink: Callable[[bytes], object]) -> None:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        kdf = keys.secret.kdf
        salt = repo_salt if kdf == KDF_SCRYPT else bytes(16)  # a key file needs no salt
        master = keys.master(kdf, salt)
        object_salt = secrets.token_bytes(32)
        self._header = MAGIC + bytes([kdf, CHUNK_EXPONENT, 0, 0]) + salt + object_salt + key_check(master)
        self._aead = AESGCM(_object_key(master, object_salt))
        self._chunk = 1 << CHUNK_EXPONENT
        self._pending = bytearray()
        self._counter = 0
        self._sink = sink
        sink(self._header)

    def write(self, data: bytes, /) -> int:
        view = memoryview(data)
        if self._pending:
            take = self._chunk - len(self._pending)
            self._pending += view[:take]
            view = view[take:]
            if len(self._pending) < self._chunk:
                return len(data)
            self._seal(bytes(self._pending), last=False)
            self._pending.clear()
        while len(view) >= self._chunk:
            self._seal(view[: self._chunk], last=False)
            view = view[self._chunk :]
        self._pending += view
        return len(data)

    def finish(self) -> None:
        self._seal(bytes(self._pending), last=True)
        self._pending.clear()

    def _seal(self, plain: bytes | memoryview, *, last: bool) -> None:
        self._sink(self._aead.encrypt(_nonce(self._counter, last), bytes(plain), self._header))
        self._counter += 1


def encrypt(keys: Keys, repo_salt: bytes, data: bytes) -> bytes:
    parts: list[bytes] = []
    enc = Encryptor(keys, repo_salt, parts.append)
    enc.write(data)
    enc.finish()
    return b"".join(parts)


class Decryptor(io.RawIOBase):
    """A readable stream of an object's plaintext; every byte it returns has been authenticated."""

    def __init__(self, keys: Keys, source: BinaryIO, where: str) -> None:
        super().__init__()
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        self._source = source
        self._where = where
        header = _read_exactly(source, HEADER_SIZE)
        if not looks_encrypted(header):
            raise DamagedObject(
                f"{where} is not encrypted, but encryption is on for this repository: refusing it "
                "(it may have been replaced); run `pgdr verify`"
            )
        if len(header) < HEADER_SIZE or header[9] > 30 or header[8] not in (KDF_KEY_FILE, KDF_SCRYPT):
            raise DamagedObject(f"{where} has a damaged encryption header: run `pgdr verify`")
        master = keys.master(header[8], header[12:28])
        if not hmac.compare_digest(key_check(master), header[60:72]):
            raise KeyMismatch(
                f"{where} was encrypted with another key: set [{keys.secret.repository}] "
                "encryption_passphrase or encryption_key_file to the one this repository was created with"
            )
        self._header = header
        self._aead = AESGCM(_object_key(master, header[28:60]))
        self._chunk = 1 << header[9]
        self._counter = 0
        self._buffer = memoryview(b"")
        self._done = False

    def readable(self) -> bool:
        return True

    def readinto(self, target: bytearray | memoryview) -> int:  # type: ignore[override]
        while not self._buffer and not self._done:
            self._next_chunk()
        n = min(len(target), len(self._buffer))
        target[:n] = self._buffer[:n]
        self._buffer = self._buffer[n:]
        return n

    def readall(self) -> bytes:
        parts = [bytes(self._buffer)]
        while not self._done:
            self._next_chunk()
            parts.append(bytes(self._buffer))
        self._buffer = memoryview(b"")
        return b"".join(parts)

    def _next_chunk(self) -> None:
        from cryptography.exceptions import InvalidTag

        sealed = _read_exactly(self._source, self._chunk + TAG_SIZE)
        last = len(sealed) < self._chunk + TAG_SIZE
        try:
            plain = self._aead.decrypt(_nonce(self._counter, last), sealed, self._header)
        except InvalidTag:
            raise DamagedObject(
                f"{self._where} fails authentication (tampered with, truncated or corrupt) at chunk {self._counter}: "
                "it is not used; run `pgdr verify`"
            ) from None
        self._counter += 1
        self._buffer = memoryview(plain)
        self._done = last


def _read_exactly(source: BinaryIO, size: int) -> bytes:
    parts: list[bytes] = []
    wanted = size
    while wanted:
        part = source.read(wanted)
        if not part:
            break
        parts.append(part)
        wanted -= len(part)
    return b"".join(parts)


def decrypt(keys: Keys, blob: bytes, where: str) -> bytes:
    with Decryptor(keys, io.BytesIO(blob), where) as reader:
        return reader.read()


def new_repository_salt() -> bytes:
    return os.urandom(16)
