"""Rootful podman for the README's Quick Start (tests/test_quickstart.py).

``deploy/install.sh --dev`` installs the engine from Debian (podman, runc, netavark, aardvark-dns,
catatonit, mmdebstrap) and podman-compose from PyPI. What the engine needs on these machines is
set per command, never in the host's own configuration (``engine_env``):

- the containers' ulimits: podman's defaults exceed root's hard limits here (no CAP_SYS_RESOURCE),
  so every container failed to start (``setrlimit RLIMIT_NOFILE: Operation not permitted``);
- runc: crun refuses a machine whose cgroups are in hybrid mode;
- ``BUILDAH_FORMAT=docker``: podman builds OCI images by default, which have no HEALTHCHECK.

No image registry is reachable, so the two images deploy/docker's Dockerfiles start FROM are
stand-ins built here from Debian's packages: ``debian:bookworm-slim`` (mmdebstrap's minbase with the
slim image's dpkg filters) and ``postgres:15-bookworm`` (Debian's postgresql-15 in the official
image's shape: user 999:999, PGDATA, an entrypoint that initialises the cluster from POSTGRES_* and
runs /docker-entrypoint-initdb.d). An image already present under either name (a real one pulled by
a developer, or a stand-in of this same recipe) is used as it is.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import pty
import re
import resource
import select
import shutil
import signal
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

DEBIAN_SLIM = "docker.io/library/debian:bookworm-slim"
POSTGRES = "docker.io/library/postgres:15-bookworm"
#: Label of the stand-ins: the digest of the recipe that built them, so a changed recipe rebuilds.
STANDIN_LABEL = "io.pgdr.test.standin"
#: Held while images are built and the compose project runs: the compose files name their images
#: (pgdr:15, pgdr-postgres:15), so two runs on one machine (two checkouts) would retag each other's.
LOCK = Path("/var/tmp/pgdr-quickstart.lock")

# The slim variant's dpkg filters (debuerreotype's): no documentation, manual pages or translations.
SLIM_DPKG = """\
path-exclude /usr/share/doc/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/lintian/overrides/*
path-exclude /usr/share/locale/*
path-exclude /usr/share/man/*
path-include /usr/share/doc/*/copyright
path-include /usr/share/locale/all_languages
path-include /usr/share/locale/currency/*
path-include /usr/share/locale/l10n/*
path-include /usr/share/locale/languages
path-include /usr/share/locale/locale.alias
"""

POSTGRES_DOCKERFILE = """\
# A stand-in for docker.io/library/postgres:15-bookworm (tests/harness/containers.py): the official
# image's shape where pgdr depends on it, with Debian's postgresql-15.
FROM docker.io/library/debian:bookworm-slim
RUN set -eux; \\
    groupadd -r postgres --gid=999; \\
    useradd -r -g postgres --uid=999 --home-dir=/var/lib/postgresql --shell=/bin/bash postgres; \\
    mkdir -p /var/lib/postgresql /etc/postgresql-common/createcluster.d; \\
    chown -R postgres:postgres /var/lib/postgresql; \\
    echo 'create_main_cluster = false' > /etc/postgresql-common/createcluster.d/no-main-cluster.conf; \\
    apt-get update; \\
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends gosu locales postgresql-15; \\
    rm -rf /var/lib/apt/lists/*; \\
    localedef -i en_US -c -f UTF-8 -A /usr/share/locale/locale.alias en_US.UTF-8; \\
    sed -ri "s!^#?(listen_addresses)\\s*=\\s*\\S+.*!\\1 = '*'!" /usr/share/postgresql/15/postgresql.conf.sample; \\
    grep -F "listen_addresses = '*'" /usr/share/postgresql/15/postgresql.conf.sample; \\
    mkdir -p /var/run/postgresql /docker-entrypoint-initdb.d; \\
    chown -R postgres:postgres /var/run/postgresql; chmod 3777 /var/run/postgresql
ENV LANG=en_US.utf8 PG_MAJOR=15
ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:/usr/lib/postgresql/15/bin
ENV PGDATA=/var/lib/postgresql/data
RUN mkdir -p "$PGDATA" && chown -R postgres:postgres "$PGDATA" && chmod 1777 "$PGDATA"
VOLUME /var/lib/postgresql/data
COPY docker-entrypoint.sh /usr/local/bin/
ENTRYPOINT ["docker-entrypoint.sh"]
STOPSIGNAL SIGINT
EXPOSE 5432
CMD ["postgres"]
"""

# Written for these tests (not the official script): as root, hand PGDATA and the socket directory to
# postgres and re-run as postgres; on an empty PGDATA, initdb from POSTGRES_USER/PASSWORD/DB, allow
# `host all all all <method>`, run /docker-entrypoint-initdb.d/* once on a socket-only server; then exec.
POSTGRES_ENTRYPOINT = """\
#!/usr/bin/env bash
set -Eeuo pipefail
if [ "${1:0:1}" = '-' ]; then set -- postgres "$@"; fi
if [ "$1" = postgres ] && [ "$(id -u)" = 0 ]; then
  mkdir -p "$PGDATA"; chmod 00700 "$PGDATA" || :
  find "$PGDATA" \\! -user postgres -exec chown postgres: '{}' +
  mkdir -p /var/run/postgresql; chmod 03775 /var/run/postgresql; chown postgres: /var/run/postgresql
  exec gosu postgres "$BASH_SOURCE" "$@"
fi
if [ "$1" = postgres ] && [ ! -s "$PGDATA/PG_VERSION" ]; then
  : "${POSTGRES_USER:=postgres}" "${POSTGRES_DB:=$POSTGRES_USER}" "${POSTGRES_HOST_AUTH_METHOD:=scram-sha-256}"
  export POSTGRES_USER POSTGRES_DB POSTGRES_HOST_AUTH_METHOD
  if [ -z "${POSTGRES_PASSWORD:-}" ] && [ "$POSTGRES_HOST_AUTH_METHOD" != trust ]; then
    echo 'error: database is uninitialized and POSTGRES_PASSWORD is not set' >&2; exit 1
  fi
  mkdir -p "$PGDATA"; chmod 00700 "$PGDATA"
  initdb --username="$POSTGRES_USER" --pwfile=<(printf '%s\\n' "${POSTGRES_PASSWORD:-}") ${POSTGRES_INITDB_ARGS:-}
  printf '\\nhost all all all %s\\n' "$POSTGRES_HOST_AUTH_METHOD" >> "$PGDATA/pg_hba.conf"
  PGUSER="$POSTGRES_USER" pg_ctl -D "$PGDATA" -o "-c listen_addresses='' -p ${PGPORT:-5432}" -w start
  psql_=(psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --no-password --no-psqlrc)
  if [ "$POSTGRES_DB" != postgres ]; then
    PGHOST= PGHOSTADDR= "${psql_[@]}" --dbname postgres --set db="$POSTGRES_DB" <<<'CREATE DATABASE :"db";'
  fi
  for f in /docker-entrypoint-initdb.d/*; do
    case "$f" in
      *.sh) if [ -x "$f" ]; then echo "running $f"; "$f"; else echo "sourcing $f"; . "$f"; fi ;;
      *.sql) echo "running $f"; PGHOST= PGHOSTADDR= "${psql_[@]}" --dbname "$POSTGRES_DB" -f "$f" ;;
      *) [ -e "$f" ] && echo "ignoring $f" ;;
    esac
  done
  PGUSER="$POSTGRES_USER" pg_ctl -D "$PGDATA" -m fast -w stop
  echo 'PostgreSQL init process complete; ready for start up.'
fi
exec "$@"
"""


def recipe_digest(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


DEBIAN_DIGEST = recipe_digest(SLIM_DPKG, "minbase bookworm v1")
POSTGRES_DIGEST = recipe_digest(DEBIAN_DIGEST, POSTGRES_DOCKERFILE, POSTGRES_ENTRYPOINT)


def missing_engine() -> str | None:
    """Why rootful podman cannot run here, or None when it can."""
    if os.geteuid() != 0:
        return "the Quick Start test runs rootful podman: run it as root (CI does)"
    for program in ("podman", "runc", "mmdebstrap"):
        if shutil.which(program) is None:
            return f"{program} is not installed: bash deploy/install.sh --dev (as root) installs it"
    return None


def engine_env(work: Path) -> dict[str, str]:
    """The environment for podman and podman-compose: this machine's ulimits, runc, Docker-format images.

    Nothing of the caller's PG*/AWS*/DB_*/TELEGRAM_*/BACKUP_S3* settings: podman-compose lets the
    environment override .env, as Docker Compose does.
    """
    (work / "tmp").mkdir(parents=True, exist_ok=True)
    ulimits = []
    for name, limit, cap in (("nofile", resource.RLIMIT_NOFILE, 1 << 20), ("nproc", resource.RLIMIT_NPROC, 32768)):
        hard = resource.getrlimit(limit)[1]
        value = cap if hard == resource.RLIM_INFINITY else min(hard, cap)
        ulimits.append(f'"{name}={value}:{value}"')
    conf = work / "containers.conf"
    conf.write_text(f'[containers]\ndefault_ulimits = [{", ".join(ulimits)}]\n[engine]\nruntime = "runc"\n')
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PG", "AWS_", "TELEGRAM_", "BACKUP_S3", "DB_", "COMPOSE_", "PODMAN_", "DOCKER_"))
    }
    env.update(CONTAINERS_CONF=str(conf), TMPDIR=str(work / "tmp"), BUILDAH_FORMAT="docker")
    return env


def run(
    argv: Sequence[str | Path],
    env: dict[str, str],
    *,
    check: bool = True,
    timeout: float = 600,
    input: str | None = None,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [str(a) for a in argv],
        env=env,
        cwd=cwd,
        input=input,
        stdin=subprocess.DEVNULL if input is None else None,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if check and result.returncode != 0:
        said = f"{result.stdout[-6000:]}\n{result.stderr[-6000:]}"
        raise AssertionError(f"`{' '.join(map(str, argv))}` exited {result.returncode}:\n{said}")
    return result


def image_label(image: str, env: dict[str, str]) -> str | None:
    """The stand-in label of ``image`` ("" for an image without one), or None when there is no such image."""
    if run(["podman", "image", "exists", image], env, check=False).returncode != 0:
        return None
    fmt = '{{ index .Labels "' + STANDIN_LABEL + '" }}'
    out = run(["podman", "image", "inspect", "--format", fmt, image], env).stdout.strip()
    return "" if out in ("", "<no value>") else out


def needs_build(image: str, digest: str, env: dict[str, str]) -> bool:
    label = image_label(image, env)
    return label is None or label not in ("", digest)


@contextmanager
def machine_lock() -> Iterator[None]:
    """One Quick Start at a time on this machine (see ``LOCK``)."""
    with LOCK.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def build_debian_slim(work: Path, env: dict[str, str]) -> None:
    """``debian:bookworm-slim`` from Debian's mirror (mmdebstrap minbase), as debuerreotype finishes it."""
    root = work / "rootfs-bookworm-slim"
    shutil.rmtree(root, ignore_errors=True)
    (work / "slim.dpkg").write_text(SLIM_DPKG)
    # mmdebstrap runs apt on the host with its configuration inside <root>: the tree is finished only
    # after mmdebstrap is done with it (removing <root>/tmp in a hook would make its clean-up empty
    # the host's apt lists).
    run(
        [
            "mmdebstrap",
            "--quiet",
            "--mode=root",
            "--variant=minbase",
            "--format=directory",
            f"--dpkgopt={work / 'slim.dpkg'}",
            '--aptopt=Acquire::Languages "none"',
            '--aptopt=Apt::AutoRemove::SuggestsImportant "false"',
            "bookworm",
            root,
        ],
        env,
        timeout=900,
    )
    dpkg = root / "etc/dpkg/dpkg.cfg.d"
    (dpkg / "99mmdebstrap").rename(dpkg / "docker")
    (dpkg / "docker-apt-speedup").write_text("force-unsafe-io\n")
    policy = root / "usr/sbin/policy-rc.d"
    policy.write_text("#!/bin/sh\nexit 101\n")
    policy.chmod(0o755)
    clean = '"rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true";'
    (root / "etc/apt/apt.conf.d/docker-clean").write_text(
        f"DPkg::Post-Invoke {{ {clean} }};\nAPT::Update::Post-Invoke {{ {clean} }};\n"
        'Dir::Cache::pkgcache "";\nDir::Cache::srcpkgcache "";\n'
    )
    # This machine's extra certificate authorities (HTTPS may pass through an intercepting proxy): the
    # images' ca-certificates picks them up, and pip is told to use the system's bundle.
    extra = sorted(Path("/usr/local/share/ca-certificates").glob("*.crt"))
    if extra:
        target = root / "usr/local/share/ca-certificates"
        target.mkdir(parents=True, exist_ok=True)
        for cert in extra:
            shutil.copy(cert, target / cert.name)
        (root / "etc/pip.conf").write_text("[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n")
    (root / "etc/resolv.conf").unlink(missing_ok=True)
    (root / "etc/hostname").write_text("")
    tarball = work / "rootfs-bookworm-slim.tar"
    run(["tar", "--numeric-owner", "--xattrs", "-C", root, "-cf", tarball, "."], env)
    shutil.rmtree(root, ignore_errors=True)
    run(
        [
            "podman",
            "import",
            "--change",
            'CMD ["bash"]',
            "--change",
            "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "--change",
            f"LABEL {STANDIN_LABEL}={DEBIAN_DIGEST}",
            tarball,
            DEBIAN_SLIM,
        ],
        env,
    )
    tarball.unlink()


