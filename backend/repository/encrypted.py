"""A repository whose objects are encrypted on the client: what leaves pgdr is ciphertext.

Wraps the local or S3 repository. Every object is encrypted (backups, manifests, WAL, the WAL
index, verify results, the identity record) except ``encryption.json``, which holds the
repository's scrypt salt and key check so a wrong passphrase is refused before anything is written,
and the local repository's queue entries and lock files, which hold nothing but names.

A repository is encrypted from its first object on: switching encryption on for a repository that
already holds plaintext objects is refused, because a reader could then not tell a planted
plaintext object from a genuine old one.
"""

from __future__ import annotations

import contextlib
import hmac
import io
import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from backend.errors import ConfigError, ObjectNotFound, RepositoryError
from backend.repository.base import ObjectInfo, ObjectWriter, Repository
from backend.repository.crypt import (
    CHUNK_EXPONENT,
    KDF_KEY_FILE,
    KDF_SCRYPT,
    SCHEME,
    Decryptor,
    Encryptor,
    KeyMismatch,
    Keys,
    Secret,
    decrypt,
    encrypt,
    key_check,
    new_repository_salt,
    plaintext_size,
)

if TYPE_CHECKING:
    from backend.config import Config

ENCRYPTION_KEY = "encryption.json"
#: Keys stored as given: names only, written by code that runs before or without the key.
PLAIN_PREFIXES = ("queue/", "locks/")


def _plain(key: str) -> bool:
    return key == ENCRYPTION_KEY or key.startswith(PLAIN_PREFIXES)


