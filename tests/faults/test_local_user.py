"""Another local user against root-run pgdr: nothing it prepares or swaps makes root act for it.

The attackers are real users acting while the real pgdr runs as root: ``pgdr-intruder`` (created for
the module when missing, removed after) plants a demo sandbox and owns a repository; ``postgres``,
who owns the cluster's repository and the demo's data directory, swaps what root writes there for
links. Each test checks a root-owned victim file and an unrelated running server afterwards.
"""

from __future__ import annotations

import os
import pwd
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from backend import demo
from backend.errors import RepositoryError
from backend.repository.local import LocalRepository
from tests.harness.cluster import PG_BIN, Cluster, as_server_user, clean_env, pgdr_executable, wait_for

INTRUDER = "pgdr-intruder"

pytestmark = [
    pytest.mark.xdist_group("pgdr-intruder"),  # one worker creates, uses and removes the user
    pytest.mark.skipif(os.geteuid() != 0, reason="pgdr must run as root for another user to attack it"),
]


@pytest.fixture(scope="module")
def intruder() -> Iterator[pwd.struct_passwd]:
    try:
        yield pwd.getpwnam(INTRUDER)
        return
    except KeyError:
        pass
    subprocess.run(
        ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", INTRUDER],
        check=True,
        capture_output=True,
    )
    try:
        yield pwd.getpwnam(INTRUDER)
    finally:
        subprocess.run(["userdel", INTRUDER], check=False, capture_output=True)


def as_user(user: pwd.struct_passwd, script: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run a shell ``script`` (``$1``... are ``args``) as ``user``, without root's groups."""
    return subprocess.run(
        ["/bin/sh", "-c", script, "sh", *args],
        user=user.pw_uid,
        group=user.pw_gid,
        extra_groups=[],
        capture_output=True,
        text=True,
        check=False,
        cwd="/",
    )


@pytest.fixture
def victim(shared_dir: Path) -> Iterator[Path]:
    """A file of root's that another user must never get written, truncated or handed over."""
    path = shared_dir / f"victim-{secrets.token_hex(4)}"
    path.write_text("root's own\n")
    path.chmod(0o644)
    yield path
    assert path.read_text() == "root's own\n", "root wrote through a link into its own file"
    assert path.stat().st_uid == 0, "root gave its own file away"
    path.unlink()


def pgdr_demo(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(pgdr_executable()), "demo", *args],
        env=clean_env(PGDR_DEMO_DIR=str(root)),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def postmaster_pid(cluster: Cluster) -> int:
    return int((cluster.data_dir / "postmaster.pid").read_text().split()[0])


def test_a_demo_sandbox_another_user_prepared_is_refused(
    intruder: pwd.struct_passwd, cluster: Cluster, shared_dir: Path, victim: Path
) -> None:
    public = shared_dir / f"public-{secrets.token_hex(4)}"  # like /var/tmp: anyone writes, sticky
    public.mkdir()
    public.chmod(0o1777)
    root = public / "pgdr-demo-0"
    planted = as_user(
        intruder,
        'set -e; mkdir -m 755 "$1" "$1/data" "$1/tools"; echo 15 > "$1/data/PG_VERSION"\n'
        'echo "$2" > "$1/data/postmaster.pid"; ln -s "$3" "$1/workload.pid"\n'
        "for p in initdb pg_ctl pg_controldata pg_basebackup pg_waldump; do\n"
        '  printf "#!/bin/sh\\ntouch %s/ran-%s\\n" "$1" "$p" > "$1/tools/$p"; chmod 755 "$1/tools/$p"; done\n'
        'printf "[cluster]\\nname = \\"demo\\"\\n[postgres]\\nhost = \\"%s\\"\\ndata_dir = \\"%s/data\\"\\n'
        'bin_dir = \\"%s/tools\\"\\n[local]\\npath = \\"%s/repo\\"\\n" "$4" "$1" "$1" "$1" > "$1/pgdr.toml"\n'
        'chmod -R a+rX "$1"',
        str(root),
        str(postmaster_pid(cluster)),  # an unrelated server, which --clean must not stop
        str(victim),
        str(cluster.socket_dir),
    )
    assert planted.returncode == 0, planted.stderr

    for args in (["--no-tui"], ["--clean"]):
        result = pgdr_demo(root, *args)
        assert result.returncode == 2, result.stdout + result.stderr
        assert result.stderr.strip().splitlines() == [
            f"pgdr: error: {root} belongs to {INTRUDER}, so it is not a demo sandbox pgdr made: check it and "
            f"remove it yourself (rm -rf {root}), or set PGDR_DEMO_DIR to another folder"
        ]
    assert not list(root.glob("ran-*")), "root ran a program the other user planted"
    assert (root / "pgdr.toml").exists(), "--clean removed a folder it did not make"
    assert cluster.sql("SELECT 1") == [(1,)], "--clean stopped an unrelated server"


def test_clean_leaves_a_folder_without_the_demo_marker(shared_dir: Path) -> None:
    """PGDR_DEMO_DIR set to a folder of root's by mistake: --clean removes nothing of it."""
    root = shared_dir / f"precious-{secrets.token_hex(4)}"
    (root / "data").mkdir(parents=True)
    (root / "data" / "PG_VERSION").write_text("15\n")
    result = pgdr_demo(root, "--clean")
    assert result.returncode == 2 and f"has no {demo.MARKER} marker" in result.stderr, result.stderr
    assert (root / "data" / "PG_VERSION").exists()


def test_clean_stops_only_the_sandboxs_own_server(cluster: Cluster, shared_dir: Path) -> None:
    root = shared_dir / f"demo-{secrets.token_hex(4)}"
    paths = demo._Paths(root)
    demo._create_sandbox(paths, PG_BIN)
    # The server user owns the data directory: it names another cluster's running postmaster as its own.
    claimed = subprocess.run(
        as_server_user(
            ["sh", "-c", 'echo "$1" > "$2/postmaster.pid"', "sh", str(postmaster_pid(cluster)), str(paths.data)]
        ),
        capture_output=True,
        text=True,
        check=False,
    )
    assert claimed.returncode == 0, claimed.stderr
    result = pgdr_demo(root, "--clean")
    assert result.returncode == 0 and "removed the demo sandbox" in result.stdout, result.stderr
    assert not root.exists()
    assert cluster.sql("SELECT 1") == [(1,)], "--clean stopped an unrelated server"


@pytest.fixture
def their_repository(intruder: pwd.struct_passwd, shared_dir: Path) -> Iterator[Path]:
    """A repository folder the other user owns (as postgres owns the one its archive_command writes)."""
    base = shared_dir / f"repo-{secrets.token_hex(4)}"
    base.mkdir(mode=0o755)
    os.chown(base, intruder.pw_uid, intruder.pw_gid)
    yield base


def test_a_temp_file_swapped_for_a_link_gives_nothing_away(
    intruder: pwd.struct_passwd, their_repository: Path, victim: Path
) -> None:
    repo = LocalRepository(their_repository, "main")
    with repo.writer("backups/b1/base.tar.zst") as out:
        out.write(b"backup bytes")
        (temp,) = (repo.root / "backups" / "b1").glob(".tmp.*")
        swapped = as_user(intruder, 'rm -f "$1" && ln -s "$2" "$1"', str(temp), str(victim))
        assert swapped.returncode == 0, swapped.stderr
    assert (repo.root / "backups" / "b1" / "base.tar.zst").is_symlink()  # its own link: its own business


def test_a_folder_swapped_for_a_link_is_refused(
    intruder: pwd.struct_passwd, their_repository: Path, shared_dir: Path
) -> None:
    roots = shared_dir / f"roots-{secrets.token_hex(4)}"  # a folder of root's, which the other user cannot write
    roots.mkdir(mode=0o755)
    repo = LocalRepository(their_repository, "main")
    os.close(repo.open_folder(repo.root))
    linked = as_user(intruder, 'ln -s "$1" "$2"', str(roots), str(repo.root / "wal"))
    assert linked.returncode == 0, linked.stderr
    with pytest.raises(RepositoryError, match=r"wal in the local repository is a symbolic link: pgdr follows none"):
        repo.put("wal/0000000100000000/000000010000000000000001", b"segment")
    assert not any(roots.iterdir()), "root wrote into a folder the link pointed to"


def test_a_lock_file_swapped_for_a_link_is_refused(cluster: Cluster, victim: Path) -> None:
    locks = cluster.local_repo / "main" / "locks"
    linked = subprocess.run(
        as_server_user(
            ["sh", "-c", 'mkdir -p "$1" && ln -sf "$2" "$1/repository.lock"', "sh", str(locks), str(victim)]
        ),
        capture_output=True,
        text=True,
        check=False,
    )
    assert linked.returncode == 0, linked.stderr
    result = cluster.pgdr("backup", check=False)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        f"pgdr: error: {locks / 'repository.lock'} in the local repository is a symbolic link: pgdr follows none "
        "there; replace it with the folder or file it points to"
    ]


