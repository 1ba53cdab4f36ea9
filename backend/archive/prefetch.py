"""Prefetch for recovery: fetch the next segments in parallel while PostgreSQL replays this one.

PostgreSQL's startup process calls ``restore_command`` for one file at a time and waits; from S3
each call would pay a Python start, an S3 client, a listing and a download per 16 MB of replay. So
one prefetcher stays for the whole recovery: it opens the repositories once (one S3 client, shared
by its threads) and keeps the ``restore.prefetch`` segments from the one recovery asks for next
downloaded, with ``restore.prefetch_workers`` threads, into ``pg_wal/pgdr-prefetch/``. The first
``wal-fetch`` of a recovery starts one (``pgdr wal-prefetch``, detached); ``pgdr restore`` runs its
own, in-process, from before it starts the server, so the backup's WAL is there when recovery asks.

* ``<file>``: complete and verified. Each is fetched to a temporary name, checked against its
  sha256, fsynced and only then renamed into place; anything else (temp files, a crash) is ignored
  and removed. A prefetcher serves only what it placed itself: it empties the folder when it starts.
* ``<file>.for.<nonce>``: the same, fetched to answer the request with that nonce and for its asker
  only, who takes it at once: not fsynced (PostgreSQL fsyncs what it keeps).
* ``.wanted``: what recovery asked for last, written by every ``wal-fetch``. ``<file>`` alone: it was
  taken from the folder; the prefetcher slides its window to it and drops what recovery has moved
  past. ``<file> <nonce>``: it was not there, so this is a request: the prefetcher looks the file up
  (any segment, a timeline history file, one it delivered before) and answers by placing it or in
  ``.failed``.
* ``.failed``: ``<file> <nonce> absent|damaged``, the answer to the request with that nonce, from a
  lookup begun after the request was written: "absent" is as fresh as the asker's own listing would
  be, and is what it tells PostgreSQL; on "damaged" the asker fetches by itself, which says exactly why.
* ``.lock``: held by the prefetcher for as long as it runs, and naming the config file it fetches
  with: a ``wal-fetch`` takes files from the folder and asks only while a prefetcher of its own config
  holds it (a prefetcher of another config might not see the copy this one would refuse).

``wal-fetch`` takes its file with a rename, or, while a prefetcher runs, waits for it or for the
answer to its request. The detached prefetcher leaves once recovery has asked for nothing new for
``LINGER`` seconds; any prefetcher leaves when the folder is gone: ``pgdr restore`` removes it when
recovery is over.

The restore_command ``pgdr restore`` gives its server (``restore_command``) takes a placed file
with ``mv``, no interpreter at all (the folder is the restore's own prefetcher's), and asks with
``main`` for anything else. The asking side (``obtain``, ``main``) imports only ``os``, ``fcntl``,
``sys`` and ``time``; the prefetcher imports what it needs when it runs. A file taken with ``mv``
writes no ``.wanted``: the prefetcher sees it gone from the folder, and slides its window just the same.
"""

from __future__ import annotations

import fcntl
import os
import sys
import time

TYPE_CHECKING = False  # not typing's: importing typing (re, enum, functools...) would double the asker's start
if TYPE_CHECKING:
    import threading
    from collections.abc import Mapping
    from concurrent.futures import Future
    from pathlib import Path

    from backend.archive.walfile import WalObject
    from backend.config import Config
    from backend.repository import Repository
    from backend.walnames import SegmentName

FOLDER = "pgdr-prefetch"
LOCK, WANTED, FAILED = ".lock", ".wanted", ".failed"
TEMP_MARK = ".pgdr-fetch."  # in the temporary names backend.archive.fetch writes
ANSWER_MARK = ".for."  # between a file's name and the nonce of the request it answers
#: What asking a prefetcher comes to: the file is at the destination; no repository has it; only
#: damaged copies exist. (PLACED: a prefetcher's own fetch put the file in the folder.)
TAKEN, ABSENT, DAMAGED, PLACED = "taken", "absent", "damaged", "placed"
#: Seconds a detached prefetcher waits for recovery to ask for something new before it exits.
LINGER = 5.0
#: How often a waiting ``wal-fetch`` looks for its answer, and the prefetcher for a new request...
POLL = 0.005
#: ... and how often once recovery has asked for nothing for a second (replay of one segment can
#: take that long): a little more latency then, and not 200 wake-ups a second for hours.
POLL_IDLE = 0.025
#: A ``wal-fetch`` waits at most this long for a running prefetcher before fetching by itself.
WAIT_LIMIT = 120.0
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
    """What a prefetcher and its askers must share: the config file they fetch with."""
    return os.path.realpath(cfg.source) if cfg.source else ""


