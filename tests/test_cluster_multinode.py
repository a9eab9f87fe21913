"""Several Ray nodes on one machine (ray.cluster_utils.Cluster): a collector per node."""

from __future__ import annotations

import uuid

import pytest
import ray
from ray.cluster_utils import Cluster
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from aotwatch.cluster.file_sd import file_sd_path
from aotwatch.cluster.head import ensure_head, stop_daemon
from cluster_helpers import (
    WORKER_ENV,
    Worker,
    cluster_config,
    collector_targets,
    collector_values,
    read_file_sd,
)
from helpers import scrape, wait_for

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def cluster():
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    for _ in range(2):
        cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, runtime_env=WORKER_ENV)
    yield cluster
    ray.shutdown()
    cluster.shutdown()


def alive_node_ids() -> set[str]:
    return {node["NodeID"] for node in ray.nodes() if node["Alive"]}


def test_one_collector_per_node_each_with_its_own_workers(cluster, tmp_path):
    config = cluster_config(tmp_path, namespace=f"aotwatch-multi-{uuid.uuid4().hex[:8]}")
    head = ensure_head(config)
    try:
        nodes = alive_node_ids()
        assert len(nodes) == 3
        status = ray.get(head.status.remote(), timeout=60)
        assert {c.node_id for c in status.collectors} == nodes
        targets = collector_targets(file_sd_path(config))
        assert set(targets) == nodes

        workers = {
            node_id: Worker.options(
                scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False)
            ).remote()
            for node_id in nodes
        }
        ray.get([w.attach.remote(config) for w in workers.values()], timeout=180)
        ray.get([w.run.remote("input_mutation") for w in workers.values()], timeout=300)
        assert all(ray.get([w.flush.remote() for w in workers.values()], timeout=60))

        handles = {c.node_id: c for c in status.collectors}
        for node_id in nodes:
            text = scrape(f"http://{targets[node_id]}/metrics")
            assert 'torch_compile_graphs_total{device="cpu",graph="inference"' in text
            assert 'job_name="ray-test",rank="0"} 1.0' in text  # exactly its own worker's graph
            assert handles[node_id].endpoint.hostname
        collector = ray.get_actor(
            f"aotwatch-collector-{next(iter(nodes))}", namespace=config.cluster.namespace
        )
        endpoint = ray.get(collector.endpoint.remote(), timeout=30)
        assert [w.node_id for w in endpoint.workers] == [endpoint.node_id]
        assert collector_values(collector, "aotwatch_workers_attached") == {("ray-test",): 1}

        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        wait_for(
            lambda: len(collector_targets(file_sd_path(config))) == 4,
            timeout=60,
            message="a collector on the new node in file_sd",
        )
        new_node = (alive_node_ids() - nodes).pop()
        target = collector_targets(file_sd_path(config))[new_node]
        assert "aotwatch_build_info" in scrape(f"http://{target}/metrics")
    finally:
        stop_daemon(config)


def test_a_removed_node_loses_its_collector_and_the_others_keep_serving(cluster, tmp_path):
    config = cluster_config(tmp_path, namespace=f"aotwatch-remove-{uuid.uuid4().hex[:8]}")
    ensure_head(config)
    try:
        before = alive_node_ids()
        doomed = cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        (doomed_id,) = alive_node_ids() - before
        wait_for(
            lambda: doomed_id in collector_targets(file_sd_path(config)),
            timeout=60,
            message="a collector on the new node",
        )

        cluster.remove_node(doomed)
        wait_for(
            lambda: set(collector_targets(file_sd_path(config))) == before,
            timeout=120,
            message="file_sd to drop the removed node",
        )
        for target in collector_targets(file_sd_path(config)).values():
            assert "aotwatch_build_info" in scrape(f"http://{target}/metrics")
        (head,) = [g for g in read_file_sd(file_sd_path(config)) if g["labels"]["role"] == "head"]
        assert "aotwatch_build_info" in scrape(f"http://{head['targets'][0]}/metrics")
    finally:
        stop_daemon(config)
    assert read_file_sd(file_sd_path(config)) == []  # a stopped daemon leaves no targets
