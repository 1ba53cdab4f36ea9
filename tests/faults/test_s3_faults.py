"""S3 misbehaving: SlowDown and 500s for a while, and the endpoint dying in the middle of a multipart
upload. Nothing acknowledged is lost and the next run recovers by itself."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from tests.conftest import s3_settings
from tests.harness.cluster import Cluster, wait_for
from tests.harness.s3 import MotoEndpoint
from tests.harness.s3proxy import S3FaultProxy


@pytest.fixture
def proxy(moto: MotoEndpoint) -> Iterator[S3FaultProxy]:
    moto.start()
    p = S3FaultProxy(moto.url)
    yield p
    p.close()


def s3_only(cluster: Cluster, moto: MotoEndpoint, bucket: str, proxy: S3FaultProxy) -> None:
    settings: dict[str, object] = {**s3_settings(moto, bucket), "endpoint_url": proxy.url, "upload_chunk_mb": 5}
    cluster.write_config(cluster.base_config(local=False, s3=settings))


def test_slowdown_for_a_while_is_absorbed_by_retries(
    cluster: Cluster, moto: MotoEndpoint, bucket: str, proxy: S3FaultProxy
) -> None:
    s3_only(cluster, moto, bucket, proxy)
    cluster.wait_archived(cluster.switch_wal())
    proxy.arm(2, 503, "SlowDown")
    cluster.sql("CREATE TABLE t AS SELECT generate_series(1, 1000) g")
    segment = cluster.switch_wal()
    cluster.wait_archived(segment)
    assert cluster.sql("SELECT failed_count FROM pg_stat_archiver")[0][0] == 0, "retried inside one push"


def test_500s_fail_the_push_until_s3_heals(cluster: Cluster, moto: MotoEndpoint, bucket: str,
                                          proxy: S3FaultProxy) -> None:
    s3_only(cluster, moto, bucket, proxy)
    cluster.wait_archived(cluster.switch_wal())
    proxy.arm(10_000, 500, "InternalError")
    cluster.sql("CREATE TABLE t AS SELECT generate_series(1, 1000) g")
    blocked = cluster.switch_wal()
    wait_for(lambda: cluster.sql("SELECT last_failed_wal FROM pg_stat_archiver")[0][0] == blocked, 60,
             "wal-push to fail on S3 500s")
    proxy.heal()
    after = cluster.switch_wal()
    cluster.wait_archived(after)
    listing = json.loads(cluster.pgdr("list", "--json").stdout)
    (run,) = [r for r in listing["wal"] if r["timeline"] == 1]
    assert run["first_segment"] <= blocked <= run["last_segment"] and run["last_segment"] >= after


def test_s3_dying_mid_multipart_upload_lists_nothing_and_the_next_backup_cleans_up(
    cluster: Cluster, moto: MotoEndpoint, bucket: str, proxy: S3FaultProxy
) -> None:
    s3_only(cluster, moto, bucket, proxy)
    cluster.sql("CREATE TABLE big AS SELECT g, md5(g::text) || md5((g + 1)::text) AS h "
                "FROM generate_series(1, 120000) g")
    cluster.wait_archived(cluster.switch_wal())
    proxy.fail_after_parts = 1  # the second 5 MiB part and everything after it fails
    proxy.status, proxy.code = 503, "ServiceUnavailable"
    failed = cluster.pgdr("backup", check=False)
    assert failed.returncode == 2 and len(failed.stderr.strip().splitlines()) == 1
    proxy.heal()
    assert json.loads(cluster.pgdr("list", "--json").stdout)["backups"] == []
    cluster.pgdr("backup")
    assert len(json.loads(cluster.pgdr("list", "--json").stdout)["backups"]) == 1
    uploads = moto.client().list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    assert uploads == [], "the failed backup's multipart upload was aborted"
