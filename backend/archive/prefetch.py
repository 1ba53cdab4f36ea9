"""Prefetch for recovery: fetch the next segments in parallel while PostgreSQL replays this one.

PostgreSQL's startup process calls ``restore_command`` for one file at a time and waits; from S3
each call would pay a Python start, an S3 client, a listing and a download per 16 MB of replay. So
one prefetcher stays for the whole recovery: it opens the repositories once (one S3 client, shared
by its threads) and keeps the segments after the one recovery asks for downloaded, with
``restore.prefetch_workers`` threads, into ``pg_wal/pgdr-prefetch/``. The plain ``pgdr wal-fetch %f %p``
(a standby fed from the archive, a restore done by hand, a container recovering a restored volume)
starts one (``pgdr wal-prefetch``, detached) on its first call; ``pgdr restore`` runs its own,
in-process, from before it starts the server, so the backup's WAL is there when recovery asks.

How far ahead: ``restore.prefetch`` segments, and never more than ``AHEAD_BYTES`` (16 segments of
16 MB), whatever the segment size; no more download threads than that. The detached prefetcher's
window starts one segment deep and doubles with each step recovery takes to the next segment, so a
lone fetch by hand, or pg_rewind reading backwards, does not download a window it never uses. The
window's downloads run in parallel, its decoding (zstd, sha256, the write) one file at a time: far
ahead, a prefetcher takes no more than a core from the server replaying and the ``wal-fetch`` it
waits for; a request is decoded at once, beside the window's.

* ``<file>``: complete and verified. Each is decoded to a temporary name, hashed as it is written,
  fsynced, and renamed into place only when its sha256 is the archived one; anything else (temp
  files, a crash) is ignored and removed. A prefetcher serves only what it placed itself: it empties
  the folder when it starts. The fsync is not for the folder's sake: PostgreSQL fsyncs each file it
  keeps before it replays it, and a file already on disk makes that instant, so the writeback is
  done here, ahead, rather than while recovery waits.
* ``<file>.for.<nonce>``: the same, fetched to answer the request with that nonce and for its asker
  only, who takes it at once: not fsynced (the asker is waiting).
* ``.wanted``: what recovery asked for last, written by every ``wal-fetch``. ``<file>`` alone: it was
  taken from the folder; the prefetcher slides its window to it and drops what recovery has moved
  past. ``<file> <nonce>``: it was not there, so this is a request: the prefetcher looks the file up
  (any segment, a timeline history file, one it delivered before) and answers by placing it or in
  ``.failed``.
* ``.failed``: ``<file> <nonce> absent|damaged``, the answer to the request with that nonce, from a
  lookup begun after the request was written: "absent" is as fresh as the asker's own listing would
  be, and is what it tells PostgreSQL; on "damaged" the asker fetches by itself, which says exactly why.
* ``.lock``: held by the prefetcher for as long as it runs, and naming, one per line, the identities of
  the config it fetches with: ``wal-fetch`` takes files from the folder and asks only while a
  prefetcher of its own config holds it (a prefetcher of another config might not see the copy this
  one would refuse). The detached prefetcher is named by ``fingerprint``, which the plain
  ``wal-fetch`` works out before it reads any config (the config file as the command names it, the
  environment that overrides or locates it, the interpreter and this code), and by ``identity``;
  ``pgdr restore``'s by ``identity``, the config file's real path, which its restore_command carries.

The plain ``wal-fetch`` asks first (``ask``): answered from the prefetcher, it imports nothing but
``os``, ``fcntl``, ``sys``, ``time`` and ``zlib``, and reads no config. Only when no prefetcher of its
config runs does it read the config, fetch the file by itself and start one (``start``): it takes the
lock itself and hands it to the new process, so the calls that follow wait for that one instead of
each starting another. A ``wal-fetch`` takes its file with a rename, or, while a prefetcher runs,
waits for it or for the answer to its request.

The detached prefetcher leaves, and removes its folder with whatever it still holds, once recovery
has asked for nothing new for ``LINGER`` seconds (longer than a standby's wait between two looks at
the archive, ``wal_retrieve_retry_interval``, 5 s by default, so a standby that polls the archive
keeps one), once the server that was recovering when it started has promoted (its data directory
has neither ``standby.signal`` nor ``recovery.signal`` any more) or stopped (no ``postmaster.pid``),
or once its config file changed (the next ``wal-fetch`` starts one on the new config). Any
prefetcher leaves when its folder is gone or no longer its own (``pgdr restore`` removes its own
when recovery is over; a data directory set aside takes its folder along, and a new one at the old
path is another prefetcher's).

The restore_command ``pgdr restore`` gives its server (``restore_command``) takes a placed file
with ``mv``, no interpreter at all (the folder is the restore's own prefetcher's), and asks with
``main`` for anything else. A file taken with ``mv`` writes no ``.wanted``: the prefetcher sees it
gone from the folder, and slides its window just the same.
"""

