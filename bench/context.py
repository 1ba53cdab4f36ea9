"""What every operation gets: the workspace, the results being filled, the settings, a log line."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Any

from bench.report import Results
from bench.workspace import Workspace


@dataclass
class Settings:
    mode: str = "quick"
    scale: int = 20
    segments: int = 20
    s3_segments: int = 10
    repeats: int = 3
    random_mb: int = 256
    catalog_backups: int = 1500
    catalog_segments: int = 105_120
    catalog_timeout: float = 300.0
    catalog_repeats: int = 3
    startup_repeats: int = 10

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class Context:
    ws: Workspace
    results: Results
    settings: Settings
    started: float = field(default_factory=time.monotonic)

    def log(self, message: str) -> None:
        print(f"[{time.monotonic() - self.started:7.1f} s] {message}", file=sys.stderr, flush=True)
