"""One line of a restore's preflight: plain data, shared by the checks that make it and the plan that shows it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Check:
    """One thing the restore needs: ``detail`` says what was found, or what to change."""

    name: str
    ok: bool
    detail: str
    #: Passed, but the operator must read it before confirming.
    warning: bool = False

    def render(self) -> str:
        return f"{'FAILS' if not self.ok else 'WARNING' if self.warning else 'ok'}: {self.name}: {self.detail}"

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "ok": self.ok, "warning": self.warning, "detail": self.detail}