def build_postgres(work: Path, env: dict[str, str]) -> None:
    context = work / "postgres-standin"
    context.mkdir(parents=True, exist_ok=True)
    (context / "Dockerfile").write_text(POSTGRES_DOCKERFILE)
    entrypoint = context / "docker-entrypoint.sh"
    entrypoint.write_text(POSTGRES_ENTRYPOINT)
    entrypoint.chmod(0o755)
    run(
        [
            "podman",
            "build",
            "--quiet",
            "--label",
            f"{STANDIN_LABEL}={POSTGRES_DIGEST}",
            "-t",
            POSTGRES,
            "-t",
            "docker.io/library/postgres:15",
            context,
        ],
        env,
        timeout=900,
    )


def ensure_debian_slim(work: Path, env: dict[str, str]) -> float | None:
    """Build the stand-in ``debian:bookworm-slim`` unless it is there; the seconds it took, or None."""
    if not needs_build(DEBIAN_SLIM, DEBIAN_DIGEST, env):
        return None
    start = time.monotonic()
    build_debian_slim(work, env)
    return time.monotonic() - start


def ensure_postgres(work: Path, env: dict[str, str]) -> float | None:
    """Build the stand-in ``postgres:15-bookworm`` unless it is there (on the current debian:bookworm-slim)."""
    if not needs_build(POSTGRES, POSTGRES_DIGEST, env) and not base_is_newer(env):
        return None
    start = time.monotonic()
    build_postgres(work, env)
    return time.monotonic() - start


