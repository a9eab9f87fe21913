"""aotwatch on a real local Ray cluster: attach modes, the push path, collector restarts."""

from __future__ import annotations

import uuid

import pytest
import ray

from aotwatch.cluster.attach import attach_actors
from aotwatch.cluster.file_sd import file_sd_path
from aotwatch.cluster.head import ensure_head, stop_daemon
from aotwatch.cluster.paths import collector_name
from cluster_helpers import (
    Worker,
    actor_pid,
    cluster_config,
    collector_targets,
    collector_values,
    ranked_worker,
    start_serve,
    total,
)
from helpers import scrape, wait_for
from programs import observed, truth_of

pytestmark = [pytest.mark.ray, pytest.mark.subprocess]


@pytest.fixture
def config(ray_session, tmp_path):
    config = cluster_config(tmp_path, namespace=f"aotwatch-test-{uuid.uuid4().hex[:8]}")
    head = ensure_head(config)
    yield config
    del head
    stop_daemon(config)


def node_collector(config):
    node_id = ray.get_runtime_context().get_node_id()
    return ray.get_actor(collector_name(node_id), namespace=config.cluster.namespace)


def test_explicit_attach_pushes_to_the_node_collector(config):
    worker = Worker.remote()
    ray.get(worker.attach.remote(config), timeout=120)
    ray.get(worker.run.remote("training_step", "input_mutation"), timeout=300)
    assert ray.get(worker.flush.remote(), timeout=60)
    collector = node_collector(config)
    snapshot = ray.get(collector.snapshot.remote(), timeout=30)
    assert observed(snapshot) == truth_of("training_step", "input_mutation")
    endpoint = ray.get(collector.endpoint.remote(), timeout=30)
    text = scrape(f"http://127.0.0.1:{endpoint.port}/metrics")
    assert 'torch_compile_graphs_total{device="cpu",graph="backward",job_name="ray-test"' in text
    assert scrape(f"http://127.0.0.1:{endpoint.port}/healthz") == "ok\n"
    assert scrape(f"http://127.0.0.1:{endpoint.port}/readyz") == "ok\n"
    assert collector_values(collector, "aotwatch_workers_attached") == {("ray-test",): 1}


def test_attach_to_existing_actors(config):
    workers = [Worker.remote() for _ in range(2)]
    pids = attach_actors(workers, config)
    assert len(set(pids)) == 2
    ray.get([w.run.remote("effect_token") for w in workers], timeout=300)
    assert all(ray.get([w.flush.remote() for w in workers], timeout=60))
    collector = node_collector(config)
    assert total(collector, "torch_compile_effect_tokens") == 2
    assert collector_values(collector, "aotwatch_workers_attached") == {("ray-test",): 2}


def test_collector_killed_mid_job_loses_and_doubles_nothing(config):
    worker = Worker.remote()
    ray.get(worker.attach.remote(config), timeout=120)
    collector = node_collector(config)
    for name in ("training_step", "input_mutation"):  # acknowledged, then the collector dies
        ray.get(worker.run.remote(name), timeout=300)
        assert ray.get(worker.flush.remote(), timeout=120)
        ray.kill(collector, no_restart=False)  # Ray restarts it; it replays its archive
    ray.get(worker.run.remote("output_aliases_input"), timeout=300)
    ray.kill(collector, no_restart=False)  # while records may be in flight
    assert ray.get(worker.flush.remote(), timeout=120)
    snapshot = ray.get(collector.snapshot.remote(), timeout=60)
    assert observed(snapshot) == truth_of("training_step", "input_mutation", "output_aliases_input")
    endpoint = ray.get(collector.endpoint.remote(), timeout=30)
    assert endpoint.replayed >= 4  # this instance rebuilt itself from the archive


def test_a_worker_that_exits_keeps_its_counters_and_loses_its_gauges(config):
    worker = Worker.remote()
    ray.get(worker.attach.remote(config), timeout=120)
    ray.get(worker.run.remote("input_mutation"), timeout=300)
    assert ray.get(worker.flush.remote(), timeout=60)
    collector = node_collector(config)
    assert collector_values(collector, "aotwatch_workers_attached") == {("ray-test",): 1}
    assert collector_values(collector, "torch_compile_last_compile_timestamp_seconds")
    ray.kill(worker)  # no goodbye: the collector notices its silence
    attached = lambda: collector_values(collector, "aotwatch_workers_attached")  # noqa: E731
    wait_for(lambda: not attached().get(("ray-test",)), timeout=30, message="the worker to expire")
    assert collector_values(collector, "torch_compile_last_compile_timestamp_seconds") == {}
    assert total(collector, "torch_compile_graphs") == 1


