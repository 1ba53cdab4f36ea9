"""Encryption at rest end to end: a real cluster archiving into encrypted local and S3 repositories."""

from __future__ import annotations

import json
import os
from pathlib import Path

import boto3

from backend.archive.walfile import find_archived
from backend.config import load_config
from backend.repository import open_repository
from backend.repository.crypt import MAGIC
from tests.conftest import s3_settings
from tests.harness.cluster import Cluster, give_to_server_user, wait_for
from tests.harness.s3 import ACCESS_KEY, REGION, SECRET_KEY, MotoEndpoint
from tests.test_restore import Story, restore

PASSPHRASE = "a long passphrase for the bucket"


def encrypted_config(cluster: Cluster, key_file: Path, s3: dict[str, str] | None) -> str:
    text = cluster.base_config(s3=s3)
    return text.replace("[local]\n", f'[local]\nencryption = "aes-256-gcm"\nencryption_key_file = "{key_file}"\n', 1)


def make_key_file(cluster: Cluster) -> Path:
    key_file = cluster.root / "local.key"
    key_file.write_text(os.urandom(32).hex() + "\n")
    key_file.chmod(0o600)
    give_to_server_user(key_file)  # the archive_command runs as the server user and reads it
    return key_file


def stored_files(cluster: Cluster) -> list[Path]:
    root = cluster.local_repo / "main"
    return [
        p
        for p in root.rglob("*")
        if p.is_file() and not p.name.startswith(".") and p.relative_to(root).parts[0] not in ("queue", "locks")
    ]


def test_an_encrypted_cluster_stores_only_ciphertext_and_restores(
    cluster_s3: Cluster, moto: MotoEndpoint, bucket: str
) -> None:
    key_file = make_key_file(cluster_s3)
    s3 = {
        **s3_settings(moto, bucket),
        "encryption": "aes-256-gcm",
        "encryption_passphrase": PASSPHRASE,
        "sse": "AES256",
    }
    cluster_s3.write_config(encrypted_config(cluster_s3, key_file, s3))
    cluster_s3.switch_wal()  # the first segments went to the fresh, still empty repositories
    story = Story(cluster_s3)
    cfg = load_config(cluster_s3.config_path)
    wait_for(lambda: bool(find_archived(open_repository(cfg, "s3"), story.last_segment)), 60, "the S3 upload")

    local = [p for p in stored_files(cluster_s3) if p.name != "encryption.json"]
    assert any("backups" in p.parts for p in local) and any("wal" in p.parts for p in local)
    assert all(p.read_bytes()[:8] == MAGIC for p in local), "every local object is encrypted"
    client = moto.client()
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=bucket)["Contents"]]
    assert any("/backups/" in k for k in keys) and any("/wal/" in k for k in keys)
    for key in keys:
        head = client.get_object(Bucket=bucket, Key=key, Range="bytes=0-7")
        assert key.endswith("encryption.json") or head["Body"].read() == MAGIC, key
        assert head["ServerSideEncryption"] == "AES256", "S3's own encryption is on too"

    listing = json.loads(cluster_s3.pgdr("list", "--json").stdout)
    assert story.backup in {b["name"] for b in listing["backups"]}
    manifest = json.loads(
        cluster_s3.pgdr("decrypt", "--repo", "s3", f"backups/{story.backup}/manifest.json", "-o", "-").stdout
    )
    assert manifest["encryption"] == "aes-256-gcm" and manifest["name"] == story.backup
    assert cluster_s3.pgdr("verify").returncode == 0
    checked = cluster_s3.pgdr("check", check=False).stdout  # fails on archive_timeout = 0, the harness's
    assert "local repository" in checked and checked.count("(encrypted, aes-256-gcm)") == 2, checked

    result = restore(cluster_s3, "--timestamp", story.before_drop.isoformat())
    assert "Restore finished" in result.stdout, result.stdout
    story.assert_restored_before_drop(cluster_s3)


