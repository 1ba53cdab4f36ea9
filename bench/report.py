"""Results: rows of "pgdr vs anchor, medians from the same run", printed and written as JSON and Markdown.

``ratio`` is always pgdr's cost over the anchor's cost (time over time, or the anchor's rate over pgdr's
rate), so below 1.0 means pgdr is faster; ``target`` is the ratio issue 6 asks for.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


@dataclass
class Measure:
    """One tool's figure for one operation: the median of ``samples`` in ``unit``."""

    label: str
    samples: list[float] = field(default_factory=list)
    unit: str = "s"
    value: float | None = None  # set when the figure is not a median of samples (a rate over a run)
    text: str = ""  # shown instead of the number ("n/a", "timeout > 300 s")
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def figure(self) -> float | None:
        if self.text and self.value is None and not self.samples:
            return None
        return self.value if self.value is not None else median(self.samples)

    def show(self) -> str:
        if self.text:
            return self.text
        return fmt(self.figure, self.unit)


@dataclass
class Row:
    key: str
    operation: str
    pgdr: Measure
    anchor: Measure | None
    higher_is_better: bool = False  # rates
    target: float | None = None  # the ratio issue 6 asks for (<=)
    target_text: str = ""
    note: str = ""

    @property
    def ratio(self) -> float | None:
        if self.anchor is None:
            return None
        a, p = self.anchor.figure, self.pgdr.figure
        if a is None or p is None or a == 0 or p == 0:
            return None
        return a / p if self.higher_is_better else p / a

    @property
    def verdict(self) -> str:
        r = self.ratio
        if self.target is None or r is None:
            return ""
        return "meets" if r <= self.target else "misses"

    def spread(self) -> str:
        """The sample ranges, so a reader can tell a difference from noise."""
        parts = []
        for side in (self.pgdr, self.anchor):
            if side is not None and len(side.samples) >= 3:
                lo, hi = min(side.samples), max(side.samples)
                parts.append(f"{side.label.split(' (')[0]} {fmt(lo, side.unit)} to {fmt(hi, side.unit)}")
        return f" (range over {len(self.pgdr.samples)} samples: {'; '.join(parts)})" if parts else ""

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        for side in ("pgdr", "anchor"):
            if data[side] is not None:
                data[side]["median"] = getattr(self, side).figure
        data["ratio"] = self.ratio
        data["verdict"] = self.verdict
        return data


def fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "n/a"
    if unit == "s":
        return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.2f} s"
    if unit == "ms":
        return f"{value:.0f} ms" if value >= 10 else f"{value:.1f} ms"
    if unit == "seg/s":
        return f"{value:.1f} seg/s"
    if unit == "MB":
        return f"{value:.0f} MB"
    return f"{value:.3g} {unit}"


@dataclass
class Results:
    machine: dict[str, Any]
    settings: dict[str, Any]
    rows: list[Row] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    findings: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    started: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    finished: str = ""

    def add(self, row: Row) -> Row:
        self.rows.append(row)
        return row

    def to_json(self) -> dict[str, Any]:
        return {
            "started": self.started,
            "finished": self.finished,
            "machine": self.machine,
            "settings": self.settings,
            "rows": [r.to_json() for r in self.rows],
            "details": self.details,
            "findings": self.findings,
            "errors": self.errors,
        }

    def machine_line(self) -> str:
        m = self.machine
        return (
            f"{m.get('nproc')} cores ({m.get('cpu_model')}), {m.get('ram_gb')} GB RAM, {m.get('os')}, "
            f"PostgreSQL {m.get('postgresql')}, pgBackRest {m.get('pgbackrest')}, "
            f"barman-cli-cloud {m.get('barman_cloud')}, Python {m.get('python')}; "
            f"pgdr {m.get('pgdr_commit')}{' (uncommitted changes)' if m.get('pgdr_dirty') else ''}; "
            f"load average {m.get('loadavg_at_start')} at start, {m.get('loadavg_at_end', '?')} at end"
        )

    def markdown(self) -> str:
        s = self.settings
        lines = [
            f"Machine: {self.machine_line()}.",
            "",
            f"Run: {self.started} ({s.get('mode')} mode: pgbench scale {s.get('scale')}, "
            f"{s.get('segments')} WAL segments per push series, {s.get('s3_segments')} to S3, "
            f"{s.get('repeats')} backups/restores per tool, random dataset {s.get('random_mb')} MB, "
            f"catalog {s.get('catalog_backups')} backups / {s.get('catalog_segments')} segments).",
            "",
            "| operation | pgdr | anchor | anchor median | ratio (pgdr/anchor) | target | |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in self.rows:
            ratio = f"{r.ratio:.2f}" if r.ratio is not None else "n/a"
            target = r.target_text or (f"<= {r.target:g}" if r.target is not None else "")
            anchor_label = r.anchor.label if r.anchor else ""
            anchor_value = r.anchor.show() if r.anchor else ""
            lines.append(
                f"| {r.operation} | {r.pgdr.show()} | {anchor_label} | {anchor_value} | {ratio} | {target} | "
                f"{r.verdict} |"
            )
        notes = [f"- **{r.operation}**: {(r.note + r.spread()).strip()}" for r in self.rows if r.note or r.spread()]
        if notes:
            lines += ["", "Notes:", "", *notes]
        if self.findings:
            lines += ["", "Findings:", "", *[f"- {f}" for f in self.findings]]
        if self.errors:
            lines += ["", "Errors (operations that could not be measured):", "", *[f"- {e}" for e in self.errors]]
        return "\n".join(lines) + "\n"

    def text_table(self) -> str:
        header = ["operation", "pgdr", "anchor", "anchor median", "ratio", "target", ""]
        rows = [header]
        for r in self.rows:
            rows.append(
                [
                    r.operation,
                    r.pgdr.show(),
                    r.anchor.label if r.anchor else "",
                    r.anchor.show() if r.anchor else "",
                    f"{r.ratio:.2f}" if r.ratio is not None else "n/a",
                    r.target_text or (f"<= {r.target:g}" if r.target is not None else ""),
                    r.verdict,
                ]
            )
        widths = [min(60, max(len(row[i]) for row in rows)) for i in range(len(header))]
        out = []
        for row in rows:
            out.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
        return "\n".join(out)

    def write(self, folder: Path) -> tuple[Path, Path]:
        folder.mkdir(parents=True, exist_ok=True)
        js, md = folder / "latest.json", folder / "latest.md"
        js.write_text(json.dumps(self.to_json(), indent=2, default=str) + "\n")
        md.write_text(self.markdown())
        return js, md