def test_file_sd_follows_a_collector_that_restarted_on_another_port(config):
    collector = node_collector(config)
    node_id = ray.get_runtime_context().get_node_id()
    before, pid = collector_targets(file_sd_path(config))[node_id], actor_pid(collector)
    ray.kill(collector, no_restart=False)  # port 0: the new instance binds another port
    wait_for(lambda: actor_pid(collector) != pid, timeout=60, message="the collector back")
    wait_for(
        lambda: collector_targets(file_sd_path(config))[node_id] != before,
        timeout=30,
        message="file_sd to list the new port",
    )
    target = collector_targets(file_sd_path(config))[node_id]
    assert scrape(f"http://{target}/healthz") == "ok\n"


def test_divergent_ranks_are_found(config):
    head = ray.get_actor("aotwatch-head", namespace=config.cluster.namespace)
    ranks = [ranked_worker(rank) for rank in range(2)]
    ray.get([w.attach.remote(config) for w in ranks], timeout=120)
    ray.get([ranks[0].compile_fn.remote("x * 2"), ranks[1].compile_fn.remote("x + 1")], timeout=120)
    assert all(ray.get([w.flush.remote() for w in ranks], timeout=60))
    findings = ray.get(head.check_divergences.remote(final=True), timeout=60)
    kinds = {(f["kind"], f["compile_id"]) for f in findings}
    assert ("graph_hash", "0/0") in kinds
    (graph_hash,) = [f for f in findings if f["kind"] == "graph_hash"]
    assert sorted(rank for ranks in graph_hash["groups"].values() for rank in ranks) == ["0", "1"]
    status = ray.get(head.status.remote(), timeout=30)
    text = scrape(f"http://127.0.0.1:{status.head.port}/metrics")
    assert 'torch_compile_rank_divergences_total{job_name="ray-test",kind="graph_hash"} 1.0' in text


def test_status_lists_collectors_workers_and_divergences(config, tmp_path):
    from helpers import aotwatch

    worker = Worker.remote()
    ray.get(worker.attach.remote(config), timeout=120)
    ray.get(worker.run.remote("input_mutation"), timeout=300)
    assert ray.get(worker.flush.remote(), timeout=60)
    path = tmp_path / "aotwatch.yaml"
    path.write_text(f"cluster: {{namespace: {config.cluster.namespace}}}\n")
    address = ray.get_runtime_context().gcs_address
    result = aotwatch("status", "--config", str(path), "--address", address, timeout=120)
    assert result.returncode == 0, result.stderr
    node_id = ray.get_runtime_context().get_node_id()
    assert f"node {node_id[:12]}" in result.stdout and "healthy" in result.stdout
    assert "ray-test: 1 workers attached (ranks 0)" in result.stdout
    assert "divergences: none" in result.stdout


def test_serve_runs_until_interrupted_then_removes_its_collectors(ray_session, tmp_path):
    import signal

    namespace = f"aotwatch-serve-{uuid.uuid4().hex[:8]}"
    path = tmp_path / "aotwatch.yaml"
    path.write_text(
        f"cluster: {{namespace: {namespace}}}\n"
        "collector: {address: 127.0.0.1, port: 0, head_port: 0}\n"
        f"archive: {{path: {tmp_path / 'archive'}}}\n"
    )
    serve = start_serve(path)
    try:
        node_id = ray.get_runtime_context().get_node_id()
        assert ray.get_actor(collector_name(node_id), namespace=namespace)
    finally:
        serve.send_signal(signal.SIGINT)
        output, _ = serve.communicate(timeout=120)
    assert serve.returncode == 0, output
    assert "stopping the collectors" in output
    wait_for(
        lambda: not _actor_exists(collector_name(node_id), namespace),
        timeout=30,
        message="the collector to be removed",
    )


def _actor_exists(name: str, namespace: str) -> bool:
    try:
        ray.get_actor(name, namespace=namespace)
    except ValueError:
        return False
    return True
