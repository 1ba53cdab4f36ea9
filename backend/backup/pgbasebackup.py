"""Running pg_basebackup: the arguments both backup paths share, its stderr, its failure in one line."""

from __future__ import annotations

import io
import re
import shutil
import subprocess
import threading
from pathlib import Path
from typing import IO, cast

from backend.config import Config
from backend.errors import PgdrError
from backend.postgres import ServerInfo, program

TAR_OBJECT = "base.tar.zst"
#: PostgreSQL's own manifest: every file's checksum and the WAL range, what pg_verifybackup checks.
MANIFEST = "backup_manifest"
#: ``--progress`` lines: "1234/567890 kB (0%), 0/1 tablespace" (one per second, "\r"-ended on a tty).
_PROGRESS = re.compile(rb"(\d+)/(\d+) kB")


def base_argv(cfg: Config, info: ServerInfo, name: str, parent_manifest: Path | None = None) -> list[str]:
    """pg_basebackup in tar format without WAL: it returns once the WAL the backup needs is archived.

    With ``parent_manifest`` (an earlier backup's backup_manifest), only what changed since that one.
    """
    incremental = [f"--incremental={parent_manifest}"] if parent_manifest is not None else []
    return [
        program(cfg, "pg_basebackup", info.version_num),
        "--format=tar",
        "--wal-method=none",
        f"--checkpoint={cfg.backup.checkpoint}",
        f"--label=pgdr {name}",
        "--manifest-checksums=CRC32C",
        "--no-password",
        *incremental,
    ]


class StderrReader:
    """Reads a pg_basebackup's stderr in the background, so a chatty child never blocks on a full pipe.

    Keeps what it said (for the error message) and, with ``--progress``, how far it got.
    """

    def __init__(self, stream: IO[bytes]) -> None:
        self._stream = stream
        self._lines: list[bytes] = []
        self.done_bytes = 0
        self.total_bytes: int | None = None
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        pending = b""
        while chunk := cast(io.BufferedReader, self._stream).read1(1 << 16):
            *lines, pending = re.split(rb"[\r\n]", pending + chunk)
            for line in lines:
                self._line(line)
        if pending:
            self._line(pending)

    def _line(self, line: bytes) -> None:
        match = _PROGRESS.search(line)
        if match:
            self.done_bytes, self.total_bytes = int(match[1]) * 1024, int(match[2]) * 1024
        elif line.strip():
            self._lines.append(line)

    def failure(self, returncode: int) -> PgdrError:
        """pg_basebackup's own reason (its last error line), once it has exited with ``returncode``."""
        self._thread.join()
        err = b"\n".join(self._lines).decode(errors="replace").strip().splitlines()
        reason = next((line for line in reversed(err) if "error" in line.lower()), err[-1] if err else "")
        return PgdrError(f"pg_basebackup failed (exit {returncode}): {reason.removeprefix('pg_basebackup: ')}")

    def join(self) -> None:
        self._thread.join()


def start(argv: list[str], env: dict[str, str], *, stdout: int) -> tuple[subprocess.Popen[bytes], StderrReader]:
    """Start pg_basebackup with its stderr read in the background.

    It dies with pgdr (``setpriv --pdeathsig``, util-linux): a pg_basebackup writing into a folder
    would otherwise outlive a killed pgdr and keep writing while the next backup removes the debris.
    """
    setpriv = shutil.which("setpriv")
    if setpriv:
        argv = [setpriv, "--pdeathsig", "KILL", "--", *argv]
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=stdout, stderr=subprocess.PIPE, env=env)
    assert proc.stderr is not None
    return proc, StderrReader(proc.stderr)


def stop(proc: subprocess.Popen[bytes]) -> None:
    """Kill a pg_basebackup that is still running (the backup failed or was cancelled)."""
    if proc.poll() is None:
        proc.kill()
        proc.wait()
