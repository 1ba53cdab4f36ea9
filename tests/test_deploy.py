"""The deployment: the Docker images, the compose services, the systemd unit and ``pitr-restore.sh``.

Here the compose files and Dockerfiles are parsed, and every command they would run is run for real
against a real cluster (``tests/test_quickstart.py`` builds and runs the images themselves under
podman): the same words, with the program's path and ``--config`` (``PGDR_CONFIG`` in the containers)
pointed at the test cluster instead of the image's /etc/pgdr/pgdr.toml. The images install pgdr with
deploy/install.sh, the script CI (.ci/run) built this test run's venv with; the test checks the
Dockerfiles call it.
"""

from __future__ import annotations

import json
import os
import queue
import re
import shlex
import shutil
import signal
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest

from backend.config import ENVIRONMENT
from pgdr_tui.cli import build_parser
from tests.harness.cluster import (
    PG_BIN,
    REPO_ROOT,
    Cluster,
    as_server_user,
    clean_env,
    give_to_server_user,
    pgdr_executable,
)

yaml = pytest.importorskip("yaml", reason="PyYAML (installed with moto[server]) parses the compose files")

DEPLOY = REPO_ROOT / "deploy"
DOCKER = DEPLOY / "docker"
SYSTEMD = DEPLOY / "systemd"
SCRIPTS = (DEPLOY / "pitr-restore.sh", REPO_ROOT / "infrastructure" / "backup" / "pitr-restore.sh")

#: What the Memecoin deployment's README names: its .env variables, services, volume and mount point.
MEMECOIN_ENV = (
    "DB_PASSWORD",
    "BACKUP_S3_BUCKET",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_REGION",
    "TELEGRAM_BOT_TOKEN",
    "TELEGRAM_CHAT_ID",
)
MEMECOIN_SERVICES = ("postgres-backup", "postgres-backup-now", "postgres-restore")
MEMECOIN_VOLUME = "postgres_backups"
MEMECOIN_MOUNT = "/backups"
IMAGE_CONFIG = "/etc/pgdr/pgdr.toml"


# --- reading the files -----------------------------------------------------------------------------


