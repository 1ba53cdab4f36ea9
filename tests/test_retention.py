"""``pgdr expire`` applied to repositories: a synthetic local repository, then a real cluster with real S3."""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from backend.archive.walfile import WalObject, checksum, find_archived
from backend.audit import audit_path
from backend.catalog import read_catalog
from backend.config import Config, load_config
from backend.errors import PgdrError, RepositoryError
from backend.locks import job_lock
from backend.manifest import BackupManifest, StoredObject
from backend.repository import ObjectInfo, Repository, open_repository
from backend.repository.local import LocalRepository
from backend.retention import ExpireError, expire
from backend.walnames import DEFAULT_SEGMENT_SIZE, SegmentName, format_lsn
from tests.harness.cluster import Cluster, wait_for

NOW = datetime(2025, 6, 30, 12, 0, tzinfo=UTC)


class Recording:
    """Remembers every delete call of a repository, in order, and passes it on."""

    def __init__(self, repo: Repository, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[list[str]] = []
        inner = repo.delete

        def delete(keys: Iterable[str]) -> None:
            self.calls.append(list(keys))
            inner(self.calls[-1])

        monkeypatch.setattr(repo, "delete", delete)


def seg(number: int) -> str:
    return SegmentName(1, number).name


def store_wal(repo: Repository, filename: str, data: bytes = b"x" * 100) -> str:
    obj = WalObject(filename, checksum(data + filename.encode()), "none")
    repo.put(obj.key, data)
    return obj.key


def store_backup(repo: Repository, age_days: float, start: int) -> BackupManifest:
    stop = NOW - timedelta(days=age_days)
    name = stop.strftime("%Y%m%dT%H%M%SZ")
    objects = []
    for key, body in (("base.tar.zst", b"b" * 1000), ("backup_manifest", b"m" * 10)):
        repo.put(f"backups/{name}/{key}", body)
        objects.append(StoredObject(key, len(body), checksum(body), len(body), checksum(body), "none"))
    manifest = BackupManifest(
        name=name, kind="physical", cluster="main", system_identifier=1, pg_version="15",
        start_time=stop - timedelta(seconds=3), stop_time=stop, objects=objects, timeline=1,
        start_lsn=format_lsn(start * DEFAULT_SEGMENT_SIZE + 0x28),
        stop_lsn=format_lsn(start * DEFAULT_SEGMENT_SIZE + 0x2000),
        wal_start=SegmentName(1, start).name, wal_stop=SegmentName(1, start).name,
        wal_segment_size=DEFAULT_SEGMENT_SIZE,
    )  # fmt: skip
    repo.put(manifest.key, manifest.to_json())
    store_wal(repo, f"{SegmentName(1, start).name}.00000028.backup")
    return manifest


@pytest.fixture
def local_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Config:
    monkeypatch.setenv("PGDR_STATE_DIR", str(tmp_path / "state"))
    path = tmp_path / "pgdr.toml"
    path.write_text(f'[cluster]\nname = "main"\n\n[local]\npath = "{tmp_path / "repo"}"\nretention_days = 7\n')
    return load_config(path)


def test_expire_of_a_local_repository(local_config: Config, monkeypatch: pytest.MonkeyPatch) -> None:
    repo = LocalRepository(local_config.local.path, "main")
    deletes = Recording(repo, monkeypatch).calls
    old, older, newest = store_backup(repo, 10, 5), store_backup(repo, 20, 2), store_backup(repo, 3, 8)
    for n in range(1, 12):
        store_wal(repo, SegmentName(1, n).name)
        repo.put(f"walindex/0000000100000000/{SegmentName(1, n).name}.json", b"{}")
    store_wal(repo, "00000002.history", b"1\t0/C000000\tno recovery target specified\n")
    repo.put(f"verify/{older.name}.json", b'{"ok": true}')
    repo.put(f"verify/{newest.name}.json", b'{"ok": true}')
    before = {info.key: info.size for info in repo.list()}

    dry = expire(local_config, dry_run=True, now=NOW, repos=[repo])
    assert {info.key: info.size for info in repo.list()} == before and not deletes
    assert not audit_path().exists()  # a dry run changes nothing, so it writes no audit record
    assert "would remove 2 backups" in dry.render() and "would free" in dry.render()

    report = expire(local_config, now=NOW, repos=[repo])
    (result,) = report.repositories
    assert [b.name for b in result.removed_backups] == [older.name, old.name]
    assert [k.manifest.name for k in result.kept_backups] == [newest.name]
    assert (result.wal_segments, result.wal_first, result.wal_last) == (7, seg(1), seg(7))
    assert result.wal_other_files == 2 and result.index_entries == 7
    gone = set(before) - {info.key for info in repo.list()}
    assert result.bytes_freed == sum(before[k] for k in gone) > 0
    assert report.to_json() == dry.to_json() | {"dry_run": False}

    # Each backup's manifest went alone, before anything else of that backup.
    for m in (older, old):
        first = next(i for i, keys in enumerate(deletes) if any(k.startswith(f"backups/{m.name}/") for k in keys))
        assert deletes[first] == [m.key]
    left = {info.key for info in repo.list()}
    assert not any(old.name in k or older.name in k for k in left)
    assert f"verify/{newest.name}.json" in left and newest.key in left
    wal_left = sorted(o.filename for info in repo.list("wal/") if (o := WalObject.parse_key(info.key)))
    kept_wal = [*(SegmentName(1, n).name for n in range(8, 12)), f"{SegmentName(1, 8).name}.00000028.backup"]
    assert wal_left == sorted([*kept_wal, "00000002.history"])
    assert sorted(info.key for info in repo.list("walindex/")) == [
        f"walindex/0000000100000000/{SegmentName(1, n).name}.json" for n in range(8, 12)
    ]
    audit = [json.loads(line) for line in audit_path().read_text().splitlines()]
    assert [(a["action"], a["result"]) for a in audit] == [("expire", "started"), ("expire", "ok")]
    assert audit[-1]["report"]["repositories"][0]["wal"]["segments"] == 7

    again = expire(local_config, now=NOW, repos=[repo])
    assert again.bytes_freed == 0 and "no backup to remove" in again.render()


def test_expire_waits_for_no_one_and_refuses_while_a_backup_runs(local_config: Config) -> None:
    with job_lock(local_config, "base backup"), pytest.raises(PgdrError, match="cannot start expire"):
        expire(local_config, now=NOW)
    audit = [json.loads(line) for line in audit_path().read_text().splitlines()]
    assert audit[-1]["result"] == "failed" and "base backup" in audit[-1]["error"]
    with job_lock(local_config, "base backup"):
        assert expire(local_config, dry_run=True, now=NOW).dry_run  # a dry run takes no lock


def test_a_failing_repository_does_not_stop_the_others(local_config: Config, monkeypatch: pytest.MonkeyPatch) -> None:
    local = LocalRepository(local_config.local.path, "main")
    store_backup(local, 20, 2)
    store_backup(local, 3, 8)
    broken = LocalRepository(Path(local_config.local.path).parent / "elsewhere", "main")
    broken.name = "s3"

    def unreachable(prefix: str = "") -> Iterable[ObjectInfo]:
        raise RepositoryError("cannot reach S3 (connection refused)")

    monkeypatch.setattr(broken, "list", unreachable)
    with pytest.raises(ExpireError) as caught:
        expire(local_config, now=NOW, repos=[local, broken])
    message = str(caught.value)
    assert "\n" not in message and "s3 repository (cannot reach S3" in message and "local: removed 1 backup" in message
    local_result, s3_result = caught.value.report.repositories
    assert len(local_result.removed_backups) == 1 and s3_result.error is not None
    assert "FAILED: cannot reach S3" in caught.value.report.render()
    assert json.loads(audit_path().read_text().splitlines()[-1])["result"] == "failed"


# --- end to end: a real PostgreSQL 15 cluster, the local repository and S3 (moto) ---


def test_expire_end_to_end_on_both_repositories(cluster_s3: Cluster) -> None:
    c = cluster_s3
    c.sql("CREATE TABLE t (id int)")
    names = []
    for round_ in range(3):
        c.sql(f"INSERT INTO t SELECT g FROM generate_series({round_ * 100}, {round_ * 100 + 99}) g")
        names.append(json.loads(c.pgdr("backup", "--json").stdout)["name"])
        c.wait_archived(c.switch_wal())
    c.sql("INSERT INTO t VALUES (-1)")
    last = c.switch_wal()
    c.wait_archived(last)
    cfg = load_config(c.config_path)
    s3 = open_repository(cfg, "s3")
    wait_for(lambda: bool(find_archived(s3, last)), 60, f"{last} to reach S3")

    listing = json.loads(c.pgdr("list", "--json").stdout)
    backups = {b["name"]: b for b in listing["backups"]}
    assert sorted(backups) == names and all(b["repositories"] == ["local", "s3"] for b in backups.values())
    stop = [datetime.fromisoformat(backups[n]["stop_time"]) for n in names]
    floor = backups[names[2]]["wal_start"]
    # One instant for both repositories: 30.x days after the second backup, just before the third is
    # 30 days old. Local (7 days) expires the first two and keeps the third only as the newest; S3
    # (30 days) expires the first two and keeps the third as within its retention.
    now = stop[1] + timedelta(days=30) + (stop[2] - stop[1]) / 2

    def segments(repo: str) -> list[str]:
        return sorted(s.segment.name for s in read_catalog([open_repository(cfg, repo)]).segments)

    before = {repo: segments(repo) for repo in ("local", "s3")}
    for repo in before:
        assert before[repo][0] < floor <= before[repo][-1] == last

    dry = expire(cfg, dry_run=True, now=now)
    assert [[b.name for b in r.removed_backups] for r in dry.repositories] == [names[:2], names[:2]]
    cli_dry = c.pgdr("expire", "--dry-run")  # today's clock: every backup is young, nothing to remove
    assert "dry run" in cli_dry.stdout and "no backup to remove" in cli_dry.stdout
    assert json.loads(c.pgdr("expire", "--dry-run", "--json").stdout)["dry_run"] is True
    assert json.loads(c.pgdr("list", "--json").stdout) == listing
    assert {repo: segments(repo) for repo in before} == before

    report = expire(cfg, now=now)
    local, remote = report.repositories
    for result in (local, remote):
        assert [b.name for b in result.removed_backups] == names[:2]
        assert [k.manifest.name for k in result.kept_backups] == [names[2]]
        assert result.wal_first == before[result.repository][0]
        assert result.wal_kept_from == [floor]
        assert result.bytes_freed > 0
    assert local.kept_backups[0].reason == "newest physical backup" and local.kept_backups[0].overdue
    assert remote.kept_backups[0].reason == "within the retention"
    assert "removed 2 backups" in report.render()

    after = json.loads(c.pgdr("list", "--json").stdout)
    assert [(b["name"], b["repositories"]) for b in after["backups"]] == [(names[2], ["local", "s3"])]
    for repo in ("local", "s3"):
        kept = segments(repo)
        assert kept == [s for s in before[repo] if s >= floor], repo  # all from the floor on, none before
        assert report.repositories[("local", "s3").index(repo)].wal_segments == len(before[repo]) - len(kept)
        backup_files = [k for k in (i.key for i in open_repository(cfg, repo).list("wal/")) if ".backup." in k]
        assert [k.rsplit("/", 1)[-1][:24] for k in backup_files] == [floor], repo
        assert not any(True for _ in open_repository(cfg, repo).list(f"backups/{names[0]}/"))
    audit = json.loads(audit_path().read_text().splitlines()[-1])
    assert (audit["action"], audit["result"]) == ("expire", "ok")

    plan = c.pgdr("restore", "--latest", "--dry-run").stdout
    assert names[2] in plan and "Dry run: nothing was changed" in plan

    policy = json.loads(c.pgdr("s3-lifecycle", "--print").stdout)
    assert policy["Rules"][0]["Filter"] == {"Prefix": "pg/main/"}