def obtain(filename: str, destination: str | os.PathLike[str], config: str) -> str:
    """Have ``filename`` from the prefetcher of ``config`` (``identity``): TAKEN (it is at
    ``destination``), ABSENT, or "".

    "" means fetch it yourself: no such prefetcher runs, it found only damaged copies, or it did
    not answer within WAIT_LIMIT. ABSENT comes only from a lookup the prefetcher began after this
    request was written.
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
            return ABSENT if answer[2:] == [ABSENT] else ""
        if not _running(folder, config):
            break
        time.sleep(POLL)
    # it may have arrived just before the prefetcher stopped
    return TAKEN if _take(folder, answers, destination) else ""


def start(cfg: Config, filename: str, destination: str | os.PathLike[str]) -> None:
    """Start a detached prefetcher for the segments after ``filename``, unless one runs.

    ``filename`` itself the caller fetches directly: the new process needs a moment before it can help.
    """
    if not is_segment(filename):
        return
    from backend.spawn import spawn_pgdr

    folder = prefetch_dir(destination)
    os.makedirs(folder, mode=0o700, exist_ok=True)
    if _running(folder):
        return
    _write_note(os.path.join(folder, WANTED), filename)
    spawn_pgdr(cfg, "wal-prefetch", folder, "--after", filename)


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


def run_prefetch(cfg: Config, folder: str | os.PathLike[str], after: str) -> list[str]:
    """Keep the segments after ``after`` (then after each requested one) fetched until recovery is done.

    Returns the segments placed in ``folder``.
    """
    from pathlib import Path

    from backend.repository import open_repositories, read_identity
    from backend.walnames import SegmentName

    try:
        fd = os.open(os.path.join(folder, LOCK), os.O_RDWR | os.O_CREAT, 0o600)
    except FileNotFoundError:
        return []  # recovery is over and the folder removed before this process got going
    try:
        try:  # first thing: from now on wal-fetch waits for this one rather than fetching by itself
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return []
        _sign(fd, cfg)
        repos = open_repositories(cfg)  # once: every thread shares these (and their S3 client)
        identity = next((i for i in map(read_identity, repos) if i is not None), None)
        if identity is None:
            return []
        first = SegmentName.parse(after, identity.segment_size).next()
        return _Prefetcher(cfg, repos, Path(folder), identity.segment_size).run(first)
    finally:
        os.close(fd)


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
    prefetcher = _Prefetcher(cfg, repos, folder, first.segment_size, owner=owner, order=order)

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
        owner: tuple[int, int] | None = None,
        order: Mapping[str, tuple[str, ...]] | None = None,
    ) -> None:
        import threading

        self.repos = repos
        self.order = order or {}
        self._listings: dict[tuple[str, str], dict[str, list[WalObject]]] = {}
        self._listing_lock = threading.Lock()
        self.folder = folder
        self.segment_size = segment_size
        self.owner = owner
        self.ahead = max(1, cfg.restore.prefetch)
        self.workers = max(1, cfg.restore.prefetch_workers)

    def run(self, first: SegmentName, *, linger: float | None = LINGER) -> list[str]:
        """Fetch ahead of recovery and answer its requests; ``linger`` None: until the folder is gone."""
        import contextlib
        from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

        from backend.walnames import SegmentName

        for entry in os.listdir(self.folder):
            if entry not in (LOCK, WANTED):
                (self.folder / entry).unlink(missing_ok=True)  # an earlier prefetcher's
        position = first
        noted = _note(self.folder)
        if is_segment(noted[0]) and noted[0] > position.name:  # recovery got further meanwhile
            position = SegmentName.parse(noted[0], self.segment_size)
        self._forget_before(position.name)
        last = (noted[0], "")  # its position is taken; a request in it is still answered
        placed: set[str] = set()
        unclaimed: set[str] = set()  # placed under their own names and still there
        # future -> (file, when submitted, the nonce of the request it answers: "" for the window's)
        in_flight: dict[Future[str], tuple[str, float, str]] = {}
        requests: dict[str, tuple[str, float]] = {}  # file -> (nonce, when the request was read)
        failed = ""
        active = time.monotonic()
        # Requests have a worker of their own: an answer never queues behind the window's downloads.
        with ThreadPoolExecutor(self.workers) as pool, ThreadPoolExecutor(1) as answers:
            while os.path.isdir(self.folder):
                moved = ""  # where recovery is now, when that changed
                note = _note(self.folder)
                if note != last:
                    last, active = note, time.monotonic()
                    name, nonce = note
                    moved = name if is_segment(name) else ""
                    if nonce:  # a request: answered below once its lookup is done
                        if any(file == name for file, _, _ in in_flight.values()):
                            requests[name] = (nonce, active)
                        elif not (self.folder / name).exists():  # (there, it is the asker's already)
                            requests[name] = (nonce, active)
                            in_flight[answers.submit(self._fetch, name, nonce)] = (name, active, nonce)
                if unclaimed and not (self.folder / min(unclaimed)).exists():  # recovery takes them in order
                    taken = {file for file in unclaimed if not (self.folder / file).exists()}
                    unclaimed -= taken
                    if max(taken) > max(moved, position.name):  # taken with mv: as good as a note
                        moved, active = max(taken), time.monotonic()
                if moved:
                    position = SegmentName.parse(moved, self.segment_size)
                    self._forget_before(moved)
                    failed = ""  # recovery got past it, or asks again: try again
                segment = position
                for _ in range(self.ahead):
                    if sum(not answer for _, _, answer in in_flight.values()) >= self.workers or (
                        failed and segment.name >= failed
                    ):
                        break  # queued no deeper than the workers, so a new request goes first
                    ahead = segment.name
                    busy = any(file == ahead for file, _, _ in in_flight.values())
                    if ahead not in placed and not busy and not (self.folder / ahead).exists():
                        in_flight[pool.submit(self._fetch, ahead)] = (ahead, time.monotonic(), "")
                    segment = segment.next()
                if not in_flight:
                    idle = time.monotonic() - active
                    if linger is not None and idle > linger:
                        break
                    time.sleep(POLL if idle < 1.0 else POLL_IDLE)
                    continue
                done, _ = wait(in_flight, timeout=POLL, return_when=FIRST_COMPLETED)
                for future in done:
                    name, submitted, answered = in_flight.pop(future)
                    result = future.result()
                    if result == PLACED:
                        placed.add(name)
                        if not answered:
                            unclaimed.add(name)
                        active = time.monotonic()
                    elif not answered and (not failed or name < failed):
                        failed = name
                    if name not in requests:
                        continue
                    nonce, read = requests[name]
                    if result == PLACED:
                        del requests[name]
                        if answered and answered != nonce:  # asked again meanwhile: the new asker's now
                            with contextlib.suppress(OSError):
                                os.rename(self._answer(name, answered), self._answer(name, nonce))
                    elif submitted < read:  # looked up before it was asked: again, so the answer is fresh
                        in_flight[answers.submit(self._fetch, name, nonce)] = (name, time.monotonic(), nonce)
                    else:
                        del requests[name]
                        _write_note(self.folder / FAILED, f"{name} {nonce} {result}")
        return sorted(placed)

    def _fetch(self, name: str, nonce: str = "") -> str:
        """Place ``name`` (for the request ``nonce``: under its answer name, unsynced); PLACED or why not."""
        from backend.archive.fetch import fetch_from
        from backend.errors import ObjectNotFound, PgdrError

        placed = self._answer(name, nonce) if nonce else self.folder / name
        try:  # verified, then renamed into place
            preferred = self.order.get(name, ())
            repos = sorted(self.repos, key=lambda r: preferred.index(r.name) if r.name in preferred else len(preferred))
            fetch_from(repos, name, placed, self._find, owner=self.owner, sync=not nonce)
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
        """Drop prefetched files recovery has moved past (another timeline, or skipped)."""
        import contextlib

        with contextlib.suppress(OSError):
            for entry in os.listdir(self.folder):
                if is_segment(entry) and entry < current:
                    (self.folder / entry).unlink(missing_ok=True)


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
        return config is None or os.pread(fd, 4096, 0).decode(errors="replace") == config
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
    """A hint between processes, replaced atomically; not fsynced: after a crash it is simply stale."""
    temp = f"{os.fspath(path)}.{os.getpid()}"
    try:
        with open(temp, "w") as fh:
            fh.write(text)
        os.replace(temp, path)
    except OSError:
        return False
    return True


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
