"""``pgdr demo``: a throwaway PostgreSQL cluster with real backups, real WAL and a live workload.

A newcomer should see the real product in a minute, on this machine, with nothing configured: this
builds a sandbox (``$PGDR_DEMO_DIR``, else ``<state dir>/demo``; as root ``/var/tmp/pgdr-demo-<uid>``,
because the ``postgres`` user that must run the server cannot enter root's home), initdb's a cluster
with 1 MB WAL segments (so the timeline visibly grows), archives through this very pgdr into a local
repository, takes base backups with ``jobs.backup_job`` around a named restore point and a dropped
table, and starts a small workload (inserts, and a WAL switch every few seconds) that keeps running
while the demo is open. ``clean()`` stops the workload and the server and removes everything.

As root the sandbox sits in a folder everyone can write into (/var/tmp), where another local user
could have prepared one first. So the demo uses only a sandbox it made itself: a folder of its own
user (not a link), that nobody else can write into, holding the marker it wrote (``_check_sandbox``),
and it never follows a link inside: what it writes there is created with ``O_EXCL | O_NOFOLLOW`` and
given to the server user by descriptor. The server user owns the data directory, so what it says
there is not believed either: ``--clean`` stops only a postmaster running in this data directory.

Everything goes through the real backend and the real ``pgdr wal-push``: the demo is the product.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

from backend.config import Config, load_config
from backend.errors import PgdrError
from backend.progress import Progress, ProgressCallback, no_progress

CLUSTER = "demo"
PORT = 5432  # the server listens only on the sandbox's own socket directory: no clash with a real one
WORKLOAD_INSERT_SECONDS = 1.0
WORKLOAD_SWITCH_SECONDS = 8.0
MARKER = ".pgdr-demo"
MARKER_TEXT = "a pgdr demo sandbox: `pgdr demo --clean` removes this folder\n"
#: How a file of the sandbox is created: never through a link, never over an existing file.
NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def sandbox_dir() -> Path:
    explicit = os.environ.get("PGDR_DEMO_DIR")
    if explicit:
        return Path(explicit)
    if os.geteuid() == 0:
        return Path(f"/var/tmp/pgdr-demo-{os.geteuid()}")
    from backend.statedir import state_dir

    return state_dir() / "demo"


def _server_user() -> pwd.struct_passwd:
    if os.geteuid() == 0:
        try:
            return pwd.getpwnam("postgres")
        except KeyError:
            raise PgdrError(
                "pgdr demo runs as root, and PostgreSQL refuses to: create the `postgres` user "
                "(installing the PostgreSQL packages does) or run the demo as an ordinary user"
            ) from None
    return pwd.getpwuid(os.geteuid())


def _as_server(argv: list[str]) -> list[str]:
    if os.geteuid() == 0:
        return ["runuser", "-u", _server_user().pw_name, "--", *argv]
    return argv


def _give(fd: int) -> None:
    if os.geteuid() == 0:
        user = _server_user()
        os.fchown(fd, user.pw_uid, user.pw_gid)


def _write_new(path: Path, text: str, *, mode: int, give: bool = False) -> None:
    """Create ``path`` (replacing a file of that name) with ``text``, through no link; ``give``: to the server user."""
    folder = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path.name, dir_fd=folder)  # a link planted there is removed, not followed
        try:
            fd = os.open(path.name, NEW_FILE, mode, dir_fd=folder)
        except FileExistsError:
            raise PgdrError(f"{path} was created by someone else while the demo wrote it: run the demo again") from None
    finally:
        os.close(folder)
    with os.fdopen(fd, "w") as fh:
        if give:
            _give(fh.fileno())
        fh.write(text)


def _server_folder(path: Path) -> None:
    """Create ``path`` (mode 0700) for the server user."""
    os.mkdir(path, 0o700)
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        _give(fd)
    finally:
        os.close(fd)


def _pg_bin() -> Path:
    """Debian's newest server programs folder, else wherever initdb and pg_basebackup both are on PATH."""
    versions = sorted(
        (p for p in Path("/usr/lib/postgresql").glob("*/bin") if p.parent.name.isdigit() and (p / "initdb").exists()),
        key=lambda p: int(p.parent.name),
    )
    if versions:
        return versions[-1]
    found = shutil.which("initdb")
    if found and (Path(found).parent / "pg_basebackup").exists():
        return Path(found).parent
    raise PgdrError("PostgreSQL server programs (initdb, pg_ctl, pg_basebackup) not found: install PostgreSQL 15")


def _pgdr_for_server() -> Path:
    """The pgdr the server's archive_command runs: this one, if the server user can execute it."""
    exe = Path(sys.executable).parent / "pgdr"
    probe = subprocess.run(_as_server([str(exe), "--version"]), capture_output=True, text=True, check=False)
    if probe.returncode != 0:
        raise PgdrError(
            f"the server user {_server_user().pw_name} cannot run {exe} (needed for archive_command): install "
            "pgdr where that user can read it (deploy/install.sh builds the venv from /usr/bin/python3, "
            "readable by everyone), or check the permissions of the folders above it"
        )
    return exe