def base_is_newer(env: dict[str, str]) -> bool:
    """A stand-in postgres built on an older debian:bookworm-slim than the one there now."""
    if image_label(POSTGRES, env) in (None, ""):
        return False
    argv = ["podman", "image", "inspect", "--format", "{{.Created.Unix}}"]
    base, image = (int(run([*argv, name], env).stdout) for name in (DEBIAN_SLIM, POSTGRES))
    return base > image


# --- the compose project and a terminal ------------------------------------------------------------

#: The escape sequences a terminal program writes (CSI, OSC, character sets, keypad modes).
ESCAPES = re.compile(r"\x1b\[[0-9;?<>=]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[()][0-9A-Za-z]|\x1b[=>78]")


class Compose:
    """podman-compose on one project: the README's ``docker compose -f docker-compose.yml -f
    docker-compose.backup.yml``, with podman's ``--profile tools`` and a project name of its own, so
    parallel runs never share containers, volumes or networks."""

    def __init__(self, folder: Path, project: str, env: dict[str, str]) -> None:
        self.folder, self.project, self.env = folder, project, env
        program = Path(sys.executable).parent / "podman-compose"
        self.argv = [str(program), "--profile", "tools", "-p", project]
        self.argv += ["-f", "docker-compose.yml", "-f", "docker-compose.backup.yml"]

    def __call__(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 300
    ) -> subprocess.CompletedProcess[str]:
        return run([*self.argv, *args], self.env, input=input, check=check, timeout=timeout, cwd=self.folder)

    def popen(self, *args: str, log: Path) -> subprocess.Popen[bytes]:
        with log.open("wb") as out:
            return subprocess.Popen(
                [*self.argv, *args], env=self.env, cwd=self.folder, stdin=subprocess.DEVNULL, stdout=out, stderr=out
            )

    def container(self, service: str) -> str:
        return f"{self.project}_{service}_1"

    def psql(self, sql: str) -> str:
        """``exec -T postgres psql``: the README's way into the database; psql's unaligned output."""
        argv = ["exec", "-T", "postgres", "psql", "-U", "memecoin", "-d", "memecoin_lending"]
        return self(*argv, "-v", "ON_ERROR_STOP=1", "-Atc", sql).stdout.strip()

    def leftovers(self) -> dict[str, list[str]]:
        """The project's containers, volumes and networks still on the engine."""
        label = f"label=io.podman.compose.project={self.project}"
        found = {}
        for kind, argv in (
            ("containers", ["podman", "ps", "-a", "--filter", label, "--format", "{{.Names}}"]),
            ("volumes", ["podman", "volume", "ls", "--filter", label, "--format", "{{.Name}}"]),
            ("networks", ["podman", "network", "ls", "--filter", label, "--format", "{{.Name}}"]),
        ):
            found[kind] = run(argv, self.env, check=False).stdout.split()
        return found

    def remove(self) -> None:
        """Whatever a failed run left: ``down -v``, then anything with the project's label."""
        self("down", "-v", check=False)
        left = self.leftovers()
        for kind, argv in (
            ("containers", ["podman", "rm", "-f"]),
            ("volumes", ["podman", "volume", "rm", "-f"]),
            ("networks", ["podman", "network", "rm", "-f"]),
        ):
            if left[kind]:
                run([*argv, *left[kind]], self.env, check=False)


