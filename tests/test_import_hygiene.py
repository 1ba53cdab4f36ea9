"""The backend never loads the UI, and ``pgdr wal-push`` (run once per segment) loads almost nothing."""

from __future__ import annotations

import json
import pkgutil
import struct
import subprocess
import sys
from pathlib import Path

import backend

UI_PACKAGES = ("textual", "rich", "pgdr_tui")


def backend_modules() -> list[str]:
    return sorted(m.name for m in pkgutil.walk_packages(backend.__path__, "backend."))


def loaded_after(code: str) -> set[str]:
    probe = f"import sys, json\n{code}\nprint(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}})))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    return set(json.loads(out.strip().splitlines()[-1]))


def test_every_backend_module_imports_without_the_ui() -> None:
    modules = backend_modules()
    assert "backend.archive.push" in modules and "backend.repository.s3" in modules
    for module in modules:
        loaded = loaded_after(f"import {module}")
        assert not loaded & set(UI_PACKAGES), f"{module} pulls in {loaded & set(UI_PACKAGES)}"


def fake_segment(path: Path, sysid: int = 7_000_000_000_000_000_001) -> None:
    header = struct.pack("<HHIQI4xQII", 0xD110, 0x0002, 1, 0, 0, sysid, 16 << 20, 8192)
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