def _run(argv: list[str], what: str, **kwargs: object) -> str:
    result = subprocess.run(argv, capture_output=True, text=True, check=False, **kwargs)  # type: ignore[call-overload]
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip().splitlines()[-3:]
        raise PgdrError(f"{what} failed (exit {result.returncode}): {' / '.join(tail) or 'no output'}")
    return str(result.stdout)


class _Paths:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.marker = root / MARKER
        self.data = root / "data"
        self.sock = root / "sock"
        self.repo = root / "repo"
        self.config = root / "pgdr.toml"
        self.server_log = root / "server.log"
        self.workload_pid = root / "workload.pid"
        self.workload_log = root / "workload.log"


def build(on_progress: ProgressCallback = no_progress) -> Config:
    """Build the sandbox (or bring an existing one back up) and return its loaded config."""
    paths = _Paths(sandbox_dir())
    step = _Steps(on_progress)
    _check_parent(paths.root)
    if os.path.lexists(paths.root):
        _check_sandbox(paths)
        if paths.config.exists() and (paths.data / "PG_VERSION").exists():
            step("starting the existing demo cluster")
            cfg = load_config(paths.config)
            _start(paths, _pg_bin())
            _start_workload(paths)
            return cfg
        shutil.rmtree(paths.root)  # half-built by an interrupted run: start over
    pg_bin = _pg_bin()
    exe = _pgdr_for_server()
    step(f"creating the sandbox in {paths.root}")
    _create_sandbox(paths, pg_bin)

    step("initdb: a throwaway PostgreSQL cluster with 1 MB WAL segments")
    _run(
        _as_server(
            [
                str(pg_bin / "initdb"),
                "-D",
                str(paths.data),
                "-A",
                "trust",
                "-U",
                "postgres",
                "--wal-segsize=1",
                "--no-sync",
                "-E",
                "UTF8",
                "--locale=C",
            ]
        ),
        "initdb",
    )
    archive = f"{exe} --config {paths.config} wal-push %p"
    settings = {
        "port": str(PORT),
        "listen_addresses": "''",
        "unix_socket_directories": f"'{paths.sock}'",
        "wal_level": "replica",
        "archive_mode": "on",
        "archive_command": "'" + archive.replace("'", "''") + "'",
        "archive_timeout": "30",
        "max_wal_senders": "4",
        "shared_buffers": "32MB",
        "fsync": "off",
    }
    conf = "".join(f"{k} = {v}\n" for k, v in settings.items())
    _write_new(paths.data / "postgresql.auto.conf", conf, mode=0o600, give=True)
    step("starting the server (archiving through pgdr wal-push)")
    _start(paths, pg_bin)
    cfg = load_config(paths.config)

    step("loading a small schema")
    _sql(
        cfg,
        "CREATE TABLE orders (id bigserial PRIMARY KEY, at timestamptz DEFAULT now(), amount numeric)",
        "INSERT INTO orders (amount) SELECT random() * 100 FROM generate_series(1, 20000)",
    )
    _backup(cfg, step, 1)
    _sql(
        cfg,
        "INSERT INTO orders (amount) SELECT random() * 100 FROM generate_series(1, 20000)",
        "SELECT pg_switch_wal()",
    )
    time.sleep(1.0)
    step("a named restore point, then a dropped table")
    _sql(
        cfg,
        "CREATE TABLE customers AS SELECT g AS id, 'customer ' || g AS name FROM generate_series(1, 5000) g",
        "SELECT pg_switch_wal()",
    )
    time.sleep(1.0)
    _sql(cfg, "SELECT pg_create_restore_point('before_migration')")
    time.sleep(1.0)
    _sql(cfg, "INSERT INTO orders (amount) SELECT random() * 100 FROM generate_series(1, 5000)")
    _sql(cfg, "DROP TABLE customers", "SELECT pg_switch_wal()")
    time.sleep(1.0)
    _backup(cfg, step, 2)
    _sql(
        cfg,
        "INSERT INTO orders (amount) SELECT random() * 100 FROM generate_series(1, 20000)",
        "SELECT pg_switch_wal()",
    )
    _backup(cfg, step, 3)
    step("starting the workload (inserts, and a WAL switch every few seconds)")
    _start_workload(paths)
    return cfg


