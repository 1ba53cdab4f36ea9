"""Regenerate ``screenshots/*.svg``: every screen of the console at 80x24 and 120x40.

The data is the fixture repository the tests use, written by the backend's own code (three weeks of
backups, WAL with a gap, a restore point, a DROP TABLE and a promotion to timeline 2), read with a
frozen clock in the Europe/Berlin zone. Each scene runs staged exactly as the snapshot tests run it
(``tests.tui.scenes.staged``): the same fixed fixture path, free disk space and plan clock, and the
same recorded restore job, daemon status and replayed backup, so the pictures change only when the
console does, and they match the snapshot baselines.

    .venv/bin/python scripts/export_screenshots.py [--out screenshots] [--ascii]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


async def export(out: Path, ascii_only: bool) -> list[Path]:
    from tests.tui.conftest import fixture_app, fixture_root_held
    from tests.tui.fixture_repo import write_fixture
    from tests.tui.scenes import SCENES, SIZES, staged

    written = []
    with fixture_root_held() as root:
        story = write_fixture(root)
        for scene in SCENES:
            if ascii_only and scene.ascii_only:
                continue  # already drawn in ASCII under its own name
            for width, height in SIZES:
                with staged(scene, story):
                    app = fixture_app(story, ascii_only=ascii_only or scene.ascii_only)
                    async with app.run_test(size=(width, height)) as pilot:
                        await scene.run_before(story)(pilot)
                        suffix = "-ascii" if ascii_only else ""
                        path = out / f"{scene.name}-{width}x{height}{suffix}.svg"
                        app.save_screenshot(filename=path.name, path=str(out))
                        written.append(path)
    return written


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "screenshots"))
    parser.add_argument("--ascii", action="store_true", help="the PGDR_ASCII=1 rendering")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for path in asyncio.run(export(out, args.ascii)):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
