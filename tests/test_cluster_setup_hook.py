"""Zero code change: the runtime_env setup hook attaches every worker of a Ray job.

Ray applies ``worker_process_setup_hook`` to a whole job (``ray.init(runtime_env=...)``),
so this module starts a Ray session of its own.
"""

from __future__ import annotations

import uuid

import pytest
import ray

from aotwatch.cluster.attach import runtime_env
from aotwatch.cluster.head import ensure_head, stop_daemon
from aotwatch.cluster.paths import collector_name
from cluster_helpers import WORKER_ENV, Worker, cluster_config, total

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    config = cluster_config(
        tmp_path_factory.mktemp("hook"), f"aotwatch-hook-{uuid.uuid4().hex[:8]}"
    )
    ray.init(num_cpus=2, include_dashboard=False, runtime_env=runtime_env(config, WORKER_ENV))
    ensure_head(config)
    yield config
    stop_daemon(config)
    ray.shutdown()


def test_setup_hook_attaches_at_the_first_compile_only(config):
    workers = [Worker.remote() for _ in range(2)]
    idle, compiling = workers
    assert ray.get(idle.state.remote(), timeout=120) == {
        "attached": False,
        "dynamo_imported": False,
        "pending": None,
        "captured": None,
    }
    ray.get(compiling.run.remote("graph_break", "training_step"), timeout=300)
    assert ray.get(compiling.state.remote(), timeout=30)["attached"]
    assert ray.get(compiling.flush.remote(), timeout=60)
    assert ray.get(idle.state.remote(), timeout=30)["attached"] is False
    node_id = ray.get_runtime_context().get_node_id()
    collector = ray.get_actor(collector_name(node_id), namespace=config.cluster.namespace)
    assert total(collector, "torch_compile_graph_breaks") == 1
    assert total(collector, "torch_compile_graphs") == 4  # 2 inference, forward, backward
