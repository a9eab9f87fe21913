"""Placing aotwatch's actors on a Ray cluster: named, detached, zero-CPU, restarted by Ray;
one collector pinned to every node."""

from __future__ import annotations

from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from aotwatch.cluster.collector import NodeCollector
from aotwatch.cluster.paths import collector_name
from aotwatch.core.config import Config

_CollectorActor = ray.remote(NodeCollector)


def daemon_actor_options(name: str, config: Config) -> dict[str, Any]:
    """A named, detached, zero-CPU actor in aotwatch's namespace that Ray restarts forever."""
    return {
        "name": name,
        "namespace": config.cluster.namespace,
        "lifetime": "detached",
        "get_if_exists": True,
        "num_cpus": 0,
        "max_restarts": -1,
        "max_task_retries": -1,
    }


def ensure_collector(node_id: str, config: Config) -> Any:
    """The collector actor of ``node_id``, created (pinned to that node) if there is none."""
    return _CollectorActor.options(
        **daemon_actor_options(collector_name(node_id), config),
        scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False),
    ).remote(node_id, config)


def alive_nodes() -> list[str]:
    return [node["NodeID"] for node in ray.nodes() if node["Alive"]]