def test_pg_basebackup_as_root_writes_through_no_link_of_the_repository_owner(cluster: Cluster, victim: Path) -> None:
    backups = cluster.local_repo / "main" / "backups"
    with cluster.archiving_held():  # pg_basebackup waits for the backup's WAL before writing backup_manifest
        proc = subprocess.Popen(
            [str(pgdr_executable()), "--config", str(cluster.config_path), "backup"],
            env=clean_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            wait_for(lambda: any(backups.glob(".tmp.staging.*/base.tar.zst")), 120, "pg_basebackup's tar")
            (staging,) = backups.glob(".tmp.staging.*")
            planted = subprocess.run(
                as_server_user(["sh", "-c", 'ln -s "$1" "$2/backup_manifest.tmp"', "sh", str(victim), str(staging)]),
                capture_output=True,
                text=True,
                check=False,
            )
            assert planted.returncode != 0 and "Permission denied" in planted.stderr, "the staging folder is open"
            # It can still move the staging folder aside and put a link to a folder of its own in its place.
            swapped = subprocess.run(
                as_server_user(
                    [
                        "sh",
                        "-c",
                        'set -e; mv "$1" "$1.moved"; mkdir "$3"; ln -s "$2" "$3/backup_manifest.tmp"; '
                        'ln -s "$2" "$3/backup_manifest"; ln -s "$3" "$1"',
                        "sh",
                        str(staging),
                        str(victim),
                        str(cluster.root / "theirs"),
                    ]
                ),
                capture_output=True,
                text=True,
                check=False,
            )
            assert swapped.returncode == 0, swapped.stderr
        except BaseException:
            proc.kill()
            raise
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err
    (backup,) = [p for p in backups.iterdir() if not p.name.startswith(".")]
    tar = backup / "base.tar.zst"
    assert tar.stat().st_uid == cluster.local_repo.stat().st_uid, "the tar was not given to the repository's owner"
