"""Compiles in progress, live, and the rank that holds the others: a real local Ray cluster,
two ranked workers pushing to the node's collector, the head comparing them."""

from __future__ import annotations

import time
import uuid

import pytest
import ray

from aotwatch.cluster.head import ensure_head, stop_daemon
from aotwatch.config import CollectorConfig
from aotwatch.metrics import IN_PROGRESS
from cluster_helpers import cluster_config, collector_values, ranked_worker
from conftest import scrape, wait_for

SLOW_S = 20.0
"""Rank 1's compile: longer than the head's 10 s settle time for a missing compile id."""


@pytest.fixture
def config(ray_session, tmp_path):
    collector = CollectorConfig(
        address="127.0.0.1", port=0, head_port=0, worker_timeout_s=3, straggler_after_s=2
    )
    config = cluster_config(
        tmp_path, namespace=f"aotwatch-straggle-{uuid.uuid4().hex[:8]}", collector=collector
    )
    ensure_head(config)
    yield config
    stop_daemon(config)


def head_metric(config, name: str) -> list[str]:
    head = ray.get_actor("aotwatch-head", namespace=config.cluster.namespace)
    port = ray.get(head.status.remote(), timeout=30)["head"]["port"]
    text = scrape(f"http://127.0.0.1:{port}/metrics")
    return [line for line in text.splitlines() if line.startswith(name + "{")]


def straggler_seconds(config) -> float:
    lines = head_metric(config, "torch_compile_straggler_seconds")
    return max((float(line.rsplit(" ", 1)[1]) for line in lines), default=0.0)


def test_a_slow_rank_is_in_progress_live_and_a_straggler_not_a_missing_compile_id(config):
    head = ray.get_actor("aotwatch-head", namespace=config.cluster.namespace)
    node_id = ray.get_runtime_context().get_node_id()
    from aotwatch.cluster.collector import collector_name

    collector = ray.get_actor(collector_name(node_id), namespace=config.cluster.namespace)
    ranks = [ranked_worker(rank) for rank in range(2)]
    ray.get([w.attach.remote(config) for w in ranks], timeout=120)
    ray.get(ranks[0].compile_fn.remote("x * 2"), timeout=120)
    slow = ranks[1].compile_slowly.remote(SLOW_S, "x * 2")  # the same frame, 0/0, slowly
    started = time.monotonic()

    in_progress = wait_for(  # rank 0's own notices may still be on their way: rank 1 only
        lambda: (
            (values := collector_values(collector, IN_PROGRESS))
            and all(key[1] == "1" for key in values)
            and values
        ),
        timeout=10,
    )
    ((job, rank, device, compile_id), since) = next(iter(in_progress.items()))
    assert (job, rank, device, compile_id) == ("ray-test", "1", "cpu", "0/0")
    assert time.time() - 15 < since <= time.time()
    first = wait_for(lambda: straggler_seconds(config), timeout=10)
    time.sleep(2.5)
    assert straggler_seconds(config) > first  # growing while rank 1 compiles
    assert time.monotonic() - started < SLOW_S  # all of this while it still compiled

    ray.get(slow, timeout=120)
    assert all(ray.get([w.flush.remote() for w in ranks], timeout=60))
    wait_for(lambda: not collector_values(collector, IN_PROGRESS), timeout=10)
    wait_for(lambda: straggler_seconds(config) == 0, timeout=10)
    findings = ray.get(head.check_divergences.remote(final=True), timeout=60)
    kinds = sorted((f["kind"], f["compile_id"]) for f in findings)
    assert kinds == [("compile_straggler", "0/0")]  # and not compile_ids: it was compiling
    groups = findings[0]["groups"]
    assert groups["waiting"] == ["0"]
    (compiling,) = [value for value in groups if value.startswith("compiling for")]
    assert groups[compiling] == ["1"]
    counted = head_metric(config, "torch_compile_rank_divergences_total")
    assert counted == [
        'torch_compile_rank_divergences_total{job_name="ray-test",kind="compile_straggler"} 1.0'
    ]
