"""The README's Quick Start, for real: both Docker images built, the backup services run with podman.

deploy/docker's two images are built from this checkout by podman-compose (their compose ``build:``
sections), on stand-in base images (tests/harness/containers.py: no image registry is reachable), and
the README's commands run against them as an operator types them, in a copy of the compose files
with the Memecoin deployment's ``.env`` beside them (``PGDR_SRC`` pointing here): the backup service, a backup now,
the logical restores (list, dry run, a real one), ``pgdr check``, ``pitr-restore.sh list`` and a
point-in-time restore in a one-off postgres container with exact row counts, the image's health
check, the console on a terminal inside the image, and ``down -v``.

Rootful podman, from ``bash deploy/install.sh --dev`` (as root, as CI runs it). The test skips only
for a developer who is not root; under CI (``CI`` set) a missing engine fails it.
"""

from __future__ import annotations

import os
import re
import secrets
import shlex
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness.cluster import REPO_ROOT
from tests.harness.containers import (
    Compose,
    engine_env,
    ensure_debian_slim,
    ensure_postgres,
    in_a_terminal,
    machine_lock,
    missing_engine,
    run,
)

DOCKER = REPO_ROOT / "deploy" / "docker"
IMAGES = ("localhost/pgdr:15", "localhost/pgdr-postgres:15")

pytestmark = pytest.mark.timeout(1800)


class Steps:
    """How long each step took, printed with the test's output."""

    def __init__(self) -> None:
        self.took: list[tuple[str, float]] = []
        self.start = time.monotonic()

    def done(self, name: str) -> None:
        now = time.monotonic()
        self.took.append((name, now - self.start))
        self.start = now

    def __str__(self) -> str:
        total = sum(s for _, s in self.took)
        return "\n".join([*(f"{s:6.1f} s  {name}" for name, s in self.took), f"{total:6.1f} s  in all"])


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[dict[str, str]]:
    reason = missing_engine()
    if reason:
        if os.environ.get("CI") or os.geteuid() == 0:
            pytest.fail(reason)
        pytest.skip(reason)
    with machine_lock():
        yield engine_env(tmp_path / "engine")


@pytest.fixture
def project(tmp_path: Path, engine: dict[str, str]) -> Iterator[Compose]:
    """The Memecoin deployment's layout: the two compose files and ``cp .env.example .env`` with DB_PASSWORD set, in a
    folder of their own; ``PGDR_SRC`` is this checkout (the README: "set PGDR_SRC in .env")."""
    folder = tmp_path / "app"
    folder.mkdir()
    for name in ("docker-compose.yml", "docker-compose.backup.yml"):
        shutil.copy(DOCKER / name, folder / name)
    env_file = (DOCKER / ".env.example").read_text()
    env_file, set_password = re.subn(r"(?m)^DB_PASSWORD=.*$", f"DB_PASSWORD={secrets.token_hex(12)}", env_file)
    env_file, set_source = re.subn(r"(?m)^# PGDR_SRC=.*$", f"PGDR_SRC={REPO_ROOT}", env_file)
    assert set_password == set_source == 1, ".env.example no longer has DB_PASSWORD= and # PGDR_SRC="
    (folder / ".env").write_text(env_file)
    compose = Compose(folder, f"pgdrqs{os.getpid()}", engine)
    try:
        yield compose
    finally:
        compose.remove()


def image_ids(env: dict[str, str]) -> set[str]:
    out = run(["podman", "image", "inspect", "--format", "{{.Id}}", *IMAGES], env, check=False).stdout
    return set(out.split())


def build_images(compose: Compose, work: Path, steps: Steps) -> None:
    """Both images by the compose files' ``build:``; the pgdr image while the postgres stand-in builds."""
    env = compose.env
    before = image_ids(env)
    ensure_debian_slim(work, env)
    steps.done("stand-in debian:bookworm-slim")
    pgdr_log = work / "build-pgdr.log"
    pgdr_build = compose.popen("build", "postgres-backup", log=pgdr_log)
    try:
        ensure_postgres(work, env)
        steps.done("stand-in postgres:15-bookworm")
        compose("build", "postgres", timeout=900)
        steps.done("image pgdr-postgres:15")
    finally:
        code = pgdr_build.wait(timeout=900)
    assert code == 0, f"building the pgdr image failed:\n{pgdr_log.read_text()[-8000:]}"
    steps.done("image pgdr:15 (built alongside)")
    # The previous run's images, now untagged, and the layers only they used.
    for old in before - image_ids(env):
        run(["podman", "rmi", old], env, check=False)

    # BUILDAH_FORMAT=docker kept the HEALTHCHECK; install.sh added no apt source (issue 16).
    health = run(["podman", "image", "inspect", "--format", "{{.Config.Healthcheck.Test}}", IMAGES[0]], env)
    assert "pgdr status" in health.stdout, health.stdout
    sources = run(["podman", "run", "--rm", "--entrypoint", "ls", IMAGES[0], "/etc/apt/sources.list.d"], env)
    assert "pgdg" not in sources.stdout, sources.stdout


