"""Repositories: where WAL and backups are stored. One interface (``backend.repository.base``), a local
directory and S3 (``backend.repository.stores``), each optionally encrypted on the client.

Keys are '/'-separated paths below the cluster's root (``<path>/<cluster>/`` locally,
``s3://<bucket>/<prefix>/<cluster>/`` on S3). Every write is all-or-nothing: an object is either
absent or complete under its real key, never half-written, so a crash at any point leaves nothing
that a later read could mistake for data.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from backend.errors import ConfigError
from backend.repository.base import (
    ENCRYPTED_MAGIC,
    IDENTITY_KEY,
    REPOSITORY_FORMAT,
    SEGMENT_SIZES,
    ClusterIdentity,
    ObjectInfo,
    ObjectWriter,
    Repository,
    ensure_identity,
    read_identity,
)
from backend.repository.stores import open_store

if TYPE_CHECKING:
    from backend.config import Config

__all__ = [
    "ENCRYPTED_MAGIC",
    "IDENTITY_KEY",
    "REPOSITORY_FORMAT",
    "SEGMENT_SIZES",
    "ClusterIdentity",
    "ObjectInfo",
    "ObjectWriter",
    "Repository",
    "ensure_identity",
    "open_repositories",
    "open_repository",
    "read_identity",
]


def open_repositories(cfg: Config, only: str | None = None) -> list[Repository]:
    """The configured repositories, local first; ``only`` limits to one by name."""
    names = cfg.repository_names
    if only is not None:
        if only not in names:
            raise ConfigError(
                f"repository {only!r} is not configured in {cfg.where()} (configured: {', '.join(names) or 'none'})"
            )
        names = [only]
    return [open_repository(cfg, name) for name in names]


def open_repository(cfg: Config, name: str) -> Repository:
    """Open one repository: its store, read and written through client-side encryption when that is on."""
    repo = open_store(cfg, name)
    if not (cfg.local if name == "local" else cfg.s3).encryption:
        return repo  # the archive hot path imports nothing more
    from backend.repository.encrypted import EncryptedRepository, secret_for

    return EncryptedRepository(repo, secret_for(cfg, name))
