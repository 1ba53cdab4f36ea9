"""Incremental backups (PostgreSQL 17+) around the backup itself: the ``[schedule] incremental_backup``
key, the daemon's job for it (the full backup wins when both are due), ``pgdr check``'s summarize_wal
line, and ``pgdr list``'s kind and parent.

The daemon's rules are pinned twice: in-process with ``jobs.take_backup`` replaced (what it is asked
for, in which order, and what the status file says), and as the real long-running process against a
real PostgreSQL 18 cluster, whose incrementals ``pgdr list`` then shows with their chains.
"""

from __future__ import annotations

import itertools
import json
import threading
import tomllib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from backend.config import load_config, starter_config
from backend.daemon import parse_schedules
from backend.errors import ConfigError
from backend.manifest import BackupManifest, StoredObject
from backend.repository import open_repository
from tests.conftest import pg_bin
from tests.harness.cluster import Cluster, clean_env, running_cluster, wait_for
from tests.test_check import alter_system, check, failures
from tests.test_daemon import YEARLY, running_daemon

#: Every daemon job but the two backups, off: the tests below watch only those.
OTHERS_OFF = 'logical_dump = ""\nverify = ""\nverify_deep = ""\nexpire = ""\nrpo_check = ""\nwal_index = ""\n'
#: What the daemon's status file says of a job last run long ago: due at start, as a missed run.
LONG_AGO = {"completed_start": "2000-01-01T00:00:00+00:00", "result": "ok"}


def config_file(tmp_path: Path, schedule: str) -> Path:
    path = tmp_path / "pgdr.toml"
    path.write_text(
        f'[cluster]\nname = "main"\n[postgres]\nhost = "{tmp_path / "no-socket"}"\nport = 5999\n'
        f'[local]\npath = "{tmp_path / "repo"}"\n[schedule]\n{schedule}'
    )
    return path


# --- the key -----------------------------------------------------------------------------------------


def test_incremental_backup_is_off_by_default_and_the_starter_config_shows_the_recipe(tmp_path: Path) -> None:
    cfg = load_config(config_file(tmp_path, ""))
    assert cfg.schedule.incremental_backup == ""
    assert "incremental_backup" not in parse_schedules(cfg)

    text = starter_config(local_path=str(tmp_path / "repo"))
    assert tomllib.loads(text)["schedule"]["incremental_backup"] == ""
    assert 'base_backup = "0 1 * * 0"  and  incremental_backup = "0 */6 * * *"' in text
    assert "summarize_wal = on" in text
    starter = tmp_path / "starter.toml"
    starter.write_text(text)
    assert load_config(starter).schedule.incremental_backup == ""


def test_incremental_backup_is_a_cron_schedule_beside_a_full_one(tmp_path: Path) -> None:
    weekly = 'base_backup = "0 1 * * 0"\nincremental_backup = "0 */6 * * *"\n'
    schedules = parse_schedules(load_config(config_file(tmp_path, weekly)))
    assert schedules["incremental_backup"].expr == "0 */6 * * *" and schedules["base_backup"].expr == "0 1 * * 0"

    with pytest.raises(ConfigError, match=r"schedule\.incremental_backup in .* must be a string \(got 6\)"):
        load_config(config_file(tmp_path, "incremental_backup = 6\n"))
    with pytest.raises(ConfigError, match=r"unknown key schedule\.incremental_backups .*'incremental_backup'"):
        load_config(config_file(tmp_path, 'incremental_backups = "0 * * * *"\n'))
    with pytest.raises(ConfigError, match=r"schedule\.incremental_backup in .* is not a cron expression"):
        parse_schedules(load_config(config_file(tmp_path, 'incremental_backup = "every six hours"\n')))
    # Incrementals without scheduled full backups: a chain that never ends. The daemon refuses to start.
    alone = 'base_backup = ""\nincremental_backup = "0 */6 * * *"\n'
    with pytest.raises(ConfigError) as refused:
        parse_schedules(load_config(config_file(tmp_path, alone)))
    assert "schedule.incremental_backup in" in str(refused.value)
    assert 'schedule.base_backup is ""' in str(refused.value) and 'base_backup = "0 1 * * 0"' in str(refused.value)


# --- the daemon, in-process ------------------------------------------------------------------------------


