"""Continuous WAL archiving: ``wal-push`` (archive_command), ``wal-fetch`` (restore_command), and the
queue that carries segments to repositories ``wal-push`` does not wait for."""
