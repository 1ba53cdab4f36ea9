"""The push server: one resident process answers ``wal-push`` so each segment does not pay Python's start-up.

PostgreSQL runs ``archive_command`` once per segment, and a fresh ``pgdr wal-push`` spends most of its
time before any work: the interpreter, the config's dataclasses and tomllib, and for S3 importing
boto3 and building a client. So ``wal-push`` first tries a unix socket: the server (``pgdr
wal-pushd``, started detached by the previous push) calls the very same ``push()`` in-process, with
the repositories it opened once, and answers "stored" only after ``push()`` returned, that is once
the segment is durable in every ``archive.sync`` repository. Anything short of that answer (no
server, a refused or dropped connection, a timeout, a server that found its config changed) makes
the client push in-process as before; a broken connection never becomes exit 0.

The client side of this module imports only ``os``, ``sys``, ``zlib`` and ``_socket`` (the C module:
``socket`` pulls in ``enum``), before anything reads the config. The socket lives in a 0700
directory of the state dir of the user running the server, named by a fingerprint of what decides
how a push behaves: the config file's path, the environment variables that override or locate the
config (PG*, AWS_*, ...), the interpreter and this code. A server serves only requests carrying its
own fingerprint, checks before each request that its config file is unchanged (else it answers
"stale", goes away, and the next push starts a fresh one), and exits after ``archive.server_idle``
seconds without a request. One flock per fingerprint keeps two servers that start at once from
both serving. While the archiver waits on one segment, the server's worker threads store the next
ready ones (backend/archive/pushahead.py), so a backlog drains at the speed of both cores.
"""

from __future__ import annotations

import _socket
import os
import sys
import zlib

from backend import __version__
from backend.errors import PgdrError
from backend.statedir import state_base

TYPE_CHECKING = False  # not typing's: importing typing (re, enum, functools...) would double the client's cost
if TYPE_CHECKING:
    import socket

    from backend.config import Config
    from backend.repository import Repository

PROTOCOL = b"pgdr-pushd/1"
#: Reply statuses. Only STORED lets the client exit 0; ERROR carries push's own refusal.
STORED, ERROR, STALE, REFUSED, RETRY = b"stored", b"error", b"stale", b"refused", b"retry"
#: Environment variables that change what a push does or where its config is found.
_ENV_PREFIXES = ("PG", "AWS_", "BACKUP_", "TELEGRAM_")
_ENV_NAMES = frozenset({"DB_PASSWORD", "HOME", "XDG_CONFIG_HOME", "XDG_STATE_HOME", "PYTHONPATH"})
#: A server that does not even accept within this is not worth waiting for: push in-process.
CONNECT_TIMEOUT = 2.0
#: The longest a push may take in the server before the client gives up on it and pushes itself
#: (a duplicate of the same bytes is harmless). Generous: a slow S3 upload is not a hung server.
REPLY_TIMEOUT = 300.0
_MAX_MESSAGE = 1 << 16
_SUN_PATH_MAX = 107  # sockaddr_un's sun_path, less its terminating NUL


def socket_dir() -> str:
    return os.path.join(state_base(), "pushd")


def config_spec(explicit: str | None) -> str:
    """The config as the command names it (``--config``, else ``$PGDR_CONFIG``), made absolute against
    the caller's cwd; "" for the default lookup, which the fingerprinted environment decides."""
    named = explicit or os.environ.get("PGDR_CONFIG")
    return os.path.abspath(named) if named else ""


def fingerprint(spec: str) -> str:
    """64 bits naming one server: same config, same relevant environment, same interpreter and code.

    zlib's checksums, not hashlib's: this runs on every push, and the server compares the whole
    fingerprint in each request, so a collision can only make a client fall back, never misroute."""
    env = sorted(f"{k}={v}" for k, v in os.environ.items() if k.startswith(_ENV_PREFIXES) or k in _ENV_NAMES)
    code = os.stat(__file__).st_mtime_ns
    blob = "\0".join([__version__, str(code), sys.executable, spec, *env]).encode("utf-8", "surrogateescape")
    return f"{zlib.crc32(blob):08x}{zlib.adler32(blob):08x}"


def _private_dir(folder: str) -> bool:
    """The socket directory must be ours alone: whoever can connect can make us archive any file."""
    try:
        st = os.stat(folder)
    except OSError:
        return False
    return st.st_uid == os.geteuid() and not st.st_mode & 0o077


# --- the client: wal-push ------------------------------------------------------------------------