from __future__ import annotations

import fcntl
import os
import sys
import time

from backend import __version__

TYPE_CHECKING = False  # not typing's: importing typing (re, enum, functools...) would double the asker's start
if TYPE_CHECKING:
    import threading
    from collections.abc import Callable, Mapping
    from concurrent.futures import Future, ThreadPoolExecutor
    from pathlib import Path

    from backend.archive.walfile import WalObject
    from backend.config import Config
    from backend.repository import Repository
    from backend.walnames import SegmentName

FOLDER = "pgdr-prefetch"
LOCK, WANTED, FAILED = ".lock", ".wanted", ".failed"
ANSWER_MARK = ".for."  # between a file's name and the nonce of the request it answers
#: What asking a prefetcher comes to: the file is at the destination; no repository has it; asked, but
#: no usable answer (only damaged copies, or none within WAIT_LIMIT): fetch it yourself, and do not ask
#: again. (PLACED: a prefetcher's own fetch put the file in the folder.)
TAKEN, ABSENT, DAMAGED, PLACED = "taken", "absent", "damaged", "placed"
#: Seconds a detached prefetcher waits for recovery to ask for something new before it leaves.
LINGER = 30.0
#: How often a prefetcher looks for a new request...
POLL = 0.005
#: ... once recovery has asked for nothing for a second (replay of one segment can take that long)...
POLL_IDLE = 0.025
#: ... and for ten seconds (a standby waiting for the primary to archive its next segment).
POLL_ASLEEP = 0.1
#: How often a waiting ``wal-fetch`` looks for its answer.
ASK_POLL = 0.002
#: A ``wal-fetch`` waits at most this long for a running prefetcher before fetching by itself.
WAIT_LIMIT = 120.0
#: The most a prefetcher keeps fetched ahead, whatever ``restore.prefetch`` asks: segments can be up to 1 GB.
AHEAD_BYTES = 256 << 20
#: How often the detached prefetcher checks that its config is unchanged and the server still recovering.
WATCH_EVERY = 1.0
#: The lock a starting ``wal-fetch`` took and hands to the prefetcher it starts (a descriptor number).
LOCK_FD_ENV = "PGDR_PREFETCH_LOCK_FD"
#: Environment variables that change what a fetch does or where its config is found (as for wal-push).
_ENV_PREFIXES = ("PG", "AWS_", "BACKUP_", "TELEGRAM_")
_ENV_NAMES = frozenset({"DB_PASSWORD", "HOME", "XDG_CONFIG_HOME", "XDG_STATE_HOME", "PYTHONPATH"})
_HEX = frozenset("0123456789ABCDEF")


def prefetch_dir(destination: str | os.PathLike[str]) -> str:
    """Beside %p (in pg_wal), so taking a file is a rename on the same filesystem."""
    return os.path.join(os.path.dirname(os.path.abspath(destination)), FOLDER)


def is_segment(name: str) -> bool:
    """Matched by hand rather than with backend.walnames' patterns: importing re would double the asker's start."""
    return len(name) == 24 and _HEX.issuperset(name)


def servable(name: str) -> bool:
    """A segment or a timeline history file: what recovery asks for, and all a prefetcher serves."""
    return is_segment(name) or (len(name) == 16 and name.endswith(".history") and _HEX.issuperset(name[:8]))


def identity(cfg: Config) -> str:
    """What ``pgdr restore``'s prefetcher and its restore_command share: the config file they fetch with."""
    return os.path.realpath(cfg.source) if cfg.source else ""


def config_spec(explicit: str | None) -> str:
    """The config as the command names it (``--config``, else ``$PGDR_CONFIG``), made absolute against
    the caller's cwd (PostgreSQL runs restore_command in the data directory); "" for the default
    lookup, which the fingerprinted environment decides."""
    named = explicit or os.environ.get("PGDR_CONFIG")
    return os.path.abspath(named) if named else ""