class EncryptedRepository(Repository):
    encryption = SCHEME

    def __init__(self, inner: Repository, secret: Secret) -> None:
        self.inner = inner
        self.name = inner.name
        self._keys = Keys(secret)
        self._salt: bytes | None = None

    def location(self) -> str:
        return self.inner.location()

    def local_root(self) -> Path | None:
        return self.inner.local_root()

    def _where(self, key: str) -> str:
        return f"{key} in the {self.name} repository"

    def _repository_salt(self) -> bytes:
        """The salt new objects use; the first write to an empty repository creates it."""
        if self._salt is None:
            record = self._record()
            if record is None:
                self._create()
                record = self._record()  # ours, or that of a first writer racing us
            if record is None:
                raise RepositoryError(f"{self._where(ENCRYPTION_KEY)} vanished as it was written: retry")
            kdf, salt, check = record
            if not hmac.compare_digest(key_check(self._keys.master(kdf, salt)), check):
                raise KeyMismatch(
                    f"the encryption key for the {self.name} repository {self.location()} is wrong "
                    f"(its key check does not match): set [{self.name}] encryption_passphrase or "
                    "encryption_key_file to the one the repository was created with"
                )
            self._salt = salt
        return self._salt

    def _record(self) -> tuple[int, bytes, bytes] | None:
        """The repository's key derivation, salt and key check; None before its first object."""
        try:
            record = json.loads(self.inner.get(ENCRYPTION_KEY))
            kdf = KDF_KEY_FILE if record["kdf"] == "key-file" else KDF_SCRYPT
            return kdf, bytes.fromhex(record["salt"]), bytes.fromhex(record["key_check"])
        except ObjectNotFound:
            return None
        except (ValueError, KeyError, TypeError) as exc:
            raise RepositoryError(
                f"{self._where(ENCRYPTION_KEY)} is damaged ({exc}): restore it from a copy of the repository"
            ) from None

    def _create(self) -> None:
        held = next((info.key for info in self.inner.list() if not _plain(info.key)), None)
        if held is not None:
            if self.inner.exists(ENCRYPTION_KEY):
                return  # another first writer created it between our look and our listing
            raise RepositoryError(
                f"the {self.name} repository {self.location()} already holds unencrypted objects ({held}): "
                f"encryption applies to a new repository; point [{self.name}] at an empty location "
                "(or use a new [cluster] name) and take a new base backup there"
            )
        kdf = self._keys.secret.kdf
        salt = bytes(16) if kdf == KDF_KEY_FILE else new_repository_salt()
        record = {
            "format": 1,
            "cipher": SCHEME,
            "kdf": "key-file" if kdf == KDF_KEY_FILE else "scrypt",
            "salt": salt.hex(),
            "chunk_size": 1 << CHUNK_EXPONENT,
            "key_check": key_check(self._keys.master(kdf, salt)).hex(),
        }
        self.inner.put(ENCRYPTION_KEY, json.dumps(record, indent=2).encode() + b"\n")

    def put(self, key: str, data: bytes) -> None:
        if _plain(key):
            self.inner.put(key, data)
        else:
            self.inner.put(key, encrypt(self._keys, self._repository_salt(), data))

    @contextlib.contextmanager
    def writer(self, key: str) -> Iterator[ObjectWriter]:
        if _plain(key):
            with self.inner.writer(key) as out:
                yield out
            return
        salt = self._repository_salt()
        with self.inner.writer(key) as out:
            sealer = Encryptor(self._keys, salt, out.write)
            yield sealer
            sealer.finish()

    def get(self, key: str) -> bytes:
        blob = self.inner.get(key)
        return blob if _plain(key) else decrypt(self._keys, blob, self._where(key))

    @contextlib.contextmanager
    def open(self, key: str) -> Iterator[BinaryIO]:
        with self.inner.open(key) as stored:
            if _plain(key):
                yield stored
                return
            # Buffered, so read(n) returns n bytes until the end, like a file's.
            with io.BufferedReader(Decryptor(self._keys, stored, self._where(key)), 1 << CHUNK_EXPONENT) as plain:
                yield plain

    def list(self, prefix: str = "", *, start_after: str = "") -> Iterator[ObjectInfo]:
        for info in self.inner.list(prefix, start_after=start_after):
            if info.key == ENCRYPTION_KEY:
                continue
            if _plain(info.key):
                yield info
            else:
                yield ObjectInfo(info.key, plaintext_size(info.size), info.modified)

    def folders(self, prefix: str) -> tuple[str, ...]:
        return self.inner.folders(prefix)

    def exists(self, key: str) -> bool:
        return self.inner.exists(key)

    def delete(self, keys: Iterable[str]) -> None:
        self.inner.delete(keys)

    def cleanup_temporary(self, prefix: str) -> int:
        return self.inner.cleanup_temporary(prefix)


def secret_for(cfg: Config, name: str) -> Secret:
    """The key settings of repository ``name``; its encryption must be on."""
    settings = cfg.local if name == "local" else cfg.s3
    if not settings.encryption:
        raise ConfigError(
            f"[{name}] encryption is off in {cfg.where()}: "
            "set it, and the passphrase or key file, to read encrypted objects"
        )
    return Secret(name, settings.encryption_passphrase, settings.encryption_key_file)


def decrypt_object(cfg: Config, name: str, target: BinaryIO, *, key: str | None, file: str | None) -> int:
    """Write the plaintext of one object (by key, or of a copy at ``file``); returns its size.

    Every byte written has been authenticated; a damaged object stops with an error mid-way, after
    the chunks before it were written, so the caller stages ``target`` and keeps it only on success.
    """
    secret = secret_for(cfg, name)
    with contextlib.ExitStack() as stack:
        if file is not None:
            try:
                source: BinaryIO = stack.enter_context(open(file, "rb"))
            except OSError as exc:
                raise RepositoryError(f"cannot read {file}: {exc.strerror}") from None
        else:
            from backend.repository.stores import open_store

            source = stack.enter_context(open_store(cfg, name).open(key or ""))
        plain = stack.enter_context(
            io.BufferedReader(Decryptor(Keys(secret), source, file or f"{key} in the {name} repository"))
        )
        total = 0
        while block := plain.read(1 << CHUNK_EXPONENT):
            target.write(block)
            total += len(block)
        return total
