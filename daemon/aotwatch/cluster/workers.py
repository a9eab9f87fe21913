"""Ray workers: the runtime_env that attaches every worker process of a job, and the sink that
pushes a worker's records to its node's collector."""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
from pathlib import Path
from typing import Any

import ray

from aotwatch.cluster.paths import spool_directory
from aotwatch.cluster.push import RecordPusher
from aotwatch.core.config import CONFIG_ENV, Config

log = logging.getLogger(__name__)

SETUP_HOOK = "aotwatch.cluster.attach.worker_process_setup"
"""Give this as ``runtime_env={"worker_process_setup_hook": SETUP_HOOK}``."""


def in_ray_worker() -> bool:
    """Whether this process is a Ray worker or driver connected to a cluster."""
    return "ray" in sys.modules and ray.is_initialized()


PROBE_TIMEOUT_S = 3.0
"""How long a connection to the configured cluster's address may take to answer."""


class ClusterUnreachable(ConnectionError):
    """The Ray cluster (or this node's collector) cannot be reached."""

    @classmethod
    def at(cls, address: str, err: Exception) -> ClusterUnreachable:
        return cls(f"Ray cluster {address!r} unreachable: {err}")


def probe(address: str) -> None:
    """Raise ClusterUnreachable unless ``address`` (``host:port``, ``ray://host:port``,
    ``[::1]:port``; "auto" is not probed) accepts a connection: an unreachable cluster costs
    seconds, not Ray's minutes of connection retries."""
    if address == "auto":
        return
    try:
        host, _, port = address.removeprefix("ray://").rpartition(":")
        socket.create_connection((host.strip("[]"), int(port)), timeout=PROBE_TIMEOUT_S).close()
    except (OSError, ValueError) as err:
        raise ClusterUnreachable.at(address, err) from None


def join_cluster(config: Config) -> None:
    """Connect this process to ``cluster.address`` as a Ray driver, or raise
    ClusterUnreachable (capture then stays local)."""
    address = config.cluster.address
    probe(address)
    try:
        ray.init(
            address=address,
            namespace=config.cluster.namespace,
            logging_level="WARNING",
            log_to_driver=False,
        )
    except (OSError, ValueError, RuntimeError) as err:
        raise ClusterUnreachable.at(address, err) from None


def cluster_sink(config: Config) -> RecordPusher:
    """A sink that pushes to this node's collector (created there if the head has not yet).

    Outside a Ray worker it first joins ``cluster.address``. Raises ClusterUnreachable.
    """
    from aotwatch.cluster.placement import ensure_collector

    joined = not in_ray_worker()
    if joined:
        join_cluster(config)
    try:
        node_id = ray.get_runtime_context().get_node_id()
        collector = ensure_collector(node_id, config)
    except Exception as err:  # noqa: BLE001 - whatever Ray raises, training goes on
        if joined:
            ray.shutdown()  # capture goes local: leave no half-used connection behind
        raise ClusterUnreachable(f"no collector for this node: {err}") from None
    worker = {
        "job_name": config.job_name,
        "node_id": node_id,
        "hostname": socket.gethostname(),
        "pid": os.getpid(),
    }
    heartbeat_s = config.collector.worker_timeout_s / 3  # two may be lost before it expires
    return RecordPusher(collector, worker, config.push, heartbeat_s, _spool(config, node_id))


def _spool(config: Config, node_id: str) -> Path | None:
    """This node's spool (shared with its collector), or None when it is unsafe or unwritable."""
    try:
        return spool_directory(config, node_id)
    except OSError as err:
        log.warning("aotwatch: no spool for records undelivered at exit: %s", err)
        return None


def runtime_env(config: Config, base: dict[str, Any] | None = None) -> dict[str, Any]:
    """A runtime_env that attaches aotwatch to every worker process of a Ray job."""
    env = dict(base or {})
    env["worker_process_setup_hook"] = SETUP_HOOK
    env["env_vars"] = {**env.get("env_vars", {}), CONFIG_ENV: json.dumps(config.to_dict())}
    return env
