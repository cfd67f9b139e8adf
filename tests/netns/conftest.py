"""One cluster for the netns suite: the control plane on this machine, two nodes as separate hosts.

Needs root, iproute2 and util-linux (network, mount and UTS namespaces). Where they cannot be
made the suite is skipped with the reason; under CI=true it fails instead.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.netns.cluster import NetnsCluster, start_control_plane
from tests.netns.hosts import Lab, NamespacesUnavailable, check_available, remove_stale_labs
from tests.services import unavailable
from trainyard.client import Client

NODE_NAMES = ("node-1", "node-2")


@pytest.fixture(scope="session")
def netns_session_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NetnsCluster]:
    try:
        check_available()
        remove_stale_labs()
    except NamespacesUnavailable as exc:
        unavailable(f"nodes as separate hosts need namespaces: {exc}")
    work_dir = tmp_path_factory.mktemp("netns")
    lab = Lab(work_dir)
    cluster: NetnsCluster | None = None
    try:
        lab.start()
        hosts = [lab.add_host(name) for name in NODE_NAMES]
        cluster = NetnsCluster(lab, start_control_plane(lab, work_dir / "control"))
        for host in hosts:
            cluster.start_worker(host)
        cluster.wait_nodes_up()
        yield cluster
    finally:
        if cluster is not None:
            cluster.stop()
        else:
            lab.stop()


@pytest.fixture
def netns_cluster(netns_session_cluster: NetnsCluster) -> NetnsCluster:
    """The session's cluster with every node up (a test that killed a node's worker left it to restart)."""
    for name, process in netns_session_cluster.workers.items():
        if process.poll() is not None:
            netns_session_cluster.start_worker(netns_session_cluster.hosts[name])
    netns_session_cluster.wait_nodes_up()
    return netns_session_cluster


@pytest.fixture
def netns_client(netns_cluster: NetnsCluster) -> Iterator[Client]:
    with netns_cluster.plane.client() as client:
        yield client
