"""pgdr works with exactly the IAM policy the README documents, and moto (enforcing IAM) proves it."""

from __future__ import annotations

import fnmatch
import json
import re
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import boto3

from tests.harness.cluster import Cluster
from tests.harness.s3 import ACCESS_KEY, REGION, SECRET_KEY, MotoEndpoint

README = Path(__file__).resolve().parents[2] / "README.md"
PREFIX = "memecoin-lending/postgres"


def readme_policy(bucket: str) -> str:
    """The least-privilege policy exactly as the README prints it, for this bucket."""
    text = README.read_text()
    section = text[text.index("Create IAM User") :]
    policy = re.search(r"```json\n(.*?)```", section, re.S)
    assert policy is not None
    return policy.group(1).replace("your-backup-bucket", bucket)


def enforceable_by_moto(policy: str) -> tuple[str, list[str]]:
    """The policy without its ``s3:prefix`` conditions, and the prefix patterns they allowed.

    moto enforces actions and resources but gives conditions no request context, so it cannot judge an
    ``s3:prefix`` condition (it lets it pass or denies everything, by version). The test enforces
    that condition itself, on the listings the endpoint served.
    """
    document = json.loads(policy)
    patterns: list[str] = []
    for statement in document["Statement"]:
        condition = statement.pop("Condition", None)
        if condition is not None:
            patterns += condition["StringLike"]["s3:prefix"]
    return json.dumps(document), patterns


def iam_user(moto: MotoEndpoint, policy: str) -> tuple[str, str]:
    iam = boto3.client("iam", endpoint_url=moto.url, region_name=REGION, aws_access_key_id=ACCESS_KEY,
                       aws_secret_access_key=SECRET_KEY)
    name = f"pgdr-{abs(hash(policy)) % 10**8}"
    iam.create_user(UserName=name)
    iam.put_user_policy(UserName=name, PolicyName="pgdr", PolicyDocument=policy)
    key = iam.create_access_key(UserName=name)["AccessKey"]
    return key["AccessKeyId"], key["SecretAccessKey"]


def s3_config(cluster: Cluster, moto: MotoEndpoint, bucket: str, keys: tuple[str, str]) -> None:
    settings = {"bucket": bucket, "prefix": PREFIX, "region": REGION, "endpoint_url": moto.url,
                "access_key_id": keys[0], "secret_access_key": keys[1], "upload_chunk_mb": 5}
    cluster.write_config(cluster.base_config(local=False, s3=settings))


def test_every_command_works_with_the_readme_policy(cluster: Cluster, moto: MotoEndpoint, bucket: str) -> None:
    policy, prefixes = enforceable_by_moto(readme_policy(bucket))
    assert prefixes == [f"{PREFIX}/*"]
    keys = iam_user(moto, policy)
    s3_config(cluster, moto, bucket, keys)
    cluster.sql("ALTER SYSTEM SET archive_timeout = 60")
    cluster.sql("SELECT pg_reload_conf()")
    with moto.require_auth(), moto.requests_seen() as seen:
        cluster.sql("CREATE TABLE t AS SELECT g, md5(g::text) FROM generate_series(1, 100000) g")
        cluster.wait_archived(cluster.switch_wal())
        cluster.pgdr("check", "--timeout", "60")
        name = json.loads(cluster.pgdr("backup", "--json").stdout)["name"]
        cluster.pgdr("backup", "--logical")
        assert name in cluster.pgdr("list").stdout
        cluster.pgdr("timeline", "--events")
        assert cluster.pgdr("verify").returncode == 0
        cluster.pgdr("restore", "--latest", "--dry-run")
        cluster.pgdr("expire")
        cluster.pgdr("restore", "--latest", "--yes", "--target-dir", str(cluster.root / "beside"), "--port", "5443")
    listings = [parse_qs(urlsplit(target).query) for target in seen if "list-type=2" in target]
    assert listings, "pgdr listed the bucket"
    outside = [q for q in listings if not any(fnmatch.fnmatchcase(q.get("prefix", [""])[0], p) for p in prefixes)]
    assert outside == [], "listings the README's s3:prefix condition would deny"


def test_a_missing_permission_is_named(cluster: Cluster, moto: MotoEndpoint, bucket: str) -> None:
    policy = json.loads(enforceable_by_moto(readme_policy(bucket))[0])
    policy["Statement"][-1]["Action"].remove("s3:PutObject")
    keys = iam_user(moto, json.dumps(policy))
    s3_config(cluster, moto, bucket, keys)
    with moto.require_auth():
        refused = cluster.pgdr("backup", check=False)
    assert refused.returncode == 2 and "s3:PutObject" in refused.stderr, refused.stderr
    assert keys[1] not in refused.stderr
