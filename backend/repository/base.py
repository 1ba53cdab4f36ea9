"""Repositories: where WAL and backups are stored. One interface, a local directory and S3.

Keys are '/'-separated paths below the cluster's root (``<path>/<cluster>/`` locally,
``s3://<bucket>/<prefix>/<cluster>/`` on S3). Every write is all-or-nothing: an object is either
absent or complete under its real key, never half-written, so a crash at any point leaves nothing
that a later read could mistake for data.

This module is the interface every store builds on (local, S3, encrypted, and the listing cache);
``backend.repository`` opens the configured repositories from them, so nothing here imports a store.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Protocol

from backend.errors import ClusterMismatch, ConfigError, ObjectNotFound, RepositoryError

if TYPE_CHECKING:
    pass

IDENTITY_KEY = "repo.json"
#: How every encrypted object starts (backend.repository.crypt), checked without importing it.
ENCRYPTED_MAGIC = b"PGDRENC\x01"
REPOSITORY_FORMAT = 1


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    modified: datetime


class ObjectWriter(Protocol):
    def write(self, data: bytes, /) -> object: ...


class Repository(ABC):
    """A store of immutable objects under one cluster's root."""

    #: "local" or "s3": the name the config, the catalog and ``--repo`` use.
    name: str
    #: The client-side encryption scheme of stored objects, "" when they are stored as given.
    encryption: str = ""

    @abstractmethod
    def location(self) -> str:
        """Where the cluster's root is, for messages: a path or an s3:// URL."""

    @abstractmethod
    def put(self, key: str, data: bytes) -> None:
        """Store ``data`` under ``key`` durably and atomically, replacing any object there."""

    @abstractmethod
    def writer(self, key: str) -> AbstractContextManager[ObjectWriter]:
        """A streaming writer; the object appears under ``key`` only when the block exits cleanly."""

    @abstractmethod
    def get(self, key: str) -> bytes:
        """The whole object; raises ObjectNotFound."""

    @abstractmethod
    def open(self, key: str) -> AbstractContextManager[BinaryIO]:
        """A streaming reader; raises ObjectNotFound."""

    @abstractmethod
    def list(self, prefix: str = "", *, start_after: str = "") -> Iterator[ObjectInfo]:
        """Every complete object whose key starts with ``prefix``, in key order; with ``start_after``,
        only the keys after it (S3's ``StartAfter``: a listing that resumes mid-prefix costs no
        requests for what comes before). Stop iterating early and no further pages are fetched."""

    def folders(self, prefix: str) -> tuple[str, ...]:
        """The names of the folders directly below ``prefix`` (which ends in "/"), in key order.

        What the listing cache asks a store without folder times: on S3 one request per 1,000
        folders, against one per 1,000 objects for the objects themselves.
        """
        names: dict[str, None] = {}
        for info in self.list(prefix):
            folder, slash, _ = info.key[len(prefix) :].partition("/")
            if slash:
                names[folder] = None
        return tuple(names)

    @abstractmethod
    def delete(self, keys: Iterable[str]) -> None:
        """Remove objects; keys that are already gone are not an error."""

    def exists(self, key: str) -> bool:
        return any(info.key == key for info in self.list(key))

    def local_root(self) -> Path | None:
        """The directory the objects are files in, when they are on this host (its folder times let
        the listing cache skip unchanged folders); None for a remote store."""
        return None

    @abstractmethod
    def cleanup_temporary(self, prefix: str) -> int:
        """Remove what killed writers left below ``prefix`` (temp files, unfinished uploads).

        Only safe while nothing writes there: callers hold the repository lock. Returns how many.
        """


@dataclass(frozen=True)
class ClusterIdentity:
    """What makes a repository belong to one PostgreSQL cluster and no other."""

    system_identifier: int
    segment_size: int


#: The WAL segment sizes initdb accepts (--wal-segsize, 1 MiB to 1 GiB, a power of two).
SEGMENT_SIZES = frozenset(1 << shift for shift in range(20, 31))


def read_identity(repo: Repository) -> ClusterIdentity | None:
    """The identity recorded in the repository; None before the first push or backup wrote it.

    A damaged record is refused rather than guessed at or rewritten: it is the only thing that tells
    this repository's cluster from another one, and rewriting it from whatever cluster pushes next
    would let two clusters' WAL mix under one name.
    """
    try:
        blob = repo.get(IDENTITY_KEY)
    except ObjectNotFound:
        return None
    if blob.startswith(ENCRYPTED_MAGIC):
        raise ConfigError(
            f"the {repo.name} repository {repo.location()} is encrypted: set [{repo.name}] encryption = "
            f'"aes-256-gcm" and its encryption_passphrase or encryption_key_file'
        )
    try:
        raw = json.loads(blob)
    except ValueError:  # also not UTF-8 at all
        raise _damaged_identity(repo, "not valid JSON") from None
    try:
        identity = ClusterIdentity(int(raw["system_identifier"]), int(raw["wal_segment_size"]))
    except (KeyError, TypeError, ValueError):
        raise _damaged_identity(repo, "system_identifier or wal_segment_size missing or not a number") from None
    if identity.system_identifier <= 0 or identity.segment_size not in SEGMENT_SIZES:
        raise _damaged_identity(repo, "system_identifier or wal_segment_size out of range")
    return identity


def _damaged_identity(repo: Repository, reason: str) -> RepositoryError:
    where = f"{repo.location().rstrip('/')}/{IDENTITY_KEY}"
    return RepositoryError(
        f"{where} is damaged ({reason}): it records which cluster the {repo.name} repository belongs to and "
        "pgdr will not guess; copy repo.json from this cluster's other repository, or, if this repository "
        "holds this cluster's WAL and backups alone, remove it and the next wal-push or backup writes it again"
    )


def ensure_identity(repo: Repository, identity: ClusterIdentity, cluster: str) -> ClusterIdentity:
    """Record the cluster's identity on first use; refuse a repository that belongs to another cluster."""
    stored = read_identity(repo)
    if stored is None and not identity.segment_size:
        return identity  # pg_control alone (a .history file) does not know the segment size: wait for a segment
    if stored is None:
        record = {
            "format": REPOSITORY_FORMAT,
            "cluster": cluster,
            "system_identifier": str(identity.system_identifier),
            "wal_segment_size": identity.segment_size,
        }
        repo.put(IDENTITY_KEY, json.dumps(record, indent=2).encode() + b"\n")
        return identity
    if stored.system_identifier != identity.system_identifier:
        raise ClusterMismatch(
            f"{repo.name} repository {repo.location()} belongs to the cluster with system identifier "
            f"{stored.system_identifier}, not {identity.system_identifier}: refusing to mix clusters; "
            "give this cluster its own [cluster] name"
        )
    return stored