def fingerprint(spec: str) -> str:
    """What names the detached prefetcher to the plain ``wal-fetch``, worked out without reading the
    config: the config file as named (``config_spec``), the environment that overrides or locates it,
    the interpreter and this code. zlib's checksums: a collision can only let one config's ``wal-fetch``
    take a verified file that another config's prefetcher fetched, in a folder of the same server."""
    import zlib

    env = sorted(
        f"{k}={v}"
        for k, v in os.environ.items()
        if (k.startswith(_ENV_PREFIXES) or k in _ENV_NAMES) and k != LOCK_FD_ENV
    )
    code = os.stat(__file__).st_mtime_ns
    blob = "\0".join([__version__, str(code), sys.executable, spec, *env]).encode("utf-8", "surrogateescape")
    return f"plain.{zlib.crc32(blob):08x}{zlib.adler32(blob):08x}"


def ask(explicit_config: str | None, filename: str, destination: str | os.PathLike[str]) -> str:
    """The plain ``wal-fetch``'s first move, before it reads any config: ``obtain`` from the detached
    prefetcher of its config. Never raises: any surprise means "" (fetch it yourself)."""
    try:
        return obtain(filename, destination, fingerprint(config_spec(explicit_config)))
    except Exception:
        return ""


def obtain(filename: str, destination: str | os.PathLike[str], config: str) -> str:
    """Have ``filename`` from the prefetcher named ``config`` (``identity`` or ``fingerprint``): TAKEN
    (it is at ``destination``), ABSENT, DAMAGED (asked: fetch it yourself), or "" (no such prefetcher).

    ABSENT comes only from a lookup the prefetcher began after this request was written.
    """
    if not servable(filename):
        return ""
    folder = prefetch_dir(destination)
    if not _running(folder, config):
        return ""
    wanted = os.path.join(folder, WANTED)
    taken = _take(folder, [filename], destination)
    if taken:
        _write_note(wanted, filename)
        return TAKEN
    nonce = f"{os.getpid()}.{time.monotonic_ns()}"
    if taken is None or not _write_note(wanted, f"{filename} {nonce}"):
        return ""
    answers = [f"{filename}{ANSWER_MARK}{nonce}", filename]
    deadline = time.monotonic() + WAIT_LIMIT
    while time.monotonic() < deadline:
        taken = _take(folder, answers, destination)
        if taken is not False:
            return TAKEN if taken else ""
        answer = _read_note(os.path.join(folder, FAILED)).split()
        if answer[:2] == [filename, nonce]:
            return ABSENT if answer[2:] == [ABSENT] else DAMAGED
        if not _running(folder, config):
            # it may have arrived just before the prefetcher stopped; else none runs: start one
            return TAKEN if _take(folder, answers, destination) else ""
        time.sleep(ASK_POLL)
    return TAKEN if _take(folder, answers, destination) else DAMAGED


