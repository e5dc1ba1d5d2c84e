"""The Ray backend on a cluster of two nodes sharing one host (as containers on one machine do):
what tells its workers' nodes apart is Ray's node id, not the address."""

from __future__ import annotations

import os

import pytest
from helpers import Toolbox

from snakepit import Pool

ray = pytest.importorskip("ray", reason="the ray extra")


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_workers_on_two_nodes_of_one_host_show_two_node_ids():
    from ray.cluster_utils import Cluster

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a local test cluster
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, log_to_driver=False, logging_level="ERROR")
        try:
            options = {"num_cpus": 1}  # one actor fits each node: they land on both
            with Pool(Toolbox, size=2, backend="ray", actor_options=options, start_timeout=120) as pool:
                workers = pool.stats()["worker_info"]
                assert len({w["node"] for w in workers}) == 1  # one host: one address
                assert {w["node_id"] for w in workers} == {node["NodeID"] for node in ray.nodes() if node["Alive"]}
                assert pool.execute("add", {"a": 1}) == 2
        finally:
            ray.shutdown()
    finally:
        cluster.shutdown()
