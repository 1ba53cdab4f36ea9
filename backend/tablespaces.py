"""Tablespaces outside the data directory: what a backup records of them and how a restore places them.

pg_basebackup (tar format) writes one archive per tablespace, ``<oid>.tar.zst``, holding the
tablespace's version folder (``PG_15_202209061/...``), beside ``base.tar.zst``, whose ``pg_tblspc``
is empty and whose ``tablespace_map`` names each tablespace's original location. pgdr stores each
archive like ``base.tar.zst`` and records in the backup's manifest each tablespace's oid, name,
location and version folder, so a restore can say where each one goes before it reads anything.

A restore writes each tablespace's version folder into its destination (the original location,
or where ``--tablespace-map OLD=NEW`` says), links ``pg_tblspc/<oid>`` to it, and removes
``tablespace_map``: PostgreSQL would otherwise re-create the links to the original locations when
recovery starts, which for a restore beside the running cluster is that cluster's own tablespace.
Only the version folder is written; anything else at the location (``lost+found`` on a mount
point, another major version's folder after pg_upgrade) is left alone.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from backend.errors import PgdrError
from backend.manifest import BackupManifest

if TYPE_CHECKING:
    import psycopg

#: The tablespace map pg_basebackup puts in base.tar (``oid path`` per line).
TABLESPACE_MAP = "tablespace_map"


@dataclass(frozen=True)
class Tablespace:
    """One tablespace as a backup recorded it; ``size`` is its files' bytes (PostgreSQL's backup_manifest)."""

    oid: int
    name: str
    location: str
    #: ``PG_<major>_<catalog version>``: the folder the archive holds, the only thing a restore writes there.
    version_dir: str
    size: int = 0

    @property
    def archive(self) -> str:
        """The archive's object name, as pg_basebackup names it."""
        return archive_name(self.oid)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def archive_name(oid: int) -> str:
    return f"{oid}.tar.zst"


def live_tablespaces(conn: psycopg.Connection[Any]) -> list[Tablespace]:
    """The server's tablespaces outside its data directory (sizes are filled in from the backup's manifest)."""
    rows = conn.execute(
        "SELECT t.oid, t.spcname, pg_tablespace_location(t.oid),"
        " format('PG_%s_%s', current_setting('server_version_num')::int / 10000,"
        " (SELECT catalog_version_no FROM pg_control_system()))"
        " FROM pg_tablespace t WHERE pg_tablespace_location(t.oid) <> '' ORDER BY t.oid"
    ).fetchall()
    return [Tablespace(int(r[0]), str(r[1]), str(r[2]), str(r[3])) for r in rows]


def oid_of(path: str) -> int | None:
    """The tablespace a backup_manifest path (``pg_tblspc/<oid>/...``) lies in; None: the data directory."""
    parts = path.split("/")
    return int(parts[1]) if len(parts) > 2 and parts[0] == "pg_tblspc" and parts[1].isdigit() else None


def with_sizes(tablespaces: Iterable[Tablespace], files: Iterable[dict[str, Any]]) -> list[Tablespace]:
    """``tablespaces`` with each one's size summed from PostgreSQL's backup_manifest ``Files``."""
    sizes: dict[int | None, int] = {}
    for entry in files:
        oid = oid_of(str(entry.get("Path", "")))
        sizes[oid] = sizes.get(oid, 0) + int(entry.get("Size", 0))
    return [Tablespace(t.oid, t.name, t.location, t.version_dir, sizes.get(t.oid, 0)) for t in tablespaces]


def recorded(manifest: BackupManifest) -> list[Tablespace]:
    """The tablespaces ``manifest``'s backup holds (none for a backup without any, or a logical dump)."""
    try:
        return [
            Tablespace(int(t["oid"]), str(t["name"]), str(t["location"]), str(t["version_dir"]), int(t["size"]))
            for t in manifest.extra.get("tablespaces", [])
        ]
    except (KeyError, TypeError, ValueError) as exc:
        raise PgdrError(
            f"backup manifest {manifest.key} lists its tablespaces in a form pgdr cannot read ({exc}): "
            "run `pgdr verify` and take a new backup"
        ) from None


def parse_mapping(items: Sequence[str]) -> dict[str, str]:
    """``--tablespace-map OLD=NEW`` arguments; OLD is a tablespace's name or its original location."""
    mapping: dict[str, str] = {}
    for item in items:
        old, sep, new = item.partition("=")
        if not sep or not old or not new:
            raise PgdrError(
                f"--tablespace-map {item!r} is not OLD=NEW: give a tablespace's name or original location, "
                "then =, then the directory to restore it into (e.g. --tablespace-map ts1=/srv/restore/ts1)"
            )
        if not new.startswith("/"):
            raise PgdrError(f"--tablespace-map {item!r}: the new location {new!r} must be an absolute path")
        mapping[old.rstrip("/") or "/"] = new.rstrip("/") or "/"
    return mapping