def wait_for_database(compose: Compose, timeout: float = 90) -> None:
    """The way pgdr reaches it: from the postgres-backup container, over the compose network."""
    deadline = time.monotonic() + timeout
    while True:
        ready = compose("exec", "-T", "postgres-backup", "pg_isready", check=False)
        if ready.returncode == 0:
            return
        assert time.monotonic() < deadline, f"the database did not come up:\n{compose('logs', 'postgres').stdout}"
        time.sleep(1)


def rows(compose: Compose) -> dict[str, int]:
    out = compose.psql("SELECT note, count(*) FROM loans GROUP BY note ORDER BY note")
    return {note: int(n) for note, n in (line.split("|") for line in out.splitlines())}


def healthy(compose: Compose, service: str, timeout: float = 75) -> None:
    """``podman healthcheck run``: without systemd podman runs a health check only when asked.

    One failed check is not "unhealthy" (the image's HEALTHCHECK allows 3 retries, a minute apart):
    pgdr's rpo_check, run every minute, fails until the first WAL segment is archived, so a check just
    after the first backup may fail until the next rpo_check.
    """
    deadline = time.monotonic() + timeout
    while True:
        check = run(["podman", "healthcheck", "run", compose.container(service)], compose.env, check=False)
        if check.returncode == 0:
            return
        if time.monotonic() > deadline:
            status = compose("exec", "-T", "postgres-backup", "pgdr", "status", check=False).stdout
            raise AssertionError(f"{service} is not healthy: {check.stdout}{check.stderr}\npgdr status:\n{status}")
        time.sleep(5)


