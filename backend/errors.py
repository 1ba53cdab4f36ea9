"""The one error type the CLI turns into a one-line message and an exit code."""


class PgdrError(Exception):
    """An error an operator can act on: the message names what is wrong and what to do.

    ``exit_code`` follows the archive/restore command contract: 1 means "not there" (PostgreSQL
    ends recovery cleanly), 2 and up mean a real failure.
    """

    exit_code = 2

    def __init__(self, message: str, *, exit_code: int | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class ConfigError(PgdrError):
    """The configuration file or environment is wrong."""


class RepositoryError(PgdrError):
    """A repository refused or failed an operation."""


class ObjectNotFound(RepositoryError):
    """The object is not in the repository (exit code 1: "not there")."""

    exit_code = 1


class ClusterMismatch(RepositoryError):
    """The repository belongs to another PostgreSQL cluster (another system identifier)."""