def test_wrong_keys_and_tampering_are_refused_with_the_fix(cluster: Cluster) -> None:
    key_file = make_key_file(cluster)
    good = encrypted_config(cluster, key_file, None)
    cluster.write_config(good)
    cluster.switch_wal()
    cluster.sql("CREATE TABLE t AS SELECT g FROM generate_series(1, 1000) g")
    segment = cluster.switch_wal()
    cluster.wait_archived(segment)
    manifest = json.loads(cluster.pgdr("backup", "--json").stdout)
    backup, segment = manifest["name"], manifest["wal_stop"]  # the WAL the backup needs to be consistent
    before = sorted(stored_files(cluster))

    other_key = cluster.root / "other.key"
    other_key.write_text(os.urandom(32).hex())
    other_key.chmod(0o600)
    cluster.write_config(good.replace(str(key_file), str(other_key)))
    for args in (["list"], ["backup"], ["wal-fetch", segment, str(cluster.root / "fetched")]):
        wrong = cluster.pgdr(*args, check=False)
        assert wrong.returncode == 2, (args, wrong.stderr)
        assert "encryption_key_file" in wrong.stderr and len(wrong.stderr.strip().splitlines()) == 1, wrong.stderr
    assert sorted(stored_files(cluster)) == before, "nothing was written with the wrong key"
    assert not (cluster.root / "fetched").exists()

    cluster.write_config(cluster.base_config())
    plain = cluster.pgdr("list", check=False)
    assert plain.returncode == 2 and 'encryption = "aes-256-gcm"' in plain.stderr, plain.stderr

    cluster.write_config(good)
    (obj,) = find_archived(open_repository(load_config(cluster.config_path), "local"), segment)
    stored = cluster.local_repo / "main" / obj.key
    blob = bytearray(stored.read_bytes())
    blob[len(blob) // 2] ^= 0x01
    stored.write_bytes(bytes(blob))
    fetched = cluster.pgdr("wal-fetch", segment, str(cluster.root / "fetched"), check=False)
    assert fetched.returncode == 2 and "fails authentication" in fetched.stderr, fetched.stderr
    assert not (cluster.root / "fetched").exists(), "nothing that failed authentication reaches PostgreSQL"
    report = cluster.pgdr("verify", check=False)
    assert report.returncode != 0 and segment in report.stdout + report.stderr
    assert "fails authentication" in report.stdout and backup in report.stdout


def test_logical_dumps_from_an_encrypted_bucket(cluster_s3: Cluster, moto: MotoEndpoint, bucket: str) -> None:
    s3 = {**s3_settings(moto, bucket), "encryption": "aes-256-gcm", "encryption_passphrase": PASSPHRASE}
    cluster_s3.write_config(cluster_s3.base_config(s3=s3))
    cluster_s3.sql("CREATE TABLE loans AS SELECT g AS id FROM generate_series(1, 300) g")
    name = json.loads(cluster_s3.pgdr("backup", "--logical", "--repo", "s3", "--json").stdout)["name"]
    cluster_s3.sql("DELETE FROM loans")
    url = f"s3://{bucket}/pg/main/backups/{name}/postgres.dump"
    cluster_s3.pgdr("restore", "--from-s3", url, "--yes")
    assert cluster_s3.sql("SELECT count(*) FROM loans")[0][0] == 300

    copy = cluster_s3.root / "copied.dump"  # taken off the bucket with any S3 client: still ciphertext
    copy.write_bytes(moto.client().get_object(Bucket=bucket, Key=url.split("/", 3)[3])["Body"].read())
    refused = cluster_s3.pgdr("restore", str(copy), "--yes", check=False)
    assert refused.returncode == 2 and "pgdr decrypt --repo local|s3 --file" in refused.stderr, refused.stderr
    cluster_s3.pgdr("decrypt", "--repo", "s3", "--file", str(copy), "-o", str(cluster_s3.root / "plain.dump"))
    cluster_s3.sql("DELETE FROM loans")
    cluster_s3.pgdr("restore", str(cluster_s3.root / "plain.dump"), "--yes")
    assert cluster_s3.sql("SELECT count(*) FROM loans")[0][0] == 300


def test_sse_kms_and_client_side_encryption_together(cluster: Cluster, moto: MotoEndpoint, bucket: str) -> None:
    """Both layers at once: S3 encrypts at rest under the KMS key, and holds only pgdr's ciphertext.

    moto records the KMS key id on each object without encrypting with it, so what this proves is
    that every upload path (plain PUT for WAL, the backup's streamed upload) asks for SSE-KMS with
    the configured key, and that the client-side layer underneath still reads back.
    """
    kms = boto3.client(
        "kms",
        endpoint_url=moto.url,
        region_name=REGION,
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
    )
    key_id = kms.create_key(Description="pgdr backups")["KeyMetadata"]["KeyId"]
    s3 = {
        **s3_settings(moto, bucket),
        "encryption": "aes-256-gcm",
        "encryption_passphrase": PASSPHRASE,
        "sse": "aws:kms",
        "kms_key_id": key_id,
    }
    cluster.write_config(cluster.base_config(local=False, s3=s3))
    cluster.wait_archived(cluster.switch_wal())
    name = json.loads(cluster.pgdr("backup", "--json").stdout)["name"]
    cluster.wait_archived(cluster.switch_wal())

    client = moto.client()
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=bucket)["Contents"]]
    assert f"pg/main/backups/{name}/base.tar.zst" in keys and any("/wal/" in k for k in keys), keys
    for key in keys:
        head = client.get_object(Bucket=bucket, Key=key, Range="bytes=0-7")
        assert head["ServerSideEncryption"] == "aws:kms" and head["SSEKMSKeyId"] == key_id, key
        assert key.endswith("encryption.json") or head["Body"].read() == MAGIC, f"{key} is not pgdr ciphertext"

    verified = cluster.pgdr("verify", "--json", check=False)
    report = json.loads(verified.stdout)
    assert verified.returncode == 0 and report["ok"], verified.stdout
    (backup,) = [b for b in report["backups"] if b["name"] == name]
    assert backup["objects_checked"] == 2  # base.tar.zst and backup_manifest, decrypted and checksummed
    (wal,) = report["wal"]
    assert wal["verified_objects"] >= 1  # the backup's consistency WAL, decrypted and decoded