def test_the_readmes_quick_start_with_podman(project: Compose, tmp_path: Path) -> None:
    compose, steps = project, Steps()
    build_images(compose, tmp_path / "engine", steps)

    # 2. Start Backup Service
    compose("up", "-d", "postgres-backup")
    wait_for_database(compose)
    steps.done("up -d postgres-backup")
    compose.psql(
        "CREATE TABLE loans (id int PRIMARY KEY, note text NOT NULL);"
        "INSERT INTO loans SELECT g, 'dumped' FROM generate_series(1, 1000) g"
    )
    now = compose("run", "--rm", "postgres-backup-now").stdout
    physical = re.search(r"backup (\S+) \(physical\) complete", now)
    logical = re.search(r"backup (\S+-logical) \(logical\) complete", now)
    assert physical and logical, now
    steps.done("run --rm postgres-backup-now")
    logs = compose("logs", "postgres-backup").stdout
    assert '"message": "pgdr daemon started for cluster main"' in logs, logs
    healthy(compose, "postgres-backup")  # the image's HEALTHCHECK: pgdr status
    healthy(compose, "postgres")  # docker-compose.yml's pg_isready

    # 3. Verify Backups
    listed = compose("run", "--rm", "postgres-restore", "--list").stdout
    assert physical[1] in listed and logical[1] in listed, listed
    volumes = run(["podman", "volume", "ls", "--format", "{{.Name}}"], compose.env).stdout.split()
    assert f"{compose.project}_postgres_backups" in volumes
    steps.done("restore --list, health checks, logs")

    # Manual Operations: the logical restores, dry run first.
    compose.psql("INSERT INTO loans SELECT g, 'after the dump' FROM generate_series(1001, 1500) g")
    plan = compose("run", "--rm", "postgres-restore", "--latest", "--dry-run").stdout
    assert f"{logical[1]}/memecoin_lending.dump" in plan and "Dry run: nothing was changed." in plan, plan
    assert rows(compose) == {"after the dump": 500, "dumped": 1000}
    restored = compose("run", "--rm", "postgres-restore", "--latest", input="main\n").stdout
    assert "Type the cluster name (main)" in restored and f"restored {logical[1]}" in restored, restored
    assert rows(compose) == {"dumped": 1000}
    safety = compose("exec", "-T", "postgres-backup", "ls", "/backups/.pgdr/safety").stdout.split()
    assert len(safety) == 1 and safety[0].endswith(".dump"), safety
    steps.done("restore --latest --dry-run, restore --latest")

    # PITR: a moment between two batches; `pgdr check` forces the WAL switch that archives the second.
    compose.psql("INSERT INTO loans SELECT g, 'kept' FROM generate_series(2001, 2250) g")
    time.sleep(1.2)
    target = compose.psql("SELECT to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS')")
    time.sleep(1.2)
    compose.psql("INSERT INTO loans SELECT g, 'lost' FROM generate_series(3001, 3100) g")
    check = compose("exec", "-T", "postgres-backup", "pgdr", "check").stdout
    assert re.search(r"forced a WAL switch: segment \w+ reached every repository \(local\)", check), check
    points = compose("run", "--rm", "--entrypoint", "pitr-restore.sh", "postgres-backup", "list").stdout
    assert "Base Backups:" in points and physical[1] in points and "WAL Archive Range:" in points, points
    window = re.search(r"(\S+ \S+) \.\. (\S+ \S+)  timeline 1, from backup " + re.escape(physical[1]), points)
    assert window, points
    assert window[1] <= target <= window[2], (target, points)
    # ...and on the host, with PGDR naming the containerised pgdr.
    pgdr = shlex.join([*compose.argv, "run", "--rm", "-T", "--entrypoint", "pgdr", "postgres-backup"])
    script = REPO_ROOT / "deploy" / "pitr-restore.sh"
    host = run([script, "list"], {**compose.env, "PGDR": pgdr}, cwd=compose.folder).stdout
    assert window[0] in host, host
    steps.done("pgdr check, pitr-restore.sh list")

    # Perform PITR (Docker): the services stopped, a one-off container of the postgres service.
    compose("stop", "postgres-backup", "postgres")
    pitr = ["run", "--rm", "--no-deps", "--user", "postgres", "postgres", "pitr-restore.sh", "restore"]
    dry = compose(*pitr, "--timestamp", target, "--dry-run").stdout
    assert f"base backup:     {physical[1]}" in dry and "Dry run: nothing was changed." in dry, dry
    done = compose(*pitr, "--timestamp", target, input="main\n").stdout
    assert "Restore finished" in done and "new timeline: 2" in done, done
    assert "stopped the restored server" in done, done
    compose("up", "-d", "postgres", "postgres-backup")
    wait_for_database(compose)
    assert rows(compose) == {"dumped": 1000, "kept": 250}
    assert compose.psql("SELECT timeline_id FROM pg_control_checkpoint()") == "2"
    steps.done("PITR restore --timestamp, up -d")
    healthy(compose, "postgres-backup")
    compose("exec", "-T", "postgres-backup", "pgdr", "check")  # archiving on the new timeline

    # The console inside the image: its help, and the timeline drawn on a terminal (both timelines),
    # in the running service and in a one-off container (the README's Monitoring).
    assert "usage: pgdr" in compose("exec", "-T", "postgres-backup", "pgdr", "--help").stdout
    drawn = re.compile(r"Recovery timeline\s+\S+ ?\S*/column; \d+ backups, \d+ WAL segments.*TL 2", re.DOTALL)
    for how in (["exec", "postgres-backup", "pgdr"], ["run", "--rm", "--entrypoint", "pgdr", "postgres-backup", "tui"]):
        status, screen = in_a_terminal([*compose.argv, *how], compose.env, until=drawn, keys=b"q", cwd=compose.folder)
        assert status == 0, f"the console ({' '.join(how)}) exited {status}; it drew:\n{screen[-4000:]}"
        assert "TL 1" in screen and "✓ RECOVERABLE" in screen, screen[-4000:]
    steps.done("pgdr --help, the console on a terminal (exec, run), pgdr check")

    compose("down", "-v")
    assert compose.leftovers() == {"containers": [], "volumes": [], "networks": []}
    steps.done("down -v")
    print(steps)
