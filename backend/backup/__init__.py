"""Backups: physical base backups (pg_basebackup) for PITR and logical dumps (pg_dump) beside them."""
