"""Telegram notifications: what happened, to which cluster, how big, how long, and the error.

``notify`` never raises and never fails the job it reports on: a message that cannot be delivered is
logged (logger ``pgdr``) and retried a few times with backoff (Telegram's 429 ``retry_after``, 5xx
answers, refused or dropped connections), within a small total time budget, then dropped.

Rate limiting, so a flapping failure does not flood the chat: failures (and alarms) are keyed by
event kind and cluster. The first failure of a key is sent at once; further failures of the same key
within ``telegram.repeat_minutes`` are counted, not sent; the first one after the window is sent with
"(repeated K times since HH:MM UTC)". A success of that kind ends the episode and is sent with how
many failures preceded it, so the next failure is again sent at once. The state is a small JSON file
in the state dir, read and rewritten under an flock, so every pgdr process (the daemon, a manual
``pgdr backup``) shares it. If that file cannot be used, messages are simply sent unthrottled.

The bot token is part of the request URL; it is masked in everything logged.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from backend.config import MASK, Config, TelegramConfig
from backend.durable import replace_file

if TYPE_CHECKING:
    from backend.manifest import BackupManifest

log = logging.getLogger("pgdr")

#: Telegram rejects longer texts.
MAX_TEXT = 4096
STATE_FILE = "notify-state.json"


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded retries: never more than ``attempts`` requests nor ``budget`` seconds in all."""

    attempts: int = 4
    budget: float = 12.0
    timeout: float = 5.0
    backoff: float = 0.5
    max_backoff: float = 4.0


DEFAULT_POLICY = RetryPolicy()


def enabled(cfg: Config) -> bool:
    return bool(cfg.telegram.bot_token and cfg.telegram.chat_id)


def notify(
    cfg: Config,
    kind: str,
    text: str,
    *,
    ok: bool,
    rate_limit: bool = True,
    only_on_change: bool = False,
    now: float | None = None,
    policy: RetryPolicy = DEFAULT_POLICY,
) -> bool:
    """Send ``text`` for an event of ``kind`` (e.g. "base_backup"); True when Telegram took it.

    ``ok`` False marks a failure or alarm (rate limited unless ``rate_limit`` is False);
    ``only_on_change`` sends a success only when it ends a failure episode (an alarm that cleared).
    A no-op when Telegram is not configured. Never raises.
    """
    if not enabled(cfg):
        return False
    try:
        return _notify(
            cfg, kind, text, ok=ok, rate_limit=rate_limit, only_on_change=only_on_change, now=now, policy=policy
        )
    except Exception as exc:  # a notifier bug must never fail a backup
        log.warning("telegram notification failed: %s", mask(f"{type(exc).__name__}: {exc}", cfg.telegram))
        return False


def _notify(
    cfg: Config,
    kind: str,
    text: str,
    *,
    ok: bool,
    rate_limit: bool,
    only_on_change: bool,
    now: float | None,
    policy: RetryPolicy,
) -> bool:
    key = f"{cfg.cluster.name}:{kind}"
    when = time.time() if now is None else now
    window = cfg.telegram.repeat_minutes * 60.0 if rate_limit else 0.0
    try:
        send, note, undo = _gate(key, ok=ok, only_on_change=only_on_change, now=when, window=window)
    except OSError as exc:  # no usable state dir: send without throttling
        log.debug("telegram rate-limit state unavailable (%s): sending unthrottled", exc)
        send, note, undo = (ok is False or not only_on_change), "", None
    if not send:
        if not ok:
            log.info("telegram: %s message for cluster %s suppressed (rate limited)", kind, cfg.cluster.name)
        return False
    delivered = send_message(cfg.telegram, text + note, policy)
    if not delivered and undo is not None:
        with contextlib.suppress(OSError):
            undo()
    return delivered


# --- delivery --------------------------------------------------------------------------------------


def mask(text: str, tg: TelegramConfig) -> str:
    return text.replace(tg.bot_token, MASK) if tg.bot_token else text


def endpoint(tg: TelegramConfig, *, masked: bool = False) -> str:
    return f"{tg.api_url.rstrip('/')}/bot{MASK if masked else tg.bot_token}/sendMessage"


