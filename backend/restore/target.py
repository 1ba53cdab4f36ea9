"""Recovery targets as an operator types them, resolved to what PostgreSQL's recovery settings need.

Time zones are explicit: a timestamp without an offset is read in the zone ``--tz`` (or the config)
names, default UTC, and the plan always prints the resolved instant in UTC beside it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from backend.errors import PgdrError
from backend.walnames import format_lsn, parse_lsn

KINDS = ("time", "xid", "lsn", "name", "latest", "immediate")
ACTIONS = ("promote", "pause", "shutdown")


@dataclass(frozen=True)
class RecoveryTarget:
    kind: str
    time: datetime | None = None
    xid: int | None = None
    lsn: int | None = None
    name: str | None = None
    inclusive: bool = True
    timeline: str = "latest"
    #: The operator named the timeline (``--target-timeline``). Unnamed, a time before the newest
    #: timeline began is found on the timeline current then; named, recovery follows the one named.
    timeline_named: bool = False
    action: str = "promote"
    typed: str = ""
    zone: str = "UTC"

    def describe(self) -> str:
        stop = "inclusive" if self.inclusive else "exclusive: stop just before it"
        if self.kind == "time" and self.time is not None:
            utc = self.time.astimezone(UTC)
            return f"time {utc:%Y-%m-%d %H:%M:%S.%f}"[:-3] + f" UTC (typed {self.typed!r}, read in {self.zone}; {stop})"
        if self.kind == "xid":
            return f"transaction {self.xid} ({stop})"
        if self.kind == "lsn" and self.lsn is not None:
            return f"LSN {format_lsn(self.lsn)} ({stop})"
        if self.kind == "name":
            return f"restore point {self.name!r}"
        if self.kind == "latest":
            return "latest: replay all archived WAL"
        return "immediate: stop as soon as the base backup is consistent"

    def recovery_settings(self) -> dict[str, str]:
        """The ``recovery_target*`` settings (without restore_command) for postgresql.auto.conf."""
        settings: dict[str, str] = {}
        if self.kind == "time" and self.time is not None:
            settings["recovery_target_time"] = self.time.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f+00")
        elif self.kind == "xid":
            settings["recovery_target_xid"] = str(self.xid)
        elif self.kind == "lsn" and self.lsn is not None:
            settings["recovery_target_lsn"] = format_lsn(self.lsn)
        elif self.kind == "name" and self.name is not None:
            settings["recovery_target_name"] = self.name
        elif self.kind == "immediate":
            settings["recovery_target"] = "immediate"
        if self.kind in ("time", "xid", "lsn"):
            settings["recovery_target_inclusive"] = "on" if self.inclusive else "off"
        settings["recovery_target_timeline"] = self.timeline
        if self.kind != "latest":
            settings["recovery_target_action"] = self.action
        return settings


def parse_timestamp(text: str, zone: str = "UTC") -> datetime:
    """'2024-01-15 14:30:00' (in ``zone``), or with an offset / 'Z'; fractions of a second allowed."""
    tz = timezone(zone)
    # Only the ISO date/time separator is a 'T': replacing every T would break the 'UTC' suffix the
    # plan and the refusals print, and an operator pastes those back.
    cleaned = re.sub(r"^(\d{4}-\d{2}-\d{2})[Tt]", r"\1 ", text.strip())
    cleaned = re.sub(r"\s*(UTC|Z)$", "+00:00", cleaned, flags=re.IGNORECASE)
    cleaned = re.sub(r"([+-]\d{2})$", r"\1:00", cleaned)
    try:
        parsed = datetime.fromisoformat(cleaned)
    except ValueError:
        raise PgdrError(
            f"cannot read the timestamp {text!r}: use 'YYYY-MM-DD HH:MM:SS' (read in {zone}) "
            "or add an offset such as '+02:00'"
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=tz)
    return parsed.astimezone(UTC)


def timezone(zone: str) -> ZoneInfo:
    try:
        return ZoneInfo(zone)
    except (ZoneInfoNotFoundError, ValueError):
        raise PgdrError(f"unknown time zone {zone!r}: use an IANA name such as 'UTC' or 'Europe/Berlin'") from None


def make_target(
    *,
    timestamp: str | None = None,
    xid: str | None = None,
    lsn: str | None = None,
    name: str | None = None,
    latest: bool = False,
    immediate: bool = False,
    exclusive: bool = False,
    timeline: str | None = None,
    action: str = "promote",
    zone: str = "UTC",
) -> RecoveryTarget:
    """Exactly one target must be given; every value is checked before anything is touched.

    ``timeline`` None is PostgreSQL's default, latest, but not typed: an explicit ``latest`` is
    followed as given, where the default may follow the timeline a time target was current on.
    """
    given = [
        k
        for k, v in (
            ("--timestamp", timestamp),
            ("--xid", xid),
            ("--lsn", lsn),
            ("--name", name),
            ("--latest", latest),
            ("--immediate", immediate),
        )
        if v
    ]
    if len(given) != 1:
        raise PgdrError(
            "give exactly one recovery target: --timestamp, --xid, --lsn, --name, --latest or --immediate"
            + (f" (got {', '.join(given)})" if given else "")
        )
    named = timeline is not None
    timeline = "latest" if timeline is None else timeline
    if timeline not in ("latest", "current") and not timeline.isdigit():
        raise PgdrError(f"--target-timeline must be latest, current or a number, not {timeline!r}")
    if action not in ACTIONS:
        raise PgdrError(f"--target-action must be one of {', '.join(ACTIONS)}, not {action!r}")
    if exclusive and not (timestamp or xid or lsn):
        raise PgdrError("--exclusive applies to --timestamp, --xid and --lsn only")
    base = RecoveryTarget(
        "latest" if latest else "immediate",
        inclusive=not exclusive,
        timeline=timeline,
        timeline_named=named,
        action=action,
        zone=zone,
    )
    if timestamp:
        return replace(base, kind="time", time=parse_timestamp(timestamp, zone), typed=timestamp)
    if xid:
        if not xid.isdigit() or int(xid) < 3:
            raise PgdrError(f"--xid must be a transaction id (a number of 3 or more), not {xid!r}")
        return replace(base, kind="xid", xid=int(xid), typed=xid)
    if lsn:
        try:
            value = parse_lsn(lsn)
        except ValueError as exc:
            raise PgdrError(f"--lsn: {exc}") from None
        return replace(base, kind="lsn", lsn=value, typed=lsn)
    if name:
        return replace(base, kind="name", name=name, typed=name)
    return base