def request(explicit_config: str | None, wal_path: str) -> bool:
    """Ask a running server to push ``wal_path``: True once it answered "stored".

    False means "push it yourself": no server, a server that went away mid-request, timed out,
    refused the request or found its config changed. A refusal by ``push()`` itself (a different file
    already archived under that name, an unreadable file) is raised as the same PgdrError.
    """
    fp = fingerprint(config_spec(explicit_config))
    folder = socket_dir()
    address = os.path.join(folder, fp + ".sock")
    if len(os.fsencode(address)) > _SUN_PATH_MAX or not _private_dir(folder):
        return False
    cwd = os.getcwd()
    path = os.path.join(cwd, wal_path)  # %p is relative to the data directory the archiver runs in
    message = b"\0".join([PROTOCOL, fp.encode(), os.fsencode(cwd), os.fsencode(path)])
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        sock.settimeout(CONNECT_TIMEOUT)
        sock.connect(address)
        sock.settimeout(REPLY_TIMEOUT)
        sock.sendall(message)
        sock.shutdown(_socket.SHUT_WR)
        reply = _read_all(sock)
    except OSError:  # includes TimeoutError: whatever the server did, this push is not confirmed
        return False
    finally:
        sock.close()
    status, _, rest = reply.partition(b"\0")
    code, _, text = rest.partition(b"\0")
    if status == STORED and code == b"0":
        return True
    if status == ERROR and code.isdigit() and int(code) > 0:
        raise PgdrError(text.decode("utf-8", "replace"), exit_code=int(code))
    return False


def _read_all(sock: _socket.socket) -> bytes:
    """Everything until the peer closes; a reset or a timeout raises OSError."""
    chunks: list[bytes] = []
    size = 0
    while size <= _MAX_MESSAGE:
        chunk = sock.recv(1 << 14)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        size += len(chunk)
    raise OSError("message too long")


def ensure_server(cfg: Config, explicit_config: str | None, wal_path: str) -> None:
    """Start a detached server for the next push when the config wants one and none holds the lock.

    Called by a push that found no server, before it pushes ``wal_path`` in-process, so the server's
    start-up overlaps with this push instead of delaying the archiver, and the server starts on the
    segments ready behind it at once rather than after the archiver's next request: when a backlog
    built up while no server ran, that request finds its segment stored or under way."""
    if not cfg.archive.server:
        return
    import fcntl

    spec = config_spec(explicit_config)
    folder = socket_dir()
    try:
        fd = os.open(os.path.join(folder, fingerprint(spec) + ".lock"), os.O_RDONLY)
    except FileNotFoundError:
        pass  # never started: the server creates the directory and the lock
    except OSError:
        return
    else:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return  # a server is starting or serving (or exiting: the push after next starts one)
        finally:
            os.close(fd)
    import contextlib

    from backend.spawn import spawn_detached

    with contextlib.suppress(OSError):  # failing to start a helper must never fail the push that follows
        after = os.path.join(os.getcwd(), wal_path)
        spawn_detached(*(["--config", spec] if spec else []), "wal-pushd", "--after", after, cwd="/")


# --- the server: wal-pushd -----------------------------------------------------------------------


