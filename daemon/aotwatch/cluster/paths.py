"""Names and directories that workers, collectors, the head and the CLI share.

Kept apart from ``cluster.collector`` so ``cluster.workers``, ``cluster.spool`` and the CLI
need not import the collector actor's module to find these.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from aotwatch.core.archive import private_directory
from aotwatch.core.config import Config

HEAD_NAME = "aotwatch-head"
SPOOL_DIR = "spool"


def collector_name(node_id: str) -> str:
    """The Ray actor name of a node's collector."""
    return f"aotwatch-collector-{node_id}"


def archive_root(config: Config) -> Path:
    """Where collectors keep their archives and the head its file_sd file."""
    return Path(config.archive.path or os.path.join(tempfile.gettempdir(), "aotwatch"))


def collector_directory(config: Config, node_id: str) -> Path:
    """A node's collector directory: its archive, its counts and the workers' spool.

    The root is private to this user (0711: Prometheus, as another user, may read file_sd
    in it by name); everything below it is 0700. UnsafePath when someone else controls it.
    """
    collectors = private_directory(archive_root(config), 0o711) / "collectors"
    return private_directory(private_directory(collectors) / node_id)


def spool_directory(config: Config, node_id: str) -> Path:
    """Where a worker leaves, at exit, what its collector did not acknowledge in time."""
    return private_directory(collector_directory(config, node_id) / SPOOL_DIR)
