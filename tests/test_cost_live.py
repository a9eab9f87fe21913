"""What compiling costs, live and archived: a real local Ray cluster, a 2-rank gloo job whose
workers push to the node's collector (rank 0 waits in an all_reduce while rank 1 compiles), the
head counting; then a second job of the same program."""

from __future__ import annotations

import dataclasses
import time
import uuid

import pytest
import ray

from aotwatch.cluster import serve
from aotwatch.cluster.head import ensure_head, stop_daemon
from aotwatch.core.config import CollectorConfig
from cluster_helpers import cluster_config, ranked_worker
from helpers import aotwatch, scrape, wait_for
from prometheus_server import free_port

pytestmark = [pytest.mark.ray, pytest.mark.subprocess]

SLOW_S = 8.0
"""Rank 1's compile of a frame only it has, past ``straggler_after_s``."""


@pytest.fixture
def config(ray_session, tmp_path):
    collector = CollectorConfig(
        address="127.0.0.1", port=0, head_port=0, worker_timeout_s=3, straggler_after_s=2
    )
    config = cluster_config(
        tmp_path, namespace=f"aotwatch-cost-{uuid.uuid4().hex[:8]}", collector=collector
    )
    ensure_head(config)
    yield config
    stop_daemon(config)


def head_values(config, name: str) -> dict[str, float]:
    """The head's samples of ``name``: label text -> value."""
    head = ray.get_actor("aotwatch-head", namespace=config.cluster.namespace)
    port = ray.get(head.status.remote(), timeout=30).head.port
    text = scrape(f"http://127.0.0.1:{port}/metrics")
    return {
        line.split("{", 1)[1].rsplit("}", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name + "{")
    }


def job(config, job_name: str, ranks: int = 2) -> list:
    """A job of ``ranks`` workers in one gloo process group, each compiling the same graph."""
    workers = [ranked_worker(rank, ranks) for rank in range(ranks)]
    job_config = dataclasses.replace(config, job_name=job_name)
    ray.get([w.attach.remote(job_config) for w in workers], timeout=120)
    address = f"tcp://127.0.0.1:{free_port()}"
    joined = [w.join_gloo.remote(address, rank, ranks) for rank, w in enumerate(workers)]
    ray.get(joined, timeout=90)
    ray.get([w.compile_fn.remote("x * 2") for w in workers], timeout=120)  # the same graph
    return workers


def test_waits_work_done_twice_and_the_straggler_cause_live_in_status_and_reports(config, capsys):
    head = ray.get_actor("aotwatch-head", namespace=config.cluster.namespace)
    first = job(config, "ray-test")
    slow = first[1].compile_slowly.remote(SLOW_S, "x * 3")  # a frame only rank 1 compiles
    reduced = [worker.all_reduce.remote() for worker in first]  # rank 0 waits in it for rank 1
    wait = 'job_name="ray-test"'
    waited = wait_for(
        lambda: head_values(config, "torch_compile_wait_rank_seconds_total").get(wait),
        timeout=SLOW_S,
    )
    ray.get(slow, timeout=120)
    assert ray.get(reduced, timeout=90) == [2.0, 2.0]
    assert all(ray.get([w.flush.remote() for w in first], timeout=60))
    time.sleep(3)  # a round after the compile ended: the wait is counted whole
    waits = head_values(config, "torch_compile_wait_rank_seconds_total")
    assert SLOW_S - 3 <= waits[wait] <= SLOW_S + 3 and waits[wait] >= waited  # one rank waited
    findings = ray.get(head.check_divergences.remote(final=True), timeout=60)
    (straggler,) = [f for f in findings if f["kind"] == "compile_straggler"]
    assert straggler["compile_id"] == "1/0"
    assert straggler["groups"]["because a compile id (1/0) only it has"] == ["1"]
    redundant = wait_for(
        lambda: head_values(config, "torch_compile_redundant_seconds_total").get(
            'job_name="ray-test",scope="job"'
        )
    )
    assert redundant > 0  # both ranks compiled x * 2 (0/0, one graph hash), no cache served it

    second = job(config, "ray-test-2")  # the same program again: a shared cache would serve it
    assert all(ray.get([w.flush.remote() for w in second], timeout=60))
    fleet = 'job_name="ray-test-2",scope="fleet"'
    assert wait_for(lambda: head_values(config, "torch_compile_redundant_seconds_total").get(fleet))
    assert (
        head_values(config, "torch_compile_redundant_seconds_total")[
            'job_name="ray-test-2",scope="job"'
        ]
        == 0.0
    )  # counted once, in the fleet scope

    serve.print_status(ray.get(head.status.remote(), timeout=60))
    status = capsys.readouterr().out
    assert "because a compile id (1/0) only it has" in status
    assert "ray-test: ranks waited" in status
    assert "ray-test: 2 ranks compiled the same 1 graphs" in status
    assert "ray-test-2: " in status and "compiling graphs an earlier job had compiled" in status

    report = aotwatch("report", config.archive.path)
    assert report.returncode == 0, report.stderr
    text = report.stdout.split("compile cost:")[1]
    assert "ray-test: 2 ranks compiled the same 1 graphs" in text
    assert "ray-test: ranks waited" in text
    assert "ray-test-2: " in text and "compiling graphs an earlier job had compiled" in text

    page = config.archive.path + "/report.html"
    html = aotwatch("report", config.archive.path, "--format", "html", "-o", page)
    assert html.returncode == 0, html.stderr
    with open(page, encoding="utf-8") as out:
        text = out.read()
    assert "ranks compiled the same 1 graphs" in text
    assert "compiling graphs an earlier job had compiled" in text
    assert "rank 1 compiled 1/0 for " in text and "a compile id (1/0) only it has" in text
