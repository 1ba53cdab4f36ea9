"""Prometheus metrics of the daemon: a textfile (for node_exporter's textfile collector) and /metrics.

Both show the same gauges, rebuilt after every job: the textfile is rewritten atomically (temp file
and rename in the same directory, so the collector never reads half of it), the HTTP endpoint
(stdlib ``http.server`` in a thread, 127.0.0.1 unless configured) renders on each scrape.
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

HELP: dict[str, str] = {
    "pgdr_last_success_timestamp_seconds": "Unix time of the last successful run of the job.",
    "pgdr_last_run_timestamp_seconds": "Unix time the last run of the job ended (any result).",
    "pgdr_job_duration_seconds": "Duration of the last run of the job.",
    "pgdr_job_success": "1 if the last run of the job succeeded (or was skipped), 0 if it failed.",
    "pgdr_backup_size_bytes": "Size of the newest backup of the kind taken by the daemon (uncompressed).",
    "pgdr_backup_stored_bytes": "Stored (compressed) size of the newest backup of the kind taken by the daemon.",
    "pgdr_wal_archive_lag_seconds": "Age of the newest archived WAL segment at the last RPO check.",
    "pgdr_rpo_alarm": "1 while the RPO alarm is raised (newest archived WAL older than the threshold).",
}

Labels = tuple[tuple[str, str], ...]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class Metrics:
    """A small thread-safe set of gauges, every sample labelled with the cluster."""

    def __init__(self, cluster: str) -> None:
        self.cluster = cluster
        self._lock = threading.Lock()
        self._samples: dict[str, dict[Labels, float]] = {}

    def set(self, name: str, value: float, **labels: str) -> None:
        key = (("cluster", self.cluster), *sorted(labels.items()))
        with self._lock:
            self._samples.setdefault(name, {})[key] = float(value)

    def get(self, name: str, **labels: str) -> float | None:
        key = (("cluster", self.cluster), *sorted(labels.items()))
        with self._lock:
            return self._samples.get(name, {}).get(key)

    def render(self) -> str:
        lines: list[str] = []
        with self._lock:
            for name in sorted(self._samples):
                lines.append(f"# HELP {name} {HELP.get(name, name)}")
                lines.append(f"# TYPE {name} gauge")
                for labels, value in sorted(self._samples[name].items()):
                    shown = ",".join(f'{k}="{_escape(v)}"' for k, v in labels)
                    lines.append(f"{name}{{{shown}}} {_number(value)}")
        return "\n".join(lines) + "\n"

    def write_textfile(self, path: Path) -> None:
        """Replace ``path`` atomically."""
        from backend.durable import replace_file

        path.parent.mkdir(parents=True, exist_ok=True)
        replace_file(path, self.render())  # readable by the collector (node_exporter runs as its own user)


def _number(value: float) -> str:
    return str(int(value)) if value.is_integer() and abs(value) < 1e15 else repr(value)


class MetricsServer:
    """GET /metrics on ``address:port`` (port 0: any free port; see ``.port``), served in a thread."""

    def __init__(self, metrics: Metrics, address: str, port: int) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.split("?")[0] not in ("/metrics", "/"):
                    self.send_error(404, "only /metrics here")
                    return
                body = metrics.render().encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                """Scrapes are not worth a log line each."""

        self._server = ThreadingHTTPServer((address, port), Handler)
        self._server.daemon_threads = True
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="pgdr-metrics", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