def _create_sandbox(paths: _Paths, pg_bin: Path) -> None:
    """The sandbox's folders, marker and config: the folder is this user's and nobody else can write in
    it; the server user gets its data, socket and repository folders and can only read the rest."""
    paths.root.parent.mkdir(parents=True, exist_ok=True, mode=0o755)  # the server user goes through it
    try:
        paths.root.mkdir(mode=0o755)
    except FileExistsError:
        raise PgdrError(f"{paths.root} was created by someone else meanwhile: remove it and run the demo") from None
    paths.root.chmod(0o755)
    _write_new(paths.marker, MARKER_TEXT, mode=0o644)
    for folder in (paths.sock, paths.repo, paths.data):
        _server_folder(folder)
    _write_new(
        paths.config,
        f'# pgdr demo sandbox: remove with `pgdr demo --clean`\n[cluster]\nname = "{CLUSTER}"\n\n'
        f'[postgres]\nhost = "{paths.sock}"\nport = {PORT}\nuser = "postgres"\ndbname = "postgres"\n'
        f'data_dir = "{paths.data}"\nbin_dir = "{pg_bin}"\n\n[local]\npath = "{paths.repo}"\n',
        mode=0o644,  # no secret in it; the server user reads it (archive_command) but cannot change it
    )


class _Steps:
    def __init__(self, on_progress: ProgressCallback) -> None:
        self.on_progress = on_progress

    def __call__(self, message: str) -> None:
        self.on_progress(Progress("demo", 0, None, message))


def _backup(cfg: Config, step: _Steps, n: int) -> None:
    from backend.jobs import backup_job

    step(f"base backup {n} of 3")

    def progress(p: Progress) -> None:
        # One line per backup, its bytes counted up: the streaming's, not each object's copy after it
        # (their counts would make the same line jump back and forth).
        if p.step == "backup" and p.total is not None:
            step.on_progress(Progress("backup", p.done, p.total, f"base backup {n}"))

    backup_job(cfg, on_progress=progress)


def _sql(cfg: Config, *statements: str) -> None:
    from backend.postgres import connect

    with connect(cfg) as conn:
        for statement in statements:
            conn.execute(statement)


def _start(paths: _Paths, pg_bin: Path) -> None:
    status = subprocess.run(
        _as_server([str(pg_bin / "pg_ctl"), "status", "-D", str(paths.data)]), capture_output=True, check=False
    )
    if status.returncode == 0:
        return
    if not os.path.lexists(paths.server_log):
        _write_new(paths.server_log, "", mode=0o600, give=True)
    _run(
        _as_server(
            [str(pg_bin / "pg_ctl"), "start", "-D", str(paths.data), "-l", str(paths.server_log), "-w", "-t", "60"]
        ),
        f"starting the demo server (see {paths.server_log})",
        env=_clean_env(),
    )


def _clean_env() -> dict[str, str]:
    """No PG*/AWS* settings of the operator's shell leak into the sandbox's server or workload."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("PG", "AWS_", "DB_"))}


def _workload_alive(paths: _Paths) -> int | None:
    """The pid of this sandbox's workload, if it runs (the pid file alone could name any process)."""
    try:
        with open(os.open(paths.workload_pid, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)) as fh:
            pid = int(fh.read().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError):
        return None
    return pid if cmdline[-3:-1] == [b"--workload", os.fsencode(paths.config)] else None


def _start_workload(paths: _Paths) -> None:
    if _workload_alive(paths):
        return
    log_fd = os.open(paths.workload_log, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    with open(log_fd, "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "backend.demo", "--workload", str(paths.config)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=_clean_env(),
            cwd="/",
        )
    _write_new(paths.workload_pid, str(proc.pid), mode=0o644)


def workload(config: Path) -> int:
    """Insert a row every second and switch WAL every few seconds until the sandbox goes away."""
    import psycopg

    cfg = load_config(config)
    last_switch = time.monotonic()
    failures = 0
    while config.exists():
        try:
            with psycopg.connect(
                host=cfg.postgres.host,
                port=cfg.postgres.port,
                user="postgres",
                dbname="postgres",
                autocommit=True,
                connect_timeout=3,
            ) as conn:
                failures = 0
                while config.exists():
                    conn.execute("INSERT INTO orders (amount) SELECT random() * 100 FROM generate_series(1, 50)")
                    if time.monotonic() - last_switch > WORKLOAD_SWITCH_SECONDS:
                        conn.execute("SELECT pg_switch_wal()")
                        last_switch = time.monotonic()
                    time.sleep(WORKLOAD_INSERT_SECONDS)
        except psycopg.Error:
            failures += 1
            if failures > 60:
                return 1  # the server is gone for good
            time.sleep(1.0)
    return 0


def clean() -> str:
    """Stop the workload and the server, remove the sandbox; says what it did."""
    paths = _Paths(sandbox_dir())
    if not os.path.lexists(paths.root):
        return f"no demo sandbox at {paths.root}: nothing to remove"
    _check_sandbox(paths)
    pid = _workload_alive(paths)
    if pid is not None:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGTERM)
    server = _postmaster(paths)
    if server is not None:
        with contextlib.suppress(OSError):
            os.kill(server, signal.SIGQUIT)  # an immediate shutdown: the sandbox goes anyway
        for _ in range(600):
            if _postmaster(paths) is None:
                break
            time.sleep(0.1)
    if pid is not None:
        for _ in range(50):
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)  # reap it when this process started it (a test, a long session)
            if _workload_alive(paths) is None:
                break
            time.sleep(0.1)
        else:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
    _stop_helpers(paths)
    shutil.rmtree(paths.root, ignore_errors=True)
    return f"removed the demo sandbox {paths.root} (server and workload stopped)"