def send_message(tg: TelegramConfig, text: str, policy: RetryPolicy = DEFAULT_POLICY) -> bool:
    """POST sendMessage with retries; True once Telegram answered ok. Logs, never raises."""
    # http.client and urllib (with email) cost ~25 ms to import: only a process that sends pays it.
    import http.client
    import urllib.error
    import urllib.request

    if len(text) > MAX_TEXT:
        text = text[: MAX_TEXT - 1] + "…"
    body = json.dumps({"chat_id": tg.chat_id, "text": text, "disable_web_page_preview": True}).encode()
    shown = endpoint(tg, masked=True)
    deadline = time.monotonic() + policy.budget
    problem = ""
    for attempt in range(1, policy.attempts + 1):
        wait: float | None = None
        retryable = True
        remaining = deadline - time.monotonic()
        request = urllib.request.Request(
            endpoint(tg), data=body, headers={"Content-Type": "application/json"}, method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=max(0.5, min(policy.timeout, remaining))) as response:
                answer = _json(response.read())
            if answer.get("ok", True) is not False:
                log.debug("telegram: message delivered (attempt %d)", attempt)
                return True
            problem = f"Telegram answered not ok: {answer.get('description', '')}"
            retryable = False
        except urllib.error.HTTPError as exc:
            answer = _json(exc.read())
            description = answer.get("description") or exc.reason
            problem = f"HTTP {exc.code} {description}"
            if exc.code == 429:
                retry_after = (answer.get("parameters") or {}).get("retry_after")
                if isinstance(retry_after, int | float) and retry_after >= 0:
                    wait = float(retry_after)
            elif exc.code < 500:
                retryable = False
                hint = {401: "check telegram.bot_token", 400: "check telegram.chat_id", 403: "is the bot in the chat?"}
                problem += f" ({hint[exc.code]})" if exc.code in hint else ""
        except (urllib.error.URLError, TimeoutError, OSError, http.client.HTTPException) as exc:
            reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
            problem = f"{type(reason).__name__ if not str(reason) else reason}"
        problem = mask(problem, tg)
        if not retryable:
            log.warning("telegram: message not delivered to %s: %s", shown, problem)
            return False
        if wait is None:
            wait = min(policy.backoff * 2 ** (attempt - 1), policy.max_backoff)
        if attempt == policy.attempts or time.monotonic() + wait > deadline:
            break
        log.info("telegram: attempt %d to %s failed (%s): retrying in %.1f s", attempt, shown, problem, wait)
        time.sleep(wait)
    log.warning("telegram: message not delivered to %s after %d attempt(s): %s", shown, attempt, problem)
    return False


