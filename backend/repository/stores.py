"""The stores a configured repository is kept in: a local directory or an S3 bucket, as they are.

Apart from ``backend.repository.open_repository``, which wraps a store in client-side encryption
when the config asks for it: ``pgdr decrypt`` reads a store's ciphertext itself.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from backend.errors import ConfigError
from backend.repository.base import Repository

if TYPE_CHECKING:
    from backend.config import Config


def open_store(cfg: Config, name: str) -> Repository:
    """The local or S3 store of repository ``name``; S3 (and so boto3) is imported only when asked for."""
    if name == "local":
        from backend.repository.local import LocalRepository

        return LocalRepository(cfg.local.path, cfg.cluster.name)
    if name == "s3":
        from backend.repository.s3 import S3Repository

        return S3Repository.from_config(cfg)
    raise ConfigError(f"unknown repository {name!r}: use 'local' or 's3'")