def _stop_helpers(paths: _Paths) -> None:
    """Stop the pgdr helpers the server's archiving started for this sandbox (the push server, the
    background uploads of the WAL index...): one still running would write into the repository again
    after it is removed (the folder came back). They are found by their command line, which names this
    sandbox's config and a ``wal-`` command."""
    config = str(paths.config).encode()
    helpers = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        # An archiving helper (wal-push, wal-pushd, wal-upload, the prefetcher...), not a console or a
        # command someone runs on the sandbox's config.
        if config in argv and any(arg.startswith(b"wal-") or b"prefetch" in arg for arg in argv):
            helpers.append(int(entry.name))
    for helper in helpers:
        with contextlib.suppress(OSError):
            os.kill(helper, signal.SIGTERM)
    deadline = time.monotonic() + 5
    while helpers and time.monotonic() < deadline:
        helpers = [h for h in helpers if Path(f"/proc/{h}").exists() and not _zombie(h)]
        time.sleep(0.05)
    for helper in helpers:
        with contextlib.suppress(OSError):
            os.kill(helper, signal.SIGKILL)


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except (OSError, IndexError):
        return True


def _postmaster(paths: _Paths) -> int | None:
    """The postmaster serving the sandbox's data directory, if one runs.

    postmaster.pid is the server user's to write, so the pid it names is believed only when that
    process belongs to the data directory's owner and runs in it (a postmaster's working directory
    is its data directory): never a signal to some other cluster's server.
    """
    try:
        with open(os.open(paths.data / "postmaster.pid", os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)) as fh:
            pid = int(fh.readline().strip())
        data = os.lstat(paths.data)
        runs_in = os.readlink(f"/proc/{pid}/cwd")
        owner = os.stat(f"/proc/{pid}").st_uid
    except (OSError, ValueError):
        return None
    if pid <= 0 or runs_in != os.path.realpath(paths.data) or owner != data.st_uid:
        return None
    return pid


def _check_parent(root: Path) -> None:
    """The folder above the sandbox must not let another user swap the sandbox: theirs or root's, and
    writable by others only when sticky (as /var/tmp is: nobody removes or renames another's entry)."""
    parent = root.parent.resolve()
    try:
        st = parent.stat()
    except FileNotFoundError:
        return  # created below, by this user
    if st.st_uid not in (0, os.geteuid()) or (st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX):
        raise PgdrError(
            f"{parent}, where the demo sandbox goes, can be changed by other users: "
            "set PGDR_DEMO_DIR to a folder in a place only you (and root) can write"
        )


def _check_sandbox(paths: _Paths) -> None:
    """Refuse a sandbox this demo did not make: whatever another user prepared there is never used."""
    st = os.lstat(paths.root)
    problem = ""
    if stat.S_ISLNK(st.st_mode):
        problem = "is a symbolic link"
    elif not stat.S_ISDIR(st.st_mode):
        problem = "is not a folder"
    elif st.st_uid != os.geteuid():
        problem = f"belongs to {_user_name(st.st_uid)}"
    elif st.st_mode & 0o022:
        problem = f"can be written by others (mode {stat.S_IMODE(st.st_mode):04o})"
    elif not _mine(paths.marker, MARKER_TEXT.encode()):
        problem = f"has no {MARKER} marker of this user's"
    elif os.path.lexists(paths.config) and not _mine(paths.config):
        problem = f"holds a {paths.config.name} that is not this user's own file"
    if problem:
        raise PgdrError(
            f"{paths.root} {problem}, so it is not a demo sandbox pgdr made: check it and remove it "
            f"yourself (rm -rf {paths.root}), or set PGDR_DEMO_DIR to another folder"
        )


def _mine(path: Path, content: bytes | None = None) -> bool:
    """A plain file of this user's that nobody else can write (holding ``content``, when given)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return False
    with open(fd, "rb") as fh:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
            return False
        return content is None or fh.read(len(content) + 1) == content


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--workload":
        sys.exit(workload(Path(sys.argv[2])))
    print("usage: python -m backend.demo --workload CONFIG (started by `pgdr demo`)", file=sys.stderr)
    sys.exit(2)