def serve(explicit_config: str | None, *, after: str = "") -> int:
    """Serve push requests until ``archive.server_idle`` seconds pass without one; returns how many
    were answered. Returns at once when another server holds the lock or the config turns it off.
    With ``after`` (the segment the push that started it has in hand), push ahead from there at once."""
    import fcntl

    from backend.config import load_config

    spec = config_spec(explicit_config)
    fp = fingerprint(spec)
    folder = socket_dir()
    os.makedirs(folder, mode=0o700, exist_ok=True)
    if not _private_dir(folder):
        raise PgdrError(f"{folder} must be a directory of this user's alone (mode 0700): not serving pushes from it")
    lock_fd = os.open(os.path.join(folder, fp + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return 0
        before = _config_state(spec, ())
        cfg = load_config(spec or None)
        if not cfg.archive.server:
            return 0
        key_files = tuple(k for k in (cfg.local.encryption_key_file, cfg.s3.encryption_key_file) if k)
        state = _config_state(spec, key_files)
        if before is None or state is None or state[:2] != before[:2]:
            return 0  # rewritten while it was read: the next push starts a server on the new one
        server = _Server(cfg, spec, fp, os.path.join(folder, fp + ".sock"), lock_fd=lock_fd, state=state)
        if after:
            server.ahead.schedule(after)
        return server.run()
    finally:
        os.close(lock_fd)  # also releases the lock, if the server did not already


class _Server:
    """The listening socket and the state kept between requests: the config it was started with,
    that file's identity, and the opened repositories (one boto3 client for S3)."""

    def __init__(self, cfg: Config, spec: str, fp: str, address: str, *, lock_fd: int, state: _ConfigState) -> None:
        import socket

        from backend.archive.pushahead import PushAhead

        self.cfg, self.spec, self.fp, self.address, self.lock_fd = cfg, spec, fp, address, lock_fd
        self.config_state = state
        self.repositories: dict[str, Repository] = {}
        self.ahead = PushAhead(cfg, self.repositories)
        self.served = self.served_ahead = 0
        if os.path.exists(address):
            os.unlink(address)  # left by a killed server: we hold the lock, so nobody serves it
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(address)
        self.bound = os.stat(address).st_ino
        self.listener.listen(16)
        self._note()

    def run(self) -> int:
        try:
            self.listener.settimeout(max(1, self.cfg.archive.server_idle))
            while True:
                try:
                    conn, _ = self.listener.accept()
                except TimeoutError:
                    return self.served
                with conn:
                    if not self._answer(conn):
                        return self.served
        finally:
            self._stop_listening()
            self.ahead.close()

    def _answer(self, conn: socket.socket) -> bool:
        """One request; False when this server must go away (its config changed)."""
        from backend import faults
        from backend.archive.push import push

        conn.settimeout(10.0)  # the client sends its request at once
        try:
            magic, fp, cwd, path = _read_all(conn).split(b"\0")
        except (OSError, ValueError):
            return _reply(conn, REFUSED, 2, "malformed request")
        if magic != PROTOCOL or fp.decode("ascii", "replace") != self.fp:
            return _reply(conn, REFUSED, 2, "request for another server (protocol, config or environment differ)")
        if _config_state(self.spec, self.config_state[2]) != self.config_state:
            self._stop_listening()  # first, so the client's fallback finds the lock free and starts a new one
            _reply(conn, STALE, 2, "config changed")
            return False
        try:
            os.chdir(os.fsdecode(cwd))  # a data_dir left empty in the config means the archiver's cwd
        except OSError:
            return _reply(conn, RETRY, 2, "cannot enter the client's directory")
        faults.point("pushd-request")
        target = os.fsdecode(path)
        try:
            if self.ahead.take(target):
                self.served_ahead += 1
            else:
                push(self.cfg, target, ahead=False, repositories=self.repositories)
        except PgdrError as exc:
            answer: tuple[bytes, int, str] = (ERROR, exc.exit_code, str(exc))
        except Exception:
            _reply(conn, RETRY, 2, "push server failed")  # the client pushes itself, and reports
            raise  # and this server goes, logging why (background.log)
        else:
            faults.point("pushd-stored")
            answer = (STORED, 0, "")
        self.served += 1
        self._note()
        _reply(conn, *answer)
        self.ahead.schedule(target)
        return True

    def _note(self) -> None:
        """pid, requests answered and how many of them a push-ahead worker had stored, in the lock file:
        for an operator's ps, and the tests' proof."""
        text = f"{os.getpid()} {self.served} {self.served_ahead}\n".encode()
        os.pwrite(self.lock_fd, text.ljust(32), 0)

    def _stop_listening(self) -> None:
        """Stop taking requests and let a new server start: unlink, close, unlock (idempotent)."""
        if self.listener.fileno() < 0:
            return
        import contextlib
        import fcntl

        with contextlib.suppress(OSError):
            if os.stat(self.address).st_ino == self.bound:  # never a successor's socket
                os.unlink(self.address)
        self.listener.close()
        fcntl.flock(self.lock_fd, fcntl.LOCK_UN)


def _reply(conn: socket.socket, status: bytes, code: int, text: str) -> bool:
    """Send one answer; a client that went away meanwhile pushes itself, so a failed send is fine."""
    import contextlib

    with contextlib.suppress(OSError):
        conn.sendall(b"\0".join([status, str(code).encode(), text.encode("utf-8", "replace")]))
    return True


#: The config file a fresh wal-push would read, its bytes, and the key files it names with theirs.
_ConfigState = tuple[str, bytes, tuple[str, ...], tuple[bytes, ...]]


def _config_state(spec: str, key_files: tuple[str, ...]) -> _ConfigState | None:
    """Which config file a fresh ``wal-push`` would read, and what it and the key files it names hold.

    Contents, not mtimes: a test or a deploy script can rewrite a config twice within the clock's
    granularity; a key file is read once, when a repository is opened, so it is compared too."""
    from pathlib import Path

    from backend.config import find_config

    try:
        path = find_config(spec or None)
        if path is None:
            return None
        return str(path), path.read_bytes(), key_files, tuple(Path(k).read_bytes() for k in key_files)
    except (OSError, PgdrError):
        return None
