"""Compiles in progress, live, and the rank that holds the others: a real local Ray cluster,
two ranked workers pushing to the node's collector, the head comparing them."""

from __future__ import annotations

import time
import uuid

import pytest
import ray

from aotwatch.cluster.head import ensure_head, stop_daemon
from aotwatch.core.config import CollectorConfig
from aotwatch.core.metrics import IN_PROGRESS
from aotwatch.core.records import new_record
from cluster_helpers import cluster_config, collector_values, ranked_worker
from helpers import scrape, wait_for

pytestmark = pytest.mark.ray

SLOW_S = 20.0
"""Rank 1's compile: longer than the head's 10 s settle time for a missing compile id."""


def started_daemon(tmp_path, straggler_after_s: float):
    """A head (and its collectors) paging compiles longer than ``straggler_after_s``."""
    collector = CollectorConfig(
        address="127.0.0.1",
        port=0,
        head_port=0,
        worker_timeout_s=3,
        straggler_after_s=straggler_after_s,
    )
    config = cluster_config(
        tmp_path, namespace=f"aotwatch-straggle-{uuid.uuid4().hex[:8]}", collector=collector
    )
    ensure_head(config)
    return config


@pytest.fixture
def config(ray_session, tmp_path):
    config = started_daemon(tmp_path, straggler_after_s=2)
    yield config
    stop_daemon(config)


def announcing(compiling: dict) -> dict:
    return {"worker_id": "w1", "job_name": "j", "rank": 1, "compiling": compiling}


def test_a_collector_measures_a_compile_by_its_elapsed_time_on_its_own_clocks(node_collector):
    collector = node_collector()
    state = {"compile_id": "3/0", "elapsed_s": 25.0, "device": "cpu"}
    assert collector.push(announcing(state), [], {}) == 0
    live = collector.fingerprints_since(None, {}).live
    assert live.compiling["j"]["1"].compile_id == "3/0"
    assert 25.0 <= live.compiling["j"]["1"].for_s < 35
    ((key, since),) = collector.snapshot().values[IN_PROGRESS.name].items()
    assert key == ("j", "1", "cpu", "3/0")
    assert time.time() - 35 < since <= time.time() - 25  # began 25 s ago, on this clock


@pytest.mark.parametrize(
    "compiling",
    [
        {"compile_id": "3/0", "since": 0, "device": "cpu"},  # a wall-clock time, any
        {"compile_id": "3/0", "elapsed_s": 1.7e9, "device": "cpu"},
        {"compile_id": "3/0", "elapsed_s": -1.0, "device": "cpu"},
        {"compile_id": "3/0", "elapsed_s": float("nan"), "device": "cpu"},
    ],
)
def test_an_absurd_compile_time_is_refused_and_the_batch_kept(node_collector, compiling):
    collector = node_collector()
    record = new_record(job_name="j", rank=1, compile_id="0/0")
    assert collector.push(announcing(compiling), [record], {}) == 1  # an older worker's too
    live = collector.fingerprints_since(None, {}).live
    assert live.compiling == {} and "1" in live.attached["j"]


def head_metric(config, name: str) -> list[str]:
    head = ray.get_actor("aotwatch-head", namespace=config.cluster.namespace)
    port = ray.get(head.status.remote(), timeout=30).head.port
    text = scrape(f"http://127.0.0.1:{port}/metrics")
    return [line for line in text.splitlines() if line.startswith(name + "{")]


def straggler_seconds(config) -> float:
    lines = head_metric(config, "torch_compile_straggler_seconds")
    return max((float(line.rsplit(" ", 1)[1]) for line in lines), default=0.0)