def in_a_terminal(
    argv: Sequence[str],
    env: dict[str, str],
    *,
    until: re.Pattern[str],
    keys: bytes,
    cwd: Path,
    timeout: float = 120,
) -> tuple[int | None, str]:
    """Run ``argv`` on a 120x40 pseudo-terminal; once its screen's text matches ``until``, type ``keys``.

    Returns the exit status (None when ``until`` never matched: the program is then killed) and the
    text it drew, escape sequences removed.
    """
    pid, fd = pty.fork()
    if pid == 0:  # the child: its terminal has a size before the program starts
        try:
            fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
            os.chdir(cwd)
            os.execvpe(argv[0], list(argv), {**env, "TERM": "xterm-256color"})
        finally:
            os._exit(127)
    raw = b""
    matched = False
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 0.5)
            if ready:
                try:
                    chunk = os.read(fd, 1 << 16)
                except OSError:  # EIO: the program closed the terminal
                    break
                if not chunk:
                    break
                raw += chunk
            if not matched and until.search(ESCAPES.sub("", raw.decode(errors="replace"))):
                matched = True
                os.write(fd, keys)
                deadline = time.monotonic() + 30  # time to leave
    finally:
        if not matched or time.monotonic() >= deadline:
            os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        os.close(fd)
    return (os.waitstatus_to_exitcode(status) if matched else None), ESCAPES.sub("", raw.decode(errors="replace"))
