"""The backend never loads the UI, and ``pgdr wal-push`` (run once per segment) loads almost nothing."""

from __future__ import annotations

import json
import os
import pkgutil
import struct
import subprocess
import sys
from pathlib import Path

import backend
from backend.walnames import SegmentName
from tests.harness.cluster import wait_for

UI_PACKAGES = ("textual", "rich", "pgdr_tui")


def backend_modules() -> list[str]:
    return sorted(m.name for m in pkgutil.walk_packages(backend.__path__, "backend."))


def modules_after(code: str, env: dict[str, str] | None = None) -> set[str]:
    probe = f"import sys\n{code}\nloaded = sorted(sys.modules)\nimport json\nprint(json.dumps(loaded))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, env=env).stdout
    return set(json.loads(out.strip().splitlines()[-1]))


def loaded_after(code: str, env: dict[str, str] | None = None) -> set[str]:
    """The top-level packages loaded after running ``code`` in a fresh interpreter."""
    return {m.split(".")[0] for m in modules_after(code, env)}


def test_every_backend_module_imports_without_the_ui() -> None:
    modules = backend_modules()
    assert "backend.archive.push" in modules and "backend.repository.s3" in modules
    for module in modules:
        loaded = loaded_after(f"import {module}")
        assert not loaded & set(UI_PACKAGES), f"{module} pulls in {loaded & set(UI_PACKAGES)}"


def fake_segment(path: Path, sysid: int = 7_000_000_000_000_000_001) -> None:
    start = SegmentName.parse(path.name, 16 << 20).start_lsn
    header = struct.pack("<HHIQI4xQII", 0xD110, 0x0002, 1, start, 0, sysid, 16 << 20, 8192)
    path.write_bytes(header + bytes((16 << 20) - len(header)))


def test_wal_push_to_local_loads_no_ui_no_boto3_no_psycopg(tmp_path: Path) -> None:
    config = tmp_path / "pgdr.toml"
    config.write_text(f'[cluster]\nname = "main"\n[local]\npath = "{tmp_path / "repo"}"\n')
    segment = tmp_path / "000000010000000000000001"
    fake_segment(segment)
    loaded = loaded_after(
        f"from pgdr_tui.cli import main\nassert main(['--config', {str(config)!r}, 'wal-push', {str(segment)!r}]) == 0"
    )
    assert (tmp_path / "repo" / "main" / "wal" / "0000000100000000").is_dir()
    heavy = {"textual", "rich", "boto3", "botocore", "psycopg", "humanize"}
    assert not loaded & heavy, f"wal-push loaded {loaded & heavy}"


def test_wal_push_answered_by_the_push_server_loads_neither_the_config_nor_the_archiver(tmp_path: Path) -> None:
    """With a push server running, wal-push is a socket round trip: no config, no zstd, not even typing."""
    config = tmp_path / "pgdr.toml"
    config.write_text(f'[cluster]\nname = "main"\n[local]\npath = "{tmp_path / "repo"}"\n')
    env = {**os.environ, "PGDR_STATE_DIR": str(tmp_path / "state")}
    segments = [tmp_path / f"00000001000000000000000{i}" for i in (1, 2)]
    for i, segment in enumerate(segments):
        fake_segment(segment, sysid=7_000_000_000_000_000_001)
        segment.write_bytes(segment.read_bytes()[:-1] + bytes([i]))  # two different segments
    push = f"from pgdr_tui.cli import main\nassert main(['--config', {str(config)!r}, 'wal-push', {{!r}}]) == 0"
    # The first push finds no server: it pushes itself and starts one.
    loaded_after(push.format(str(segments[0])), env)
    locks = tmp_path / "state" / "pushd"
    wait_for(lambda: any(p.read_text().split()[1:] == ["0", "0"] for p in locks.glob("*.lock")), 30, "the push server")
    loaded = modules_after(push.format(str(segments[1])), env)
    (lock,) = locks.glob("*.lock")
    assert lock.read_text().split()[1] == "1", "the server answered the second push"
    assert len(list((tmp_path / "repo" / "main" / "wal" / "0000000100000000").iterdir())) == 2
    heavy = {"backend.config", "backend.archive.push", "tomllib", "dataclasses", "pathlib", "zstandard", "hashlib"}
    heavy |= {"typing", "json", "re", "boto3", "psycopg", "platformdirs", "textual", "rich"}
    assert not loaded & heavy, f"wal-push loaded {loaded & heavy}"
