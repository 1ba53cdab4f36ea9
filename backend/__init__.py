"""pgdr's headless core: repositories, WAL archiving, backups, catalog.

Nothing in this package may import Textual, rich or ``pgdr_tui``: ``pgdr wal-push`` runs as
PostgreSQL's archive_command for every WAL segment and must start in milliseconds.
"""

__version__ = "0.1.0"
