from tests.conftest import on_every_version
from tests.harness.cluster import Cluster


@on_every_version
def test_cluster_archives_through_pgdr(cluster: Cluster) -> None:
    segment = cluster.switch_wal()
    cluster.wait_archived(segment)
    out = cluster.pgdr("list", "--json").stdout
    assert segment in out
