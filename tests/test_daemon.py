"""``pgdr --daemon`` as the real long-running process, on second-granular schedules, against a real
cluster archiving into a local repository and S3: scheduled backups, retention after each, Telegram
messages, ``pgdr status``, Prometheus metrics, and a SIGTERM in the middle of a backup."""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from backend.config import load_config
from backend.daemon import parse_schedules
from backend.errors import ConfigError
from backend.repository import open_repository
from tests.conftest import s3_settings
from tests.harness.cluster import Cluster, clean_env, pgdr_executable, wait_for
from tests.harness.s3 import MotoEndpoint, free_port
from tests.harness.telegram import FakeTelegram


def daemon_config(
    cluster: Cluster, moto: MotoEndpoint, bucket: str, *, telegram: FakeTelegram | None = None, extra: str = ""
) -> str:
    text = cluster.base_config(s3={**s3_settings(moto, bucket), "retention_days": 0})
    text = text.replace(
        f'[local]\npath = "{cluster.local_repo}"\n', f'[local]\npath = "{cluster.local_repo}"\nretention_days = 0\n'
    )
    if telegram is not None:
        text += f'\n[telegram]\nbot_token = "{telegram.token}"\nchat_id = "42"\napi_url = "{telegram.url}"\n'
    return text + extra


class Daemon:
    """``pgdr --daemon --log-format json`` in the background, its stdout in a file we can poll."""

    def __init__(self, cluster: Cluster, env: dict[str, str], log_path: Path) -> None:
        self.log_path = log_path
        self._log = log_path.open("w")
        self.proc = subprocess.Popen(
            [str(pgdr_executable()), "--config", str(cluster.config_path), "--daemon", "--log-format", "json"],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
        )

    def events(self) -> list[dict[str, Any]]:
        events = []
        for line in self.log_path.read_text().splitlines():
            try:
                events.append(json.loads(line))
            except ValueError:
                events.append({"message": line, "job": "", "level": "RAW", "fields": {}})
        return events

    def saw(self, job: str, prefix: str) -> bool:
        return any(e["job"] == job and e["message"].startswith(prefix) for e in self.events())

    def terminate(self, timeout: float) -> tuple[int, float]:
        began = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=timeout)
        return code, time.monotonic() - began

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


@contextmanager
def running_daemon(cluster: Cluster, env: dict[str, str], log_path: Path) -> Iterator[Daemon]:
    daemon = Daemon(cluster, env, log_path)
    try:
        yield daemon
    finally:
        daemon.close()


def listed_backups(cluster: Cluster, env: dict[str, str]) -> list[str]:
    listing = json.loads(cluster.pgdr("list", "--json", env=env).stdout)
    return [b["name"] for b in listing["backups"]]


def debris(cluster: Cluster) -> dict[str, list[str]]:
    """Objects under backups/ in a folder without a manifest, per repository: must never exist."""
    cfg = load_config(cluster.config_path)
    found = {}
    for name in cfg.repository_names:
        repo = open_repository(cfg, name)
        folders: dict[str, set[str]] = {}
        for info in repo.list("backups/"):
            parts = info.key.split("/")
            folders.setdefault(parts[1], set()).add("/".join(parts[2:]))
        found[name] = sorted(
            f"{folder}/{key}" for folder, keys in folders.items() if "manifest.json" not in keys for key in keys
        )
    return found


