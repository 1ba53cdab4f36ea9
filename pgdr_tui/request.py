"""A restore the operator asked for, as plain values: what to plan, what to run detached, what to compare.

The console keeps "restore" greyed until a dry run of the *same* request succeeded, so the request is
a frozen, hashable value; it also travels to the detached restore process as JSON, and that process
rebuilds the target with the same ``make_target`` the dry run used.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from typing import Any

from backend.restore.target import RecoveryTarget, make_target

KINDS = ("time", "latest", "xid", "name", "immediate")


@dataclass(frozen=True)
class RestoreRequest:
    kind: str
    #: The UTC timestamp (ISO 8601), the transaction id or the restore point name.
    value: str = ""
    exclusive: bool = False
    timeline: str = "latest"
    backup: str | None = None
    #: Empty: restore in place (replace the data directory). Otherwise restore beside, into this directory.
    target_dir: str = ""
    port: int | None = None

    @classmethod
    def at(cls, instant: datetime, *, timeline: str = "latest", backup: str | None = None) -> RestoreRequest:
        """A time target, written in UTC with an offset so the configured zone cannot shift it.

        The fraction of a second is kept when there is one: the cursor on a backup's mark stands at the
        instant it finished (``12:00:48.215``), which the panel calls recoverable; the whole second
        before it (``12:00:48``) is not, and the plan would refuse what the panel offered.
        """
        utc = instant.astimezone(UTC)
        stamp = utc.strftime("%Y-%m-%d %H:%M:%S.%f" if utc.microsecond else "%Y-%m-%d %H:%M:%S") + "+00:00"
        return cls("time", stamp, timeline=timeline, backup=backup)

    @property
    def beside(self) -> bool:
        return bool(self.target_dir)

    def in_place(self) -> RestoreRequest:
        return replace(self, target_dir="", port=None)

    def placed_beside(self, target_dir: str, port: int | None) -> RestoreRequest:
        return replace(self, target_dir=target_dir, port=port)

    def target(self, zone: str = "UTC") -> RecoveryTarget:
        return make_target(
            timestamp=self.value if self.kind == "time" else None,
            xid=self.value if self.kind == "xid" else None,
            name=self.value if self.kind == "name" else None,
            latest=self.kind == "latest",
            immediate=self.kind == "immediate",
            exclusive=self.exclusive,
            timeline=self.timeline,
            zone=zone,
        )

    def cli_args(self) -> list[str]:
        """The same request as ``pgdr restore`` arguments (shown to the operator, usable by hand)."""
        args = {
            "time": ["--timestamp", self.value],
            "xid": ["--xid", self.value],
            "name": ["--name", self.value],
            "latest": ["--latest"],
            "immediate": ["--immediate"],
        }[self.kind]
        if self.exclusive:
            args.append("--exclusive")
        if self.timeline != "latest":
            args += ["--target-timeline", self.timeline]
        if self.backup:
            args += ["--backup", self.backup]
        if self.target_dir:
            args += ["--target-dir", self.target_dir]
            if self.port is not None:
                args += ["--port", str(self.port)]
        return args

    def describe(self) -> str:
        what = {
            "time": f"time {self.value}",
            "xid": f"just before transaction {self.value}" if self.exclusive else f"transaction {self.value}",
            "name": f"restore point {self.value!r}",
            "latest": "the latest archived WAL",
            "immediate": f"backup {self.backup} as it was taken",
        }[self.kind]
        where = f", beside into {self.target_dir}" if self.target_dir else ", in place"
        return what + where

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RestoreRequest:
        if data.get("kind") not in KINDS:
            raise ValueError(f"unknown restore kind {data.get('kind')!r}")
        port = data.get("port")
        return cls(
            kind=str(data["kind"]),
            value=str(data.get("value", "")),
            exclusive=bool(data.get("exclusive", False)),
            timeline=str(data.get("timeline", "latest")),
            backup=str(data["backup"]) if data.get("backup") else None,
            target_dir=str(data.get("target_dir", "")),
            port=int(port) if port is not None else None,
        )