def _json(raw: bytes) -> dict[str, Any]:
    try:
        value = json.loads(raw or b"{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


# --- rate limiting ---------------------------------------------------------------------------------


def state_path() -> Path:
    from backend.statedir import state_dir

    return state_dir() / STATE_FILE


@contextlib.contextmanager
def _state() -> Iterator[dict[str, Any]]:
    """The shared rate-limit state, locked for a read-modify-write (only the decision, never a send)."""
    path = state_path()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path.with_suffix(".lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            state = json.loads(path.read_text())
            if not isinstance(state, dict):
                state = {}
        except (OSError, ValueError):
            state = {}
        before = json.dumps(state, sort_keys=True)
        yield state
        if json.dumps(state, sort_keys=True) != before:
            replace_file(path, json.dumps(state, indent=1, sort_keys=True))
    finally:
        os.close(fd)


def _gate(key: str, *, ok: bool, only_on_change: bool, now: float, window: float) -> tuple[bool, str, Any]:
    """Decide whether to send; returns (send, note to append, undo for a failed delivery)."""
    with _state() as state:
        entry = state.get(key)
        if ok:
            if entry is None:
                return (not only_on_change), "", None
            del state[key]
            failures = int(entry.get("failures", 1))
            since = _clock(float(entry.get("since", now)))
            return True, f" (after {failures} failure{'s' if failures != 1 else ''} since {since})", None
        entry = entry or {"since": now, "failures": 0, "suppressed": 0, "last_sent": None}
        entry["failures"] = int(entry.get("failures", 0)) + 1
        last_sent = entry.get("last_sent")
        if window > 0 and last_sent is not None and now - float(last_sent) < window:
            entry["suppressed"] = int(entry.get("suppressed", 0)) + 1
            state[key] = entry
            return False, "", None
        suppressed = int(entry.get("suppressed", 0))
        note = ""
        if suppressed:
            since = _clock(float(last_sent or entry["since"]))
            note = f" (repeated {suppressed} time{'s' if suppressed != 1 else ''} since {since})"
        entry["last_sent"], entry["suppressed"] = now, 0
        state[key] = entry

    def undo() -> None:
        """Not delivered: it counts as one more unreported failure, so the next one is not held back by it."""
        with _state() as again:
            current = again.get(key)
            if current is not None and current.get("last_sent") == now:
                current["last_sent"] = last_sent
                current["suppressed"] = suppressed + 1

    return True, note, undo


def _clock(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M UTC")


# --- messages --------------------------------------------------------------------------------------


def human_size(n: int) -> str:
    import humanize

    return str(humanize.naturalsize(n))


def human_duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"


def first_line(error: BaseException | str) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]


def describe_backup(kind: str) -> str:
    return {"logical": "logical dump", "incremental": "incremental backup"}.get(kind, "base backup")


def backup_succeeded_text(manifest: BackupManifest) -> str:
    took = (manifest.stop_time - manifest.start_time).total_seconds()
    what = (
        f"incremental backup {manifest.name} on {manifest.parent}"
        if manifest.parent
        else (f"{describe_backup(manifest.kind)} {manifest.name}")
    )
    full = manifest.extra.get("full_because")
    because = f"; a full one, because {full}" if full else ""
    return (
        f"✅ pgdr: {what} of cluster {manifest.cluster}: "
        f"{human_size(manifest.size_bytes)} (stored {human_size(manifest.stored_bytes)}) in {human_duration(took)}"
        f"{because}"
    )


def failed_text(what: str, cluster: str, error: BaseException | str, took: float | None = None) -> str:
    after = f" after {human_duration(took)}" if took is not None else ""
    return f"❌ pgdr: {what} of cluster {cluster} failed{after}: {first_line(error)}"


def restore_text(cluster: str, report_text: str, ok: bool) -> str:
    head = f"🔄 pgdr: restore of cluster {cluster} finished" if ok else f"❌ pgdr: restore of cluster {cluster} failed"
    body = report_text.strip()
    return f"{head}:\n{body}" if body else head


def verify_failed_text(cluster: str, deep: bool, report_text: str) -> str:
    what = "deep verify (restore rehearsal)" if deep else "verify"
    body = report_text.strip()
    return f"❌ pgdr: {what} of cluster {cluster} found problems" + (f":\n{body}" if body else "")


def rpo_alarm_text(cluster: str, age_seconds: float | None, threshold_minutes: int, newest: str | None) -> str:
    if age_seconds is None:
        return (
            f"⚠️ pgdr: cluster {cluster}: no archived WAL in the repositories "
            f"(is archive_command = 'pgdr wal-push %p' set?)"
        )
    return (
        f"⚠️ pgdr: cluster {cluster}: newest archived WAL is {_age(age_seconds)} old "
        f"(alarm at {threshold_minutes} minutes; newest segment {newest})"
    )


def rpo_ok_text(cluster: str, age_seconds: float) -> str:
    return f"✅ pgdr: cluster {cluster}: WAL archiving is current again (newest archived WAL {_age(age_seconds)} old)"


def _age(seconds: float) -> str:
    minutes = int(seconds // 60)
    if minutes < 1:
        return f"{int(seconds)} seconds"
    if minutes < 120:
        return f"{minutes} minute{'s' if minutes != 1 else ''}"
    return f"{minutes // 60} hours {minutes % 60} minutes"


def notify_restore(cfg: Config, report_text: str, ok: bool) -> None:
    """For the restore path: "🔄 restore of cluster X finished: <report>" (or "❌ ... failed").

    Restores are rare and deliberate: never rate limited. Never raises.
    """
    notify(cfg, "restore", restore_text(cfg.cluster.name, report_text, ok), ok=ok, rate_limit=False)