def children(parent: int, program: str) -> list[int]:
    """Processes running ``program`` whose parent is ``parent`` (from /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            head, _, tail = stat.read_text().rpartition(")")
        except OSError:
            continue
        if head.partition("(")[2] == program and tail.split()[1] == str(parent):
            found.append(int(stat.parent.name))
    return found


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


def status(cluster: Cluster, env: dict[str, str]) -> tuple[int, dict[str, Any]]:
    result = cluster.pgdr("status", "--json", env=env, check=False)
    return result.returncode, json.loads(result.stdout)


#: Once a year: in the test below these jobs run only because the status file says they were missed.
YEARLY = "0 0 1 1 *"


def test_daemon_backs_up_expires_notifies_and_reports(
    cluster_s3: Cluster, moto: MotoEndpoint, bucket: str, tmp_path: Path
) -> None:
    cluster = cluster_s3
    port = free_port()
    with FakeTelegram() as telegram:
        cluster.write_config(
            daemon_config(
                cluster,
                moto,
                bucket,
                telegram=telegram,
                extra=(
                    f'\n[schedule]\nbase_backup = "*/3 * * * * *"\nlogical_dump = "{YEARLY}"\nverify = "{YEARLY}"\n'
                    f'verify_deep = ""\nexpire = "{YEARLY}"\nrpo_check = "*/2 * * * * *"\nrpo_alarm_minutes = 10\n'
                    f"\n[daemon]\nmetrics_port = {port}\n"
                ),
            )
        )
        env = clean_env(PGDR_STATE_DIR=str(tmp_path / "state"))
        # The daemon was down over the yearly dump and verify: its status file says they last ran in 2000, so
        # each runs once at start ("a missed run"); expire, with no record, is not missed.
        long_ago = {"completed_start": "2000-01-01T00:00:00+00:00", "result": "ok", "schedule": YEARLY}
        (tmp_path / "state").mkdir()
        (tmp_path / "state" / "daemon-main.json").write_text(
            json.dumps({"cluster": "main", "pid": 0, "jobs": {"logical_dump": long_ago, "verify": long_ago}})
        )
        # Some archived WAL up front, so the RPO check is green from its first run.
        cluster.sql("CREATE TABLE t AS SELECT generate_series(1, 1000) AS n")
        cluster.wait_archived(cluster.switch_wal())

        with running_daemon(cluster, env, tmp_path / "daemon.log") as daemon:
            texts = telegram.wait_for(
                lambda ts: sum(t.startswith("✅ pgdr: base backup ") for t in ts) >= 3, 60, "three backup messages"
            )
            made = [t.split()[4] for t in texts if t.startswith("✅ pgdr: base backup ")]
            assert all(" of cluster main: " in t for t in texts if t.startswith("✅ pgdr: base backup "))
            (dumped,) = [t.split()[4] for t in texts if t.startswith("✅ pgdr: logical dump ")]

            # Retention (0 days here) runs after every scheduled backup: only the newest base backup survives
            # (and the newest dump of each database, whatever its age).
            def expired() -> bool:
                listed = set(listed_backups(cluster, env)) - {dumped}
                return bool(listed) and listed <= set(made) and len(listed) < len(made)

            wait_for(expired, 20, "old backups to be expired")
            wait_for(lambda: daemon.saw("expire", "expire finished"), 10, "an expire run in the log")

            code, report = status(cluster, env)
            assert code == 0, report
            assert report["running"] and report["healthy"] and report["cluster"] == "main"
            backup = report["jobs"]["base_backup"]
            assert backup["result"] == "ok" and backup["schedule"] == "*/3 * * * * *"
            assert backup["last_start"] <= backup["last_end"] < backup["next_run"]
            assert report["jobs"]["expire"]["trigger"] == "after base_backup"
            assert report["jobs"]["rpo_check"]["result"] == "ok"
            assert report["jobs"]["verify_deep"]["schedule"] == ""

            # The missed dump and verify each ran once, at start, and succeeded.
            dump, check = report["jobs"]["logical_dump"], report["jobs"]["verify"]
            assert (dump["result"], dump["trigger"], dump["error"]) == ("ok", "missed run", None), dump
            assert dump["detail"].startswith(f"{dumped}: ") and report["backups"]["logical"]["name"] == dumped
            assert dumped in listed_backups(cluster, env)
            assert (check["result"], check["trigger"], check["error"]) == ("ok", "missed run", None), check
            assert check["detail"].startswith("Verify of cluster main (checksums)") and check["detail"].endswith(": OK")
            assert dump["next_run"] > dump["last_end"][:4] + "-12-31" and check["next_run"] == dump["next_run"]
            assert dump["last_end"] <= check["last_start"]  # due together: in the daemon's job order
            assert not [t for t in telegram.texts() if t.startswith("❌")]

            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
                scraped = response.read().decode()
            assert 'pgdr_last_success_timestamp_seconds{cluster="main",job="base_backup"}' in scraped
            assert 'pgdr_backup_size_bytes{cluster="main",kind="physical"}' in scraped
            assert 'pgdr_wal_archive_lag_seconds{cluster="main"}' in scraped
            assert "pgdr_job_duration_seconds" in (tmp_path / "state" / "pgdr.prom").read_text()

            code, took = daemon.terminate(timeout=30)
            assert code == 0 and took < 30
            events = daemon.events()

        assert all({"time", "level", "job", "message", "fields"} <= set(e) for e in events), events[:3]
        started = [e for e in events if e["job"] == "base_backup" and e["message"].startswith("base_backup finished")]
        assert started and started[0]["fields"]["backup"] in made
        (boot,) = [e for e in events if e["message"].startswith("pgdr daemon started")]
        assert boot["fields"]["missed"] == ["logical_dump", "verify"]
        for job in ("logical_dump", "verify", "expire"):
            runs = [e["fields"]["trigger"] for e in events if e["message"] == f"{job} started"]
            if job == "expire":
                assert "missed run" not in runs and "schedule" not in runs, runs
            else:
                assert runs == ["missed run"], f"{job} ran {runs}"
        (verified,) = [e for e in events if e["message"].startswith("verify finished")]
        assert f"ok     backup {dumped} (logical) in local, s3" in verified["fields"]["report"]
        assert any("SIGTERM received" in e["message"] for e in events)
        assert telegram.token not in (tmp_path / "daemon.log").read_text()

    code, report = status(cluster, env)
    assert code == 1 and not report["running"] and not report["healthy"]
    assert "the daemon is not running" in report["problems"]
    assert debris(cluster) == {"local": [], "s3": []}


def test_sigterm_during_a_backup_exits_promptly_and_leaves_nothing_listed(
    cluster_s3: Cluster, moto: MotoEndpoint, bucket: str, tmp_path: Path
) -> None:
    cluster = cluster_s3
    # A spread checkpoint over dirty buffers: pg_basebackup waits minutes before sending a byte.
    cluster.sql("ALTER SYSTEM SET checkpoint_timeout = '300s'")
    cluster.sql("ALTER SYSTEM SET checkpoint_completion_target = 0.9")
    cluster.sql("SELECT pg_reload_conf()")
    cluster.sql("CREATE TABLE big AS SELECT g AS n, repeat('x', 100) AS pad FROM generate_series(1, 100000) g")
    cluster.write_config(
        daemon_config(
            cluster,
            moto,
            bucket,
            extra=(
                '\n[backup]\ncheckpoint = "spread"\n'
                '\n[schedule]\nbase_backup = "* * * * * *"\nlogical_dump = ""\nverify = ""\nverify_deep = ""\n'
                'expire = ""\nrpo_check = ""\n'
            ),
        )
    )
    env = clean_env(PGDR_STATE_DIR=str(tmp_path / "state"))

    with running_daemon(cluster, env, tmp_path / "daemon.log") as daemon:
        wait_for(
            lambda: (
                cluster.sql("SELECT phase FROM pg_stat_progress_basebackup") == [("waiting for checkpoint to finish",)]
            ),
            30,
            "the scheduled backup to wait for its checkpoint",
        )
        assert daemon.saw("base_backup", "base_backup started")
        (child,) = children(daemon.proc.pid, "pg_basebackup")
        code, took = daemon.terminate(timeout=20)
        assert code == 0, daemon.log_path.read_text()
        assert took < 10, f"the daemon took {took:.1f} s to stop"
        assert daemon.saw("base_backup", "base_backup cancelled")

    # pg_basebackup was killed (the server's walsender only notices once its checkpoint is done), nothing
    # is listed, and no repository holds debris.
    assert not alive(child)
    assert listed_backups(cluster, env) == []
    assert debris(cluster) == {"local": [], "s3": []}
    code, report = status(cluster, env)
    assert report["jobs"]["base_backup"]["result"] == "cancelled"
    assert not report["running"]


def test_schedule_keys_are_validated(tmp_path: Path) -> None:
    path = tmp_path / "pgdr.toml"
    base = f'[cluster]\nname = "main"\n[local]\npath = "{tmp_path / "repo"}"\n'
    path.write_text(base + '[schedule]\nbase_backup = "*/5 * * * * *"\nverify = ""\n')
    schedules = parse_schedules(load_config(path))
    assert schedules["base_backup"].expr == "*/5 * * * * *" and "verify" not in schedules
    assert set(schedules) == {"base_backup", "logical_dump", "verify_deep", "expire", "rpo_check", "wal_index"}
    path.write_text(base + '[schedule]\nexpire = "every day"\n')
    with pytest.raises(ConfigError, match=r"schedule\.expire .* is not a cron expression"):
        parse_schedules(load_config(path))
    path.write_text(base + '[schedule]\ntimezone = "Mars/Olympus"\n')
    with pytest.raises(ConfigError, match=r"schedule\.timezone"):
        parse_schedules(load_config(path))


# --- in-process: no server needed ------------------------------------------------------------------


def local_only_config(tmp_path: Path, extra: str = "") -> Path:
    path = tmp_path / "pgdr.toml"
    path.write_text(
        f'[cluster]\nname = "main"\n[postgres]\nhost = "{tmp_path / "no-socket"}"\nport = 5999\n'
        f'[local]\npath = "{tmp_path / "repo"}"\n' + extra
    )
    path.chmod(0o600)  # it may hold the Telegram token
    return path


def test_a_scheduled_backup_that_finds_the_lock_held_is_skipped_not_failed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from backend.daemon import read_status, run_daemon
    from backend.locks import job_lock

    monkeypatch.setenv("PGDR_STATE_DIR", str(tmp_path / "state"))
    schedule = '[schedule]\nbase_backup = "* * * * * *"\nlogical_dump = ""\nverify = ""\nverify_deep = ""\n'
    cfg = load_config(local_only_config(tmp_path, schedule + 'expire = ""\nrpo_check = ""\n'))
    stop = threading.Event()
    outcome: list[int] = []
    with job_lock(cfg, "a manual pgdr backup"):
        runner = threading.Thread(target=lambda: outcome.append(run_daemon(cfg, stop=stop)))
        runner.start()
        try:
            wait_for(
                lambda: read_status(cfg).jobs.get("base_backup", {}).get("result") == "skipped", 10, "a skipped run"
            )
            current = read_status(cfg)
            assert current.running and current.healthy, current.render()
            assert "a manual pgdr backup" in current.jobs["base_backup"]["error"]
            assert "skipped" in current.render()
        finally:
            stop.set()
            runner.join(timeout=10)
    assert outcome == [0]
    assert not read_status(cfg).running


def test_rpo_alarm_when_the_newest_archived_wal_is_too_old(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os
    import struct

    from backend.jobs import rpo_check_job

    monkeypatch.setenv("PGDR_STATE_DIR", str(tmp_path / "state"))
    with FakeTelegram() as telegram:
        tg = f'[telegram]\nbot_token = "{telegram.token}"\nchat_id = "42"\napi_url = "{telegram.url}"\n'
        cfg = load_config(local_only_config(tmp_path, tg + "[schedule]\nrpo_alarm_minutes = 10\n"))

        first = rpo_check_job(cfg)
        assert not first.ok and first.lag_seconds is None
        assert telegram.texts()[-1].startswith("⚠️ pgdr: cluster main: no archived WAL")

        segment = tmp_path / "000000010000000000000003"
        header = struct.pack("<HHIQI4xQII", 0xD110, 0x0002, 1, 3 << 24, 0, 7_000_000_000_000_000_001, 16 << 20, 8192)
        segment.write_bytes(header + bytes((16 << 20) - len(header)))
        subprocess.run(
            [str(pgdr_executable()), "--config", str(cfg.source), "wal-push", str(segment)],
            env=clean_env(PGDR_STATE_DIR=str(tmp_path / "state")),
            check=True,
        )
        (stored,) = (tmp_path / "repo").glob("main/wal/*/000000010000000000000003.*")
        old = time.time() - 12 * 60 - 5
        os.utime(stored, (old, old))

        alarm = rpo_check_job(cfg)
        assert not alarm.ok and alarm.lag_seconds is not None and alarm.lag_seconds > 12 * 60
        # Rate limited: the second alarm in a row is held back.
        assert [t for t in telegram.texts() if t.startswith("⚠️")] == [
            "⚠️ pgdr: cluster main: no archived WAL in the repositories (is archive_command = 'pgdr wal-push %p' set?)"
        ]
        with monkeypatch.context() as later:  # past the repeat window, the alarm goes out again
            later.setattr("backend.notify.time.time", lambda: old + 2 * 3600)
            rpo_check_job(cfg)
        assert telegram.texts()[-1].startswith("⚠️ pgdr: cluster main: newest archived WAL is 12 minutes old")
        assert "(repeated 1 time since" in telegram.texts()[-1]

        os.utime(stored, None)
        cleared = rpo_check_job(cfg)
        assert cleared.ok
        assert telegram.texts()[-1].startswith("✅ pgdr: cluster main: WAL archiving is current again")
        count = len(telegram.texts())
        assert rpo_check_job(cfg).ok and len(telegram.texts()) == count  # no news is not sent


def test_the_daemon_indexes_an_archive_kept_only_in_s3(
    cluster: Cluster, moto: MotoEndpoint, bucket: str, tmp_path: Path
) -> None:
    """wal-push queues indexing only where a local repository holds the queue: the daemon's wal_index
    job gives an S3-only archive its commit times, so no operator's `pgdr timeline` pays for them."""
    off = "\n".join(f'{job} = ""' for job in ("base_backup", "logical_dump", "verify", "verify_deep", "expire"))
    cluster.write_config(
        cluster.base_config(local=False, s3=s3_settings(moto, bucket))
        + f'\n[schedule]\n{off}\nrpo_check = ""\nwal_index = "*/2 * * * * *"\n'
    )
    cluster.sql("SELECT pg_create_restore_point('before_the_release')")
    archived = cluster.write_wal(2)
    cluster.wait_archived(archived[-1])
    repo = open_repository(load_config(cluster.config_path), "s3")
    assert not list(repo.list("walindex/")), "nothing indexed it yet"
    env = clean_env(PGDR_STATE_DIR=str(tmp_path / "state"))
    with running_daemon(cluster, env, tmp_path / "daemon.log") as daemon:
        wait_for(lambda: daemon.saw("wal_index", "wal_index finished"), 60, "a wal_index run")
        (run,) = [e for e in daemon.events() if e["job"] == "wal_index" and "finished" in e["message"]][:1]
    assert run["fields"]["indexed"] >= len(archived), run
    indexed = {info.key.rsplit("/", 1)[-1].removesuffix(".json") for info in repo.list("walindex/")}
    assert set(archived) <= indexed
    events = json.loads(cluster.pgdr("timeline", "--json", "--events", env=env).stdout)
    assert events["unindexed_segments"] == 0
    assert "before_the_release" in json.dumps(events)


def test_a_new_deployment_is_not_an_rpo_alarm_until_its_first_segment_is_overdue(cluster: Cluster) -> None:
    from backend.jobs import rpo_check_job

    cfg = load_config(cluster.config_path)
    assert cluster.sql("SELECT archived_count FROM pg_stat_archiver")[0] == (0,)
    fresh = rpo_check_job(cfg)
    assert fresh.ok and fresh.message.startswith("nothing archived yet: the server started"), fresh
    (started,) = cluster.sql("SELECT pg_postmaster_start_time()")[0]
    late = rpo_check_job(cfg, now=started + timedelta(minutes=cfg.schedule.rpo_alarm_minutes, seconds=1))
    assert not late.ok and late.lag_seconds is None, late
