"""pgdr as users install it: the wheel, in a fresh venv outside the checkout, on a real cluster.

Every other test runs pgdr from the checkout's editable install, which finds files a built package
may lack (the console's stylesheet once was). Here the wheel is built offline from the checkout
(``pip wheel --no-build-isolation``: nothing is downloaded; from a copy of the
sources, so no stale ``build/`` folder lends it files), installed without its dependencies into
a new venv, and those dependencies are the dev venv's, reached through a ``.pth`` file: a ``.pth``
in a directory added that way is not processed, so the checkout's editable finder stays out and
``backend`` and ``pgdr_tui`` can only come from the wheel (the test checks they do).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

from tests.harness.cluster import REPO_ROOT, Cluster, clean_env

#: Opens the console headless (its stylesheet read from the installed package) on the config given,
#: waits for it to load, and prints what it found.
CONSOLE = """
import asyncio, sys
from datetime import UTC
from backend.config import load_config
from pgdr_tui.app import PgdrApp
from pgdr_tui.source import Source

async def main() -> None:
    app = PgdrApp(Source(load_config(sys.argv[1]), zone=UTC), ascii_only=False)
    async with app.run_test(size=(80, 24)) as pilot:
        await app.workers.wait_for_complete()
        await pilot.pause()
        print(len(app.model.catalog.backups), "backups;", app.screen.__class__.__name__, app.facts.server_ok)

asyncio.run(main())
"""


def run(argv: list[str | Path], **kwargs: object) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([str(a) for a in argv], capture_output=True, text=True, check=False, **kwargs)  # type: ignore[call-overload]
    assert done.returncode == 0, f"{' '.join(map(str, argv))} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done  # type: ignore[no-any-return]


def install_wheel(where: Path) -> Path:
    """Build the wheel and install it into a new venv in ``where``: the venv's bin folder.

    Built from a copy of what the package is made of, so no ``build/`` folder an earlier build left in
    the checkout can lend it a file the package definition no longer includes.
    """
    source = where / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO_ROOT / name, source / name)
    for package in ("backend", "pgdr_tui"):
        shutil.copytree(REPO_ROOT / package, source / package, ignore=shutil.ignore_patterns("__pycache__"))
    build = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", where / "dist"]
    run([*build, source])
    (wheel,) = (where / "dist").glob("pgdr-*.whl")
    venv = where / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", venv])
    python = venv / "bin" / "python"
    run([sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-deps", "--no-index", wheel])
    site = Path(run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip())
    (site / "pgdr-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return venv / "bin"


def test_the_installed_wheel_opens_the_console_backs_up_and_restores(cluster: Cluster, tmp_path: Path) -> None:
    bin_dir = install_wheel(tmp_path)
    env = clean_env()
    where = run(
        [bin_dir / "python", "-c", "import backend, pgdr_tui; print(backend.__file__, pgdr_tui.__file__)"],
        cwd=tmp_path,
        env=env,
    ).stdout
    assert str(REPO_ROOT) not in where and where.count(str(tmp_path / "venv")) == 2, where

    pgdr = [bin_dir / "pgdr", "--config", cluster.config_path]
    assert run([bin_dir / "pgdr", "--version"], cwd=tmp_path, env=env).stdout.startswith("pgdr ")
    cluster.sql("CREATE TABLE t (id int)")
    cluster.sql("INSERT INTO t SELECT generate_series(1, 500)")
    taken = json.loads(run([*pgdr, "backup", "--json"], cwd=tmp_path, env=env).stdout)
    assert taken["pgdr_version"] and taken["kind"] == "physical"
    cluster.sql("INSERT INTO t SELECT generate_series(501, 600)")
    cluster.wait_archived(cluster.switch_wal())

    shown = run([bin_dir / "python", "-c", CONSOLE, cluster.config_path], cwd=tmp_path, env=env).stdout
    assert shown.strip() == "1 backups; TimelineScreen True", shown

    done = run([*pgdr, "restore", "--latest", "--yes"], cwd=tmp_path, env=env, timeout=600)
    assert "Restore finished" in done.stdout, done.stdout
    assert cluster.sql("SELECT count(*) FROM t")[0] == (600,)