def compose(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((DOCKER / name).read_text())
    return loaded


def dockerfile(name: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in (DOCKER / name).read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        pending += " " + line.removesuffix("\\").strip() if pending else line.removesuffix("\\").strip()
        if line.endswith("\\"):
            continue
        word, _, rest = pending.partition(" ")
        out.append((word.upper(), rest.strip()))
        pending = ""
    return out


def instructions(name: str, word: str) -> list[str]:
    return [rest for instruction, rest in dockerfile(name) if instruction == word]


def exec_form(rest: str) -> list[str]:
    """The JSON array of CMD/ENTRYPOINT/HEALTHCHECK CMD: shell forms are not accepted here."""
    argv = json.loads(rest[rest.index("[") :])
    assert isinstance(argv, list) and all(isinstance(a, str) for a in argv), rest
    return argv


def unit(path: Path) -> dict[str, list[str]]:
    """A systemd unit as key -> values (keys may repeat), section names dropped."""
    keys: dict[str, list[str]] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        keys.setdefault(key.strip(), []).append(value.strip())
    return keys


def refers_to(value: object, var: str) -> bool:
    """``${VAR}``, ``${VAR:-default}`` or ``${VAR:?message}``: the value comes from .env's VAR."""
    return isinstance(value, str) and re.fullmatch(rf"\$\{{{var}(:?[-?][^}}]*)?\}}", value) is not None


# --- running the commands --------------------------------------------------------------------------


def run_env(cluster: Cluster, **extra: str) -> dict[str, str]:
    """The containers' environment, pointed at the test cluster: PGDR_CONFIG, and pgdr on PATH."""
    path = f"{pgdr_executable().parent}:{PG_BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}"
    return clean_env(PGDR_CONFIG=str(cluster.config_path), PATH=path, **extra)


def localize(argv: list[str], cluster: Cluster, program: Path | None = None) -> list[str]:
    """The same command line, run here: pgdr by this test run's path, --config the cluster's."""
    out = list(argv)
    if Path(out[0]).name == "pgdr":
        out[0] = str(program or pgdr_executable())
    if "--config" in out:
        out[out.index("--config") + 1] = str(cluster.config_path)
    return out


def run(argv: list[str], env: dict[str, str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300, check=False, **kwargs)


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, (
        f"{shlex.join(result.args)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
    )
    return result.stdout


# --- the compose files -----------------------------------------------------------------------------


def test_compose_files_have_the_memecoin_services_volume_and_env() -> None:
    base, overlay = compose("docker-compose.yml"), compose("docker-compose.backup.yml")
    services = overlay["services"]
    assert set(MEMECOIN_SERVICES) | {"postgres"} <= set(services)
    assert MEMECOIN_VOLUME in overlay["volumes"] and MEMECOIN_VOLUME in base["volumes"]
    for name in (*MEMECOIN_SERVICES, "postgres"):
        assert f"{MEMECOIN_VOLUME}:{MEMECOIN_MOUNT}" in services[name]["volumes"], name
    assert f"{MEMECOIN_VOLUME}:{MEMECOIN_MOUNT}" in base["services"]["postgres"]["volumes"]

    # The Memecoin .env reaches every pgdr container (and the database's archive_command, which uploads
    # WAL to S3), each by its own name, and pgdr reads every one of them.
    for name in (*MEMECOIN_SERVICES, "postgres"):
        env = services[name]["environment"]
        for var in MEMECOIN_ENV:
            assert refers_to(env.get(var), var), f"{name}: {var} = {env.get(var)!r}"
            assert var in ENVIRONMENT, f"pgdr does not read {var}"
        assert env["PGDR_CONFIG"] == IMAGE_CONFIG and env["PGDR_STATE_DIR"].startswith(MEMECOIN_MOUNT + "/")
    example = (DOCKER / ".env.example").read_text()
    assert all(re.search(rf"^(# )?{var}=", example, re.MULTILINE) for var in MEMECOIN_ENV)

    # The images: the pgdr image for the three services, the database image with pgdr inside.
    for name in MEMECOIN_SERVICES:
        assert services[name]["build"]["dockerfile"] == "deploy/docker/Dockerfile", name
    assert services["postgres"]["build"]["dockerfile"] == "deploy/docker/Dockerfile.postgres"
    assert base["services"]["postgres"]["build"]["dockerfile"] == "deploy/docker/Dockerfile.postgres"
    assert "entrypoint" not in services["postgres-backup"] and "command" not in services["postgres-backup"]
    assert services["postgres-restore"]["entrypoint"] == ["pgdr", "restore", "--logical"]

    # wal-push's background uploads outlive it: with the postmaster as PID 1 they would become its
    # children, and it takes an unknown child's exit status 2 for a crashed backend (a restart).
    assert services["postgres"]["init"] is True and base["services"]["postgres"]["init"] is True
    assert all(services[name]["init"] is True for name in MEMECOIN_SERVICES)

    # The database archives through pgdr, at least every 5 minutes.
    settings = dict(
        arg.split("=", 1) for arg in base["services"]["postgres"]["command"] if "=" in arg and not arg.startswith("-")
    )
    assert settings["archive_mode"] == "on" and settings["archive_timeout"] == "300"
    assert settings["wal_level"] == "replica"
    assert shlex.split(settings["archive_command"])[1:] == ["--config", IMAGE_CONFIG, "wal-push", "%p"]


def test_container_config_takes_the_memecoin_env() -> None:
    values = {
        "DB_PASSWORD": "pw-from-env",
        "BACKUP_S3_BUCKET": "memecoin-bucket",
        "AWS_ACCESS_KEY_ID": "AKIAEXAMPLE",
        "AWS_SECRET_ACCESS_KEY": "secret-from-env",
        "AWS_REGION": "us-east-1",
        "TELEGRAM_BOT_TOKEN": "123:token",
        "TELEGRAM_CHAT_ID": "42",
    }
    compose_env = compose("docker-compose.backup.yml")["services"]["postgres-backup"]["environment"]
    fixed = {k: str(v) for k, v in compose_env.items() if not str(v).startswith("${") and k != "PGDR_CONFIG"}
    env = clean_env(**values, **fixed)
    result = run([str(pgdr_executable()), "--config", str(DOCKER / "pgdr.toml"), "config", "--json"], env)
    cfg = json.loads(ok(result))
    assert cfg["s3"]["bucket"] == "memecoin-bucket" and cfg["s3"]["region"] == "us-east-1"
    assert cfg["postgres"]["password"] == cfg["s3"]["secret_access_key"] == "********"
    assert cfg["telegram"]["chat_id"] == "42" and cfg["postgres"]["host"] == "postgres"
    assert cfg["local"]["path"] == MEMECOIN_MOUNT
    assert "pw-from-env" not in result.stdout and "secret-from-env" not in result.stdout


# --- the Dockerfiles and the install script --------------------------------------------------------


INSTALL = "bash /src/deploy/install.sh --venv /opt/pgdr --link /usr/local/bin"


def test_dockerfiles_install_pgdr_with_the_script_ci_uses() -> None:
    # One script: CI's test run built this venv with it, and both images run it.
    assert "bash deploy/install.sh --dev" in (REPO_ROOT / ".ci" / "run").read_text()
    for name in ("Dockerfile", "Dockerfile.postgres"):
        runs = instructions(name, "RUN")
        assert any(INSTALL in r for r in runs), f"{name} does not run {INSTALL}"
        copied = [c.split()[:-1] for c in instructions(name, "COPY")]
        assert ["deploy/install.sh"] in copied, name
        # Everything copied exists, and the Dockerfile's own .dockerignore lets it into the context.
        allowed = [line[1:] for line in (DOCKER / f"{name}.dockerignore").read_text().splitlines() if line[:1] == "!"]
        for sources in copied:
            for source in sources:
                assert (REPO_ROOT / source).exists(), f"{name} copies {source}, which does not exist"
                assert source in allowed, f"{name}.dockerignore keeps {source} out of the build context"

    lines = dockerfile("Dockerfile")
    assert ("ARG", "PG_MAJOR=15") in lines and ("ARG", "DEBIAN_RELEASE=bookworm") in lines
    assert instructions("Dockerfile", "FROM") == ["debian:${DEBIAN_RELEASE}-slim"]
    assert instructions("Dockerfile.postgres", "FROM") == ["postgres:${PG_MAJOR}-bookworm"]
    (user,) = instructions("Dockerfile", "USER")
    assert user not in ("root", "0")
    (cmd,) = instructions("Dockerfile", "CMD")
    assert exec_form(cmd) == ["pgdr", "--daemon", "--log-format", "json"]
    (health,) = instructions("Dockerfile", "HEALTHCHECK")
    assert exec_form(health.split(" CMD ", 1)[1])[:2] == ["pgdr", "status"]
    # LANG names a locale only once the image has it (before, every perl in the build warns).
    made = next(i for i, (word, rest) in enumerate(lines) if word == "RUN" and "localedef -i en_US" in rest)
    lang = [i for i, (word, rest) in enumerate(lines) if word == "ENV" and re.search(r"\bLANG=", rest)]
    assert lang and all(i > made for i in lang), "Dockerfile sets LANG before it generates the locale"

    usage = ok(run(["bash", str(DEPLOY / "install.sh"), "--help"], clean_env()))
    assert all(flag in usage for flag in ("--venv", "--link", "--no-apt", "--print-plan", "--dev", "PG_MAJOR"))
    assert run(["bash", str(DEPLOY / "install.sh"), "--no-such-flag"], clean_env()).returncode == 2
    for script in (DEPLOY / "install.sh", DOCKER / "initdb-pgdr.sh", *SCRIPTS):
        ok(run(["bash", "-n", str(script)], clean_env()))
        assert os.access(script, os.X_OK) or script.name == "install.sh", f"{script} is not executable"


def install_plan(pg_major: str) -> dict[str, str]:
    """``install.sh --print-plan``: what it would install and which apt source it would add."""
    out = ok(run(["bash", str(DEPLOY / "install.sh"), "--print-plan"], clean_env(PG_MAJOR=pg_major)))
    return dict(line.split(": ", 1) for line in out.splitlines())


def test_install_script_adds_no_apt_source_for_the_postgresql_debian_carries() -> None:
    """Issue 16: ``apt-cache policy | grep -q`` under pipefail failed with SIGPIPE, so install.sh added
    apt.postgresql.org for PostgreSQL 15, which Debian 12 carries. The plan changes nothing on the machine."""
    if shutil.which("apt-cache") is None:
        pytest.skip("no apt-cache: not a Debian machine")
    sources = Path("/etc/apt/sources.list.d")
    before = sorted(p.name for p in sources.iterdir())
    for _ in range(10):  # the SIGPIPE failed most runs, not all
        plan = install_plan("15")
        assert plan["postgresql-15 from"] == "the configured apt sources", plan
        assert plan["add apt source"] == "none", plan
    assert plan["install"] == "nothing"  # PostgreSQL 15's programs are installed on this machine

    # A version the configured sources lack is the one case that adds apt.postgresql.org.
    plan = install_plan("99")
    assert plan == {
        "install": "postgresql-99",
        "postgresql-99 from": "apt.postgresql.org",
        "add apt source": "apt.postgresql.org",
    }
    after = sorted(p.name for p in sources.iterdir())
    assert after == before and not [name for name in after if "pgdg" in name]


# --- every command the services run, run against a real cluster ------------------------------------


def test_every_service_command_runs_against_a_real_cluster(cluster_s3: Cluster) -> None:
    base, overlay = compose("docker-compose.yml"), compose("docker-compose.backup.yml")
    services = overlay["services"]
    env = run_env(cluster_s3)
    cluster_s3.sql("CREATE TABLE loans (id int PRIMARY KEY)")
    cluster_s3.sql("INSERT INTO loans SELECT generate_series(1, 50)")

    # The database's archive_command, as PostgreSQL runs it (as the server user, in the data
    # directory, %p relative): a segment archived before is pushed again and acknowledged.
    segment = cluster_s3.switch_wal()
    cluster_s3.wait_archived(segment)
    settings = dict(arg.split("=", 1) for arg in base["services"]["postgres"]["command"] if "=" in arg)
    archive = [w.replace("%p", f"pg_wal/{segment}") for w in shlex.split(settings["archive_command"])]
    pushed = run(
        as_server_user(localize(archive, cluster_s3, program=cluster_s3.pgdr_for_server)),
        clean_env(),
        cwd=cluster_s3.data_dir,
    )
    ok(pushed)

    # postgres-backup-now: one base backup and one logical dump.
    now = services["postgres-backup-now"]
    ok(run([*now["entrypoint"], *now.get("command", [])], env))
    listing = json.loads(cluster_s3.pgdr("list", "--json").stdout)
    kinds = {b["kind"]: b["name"] for b in listing["backups"]}
    assert set(kinds) == {"physical", "logical"}, listing["backups"]
    dump_name = kinds["logical"]

    # postgres-restore with the original runbook's arguments.
    restore = services["postgres-restore"]["entrypoint"]
    cfg = json.loads(cluster_s3.pgdr("config", "--json").stdout)
    dump = cluster_s3.local_repo / "main" / "backups" / dump_name / "postgres.dump"  # /backups/main/... in Docker
    url = f"s3://{cfg['s3']['bucket']}/{cfg['s3']['prefix']}/main/backups/{dump_name}/postgres.dump"
    default = ok(run([*restore, *services["postgres-restore"]["command"]], env))
    assert dump_name in default and kinds["physical"] in default
    assert dump_name in ok(run([*restore, "--list"], env))
    assert dump_name in ok(run([*restore, "--list-s3"], env))
    for args in (["--latest", "--dry-run"], [str(dump), "--dry-run"], ["--from-s3", url, "--dry-run"]):
        out = ok(run([*restore, *args], env))
        assert "Dry run: nothing was changed" in out and "safety dump" in out, args
    cluster_s3.sql("DELETE FROM loans WHERE id > 10")
    out = ok(run([*restore, "--latest", "--yes"], env))
    assert f"restored {dump_name}" in out
    assert cluster_s3.sql("SELECT count(*) FROM loans")[0][0] == 50


class Process:
    """A long-running command whose stdout lines arrive on a queue."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)

    def wait_for(self, text: str, timeout: float = 30) -> dict[str, Any]:
        """The first JSON log line whose message contains ``text``."""
        while True:
            try:
                line = self.lines.get(timeout=timeout)
            except queue.Empty:
                raise AssertionError(f"no log line with {text!r} in {timeout} s:\n{''.join(self.seen)}") from None
            self.seen.append(line)
            try:
                event = json.loads(line)  # --log-format json: one object per event
            except ValueError:
                continue
            if text in event.get("message", ""):
                return dict(event)

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=60)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def test_daemon_of_the_image_and_the_systemd_unit_start_and_stop(cluster: Cluster, tmp_path: Path) -> None:
    (cmd,) = instructions("Dockerfile", "CMD")
    (health,) = instructions("Dockerfile", "HEALTHCHECK")
    healthcheck = exec_form(health.split(" CMD ", 1)[1])
    (exec_start,) = unit(SYSTEMD / "pgdr.service")["ExecStart"]
    cluster.wait_archived(cluster.switch_wal())  # so a minutely RPO check, should one run, finds fresh WAL
    for label, argv in (("image CMD", exec_form(cmd)), ("pgdr.service ExecStart", shlex.split(exec_start))):
        env = run_env(cluster, PGDR_STATE_DIR=str(tmp_path / label.replace(" ", "-")))
        daemon = Process(localize(argv, cluster), env)
        try:
            started = daemon.wait_for("daemon started")
            assert started["fields"]["pid"] == daemon.proc.pid, label
            assert ok(run(localize(healthcheck, cluster), env)).strip(), label  # healthy: exit 0
            assert daemon.stop() == 0, label
        finally:
            daemon.kill()
        assert run(localize(healthcheck, cluster), env).returncode == 1, f"{label}: a stopped daemon is healthy"


# --- pitr-restore.sh -------------------------------------------------------------------------------


def backup_line(name: str) -> str:
    """The original helper's line: ``  2024-01-15 12:00:00 - backup-20240115-120000.sql.gz (250MB)``."""
    return r"  \d{4}-\d\d-\d\d \d\d:\d\d:\d\d - " + re.escape(name) + r" \(\d+(\.\d)?[KMGT]?B\)"


def test_pitr_restore_script_lists_plans_and_restores(cluster: Cluster) -> None:
    backup = json.loads(cluster.pgdr("backup", "--json").stdout)["name"]
    cluster.sql("CREATE TABLE ledger (id int)")
    cluster.sql("INSERT INTO ledger SELECT generate_series(1, 100)")
    target = cluster.sql("SELECT clock_timestamp()")[0][0]
    cluster.sql("INSERT INTO ledger VALUES (-1)")  # the bad write after the target
    cluster.wait_archived(cluster.switch_wal())
    when = target.strftime("%Y-%m-%d %H:%M:%S.%f")  # the original helper's form, read in UTC
    env = clean_env(PGDR=str(pgdr_executable()), PGDR_CONFIG=str(cluster.config_path))

    # deploy/ with PGDR_CONFIG, and the original infrastructure/backup/ path with --config
    by_option = ["--config", str(cluster.config_path)]
    for script, options in ((SCRIPTS[0], []), (SCRIPTS[1], by_option)):
        out = ok(run([str(script), *options, "list"], clean_env(PGDR=str(pgdr_executable())) if options else env))
        assert re.search(
            "^Base Backups:\n" + backup_line(backup) + "\n\nWAL Archive Range:\n"
            r"  Oldest: [\d-]+ [\d:]+ UTC\n  Newest: [\d-]+ [\d:]+ UTC\n  Total WAL files: [1-9][\d,]*\n",
            out,
        ), out
        assert "Recovery Windows" in out and f"from backup {backup}" in out

    plan = ok(run([str(SCRIPTS[1]), "restore", "--timestamp", when, "--dry-run"], env))
    assert "Dry run: nothing was changed" in plan and backup in plan
    plan = ok(run([str(SCRIPTS[0]), "restore", "--timestamp", when, "--dry-run", "--backup", backup], env))
    assert f"base backup:     {backup}" in plan
    bad = run([str(SCRIPTS[0]), "restore", "--timestamp", when, "--dry-run", "--backup", "nope"], env)
    assert bad.returncode == 2 and "nope" in bad.stderr

    # As in the postgres image (PGDR_STOP_AFTER_RESTORE): run as the server user, then the new
    # timeline's history is archived and the restored server stopped for the service to start.
    script = cluster.root / "pitr-restore.sh"
    shutil.copy(SCRIPTS[0], script)
    script.chmod(0o755)
    state = cluster.root / "state"
    state.mkdir()
    give_to_server_user(state)
    image_env = {
        "PATH": f"{PG_BIN}:/usr/bin:/bin",
        "PGDR": str(cluster.pgdr_for_server),
        "PGDR_CONFIG": str(cluster.config_path),
        "PGDR_STATE_DIR": str(state),
        "PGDATA": str(cluster.data_dir),
        "PGDR_STOP_AFTER_RESTORE": "1",
    }
    argv = ["env", *(f"{k}={v}" for k, v in image_env.items()), str(script), "restore", "--timestamp", when, "--yes"]
    if os.geteuid() == 0:
        refused = run(argv, clean_env())
        assert refused.returncode == 2 and "postgres user" in refused.stderr
    restored = run(as_server_user(argv), {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
    out = ok(restored)
    assert "Restore finished" in out and "stopped the restored server" in out
    status = run(as_server_user([str(PG_BIN / "pg_ctl"), "status", "-D", str(cluster.data_dir)]), clean_env())
    assert status.returncode == 3, status.stdout
    cluster.start()
    assert cluster.sql("SELECT count(*), min(id) FROM ledger")[0] == (100, 1)
    history = json.loads(cluster.pgdr("list", "--json").stdout)["history_files"]
    assert "00000002.history" in history["local"]


# --- systemd ---------------------------------------------------------------------------------------


def test_systemd_unit_runs_the_daemon_as_postgres_hardened() -> None:
    """The static check (always): the keys the hardening needs, and an ExecStart pgdr accepts."""
    keys = unit(SYSTEMD / "pgdr.service")
    expected = {
        "User": "postgres",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "NoNewPrivileges": "yes",
        "PrivateDevices": "yes",
        "CapabilityBoundingSet": "",
        "RestrictSUIDSGID": "yes",
        "KillMode": "mixed",
        "WantedBy": "multi-user.target",
    }
    for key, value in expected.items():
        assert keys.get(key) == [value], f"{key}={keys.get(key)}"
    assert "RemoveIPC" not in keys  # it would remove the database server's shared memory
    writable = " ".join(keys["ReadWritePaths"]).split()
    assert "-/var/lib/pgdr" in writable and keys["StateDirectory"] == ["pgdr"]

    (exec_start,) = keys["ExecStart"]
    argv = shlex.split(exec_start)
    assert argv[0] == "/opt/pgdr/bin/pgdr"  # where install.sh --venv /opt/pgdr puts it
    args = build_parser().parse_args(argv[1:])
    assert args.daemon and args.config == IMAGE_CONFIG and args.log_format == "json"

    # The cluster's archive_command snippet calls the same pgdr with the same config.
    conf = dict(
        (k.strip(), v.split("#")[0].strip().strip("'"))
        for k, _, v in (line.partition("=") for line in (SYSTEMD / "postgresql-pgdr.conf").read_text().splitlines())
        if v and not k.startswith("#")
    )
    assert conf["archive_mode"] == "on" and conf["archive_timeout"] == "300" and conf["wal_level"] == "replica"
    assert shlex.split(conf["archive_command"]) == [argv[0], "--config", IMAGE_CONFIG, "wal-push", "%p"]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_unit_passes_systemd_analyze(tmp_path: Path) -> None:
    """verify (warnings count: it exits 0 on them) and an exposure score of at most 3.0, "OK".

    verify insists ExecStart's program exists, so the copy checked runs this test run's pgdr.
    """
    text = (SYSTEMD / "pgdr.service").read_text().replace("/opt/pgdr/bin/pgdr", str(pgdr_executable()))
    copy = tmp_path / "pgdr.service"
    copy.write_text(text)
    verify = run(["systemd-analyze", "verify", str(copy)], clean_env())
    assert verify.returncode == 0 and not verify.stderr.strip(), verify.stderr
    security = run(["systemd-analyze", "security", "--offline=yes", "--threshold=30", str(copy)], clean_env())
    assert security.returncode == 0, security.stdout[-2000:]
