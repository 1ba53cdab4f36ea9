"""How the console writes times, ages and sizes: operator's zone with UTC beside it, humanized.

An operator at 3 a.m. thinks in local time, while logs, PostgreSQL and the plan speak UTC; showing
both avoids a restore to the wrong hour. Every function takes ``now`` and the zone explicitly so a
frozen clock gives stable screenshots.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, tzinfo

import humanize


def local_zone() -> tzinfo:
    zone = datetime.now().astimezone().tzinfo
    return zone if zone is not None else UTC


def when(moment: datetime | None, zone: tzinfo, *, seconds: bool = False, date: bool = True) -> str:
    """``2026-11-24 16:30 CET (15:30 UTC)``; just the UTC when the zone is UTC."""
    if moment is None:
        return "-"
    clock = "%H:%M:%S" if seconds else "%H:%M"
    local = moment.astimezone(zone)
    utc = moment.astimezone(UTC)
    day = "%Y-%m-%d " if date else ""
    if local.utcoffset() == timedelta(0) and local.tzname() in ("UTC", "GMT", "Z", None):
        return utc.strftime(f"{day}{clock}") + " UTC"
    name = local.tzname() or ""
    same_day = local.date() == utc.date()
    utc_part = utc.strftime(clock if same_day or not date else f"%m-%d {clock}")
    return f"{local.strftime(day + clock)} {name} ({utc_part} UTC)".replace("  ", " ")


def short(moment: datetime | None, zone: tzinfo) -> str:
    """Compact local time for tables: ``11-24 16:30``."""
    if moment is None:
        return "-"
    return moment.astimezone(zone).strftime("%m-%d %H:%M")


def age(moment: datetime | None, now: datetime) -> str:
    if moment is None:
        return "never"
    return humanize.naturaltime(now - moment, when=None) if moment <= now else "in the future"


def short_age(moment: datetime | None, now: datetime) -> str:
    """An age for a table column, where every character counts at 80 columns: "45 s ago", "15 min ago",
    "5 h ago" (up to two days), "3 days ago"."""
    if moment is None:
        return "never"
    if moment > now:
        return "in the future"
    seconds = int((now - moment).total_seconds())
    if seconds < 5:
        return "now"
    if seconds < 60:
        return f"{seconds} s ago"
    if seconds < 3600:
        return f"{seconds // 60} min ago"
    if seconds < 2 * 86400:
        return f"{seconds // 3600} h ago"
    return f"{seconds // 86400} days ago"


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.0f} s"
    return humanize.precisedelta(timedelta(seconds=seconds), minimum_unit="seconds", format="%0.0f")


def short_duration(seconds: float | None) -> str:
    """A duration for a table column: "47 s", "2 min 12 s", "1 h 05 min"."""
    if seconds is None:
        return "-"
    whole = round(seconds)
    if whole < 60:
        return f"{whole} s"
    if whole < 3600:
        return f"{whole // 60} min {whole % 60:02d} s"
    return f"{whole // 3600} h {whole % 3600 // 60:02d} min"


def lag(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return humanize.naturaldelta(timedelta(seconds=max(0.0, seconds)))


def short_lag(seconds: float | None) -> str:
    """A lag in few characters, for the header at 80 columns: "45 s", "10 min", "5 h", "3 days"."""
    if seconds is None:
        return "-"
    whole = int(max(0.0, seconds))
    if whole < 60:
        return f"{whole} s"
    if whole < 3600:
        return f"{whole // 60} min"
    if whole < 2 * 86400:
        return f"{whole // 3600} h"
    return f"{whole // 86400} days"


def size(n: int | float | None) -> str:
    if n is None:
        return "-"
    return str(humanize.naturalsize(n))


def rate(bytes_per_s: float) -> str:
    return f"{humanize.naturalsize(bytes_per_s)}/s"


def parse_when(text: str, zone: tzinfo, now: datetime) -> datetime:
    """What an operator types into "go to": a time in their zone, with UTC or an offset, or relative.

    ``2026-11-24 14:05[:30]``, ``14:05`` (today), ``... UTC`` / ``...Z`` / ``...+02:00``, ``-90m``,
    ``-2h``, ``-3d``. Raises ValueError with the accepted forms.
    """
    import re

    raw = text.strip()
    rel = re.fullmatch(r"-\s*(\d+(?:\.\d+)?)\s*([smhdw])", raw)
    if rel:
        unit = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[rel.group(2)]
        return now - timedelta(seconds=float(rel.group(1)) * unit)
    cleaned = re.sub(r"(\d)T(\d)", r"\1 \2", raw)
    cleaned = re.sub(r"\s*(UTC|Z)$", "+00:00", cleaned, flags=re.IGNORECASE)
    cleaned = re.sub(r"([+-]\d{2})$", r"\1:00", cleaned)
    if re.fullmatch(r"\d{1,2}:\d{2}(:\d{2})?([+-]\d{2}:\d{2})?", cleaned):
        today = now.astimezone(zone).strftime("%Y-%m-%d")
        cleaned = f"{today} {cleaned}"
    try:
        parsed = datetime.fromisoformat(cleaned)
    except ValueError:
        raise ValueError(
            f"cannot read {text!r}: type 'YYYY-MM-DD HH:MM[:SS]' or 'HH:MM' (your zone), add 'UTC' or an "
            "offset such as '+02:00', or go back relatively: -90m, -2h, -3d"
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=zone)
    return parsed.astimezone(UTC)


def is_time_of_day(text: str) -> bool:
    """Whether ``text`` is a time without a date ("23:59", "14:05:30 UTC"): "go to" reads it as today."""
    import re

    return bool(re.fullmatch(r"\d{1,2}:\d{2}(:\d{2})?\s*(UTC|Z|[+-]\d{2}(:?\d{2})?)?", text.strip(), re.IGNORECASE))
