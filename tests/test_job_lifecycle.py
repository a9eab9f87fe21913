"""Jobs come and go under ``aotwatch serve``: the newest job keeps its series at a low
cardinality cap, finished jobs leave /metrics after their retention, and the head's findings
leave with them. A real local Ray cluster, a real ``aotwatch serve``, real scrapes."""

from __future__ import annotations

import dataclasses
import signal
import uuid

import pytest
import ray

from aotwatch.cluster.paths import HEAD_NAME, collector_name
from cluster_helpers import Worker, actor_pid, cluster_config, ranked_worker, start_serve
from helpers import samples, scrape, wait_for

pytestmark = [pytest.mark.ray, pytest.mark.subprocess]

RETENTION_S = 4
CAP = 30
JOBS = 6


def job_series(text: str, job: str) -> set[tuple[str, tuple]]:
    """A job's samples by name and labels, the job name left out (to compare jobs)."""
    return {
        (name, tuple((k, v) for k, v in labels if k != "job_name"))
        for name, labels in samples(text)
        if ("job_name", job) in labels
    }


def value(text: str, name: str, **labels: str) -> float:
    return samples(text).get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture
def served(ray_session, tmp_path):
    """``aotwatch serve`` with a short retention and a low cap; yields the config workers
    use and the URLs of the collector's and the head's /metrics."""
    namespace = f"aotwatch-life-{uuid.uuid4().hex[:8]}"
    path = tmp_path / "aotwatch.yaml"
    path.write_text(
        f"cluster: {{namespace: {namespace}}}\n"
        "collector: {address: 127.0.0.1, port: 0, head_port: 0, worker_timeout_s: 1, "
        f"job_retention_s: {RETENTION_S}}}\n"
        f"limits: {{max_series_per_metric: {CAP}}}\n"
        f"archive: {{path: {tmp_path / 'archive'}}}\n"
    )
    serve = start_serve(path)
    try:
        node_id = ray.get_runtime_context().get_node_id()
        collector = ray.get_actor(collector_name(node_id), namespace=namespace)
        head = ray.get_actor(HEAD_NAME, namespace=namespace)
        port = ray.get(collector.endpoint.remote(), timeout=30).port
        head_port = ray.get(head.status.remote(), timeout=30).head.port
        yield (
            cluster_config(tmp_path, namespace),
            f"http://127.0.0.1:{port}/metrics",
            f"http://127.0.0.1:{head_port}/metrics",
        )
    finally:
        serve.send_signal(signal.SIGINT)
        serve.communicate(timeout=120)


def diverging_ranks(config, job: str) -> list:
    """Two ranks of ``job`` that compile different graphs (a graph_hash divergence), their
    records delivered."""
    ranks = [ranked_worker(rank) for rank in range(2)]
    ray.get(
        [w.attach.remote(dataclasses.replace(config, job_name=job)) for w in ranks], timeout=120
    )
    ray.get([ranks[0].compile_fn.remote("x * 2"), ranks[1].compile_fn.remote("x + 1")], timeout=120)
    assert all(ray.get([w.flush.remote() for w in ranks], timeout=60))
    return ranks


def test_the_newest_job_keeps_its_series_and_finished_jobs_leave(served):
    config, metrics, head_metrics = served

    # job-0: two ranks that compile different graphs, a divergence the head reports.
    ranks = diverging_ranks(config, "job-0")
    divergence = (
        "torch_compile_rank_divergences_total",
        {"job_name": "job-0", "kind": "graph_hash"},
    )
    wait_for(
        lambda: value(scrape(head_metrics), divergence[0], **divergence[1]) == 1,
        timeout=60,
        message="the head to report job-0's divergence",
    )
    ray.get([w.detach.remote() for w in ranks], timeout=60)  # goodbye
    for worker in ranks:
        ray.kill(worker)

    # Jobs 1..N in sequence, each after the one before has finished: together far more
    # series than the cap holds.
    first = None
    for index in range(1, JOBS + 1):
        job = f"job-{index}"
        wait_for(
            lambda: value(scrape(metrics), "aotwatch_jobs", state="running") == 0,
            timeout=30,
            message="the previous job to finish",
        )
        worker = Worker.remote()
        ray.get(worker.attach.remote(dataclasses.replace(config, job_name=job)), timeout=120)
        ray.get(worker.run.remote("training_step", "input_mutation"), timeout=300)
        assert ray.get(worker.flush.remote(), timeout=60)
        text = scrape(metrics)
        series = job_series(text, job)
        assert value(text, "aotwatch_jobs", state="running") == 1
        first = first or series
        # The newest job has every series the first one had, however full the cap is.
        assert series == first, f"{job} lacks {sorted(first - series)[:5]}"
        ray.get(worker.detach.remote(), timeout=60)
        ray.kill(worker)

    mutations = [name for name, _ in first if name == "torch_compile_input_mutations_total"]
    assert len(mutations) * JOBS > CAP  # the jobs together needed evictions
    dropped = [v for (name, _), v in samples(scrape(metrics)).items() if "series_dropped" in name]
    assert not any(dropped)
    # Retention runs out: every finished job's series leave, and the head's findings too.
    wait_for(
        lambda: not any(job_series(scrape(metrics), f"job-{i}") for i in range(JOBS + 1)),
        timeout=60,
        message="finished jobs to leave /metrics",
    )
    text = scrape(metrics)
    assert value(text, "aotwatch_jobs", state="running") == 0
    assert value(text, "aotwatch_jobs", state="finished") == 0
    wait_for(
        lambda: value(scrape(head_metrics), divergence[0], **divergence[1]) == 0,
        timeout=30,
        message="job-0's divergence to leave the head",
    )


def test_a_restarted_head_rebuilds_its_findings_from_the_collectors(served):
    config, _, head_metrics = served
    ranks = diverging_ranks(config, "split")
    labels = {"job_name": "split", "kind": "graph_hash"}
    name = "torch_compile_rank_divergences_total"
    wait_for(
        lambda: value(scrape(head_metrics), name, **labels) == 1,
        timeout=60,
        message="the head to report the divergence",
    )
    head = ray.get_actor(HEAD_NAME, namespace=config.cluster.namespace)
    before = actor_pid(head)
    ray.kill(head, no_restart=False)  # Ray starts it again: it has no state of its own
    wait_for(lambda: actor_pid(head) != before, timeout=60, message="the head to restart")
    port = ray.get(head.status.remote(), timeout=60).head.port
    restarted = f"http://127.0.0.1:{port}/metrics"
    wait_for(
        lambda: value(scrape(restarted), name, **labels) == 1,
        timeout=30,
        message="the restarted head to find the divergence again",
    )
    for worker in ranks:
        ray.kill(worker)
