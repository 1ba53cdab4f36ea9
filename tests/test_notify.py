"""Telegram notifications against a local fake Bot API: texts, retries, rate limiting, and that a
broken notifier never fails a backup nor leaks the bot token."""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from backend import notify
from backend.config import MASK, ClusterConfig, Config, TelegramConfig, load_config
from backend.manifest import BackupManifest, StoredObject
from backend.notify import notify_restore
from tests.harness.cluster import Cluster, clean_env
from tests.harness.telegram import FakeTelegram

FAST = notify.RetryPolicy(attempts=3, budget=5.0, timeout=2.0, backoff=0.1)


@pytest.fixture
def telegram() -> Iterator[FakeTelegram]:
    with FakeTelegram() as fake:
        yield fake


@pytest.fixture
def state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "state"
    monkeypatch.setenv("PGDR_STATE_DIR", str(path))
    return path


@pytest.fixture
def pgdr_log() -> Iterator[io.StringIO]:
    """What pgdr logs (logger "pgdr"), captured by hand: the suite runs with -p no:logging."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    logger = logging.getLogger("pgdr")
    saved = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    yield out
    logger.removeHandler(handler)
    logger.setLevel(saved)


def config(fake: FakeTelegram, *, repeat_minutes: int = 60, token: str | None = None) -> Config:
    return Config(
        cluster=ClusterConfig("main"),
        telegram=TelegramConfig(
            bot_token=fake.token if token is None else token,
            chat_id="42",
            api_url=fake.url,
            repeat_minutes=repeat_minutes,
        ),
    )


def telegram_toml(fake: FakeTelegram) -> str:
    return f'\n[telegram]\nbot_token = "{fake.token}"\nchat_id = "42"\napi_url = "{fake.url}"\n'


# --- message texts ---------------------------------------------------------------------------------


def test_message_texts_say_what_which_cluster_how_big_how_long_and_the_error() -> None:
    started = datetime(2026, 11, 25, 14, 30, 0, tzinfo=UTC)
    manifest = BackupManifest(
        name="20261125T143000Z",
        kind="physical",
        cluster="main",
        system_identifier=1,
        pg_version="15.8",
        start_time=started,
        stop_time=started.replace(second=4, microsecond=200_000),
        objects=[StoredObject("base.tar.zst", 50_000_000, "a", 1_100_000_000, "b", "zstd")],
    )
    assert notify.backup_succeeded_text(manifest) == (
        "✅ pgdr: base backup 20261125T143000Z of cluster main: 1.1 GB (stored 50.0 MB) in 4.2 s"
    )
    incremental = dataclasses.replace(manifest, name="20261125T203000Z", parent="20261125T143000Z")
    assert notify.backup_succeeded_text(incremental) == (
        "✅ pgdr: incremental backup 20261125T203000Z on 20261125T143000Z of cluster main: 1.1 GB (stored 50.0 MB) "
        "in 4.2 s"
    )
    fallback = dataclasses.replace(manifest, extra={"full_because": "no base backup to build on"})
    assert notify.backup_succeeded_text(fallback).endswith("in 4.2 s; a full one, because no base backup to build on")
    assert notify.describe_backup("incremental") == "incremental backup"
    failed = notify.failed_text("base backup", "main", RuntimeError("pg_basebackup failed (exit 1): no\nmore"), 3.05)
    assert failed == "❌ pgdr: base backup of cluster main failed after 3.0 s: pg_basebackup failed (exit 1): no"
    assert notify.rpo_alarm_text("main", 12 * 60 + 5, 10, "000000010000000000000007") == (
        "⚠️ pgdr: cluster main: newest archived WAL is 12 minutes old "
        "(alarm at 10 minutes; newest segment 000000010000000000000007)"
    )
    assert notify.restore_text("main", "Restored to 2026-11-25 14:00:00", True).startswith(
        "🔄 pgdr: restore of cluster main finished:\nRestored"
    )
    assert notify.restore_text("main", "server did not start", False).startswith(
        "❌ pgdr: restore of cluster main failed"
    )
    assert notify.verify_failed_text("main", False, "FAIL 2026 base.tar.zst checksum").startswith(
        "❌ pgdr: verify of cluster main found problems:\nFAIL"
    )
    assert notify.human_duration(754) == "12 min 34 s"


# --- delivery and retries --------------------------------------------------------------------------


def test_429_is_retried_after_retry_after_and_delivered_once(telegram: FakeTelegram, state_dir: Path) -> None:
    telegram.fail_next(1, "429", retry_after=1)
    began = time.monotonic()
    assert notify.notify(config(telegram), "base_backup", "✅ pgdr: hello", ok=True, policy=FAST)
    assert time.monotonic() - began >= 1.0, "retry_after was not honoured"
    assert [r.status for r in telegram.requests] == [429, 200]
    assert telegram.texts() == ["✅ pgdr: hello"]
    assert telegram.messages[0].chat_id == "42"


def test_5xx_and_a_refused_connection_are_retried(telegram: FakeTelegram, state_dir: Path) -> None:
    telegram.fail_next(2, "500")
    assert notify.notify(config(telegram), "base_backup", "one", ok=True, policy=FAST)
    assert [r.status for r in telegram.requests] == [500, 500, 200]
    telegram.stop()
    restarter = __import__("threading").Timer(0.15, telegram.start)
    restarter.start()
    try:
        assert notify.notify(config(telegram), "base_backup", "two", ok=True, policy=FAST)
    finally:
        restarter.join()
    assert telegram.texts() == ["one", "two"]


def test_a_dead_telegram_gives_up_in_bounded_time_and_never_raises(
    telegram: FakeTelegram, state_dir: Path, pgdr_log: io.StringIO
) -> None:
    telegram.set_mode("500")
    policy = notify.RetryPolicy(attempts=10, budget=1.5, timeout=1.0, backoff=0.2)
    began = time.monotonic()
    assert notify.notify(config(telegram), "base_backup", "x", ok=True, policy=policy) is False
    assert time.monotonic() - began < 3.0
    assert 2 <= len(telegram.requests) < 10
    telegram.stop()
    assert notify.notify(config(telegram), "base_backup", "y", ok=True, policy=FAST) is False
    logged = pgdr_log.getvalue()
    assert "not delivered" in logged and "HTTP 500" in logged and "Connection refused" in logged
    assert telegram.token not in logged and MASK in logged


def test_a_wrong_token_is_not_retried_and_not_logged(
    telegram: FakeTelegram, state_dir: Path, pgdr_log: io.StringIO
) -> None:
    wrong = "999:WRONG-secret"
    assert notify.notify(config(telegram, token=wrong), "base_backup", "x", ok=True, policy=FAST) is False
    assert [r.status for r in telegram.requests] == [401]
    logged = pgdr_log.getvalue()
    assert "401" in logged and "telegram.bot_token" in logged
    assert wrong not in logged


def test_not_configured_is_a_no_op(telegram: FakeTelegram, state_dir: Path) -> None:
    assert notify.notify(config(telegram, token=""), "base_backup", "x", ok=False) is False
    assert notify.notify(Config(), "base_backup", "x", ok=True) is False
    assert telegram.requests == []


def test_restore_notification(telegram: FakeTelegram, state_dir: Path) -> None:
    notify_restore(config(telegram), "Restored cluster main to 2026-11-25 14:00:00 UTC", True)
    notify_restore(config(telegram), "recovery stopped before the target", False)
    notify_restore(config(telegram), "recovery stopped before the target", False)
    texts = telegram.texts()
    assert texts[0].startswith("🔄 pgdr: restore of cluster main finished")
    assert texts[1].startswith("❌ pgdr: restore of cluster main failed") and len(texts) == 3  # never rate limited


# --- rate limiting ---------------------------------------------------------------------------------


def test_repeated_failures_are_rate_limited_and_counted(telegram: FakeTelegram, state_dir: Path) -> None:
    cfg = config(telegram, repeat_minutes=60)
    t0 = 1_800_000_000.0

    def fail(at: float, text: str = "❌ pgdr: base backup of cluster main failed: boom") -> bool:
        return notify.notify(cfg, "base_backup", text, ok=False, now=at, policy=FAST)

    assert fail(t0)
    assert not fail(t0 + 60)
    assert not fail(t0 + 120)
    # Another kind (or cluster) is its own episode.
    assert notify.notify(cfg, "verify", "❌ verify", ok=False, now=t0 + 130, policy=FAST)
    # After the window, the next failure goes out and says how often it repeated meanwhile.
    assert fail(t0 + 3601)
    assert telegram.texts()[-1].endswith("(repeated 2 times since 2027-01-15 08:00 UTC)")
    assert not fail(t0 + 3700)
    # A success ends the episode (and says so); the next failure is sent at once.
    assert notify.notify(cfg, "base_backup", "✅ pgdr: base backup", ok=True, now=t0 + 3800, policy=FAST)
    assert telegram.texts()[-1] == "✅ pgdr: base backup (after 5 failures since 2027-01-15 08:00 UTC)"
    assert fail(t0 + 3900)
    # A success that only reports a change (an alarm clearing) is sent once, not every time.
    assert notify.notify(cfg, "rpo", "✅ ok", ok=True, only_on_change=True, now=t0, policy=FAST) is False
    assert len(telegram.texts()) == 5


def test_an_undelivered_failure_does_not_hold_back_the_next(telegram: FakeTelegram, state_dir: Path) -> None:
    cfg = config(telegram)
    telegram.stop()
    assert not notify.notify(cfg, "base_backup", "❌ first", ok=False, now=1000.0, policy=FAST)
    telegram.start()
    assert notify.notify(cfg, "base_backup", "❌ second", ok=False, now=1010.0, policy=FAST)
    assert telegram.texts() == ["❌ second (repeated 1 time since 1970-01-01 00:16 UTC)"]


# --- through the real command line -----------------------------------------------------------------


def test_backup_succeeds_when_telegram_fails_and_the_token_stays_secret(
    cluster: Cluster, telegram: FakeTelegram, tmp_path: Path
) -> None:
    cluster.write_config(cluster.base_config(extra=telegram_toml(telegram)))
    env = clean_env(PGDR_STATE_DIR=str(tmp_path / "state"))
    cluster.sql("CREATE TABLE t AS SELECT generate_series(1, 1000) AS n")

    telegram.set_mode("500")
    began = time.monotonic()
    result = cluster.pgdr("backup", env=env)  # exit 0 checked
    assert time.monotonic() - began < 60
    assert "complete" in result.stdout
    assert "telegram: message not delivered" in result.stderr and "HTTP 500" in result.stderr
    assert all(r.status == 500 for r in telegram.requests) and len(telegram.requests) >= 2

    # Rate limited for good (429 on every try): retried after retry_after, then given up; the backup stands.
    telegram.reset()
    telegram.set_mode("429", retry_after=1)
    result = cluster.pgdr("backup", env=env)
    assert "complete" in result.stdout
    assert "telegram: message not delivered" in result.stderr and "HTTP 429 Too Many Requests" in result.stderr
    assert [r.status for r in telegram.requests] == [429] * len(telegram.requests) and len(telegram.requests) >= 2
    assert telegram.texts() == []

    telegram.stop()
    result = cluster.pgdr("backup", env=env)
    assert "telegram: message not delivered" in result.stderr and "Connection refused" in result.stderr
    for output in (result.stdout, result.stderr):
        assert telegram.token not in output
    listed = cluster.pgdr("list", "--json", env=env)
    assert listed.stdout.count('"kind": "physical"') == 3


def test_backup_messages_and_failures_rate_limited_across_processes(
    cluster: Cluster, telegram: FakeTelegram, tmp_path: Path
) -> None:
    cluster.write_config(cluster.base_config(extra=telegram_toml(telegram)))
    env = clean_env(PGDR_STATE_DIR=str(tmp_path / "state"))

    cluster.pgdr("backup", env=env)
    (ok_text,) = telegram.texts()
    assert ok_text.startswith("✅ pgdr: base backup ") and " of cluster main: " in ok_text
    assert "(stored " in ok_text and ok_text.endswith(" s")

    cluster.stop()
    for _ in range(2):  # two separate processes: the second failure is held back
        failed = cluster.pgdr("backup", env=env, check=False)
        assert failed.returncode != 0
    failures = [t for t in telegram.texts() if t.startswith("❌")]
    assert len(failures) == 1, telegram.texts()
    assert failures[0].startswith("❌ pgdr: base backup of cluster main failed after ")

    cluster.start()
    cluster.pgdr("backup", env=env)
    last = telegram.texts()[-1]
    assert last.startswith("✅ pgdr: base backup ") and "(after 2 failures since " in last


def test_a_failing_pgdr_verify_notifies_and_a_passing_one_does_not(
    cluster: Cluster, telegram: FakeTelegram, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A manual verify alerts like the daemon's does, and a dead Telegram never changes its exit code."""
    cluster.write_config(cluster.base_config(extra=telegram_toml(telegram)))
    env = clean_env(PGDR_STATE_DIR=str(tmp_path / "state"))
    cluster.sql("CREATE TABLE t AS SELECT generate_series(1, 1000) AS n")
    name = json.loads(cluster.pgdr("backup", "--json", env=env).stdout)["name"]
    telegram.reset()  # the backup's own message

    assert cluster.pgdr("verify", env=env).returncode == 0
    assert telegram.requests == [], "a passing verify is no news"

    tar = cluster.local_repo / "main" / "backups" / name / "base.tar.zst"
    good = tar.read_bytes()
    flipped = bytearray(good)
    flipped[len(flipped) // 2] ^= 0x01
    tar.write_bytes(bytes(flipped))

    # Telegram down: the failure is logged, and verify still says "problems found" (1), not an error (2).
    telegram.set_mode("500")
    down = cluster.pgdr("verify", env=env, check=False)
    assert down.returncode == 1, down.stderr
    assert "PROBLEMS FOUND" in down.stdout
    assert "telegram: message not delivered" in down.stderr and telegram.token not in down.stderr
    assert telegram.texts() == []

    telegram.set_mode("ok")
    failed = cluster.pgdr("verify", name, env=env, check=False)
    assert failed.returncode == 1
    (text,) = telegram.texts()
    assert text.startswith("❌ pgdr: verify of cluster main found problems:\n")
    assert f"BAD    backup {name}" in text and "local: base.tar.zst: checksum" in text
    assert "(repeated 1 time since " in text  # the undelivered alert is not lost, only late

    # The console's Verify screen runs the same backend call, so it alerts too (a fresh rate-limit
    # state, or this failure would rightly be held back as a repeat of the one just sent).
    from pgdr_tui.source import Source

    monkeypatch.setenv("PGDR_STATE_DIR", str(tmp_path / "console-state"))
    console = Source(load_config(cluster.config_path), probe_server=False)
    assert not console.verify(None, deep=False, on_progress=lambda _: None, cancel=None).ok
    assert len(telegram.texts()) == 2 and telegram.texts()[-1].startswith("❌ pgdr: verify of cluster main found")

    tar.write_bytes(good)
    assert cluster.pgdr("verify", env=env).returncode == 0
    assert telegram.texts()[-1].startswith("✅ pgdr: verify of cluster main passed again (after 2 failures since ")
    assert len(telegram.texts()) == 3