class FakeBackups:
    """Stands in for ``jobs.take_backup``: records what the daemon asks for and answers as the backend would."""

    def __init__(self, *, fall_back: str = "") -> None:
        self.calls: list[dict[str, Any]] = []
        #: With a reason, an incremental request is answered with a full backup (nothing to build on).
        self.fall_back = fall_back
        self.newest: str | None = None
        self._clock = itertools.count()
        self.lock = threading.Lock()

    def __call__(self, cfg: Any, *, logical: bool = False, incremental: bool = False, **_: Any) -> BackupManifest:
        with self.lock:
            self.calls.append({"logical": logical, "incremental": incremental})
            started = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(hours=next(self._clock))
            parent = self.newest if incremental and not self.fall_back else None
            size = 1000 if parent else 50_000
            manifest = BackupManifest(
                name=started.strftime("%Y%m%dT%H%M%SZ"),
                kind="physical",
                cluster="main",
                system_identifier=1,
                pg_version="18.1",
                start_time=started,
                stop_time=started + timedelta(seconds=5),
                objects=[StoredObject("base.tar.zst", size // 10, "0" * 64, size, "", "zstd")],
                parent=parent,
                extra={"full_because": self.fall_back} if incremental and self.fall_back else {},
            )
            self.newest = manifest.name
            return manifest


@pytest.fixture
def in_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A state dir whose status file says both backups last ran in 2000 (so both are due at start)."""
    monkeypatch.setenv("PGDR_STATE_DIR", str(tmp_path / "state"))
    (tmp_path / "state").mkdir()
    jobs = {"base_backup": LONG_AGO, "incremental_backup": LONG_AGO}
    (tmp_path / "state" / "daemon-main.json").write_text(json.dumps({"cluster": "main", "pid": 0, "jobs": jobs}))
    yield tmp_path


def run_until(cfg: Any, condition: Any, what: str, capsys: pytest.CaptureFixture[str]) -> list[dict[str, Any]]:
    """Run the daemon in a thread until ``condition()``; its JSON log events."""
    from backend.daemon import run_daemon

    stop = threading.Event()
    outcome: list[int] = []
    runner = threading.Thread(target=lambda: outcome.append(run_daemon(cfg, log_format="json", stop=stop)))
    runner.start()
    try:
        wait_for(condition, 20, what)
    finally:
        stop.set()
        runner.join(timeout=20)
    assert outcome == [0]
    return [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]


def test_the_full_backup_wins_when_both_are_due_and_incrementals_then_build_on_it(
    in_process: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from backend.daemon import metrics_textfile, read_status

    fake = FakeBackups()
    monkeypatch.setattr("backend.jobs.take_backup", fake)
    schedule = f'base_backup = "{YEARLY}"\nincremental_backup = "* * * * * *"\n' + OTHERS_OFF
    cfg = load_config(config_file(in_process, schedule))
    events = run_until(cfg, lambda: len(fake.calls) >= 3, "a full and two incremental backups", capsys)

    # Both were missed; in that pass the full one ran and the incremental was skipped, not run after it.
    assert fake.calls[0] == {"logical": False, "incremental": False}
    assert all(call == {"logical": False, "incremental": True} for call in fake.calls[1:]), fake.calls
    (skipped,) = [e for e in events if e["job"] == "incremental_backup" and "skipped" in e["message"]]
    assert "the full base backup due at the same time ran instead" in skipped["message"]
    triggers = [e["fields"]["trigger"] for e in events if e["message"] == "incremental_backup started"]
    assert triggers[0] == "missed run" and set(triggers[1:]) == {"schedule"}, triggers
    (full_run,) = [e for e in events if e["message"].startswith("base_backup finished")]
    full = full_run["fields"]["backup"]
    runs = [e for e in events if e["message"].startswith("incremental_backup finished")]
    assert runs[0]["fields"]["parent"] == full and runs[0]["message"].endswith(f", incremental on {full}")
    assert runs[1]["fields"]["parent"] == runs[0]["fields"]["backup"]

    status = read_status(cfg)
    job = status.jobs["incremental_backup"]
    assert job["result"] == "ok" and job["schedule"] == "* * * * * *" and "incremental on " in job["detail"]
    backups = status.data["backups"]
    assert backups["physical"]["name"] == full  # the full one stays what "physical" reports
    assert backups["incremental"]["parent"] is not None and backups["incremental"]["size_bytes"] == 1000
    textfile = metrics_textfile(cfg).read_text()
    assert 'pgdr_backup_size_bytes{cluster="main",kind="incremental"} 1000' in textfile
    assert 'pgdr_backup_size_bytes{cluster="main",kind="physical"} 50000' in textfile
    lines = status.render().splitlines()
    assert [line.split()[0] for line in lines[2:4]] == ["base_backup", "incremental_backup"]


def test_an_incremental_taken_as_a_full_backup_says_why(
    in_process: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from backend.daemon import read_status

    (in_process / "state" / "daemon-main.json").unlink()  # nothing missed: only the incremental comes due
    fake = FakeBackups(fall_back="no base backup of this cluster in the local repository to build on")
    monkeypatch.setattr("backend.jobs.take_backup", fake)
    schedule = f'base_backup = "{YEARLY}"\nincremental_backup = "* * * * * *"\n' + OTHERS_OFF
    cfg = load_config(config_file(in_process, schedule))
    events = run_until(cfg, lambda: len(fake.calls) >= 1, "an incremental backup", capsys)

    assert fake.calls[0] == {"logical": False, "incremental": True}
    (finished, *_) = [e for e in events if e["message"].startswith("incremental_backup finished")]
    assert finished["fields"]["full_because"] == fake.fall_back and finished["fields"]["parent"] is None
    status = read_status(cfg)
    assert status.jobs["incremental_backup"]["detail"].endswith(f"taken as a full backup: {fake.fall_back}")
    assert set(status.data["backups"]) == {"physical"}  # a full backup, whatever asked for it


# --- pgdr check ------------------------------------------------------------------------------------------


@pytest.fixture
def pg18(shared_dir: Path, pgdr_for_server: Path) -> Iterator[Cluster]:
    """A PostgreSQL 18 cluster as initdb makes it (summarize_wal off), archiving into a local repository."""
    with running_cluster(shared_dir, pgdr_for_server, pg_bin=pg_bin("18"), settings={"archive_timeout": "60"}) as c:
        c.write_config(c.base_config())
        c.start()
        yield c


def summarize_line(lines: list[str]) -> str:
    (line,) = [line for line in lines if "summarize_wal" in line or "incremental" in line]
    return line


def test_check_reports_summarize_wal_on_postgresql_18(pg18: Cluster) -> None:
    fix = "ALTER SYSTEM SET summarize_wal = on; SELECT pg_reload_conf();"
    # Off, with nothing scheduled: said, with the fix, but no failure (full backups need nothing).
    code, lines = check(pg18)
    assert code == 0, "\n".join(lines)
    line = summarize_line(lines)
    assert (
        line.startswith("[ok  ] summarize_wal = off: incremental backups (`pgdr backup --incremental`") and fix in line
    )

    # Scheduled incrementals with it off: a problem, naming the schedule and the fix.
    pg18.write_config(pg18.base_config(extra='\n[schedule]\nincremental_backup = "0 */6 * * *"\n'))
    code, lines = check(pg18)
    assert code == 1
    (fail,) = failures(lines)
    assert fail == summarize_line(lines) and fail.startswith("[FAIL] summarize_wal = off: ")
    assert f'the incremental backups scheduled in {pg18.config_path} (incremental_backup = "0 */6 * * *")' in fail
    assert "all fail without it" in fail
    assert fix in fail and "(no restart)" in fail
    assert "reached every repository" in lines[-1], "summarize_wal must not stop the end-to-end test"

    # Done as printed (a reload, no restart): fine.
    alter_system(pg18, "summarize_wal", "on", "on")
    code, lines = check(pg18)
    assert code == 0, "\n".join(lines)
    assert summarize_line(lines) == (
        '[ok  ] summarize_wal = on: incremental backups work (scheduled: incremental_backup = "0 */6 * * *", '
        "each holding only the blocks changed since the backup before)"
    )


def test_check_on_postgresql_15_speaks_of_incrementals_only_when_they_are_scheduled(cluster: Cluster) -> None:
    alter_system(cluster, "archive_timeout", "60", "60")
    code, lines = check(cluster)
    assert code == 0, "\n".join(lines)
    assert not [line for line in lines if "summarize_wal" in line or "incremental" in line]

    cluster.write_config(cluster.base_config(extra='\n[schedule]\nincremental_backup = "0 */6 * * *"\n'))
    code, lines = check(cluster)
    assert code == 1
    (fail,) = failures(lines)
    assert fail.startswith('[FAIL] [schedule] incremental_backup = "0 */6 * * *" in ')
    assert "incremental backups need PostgreSQL 17 or later and this server runs 15." in fail
    assert 'set incremental_backup = ""' in fail


# --- the daemon and pgdr list on a real PostgreSQL 18 --------------------------------------------------


def list_json(cluster: Cluster, env: dict[str, str]) -> dict[str, dict[str, Any]]:
    listing = json.loads(cluster.pgdr("list", "--json", env=env).stdout)
    return {b["name"]: b for b in listing["backups"]}


def list_rows(cluster: Cluster, env: dict[str, str]) -> dict[str, list[str]]:
    """``pgdr list``'s backup rows by name, cut into columns at the header's column starts."""
    lines = cluster.pgdr("list", env=env).stdout.splitlines()
    header = lines[1]
    # A column starts where a header word follows two spaces ("BUILDS ON" is one header, one space inside).
    starts = [i for i in range(2, len(header)) if header[i] != " " and header[i - 2 : i] == "  "]

    def cells(line: str) -> list[str]:
        return [line[a:b].strip() for a, b in zip(starts, [*starts[1:], max(len(line), len(header))], strict=True)]

    rows = {"HEADER": cells(header)}
    for line in itertools.takewhile(str.strip, lines[2:]):
        rows[cells(line)[0]] = cells(line)
    return rows


def test_the_daemon_takes_incrementals_that_pgdr_list_shows_with_their_chain(
    shared_dir: Path, pgdr_for_server: Path, tmp_path: Path
) -> None:
    settings = {"summarize_wal": "on", "archive_timeout": "60"}
    with running_cluster(shared_dir, pgdr_for_server, pg_bin=pg_bin("18"), settings=settings) as cluster:
        schedule = f'base_backup = "{YEARLY}"\nincremental_backup = "*/2 * * * * *"\n' + OTHERS_OFF
        cluster.write_config(cluster.base_config(extra=f"\n[schedule]\n{schedule}"))
        cluster.start()
        cluster.sql("CREATE TABLE t AS SELECT g AS n, repeat('x', 200) AS pad FROM generate_series(1, 20000) g")
        env = clean_env(PGDR_STATE_DIR=str(tmp_path / "state"))
        (tmp_path / "state").mkdir()
        jobs = {"base_backup": LONG_AGO, "incremental_backup": LONG_AGO}
        (tmp_path / "state" / "daemon-main.json").write_text(json.dumps({"cluster": "main", "pid": 0, "jobs": jobs}))

        with running_daemon(cluster, env, tmp_path / "daemon.log") as daemon:

            def finished() -> list[dict[str, Any]]:
                return [e for e in daemon.events() if e["message"].startswith("incremental_backup finished")]

            wait_for(lambda: len(finished()) >= 2, 120, "two scheduled incremental backups")
            code, _ = daemon.terminate(timeout=30)
            assert code == 0
            events = daemon.events()

        (full_run,) = [e for e in events if e["message"].startswith("base_backup finished")]
        full = full_run["fields"]["backup"]
        (skipped,) = [e for e in events if e["job"] == "incremental_backup" and "skipped" in e["message"]]
        assert "the full base backup due at the same time ran instead" in skipped["message"]
        first, second = (e["fields"]["backup"] for e in finished()[:2])
        assert finished()[0]["fields"]["parent"] == full and finished()[1]["fields"]["parent"] == first

        listed = list_json(cluster, env)
        assert listed[full]["parent"] is None and listed[full]["kind"] == "physical"
        assert (listed[first]["parent"], listed[second]["parent"]) == (full, first)
        rows = list_rows(cluster, env)
        assert rows["HEADER"][:3] == ["NAME", "KIND", "BUILDS ON"]
        assert rows[full][1:3] == ["physical", ""]
        assert rows[first][1:3] == ["incremental", f"{full} (chain of 2)"]
        assert rows[second][1:3] == ["incremental", f"{first} (chain of 3)"]

        # The first incremental gone (deleted by hand): the second one's chain is broken, and list says so.
        repo = open_repository(load_config(cluster.config_path), "local")
        repo.delete([info.key for info in repo.list(f"backups/{first}/")])
        rows = list_rows(cluster, env)
        assert first not in rows
        assert rows[second][1:3] == ["incremental", f"{first} (BROKEN: {first} is gone)"]
