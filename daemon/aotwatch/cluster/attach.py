"""The three ways onto Ray workers: a runtime_env setup hook, existing actors, explicit attach.

All three end in ``aotwatch.attach()`` inside the worker process, which finds the collector of
its node by node id and pushes its records there (``cluster.workers``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

import ray

from aotwatch.attachment.first_compile import attach_at_first_compile
from aotwatch.cluster.workers import runtime_env
from aotwatch.core.config import Config, config_from_env

__all__ = ["attach_actors", "runtime_env", "worker_process_setup"]


def worker_process_setup() -> None:
    """The runtime_env setup hook: attach at the process's first ``torch.compile``."""
    import aotwatch

    config = config_from_env()

    def attach() -> None:
        try:
            aotwatch.attach(config)
        except Exception:  # noqa: BLE001 - never break the user's compile
            logging.getLogger("aotwatch").warning("aotwatch: attach failed", exc_info=True)

    attach_at_first_compile(attach)


def _attach_in_actor(actor: Any, config: Config) -> int:
    import aotwatch

    aotwatch.attach(config)
    return os.getpid()


def attach_actors(actors: Sequence[Any], config: Config | None = None, timeout: float = 120):
    """Attach aotwatch inside each of these existing actors' processes; returns their pids."""
    config = config or Config()
    refs = [actor.__ray_call__.remote(_attach_in_actor, config) for actor in actors]
    return ray.get(refs, timeout=timeout)