def start(cfg: Config, filename: str, destination: str | os.PathLike[str], *, config: str | None = None) -> None:
    """Start a detached prefetcher for the segments after ``filename``, unless one runs.

    ``config``: the config as the plain ``wal-fetch`` named it (its ``--config``), so the new process
    bears the ``fingerprint`` that command works out. The lock is taken here and handed over, so from
    now on every ``wal-fetch`` waits for the new process rather than starting another. ``filename``
    itself the caller fetches directly: the new process needs a moment before it can help.
    """
    if not is_segment(filename):
        return
    import subprocess  # only when a prefetcher is actually started

    folder = prefetch_dir(destination)
    os.makedirs(folder, mode=0o700, exist_ok=True)
    fd = os.open(os.path.join(folder, LOCK), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return  # one runs, or is starting
        spec = config_spec(config)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{fingerprint(spec)}\n{identity(cfg)}".encode(), 0)
        _write_note(os.path.join(folder, WANTED), filename)
        config_args = ["--config", spec] if spec else []
        subprocess.Popen(
            [sys.executable, "-m", "pgdr_tui", *config_args, "wal-prefetch", folder, "--after", filename],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            close_fds=True,
            pass_fds=(fd,),
            env={**os.environ, LOCK_FD_ENV: str(fd)},
            cwd="/",  # not the data directory: nothing of the server's is kept busy
        )
    finally:
        os.close(fd)  # the lock stays with the new process


def main() -> None:
    """PostgreSQL's restore_command while ``pgdr restore`` waits for recovery, as ``restore_command`` builds it.

    It answers from the restore's own prefetcher without reading pgdr's config or importing any
    repository code; whatever it cannot answer (no prefetcher, a damaged copy, anything unexpected)
    it hands to ``<command>``, the plain ``pgdr wal-fetch %f %p``. It exits 1, which PostgreSQL
    takes for "the archive ends here", only on the prefetcher's fresh "absent".
    """
    config, filename, destination, command = sys.argv[1:5]
    try:
        answer = obtain(filename, destination, config)
    except Exception:  # an optimisation: any surprise goes to the plain command, never to exit 1
        answer = ""
    if answer == TAKEN:
        raise SystemExit(0)
    if answer == ABSENT:
        print(f"pgdr: {filename} is not in any repository", file=sys.stderr)
        raise SystemExit(1)
    os.execv("/bin/sh", ["sh", "-c", command])


def restore_command(cfg: Config, plain: str) -> str:
    """The quick restore_command, ``plain`` its fallback (run from the data directory, as PostgreSQL does).

    A placed file is taken with ``mv`` (a rename within pg_wal); anything else goes to ``main`` in
    this interpreter, without site (-S: it needs none of the packages site would add, and site is a
    quarter of its start) and with nothing on the module path but the standard library and pgdr's
    own folder (-P: not the data directory). No quotes in the code: postmaster.opts holds each
    argument in double quotes.
    """
    import shlex

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    code = f"import sys; sys.path.insert(0, sys.argv.pop(1)); from {__name__} import main; main()"
    ask = shlex.join([sys.executable, "-S", "-P", "-c", code, root, identity(cfg), "%f", "%p", plain])
    return f"mv -f pg_wal/{FOLDER}/%f %p 2>/dev/null || exec {ask}"


def run_prefetch(cfg: Config, folder: str | os.PathLike[str], after: str, *, config: str | None = None) -> list[str]:
    """Keep the segments after ``after`` (then after each requested one) fetched until recovery is done.

    The detached prefetcher (``pgdr wal-prefetch``). ``config``: its ``--config``, which names it to
    the plain ``wal-fetch`` (``fingerprint``). It runs under the lock its starter handed over
    (``LOCK_FD_ENV``), or takes the folder's lock itself. Returns the segments placed in ``folder``.
    """
    from pathlib import Path

    from backend.repository import open_repositories, read_identity
    from backend.walnames import SegmentName

    fd = _handed_lock(folder)
    if fd is None:
        try:
            fd = os.open(os.path.join(folder, LOCK), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except OSError:
            return []  # recovery is over and the folder removed before this process got going
        try:  # first thing: from now on wal-fetch waits for this one rather than fetching by itself
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return []
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{fingerprint(config_spec(config))}\n{identity(cfg)}".encode(), 0)
    lock = _file_id(fd)
    try:
        folder_fd: int | None = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        folder_fd = None
    try:
        config_state = _config_state(cfg)
        repos = open_repositories(cfg)  # once: every thread shares these (and their S3 client)
        found = next((i for i in map(read_identity, repos) if i is not None), None)
        if found is None:
            return []
        first = SegmentName.parse(after, found.segment_size).next()
        prefetcher = _Prefetcher(cfg, repos, Path(folder), found.segment_size, lock=fd)
        server_state = _server_state(Path(folder))

        def leave() -> bool:
            return _config_state(cfg) != config_state or _recovery_over(Path(folder), server_state)

        return prefetcher.run(first, linger=LINGER, leave=leave, depth=1)
    finally:
        _remove(Path(folder), lock, folder_fd)  # under the lock still: nothing the next prefetcher placed is lost
        os.close(fd)


def _handed_lock(folder: str | os.PathLike[str]) -> int | None:
    """The descriptor of ``folder``'s lock that the ``wal-fetch`` which started this process holds for it."""
    handed = os.environ.pop(LOCK_FD_ENV, "")
    if not handed.isdigit():
        return None
    import contextlib

    fd = int(handed)
    with contextlib.suppress(OSError):
        mine, there = os.fstat(fd), os.stat(os.path.join(folder, LOCK), follow_symlinks=False)
        if (mine.st_dev, mine.st_ino) == (there.st_dev, there.st_ino):
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # held already: this only confirms it
            return fd
    with contextlib.suppress(OSError):
        os.close(fd)
    return None


def _config_state(cfg: Config) -> tuple[bytes, ...] | None:
    """What the config file and the key files it names hold: when it changes, the detached prefetcher
    leaves, and the next ``wal-fetch`` starts one that fetches as the new config says."""
    from pathlib import Path

    keys = [k for k in (cfg.local.encryption_key_file, cfg.s3.encryption_key_file) if k]
    try:
        return tuple(Path(f).read_bytes() for f in ([cfg.source] if cfg.source else []) + keys)
    except OSError:
        return None


def _server_state(folder: Path) -> tuple[bool, bool] | None:
    """For a folder in a data directory: whether its server runs (postmaster.pid) and recovers (standby.signal
    or recovery.signal, which PostgreSQL removes when it promotes); None anywhere else."""
    data = folder.parent.parent
    if not (data / "PG_VERSION").is_file():
        return None
    recovering = (data / "standby.signal").exists() or (data / "recovery.signal").exists()
    return (data / "postmaster.pid").is_file(), recovering


def _recovery_over(folder: Path, before: tuple[bool, bool] | None) -> bool:
    """Whether the server recovering when the prefetcher started (``before``: ``_server_state`` then) has
    stopped or promoted since. A server that was not running (pg_rewind, a fetch by hand) tells nothing:
    then the prefetcher goes after LINGER."""
    now = _server_state(folder)
    if before is None or now is None:
        return False
    (ran, recovered), (runs, recovers) = before, now
    return (ran and not runs) or (ran and recovered and not recovers)


def serve_restore(
    cfg: Config,
    repos: list[Repository],
    pg_wal: Path,
    first: SegmentName,
    owner: tuple[int, int] | None,
    *,
    order: Mapping[str, tuple[str, ...]] | None = None,
) -> threading.Thread | None:
    """Run the prefetcher in this process, from ``first`` on, until ``clean`` removes its folder.

    For ``pgdr restore``: started before the server, it has the backup's WAL fetched and verified by
    the time recovery asks, and answers with the repositories the restore already opened. ``owner``
    (when pgdr runs as root) gets what it writes: the server renames the files into pg_wal and must
    own them. ``order`` gives, per segment, the repositories in the order the restore plan chose
    (sound copies first). None when another prefetcher holds the folder.
    """
    import threading

    folder = pg_wal / FOLDER
    folder.mkdir(mode=0o700, exist_ok=True)
    # The server user can write into pg_wal: the folder and its lock are given by descriptor, reached
    # without following a link it could have put in their place.
    try:
        folder_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None  # a link in its place: recovery fetches each segment itself, as without a prefetcher
    try:
        fd = os.open(LOCK, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=folder_fd)
    except OSError:
        os.close(folder_fd)
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        _sign(fd, cfg)
        if owner is not None:
            os.fchown(folder_fd, *owner)
            os.fchown(fd, *owner)
    except OSError:
        os.close(fd)
        return None
    finally:
        os.close(folder_fd)
    prefetcher = _Prefetcher(cfg, repos, folder, first.segment_size, lock=fd, owner=owner, order=order)

    def serve() -> None:
        try:
            prefetcher.run(first, linger=None)
        finally:
            os.close(fd)

    thread = threading.Thread(target=serve, name="pgdr-prefetch", daemon=True)
    thread.start()
    return thread


class _Prefetcher:
    def __init__(
        self,
        cfg: Config,
        repos: list[Repository],
        folder: Path,
        segment_size: int,
        *,
        lock: int,
        owner: tuple[int, int] | None = None,
        order: Mapping[str, tuple[str, ...]] | None = None,
    ) -> None:
        import threading

        #: The lock this prefetcher holds: while the folder's lock is this very file, the folder is its own
        #: (renamed away with the data directory a restore moved aside, a path may name another's).
        self.lock = _file_id(lock)
        self.repos = repos
        self.order = order or {}
        self._listings: dict[tuple[str, str], dict[str, list[WalObject]]] = {}
        self._listing_lock = threading.Lock()
        #: The window's downloads run in parallel, its decoding one at a time: a prefetcher far ahead takes
        #: no more than a core from the server replaying and the wal-fetch it waits for (a request's own
        #: decoding does not wait for the window's).
        self._decoding = threading.Lock()
        self.folder = folder
        self.segment_size = segment_size
        self.owner = owner
        #: Segments kept fetched beyond the one recovery asked for last, and the threads fetching them.
        self.ahead = max(1, min(cfg.restore.prefetch, AHEAD_BYTES // segment_size))
        self.workers = max(1, min(cfg.restore.prefetch_workers, self.ahead))

    def run(
        self,
        first: SegmentName,
        *,
        linger: float | None,
        leave: Callable[[], bool] | None = None,
        depth: int | None = None,
    ) -> list[str]:
        """Fetch ahead of recovery, from ``first`` on, and answer its requests until the folder is gone;
        with ``linger``, only until recovery has asked for nothing new for that long, and with ``leave``
        (asked every WATCH_EVERY seconds) until it says so. ``depth``: how far ahead at first (it doubles
        with each step recovery takes to the next segment, up to ``ahead``); None: ``ahead`` at once.

        Each turn: read what recovery asked for (``_read_wanted``) or took (``_taken``), follow it
        (``_follow``), top the window up (``_fill_window``), then wait for a download and deliver it
        (``_deliver``), or, with none under way, idle.
        """
        from concurrent.futures import ThreadPoolExecutor

        self._begin(first, self.ahead if depth is None else max(1, min(depth, self.ahead)))
        watched = time.monotonic()
        # Requests have a worker of their own: an answer never queues behind the window's downloads.
        with ThreadPoolExecutor(self.workers) as self._pool, ThreadPoolExecutor(1) as self._answers:
            while _holds(self.folder, self.lock):
                moved = max(self._read_wanted(), self._taken())
                if moved:
                    self._follow(moved)
                self._fill_window()
                if leave is not None and time.monotonic() - watched >= WATCH_EVERY:
                    watched = time.monotonic()
                    if leave():
                        break
                if self._in_flight:
                    self._deliver()
                    continue
                idle = time.monotonic() - self._active
                if linger is not None and idle > linger:
                    break
                time.sleep(POLL if idle < 1.0 else POLL_IDLE if idle < 10.0 else POLL_ASLEEP)
        return sorted(self._placed)

    def _begin(self, first: SegmentName, depth: int) -> None:
        """Start from ``first``, or from where recovery has got to meanwhile, in a folder of nothing but
        the lock and the note (whatever else is there is an earlier prefetcher's, unverified by this one)."""
        from backend.walnames import SegmentName

        for entry in os.listdir(self.folder):
            if entry not in (LOCK, WANTED):
                (self.folder / entry).unlink(missing_ok=True)
        #: The segment recovery is at, and whether it has had it already: the window starts after it then.
        self._position, self._consumed = first, False
        #: How many segments ahead the window reaches now (it doubles as recovery steps on, up to ``ahead``).
        self._depth = depth
        noted = _note(self.folder)
        if is_segment(noted[0]) and noted[0] > first.name:  # recovery got further meanwhile
            self._position, self._consumed = SegmentName.parse(noted[0], self.segment_size), True
        self._forget_before(self._position.name)
        #: ``.wanted`` as last read: its position is taken; a request in it is still answered.
        self._last = (noted[0], "")
        #: When recovery last asked for something new, or a download landed: what idling counts from.
        self._active = time.monotonic()
        self._placed: set[str] = set()
        #: Placed under their own names and still in the folder (recovery takes them in order).
        self._unclaimed: set[str] = set()
        #: Downloads under way: future -> (file, when submitted, the nonce of the request it answers, "" for
        #: the window's).
        self._in_flight: dict[Future[str], tuple[str, float, str]] = {}
        #: Requests not answered yet: file -> (nonce, when the request was read).
        self._requests: dict[str, tuple[str, float]] = {}
        #: The first segment of the window that could not be fetched: the window stops short of it until
        #: recovery moves (got past it, or asks again).
        self._failed = ""

    def _read_wanted(self) -> str:
        """Read ``.wanted``: a segment recovery moved to ("" when it did not), and a request looked up at
        once (unless it is under way, or placed already: then it is the asker's)."""
        note = _note(self.folder)
        if note == self._last:
            return ""
        self._last, self._active = note, time.monotonic()
        name, nonce = note
        if nonce:
            if self._fetching(name):
                self._requests[name] = (nonce, self._active)
            elif not (self.folder / name).exists():
                self._requests[name] = (nonce, self._active)
                self._submit(self._answers, name, nonce)
        return name if is_segment(name) else ""

    def _taken(self) -> str:
        """The newest of the files this prefetcher placed that recovery took (with ``mv``, which writes no
        note) beyond where it was: as good as a note. "" when none."""
        if not self._unclaimed or (self.folder / min(self._unclaimed)).exists():
            return ""  # recovery takes them in order: the oldest still there means none was taken
        taken = {file for file in self._unclaimed if not (self.folder / file).exists()}
        self._unclaimed -= taken
        if max(taken) <= self._position.name:
            return ""
        self._active = time.monotonic()
        return max(taken)

    def _follow(self, moved: str) -> None:
        """Recovery is at ``moved`` now: one step on (a new timeline's segments go on from the old one's)
        looks further ahead; a jump back or far ahead (pg_rewind reading backwards) one segment again.
        What it moved past is dropped."""
        from backend.walnames import SegmentName

        now = SegmentName.parse(moved, self.segment_size)
        onward = self._position.number <= now.number <= self._position.number + self._depth
        self._depth = min(self.ahead, self._depth * 2) if onward else 1
        self._position, self._consumed = now, True
        self._forget_before(moved)
        if len(self._placed) > 4 * self.ahead:  # a standby runs for months: keep only what counts
            self._placed = {file for file in self._placed if file >= moved}
        self._failed = ""

    def _fill_window(self) -> None:
        """Start downloads for the window's segments not placed or under way, queued no deeper than the
        workers, so a new request goes first."""
        segment = self._position.next() if self._consumed else self._position
        for _ in range(self._depth):
            if self._window_downloads() >= self.workers or (self._failed and segment.name >= self._failed):
                return
            name = segment.name
            if name not in self._placed and not self._fetching(name) and not (self.folder / name).exists():
                self._submit(self._pool, name)
            segment = segment.next()

    def _deliver(self) -> None:
        """Wait a moment for downloads; note what each placed, and answer the requests they were for."""
        from concurrent.futures import FIRST_COMPLETED, wait

        done, _ = wait(self._in_flight, timeout=POLL, return_when=FIRST_COMPLETED)
        for future in done:
            name, submitted, answered = self._in_flight.pop(future)
            result = future.result()
            if result == PLACED:
                self._placed.add(name)
                if not answered:
                    self._unclaimed.add(name)
                self._active = time.monotonic()
            elif not answered and (not self._failed or name < self._failed):
                self._failed = name
            if name in self._requests:
                self._answer_request(name, submitted, answered, result)

    def _answer_request(self, name: str, submitted: float, answered: str, result: str) -> None:
        """A download of ``name`` ended while a request for it waits: the file is the asker's (under the
        newest request's answer name), or the lookup was older than the request (looked up again, so the
        answer is fresh), or ``.failed`` says why not."""
        import contextlib

        nonce, read = self._requests[name]
        if result == PLACED:
            del self._requests[name]
            if answered and answered != nonce:  # asked again meanwhile: the new asker's now
                with contextlib.suppress(OSError):
                    os.rename(self._answer(name, answered), self._answer(name, nonce))
        elif submitted < read:
            self._submit(self._answers, name, nonce)
        else:
            del self._requests[name]
            _write_note(self.folder / FAILED, f"{name} {nonce} {result}")

    def _submit(self, pool: ThreadPoolExecutor, name: str, nonce: str = "") -> None:
        self._in_flight[pool.submit(self._fetch, name, nonce)] = (name, time.monotonic(), nonce)

    def _fetching(self, name: str) -> bool:
        return any(file == name for file, _, _ in self._in_flight.values())

    def _window_downloads(self) -> int:
        return sum(not nonce for _, _, nonce in self._in_flight.values())

    def _fetch(self, name: str, nonce: str = "") -> str:
        """Place ``name`` (for the request ``nonce``: under its answer name, unsynced); PLACED or why not."""
        from backend.archive.retrieve import fetch_from
        from backend.errors import ObjectNotFound, PgdrError

        placed = self._answer(name, nonce) if nonce else self.folder / name
        try:  # verified, then renamed into place
            preferred = self.order.get(name, ())
            repos = sorted(self.repos, key=lambda r: preferred.index(r.name) if r.name in preferred else len(preferred))
            fetch_from(
                repos,
                name,
                placed,
                self._find,
                owner=self.owner,
                sync=not nonce,
                gate=None if nonce else self._decoding,
            )
        except ObjectNotFound:
            return ABSENT
        except PgdrError:
            return DAMAGED  # the asker's own fetch reports it
        return PLACED

    def _answer(self, name: str, nonce: str) -> Path:
        return self.folder / f"{name}{ANSWER_MARK}{nonce}"

    def _find(self, repo: Repository, filename: str) -> list[WalObject]:
        """What a repository holds of ``filename``, from one listing of its WAL folder; listed again
        when the file is not in it (archived since, or really not there)."""
        from backend.archive.walfile import WAL_PREFIX, archived_under
        from backend.walnames import wal_directory

        key = (repo.name, wal_directory(filename))
        with self._listing_lock:
            listing = self._listings.get(key, {})
        if filename not in listing:
            listing = archived_under(repo, f"{WAL_PREFIX}{key[1]}/")
            with self._listing_lock:
                self._listings[key] = listing
        return listing.get(filename, [])

    def _forget_before(self, current: str) -> None:
        """Drop prefetched files recovery has moved past (another timeline, or skipped), and the
        listings of WAL folders before the current one's (history files' is kept)."""
        import contextlib

        from backend.walnames import wal_directory

        with contextlib.suppress(OSError):
            for entry in os.listdir(self.folder):
                if is_segment(entry) and entry < current:
                    (self.folder / entry).unlink(missing_ok=True)
        here = wal_directory(current)
        with self._listing_lock:
            for key in [k for k in self._listings if is_segment(k[1] + "0" * 8) and k[1] < here]:
                del self._listings[key]


def _take(folder: str, names: list[str], destination: str | os.PathLike[str]) -> bool | None:
    """Rename the first of ``names`` placed in ``folder`` to ``destination``: True; False when none is
    there; None when it is another user's (a prefetcher root started by running wal-fetch by hand,
    for a server that runs as postgres): the server could not fsync it as its own WAL."""
    for name in names:
        source = os.path.join(folder, name)
        try:
            if os.geteuid() != 0 and os.stat(source).st_uid != os.geteuid():
                return None
            os.rename(source, destination)
        except OSError:
            continue
        return True
    return False


def _running(folder: str | os.PathLike[str], config: str | None = None) -> bool:
    """Whether a prefetcher holds the folder's lock (one of ``config``, unless None)."""
    try:
        fd = os.open(os.path.join(folder, LOCK), os.O_RDWR | os.O_CREAT, 0o600)
    except OSError:
        return False  # the folder is gone: recovery is over
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return config is None or config in os.pread(fd, 4096, 0).decode(errors="replace").split("\n")
    finally:
        os.close(fd)
    return False


def _sign(fd: int, cfg: Config) -> None:
    """Name, in the lock it holds, the config this prefetcher fetches with."""
    os.ftruncate(fd, 0)
    os.pwrite(fd, identity(cfg).encode(), 0)


def _note(folder: Path) -> tuple[str, str]:
    """``.wanted`` as (file, nonce): the nonce is "" for a file taken."""
    name, nonce = (*_read_note(folder / WANTED).split(), "", "")[:2]
    return name, nonce


def _read_note(path: str | os.PathLike[str]) -> str:
    """Bare system calls: the prefetcher reads ``.wanted`` every POLL, the asker ``.failed``."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return ""
    try:
        return os.read(fd, 4096).decode(errors="replace").strip()
    except OSError:
        return ""
    finally:
        os.close(fd)


def _write_note(path: str | os.PathLike[str], text: str) -> bool:
    """A hint between processes, replaced atomically; not fsynced: after a crash it is simply stale.
    Readable by all who may enter the folder: ``pgdr restore``'s prefetcher runs as root and answers
    the server's user (the folder itself is the server user's, mode 0700)."""
    temp = f"{os.fspath(path)}.{os.getpid()}"
    try:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            os.write(fd, text.encode())
        finally:
            os.close(fd)
        os.replace(temp, path)
    except OSError:
        return False
    return True


def _remove(folder: Path, lock: tuple[int, int], folder_fd: int | None) -> None:
    """Remove the detached prefetcher's folder as it leaves (it holds ``lock``): renamed away first, so a
    ``wal-fetch`` never takes from a folder half removed. A folder moved elsewhere (with a data directory
    a restore set aside) is emptied where it is now, through ``folder_fd``; whatever is at its old path
    now is another's, and left alone."""
    import contextlib
    import shutil

    try:
        if _holds(folder, lock):
            leaving = folder.with_name(f".{FOLDER}.left.{os.getpid()}")
            with contextlib.suppress(OSError):
                os.rename(folder, leaving)
                shutil.rmtree(leaving, ignore_errors=True)
        elif folder_fd is not None and not _same_file(folder, folder_fd):
            with contextlib.suppress(OSError):
                for entry in os.listdir(folder_fd):
                    with contextlib.suppress(OSError):
                        os.unlink(entry, dir_fd=folder_fd)
    finally:
        if folder_fd is not None:
            os.close(folder_fd)


def _same_file(path: Path, fd: int) -> bool:
    try:
        return os.path.samestat(os.stat(path, follow_symlinks=False), os.fstat(fd))
    except OSError:
        return False


def _file_id(fd: int) -> tuple[int, int]:
    st = os.fstat(fd)
    return st.st_dev, st.st_ino


def _holds(folder: Path, lock: tuple[int, int]) -> bool:
    """Whether ``folder``'s lock file is ``lock`` (the one a prefetcher holds): its folder, still there."""
    try:
        st = os.stat(folder / LOCK, follow_symlinks=False)
    except OSError:
        return False
    return (st.st_dev, st.st_ino) == lock


def clean(data_dir: Path) -> None:
    """Remove the prefetch folder once recovery is over, after its prefetcher has stopped.

    The folder is renamed away first, so a prefetcher still running finds it gone and stops, and
    nothing it was writing can land in a folder that survives.
    """
    import contextlib
    import shutil

    folder = data_dir / "pg_wal" / FOLDER
    leaving = folder.with_name(f".{FOLDER}.removed.{os.getpid()}")
    try:
        os.rename(folder, leaving)
    except OSError:
        return
    with contextlib.suppress(OSError):
        fd = os.open(leaving / LOCK, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    time.sleep(POLL)
        finally:
            os.close(fd)
    shutil.rmtree(leaving, ignore_errors=True)
