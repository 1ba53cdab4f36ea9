"""Which PostgreSQL programs pgdr runs: the server's major version's, never another's."""

from __future__ import annotations

from pathlib import Path

import pytest

from backend.config import ClusterConfig, Config, PostgresConfig
from backend.errors import ConfigError
from backend.postgres import bin_dir, program

DEBIAN_15 = Path("/usr/lib/postgresql/15/bin")


def config(data_dir: Path, *, configured: str = "") -> Config:
    postgres = PostgresConfig(data_dir=str(data_dir), bin_dir=configured)
    return Config(cluster=ClusterConfig(name="main"), postgres=postgres)


def cluster_of(tmp_path: Path, major: str) -> Path:
    data = tmp_path / f"pg{major}"
    data.mkdir()
    (data / "PG_VERSION").write_text(f"{major}\n")
    return data


def test_the_data_directorys_version_picks_debians_programs(tmp_path: Path) -> None:
    cfg = config(cluster_of(tmp_path, "15"))
    assert bin_dir(cfg) == DEBIAN_15 and program(cfg, "pg_ctl") == str(DEBIAN_15 / "pg_ctl")


def test_another_major_versions_programs_are_never_taken(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A PostgreSQL 18 cluster on a host with Debian's 15 only: 15's pg_ctl cannot start it, 15's
    pg_waldump cannot read its WAL, so pgdr looks on PATH and otherwise asks for bin_dir."""
    cfg = config(cluster_of(tmp_path, "18"))
    assert bin_dir(cfg) is None and bin_dir(config(tmp_path / "none"), 180000) is None
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ConfigError, match=r"pg_ctl not found on PATH: .*set \[postgres\] bin_dir"):
        program(cfg, "pg_ctl")
    assert bin_dir(config(tmp_path / "none"), 150004) == DEBIAN_15  # the caller's version wins


def test_a_configured_bin_dir_wins(tmp_path: Path) -> None:
    assert bin_dir(config(cluster_of(tmp_path, "18"), configured="/opt/pg18/bin"), 150000) == Path("/opt/pg18/bin")