def test_a_slow_rank_is_in_progress_live_and_a_straggler_not_a_missing_compile_id(config):
    head = ray.get_actor("aotwatch-head", namespace=config.cluster.namespace)
    node_id = ray.get_runtime_context().get_node_id()
    from aotwatch.cluster.paths import collector_name

    collector = ray.get_actor(collector_name(node_id), namespace=config.cluster.namespace)
    ranks = [ranked_worker(rank) for rank in range(2)]
    ray.get([w.attach.remote(config) for w in ranks], timeout=120)
    ray.get(ranks[0].compile_fn.remote("x * 2"), timeout=120)
    slow = ranks[1].compile_slowly.remote(SLOW_S, "x * 2")  # the same frame, 0/0, slowly
    started = time.monotonic()

    in_progress = wait_for(  # rank 0's own notices may still be on their way: rank 1 only
        lambda: (
            (values := collector_values(collector, IN_PROGRESS.name))
            and all(key[1] == "1" for key in values)
            and values
        ),
        timeout=10,
    )
    ((job, rank, device, compile_id), since) = next(iter(in_progress.items()))
    assert (job, rank, device, compile_id) == ("ray-test", "1", "cpu", "0/0")
    assert time.time() - 15 < since <= time.time()
    first = wait_for(lambda: straggler_seconds(config), timeout=10)
    wait_for(  # growing while rank 1 compiles
        lambda: straggler_seconds(config) > first, timeout=10, message="the straggler to grow"
    )
    assert time.monotonic() - started < SLOW_S  # all of this while it still compiled

    ray.get(slow, timeout=120)
    assert all(ray.get([w.flush.remote() for w in ranks], timeout=60))
    wait_for(lambda: not collector_values(collector, IN_PROGRESS.name), timeout=10)
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


@pytest.fixture
def patient_config(ray_session, tmp_path):
    """Stragglers after 10 s: a 5 s compile is none, a 20 s one is."""
    config = started_daemon(tmp_path, straggler_after_s=10)
    yield config
    stop_daemon(config)


def test_worker_clocks_300_s_off_page_nobody_and_hide_no_real_straggler(patient_config):
    """Rank 1's wall clock is 300 s behind, rank 2's 300 s ahead. Rank 1 compiling for 5 s is
    not a 305 s straggler; rank 2 compiling for 20 s is a straggler, not a -280 s one."""
    config = patient_config
    head = ray.get_actor("aotwatch-head", namespace=config.cluster.namespace)
    ranks = [ranked_worker(rank, world_size=3) for rank in range(3)]
    ray.get([w.attach.remote(config) for w in ranks], timeout=120)
    ray.get([ranks[1].shift_clock.remote(-300), ranks[2].shift_clock.remote(300)], timeout=30)
    ray.get([w.compile_fn.remote("x * 2") for w in ranks], timeout=120)  # 0/0 everywhere
    ray.get(  # 1/0: rank 1 for 5 s while ranks 0 and 2 wait
        [ranks[0].compile_fn.remote("x * 3"), ranks[2].compile_fn.remote("x * 3")], timeout=120
    )
    ray.get(ranks[1].compile_slowly.remote(5, "x * 3"), timeout=120)
    ray.get(  # 2/0: rank 2 for SLOW_S while ranks 0 and 1 wait
        [ranks[0].compile_fn.remote("x * 4"), ranks[1].compile_fn.remote("x * 4")], timeout=120
    )
    slow = ranks[2].compile_slowly.remote(SLOW_S, "x * 4")
    wait_for(lambda: straggler_seconds(config) >= 10, timeout=SLOW_S + 10)
    assert straggler_seconds(config) < SLOW_S + 5  # how long, on clocks that agree

    ray.get(slow, timeout=120)
    assert all(ray.get([w.flush.remote() for w in ranks], timeout=60))
    wait_for(lambda: straggler_seconds(config) == 0, timeout=10)
    findings = ray.get(head.check_divergences.remote(final=True), timeout=60)
    assert [(f["kind"], f["compile_id"]) for f in findings] == [("compile_straggler", "2/0")]
    groups = findings[0]["groups"]
    assert groups["waiting"] == ["0", "1"]
    (compiling,) = [value for value in groups if value.startswith("compiling for")]
    assert groups[compiling] == ["2"]
