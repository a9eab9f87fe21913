"""Capture in this process: ``attach()`` picks where records go (this node's collector in a Ray
worker or with ``cluster.address`` set, else local mode) and installs the hooks."""

from __future__ import annotations

import logging
import os
import sys
import threading
from dataclasses import dataclass
from typing import Any

from aotwatch.attachment.local import local_sink
from aotwatch.capture import hooks
from aotwatch.capture.session import CaptureSession
from aotwatch.core.config import Config, load_config
from aotwatch.export.server import MetricsServer

log = logging.getLogger("aotwatch")


@dataclass
class Attachment:
    """What ``attach()`` set up; ``detach()`` takes it down."""

    config: Config
    sink: Any  # RecordSink, or in a Ray worker a cluster.push.RecordPusher
    server: MetricsServer | None

    @property
    def url(self) -> str | None:
        """The /metrics URL, or None when export is disabled."""
        return self.server.url if self.server else None


_lock = threading.Lock()
_current: Attachment | None = None


def _show_info_logs() -> None:
    """Print aotwatch's INFO lines (the metrics URL) unless the application configured logging."""
    if not logging.getLogger().hasHandlers() and not log.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)


def _in_ray() -> bool:
    if "ray" not in sys.modules:  # never import Ray just to find out
        return False
    from aotwatch.cluster.workers import in_ray_worker

    return in_ray_worker()


def _sink(config: Config) -> tuple[Any, MetricsServer | None, str]:
    """The cluster sink in a Ray worker or with ``cluster.address`` set, else local mode (and
    local mode, after one warning, when the cluster cannot be reached)."""
    unreachable = None
    if _in_ray() or config.cluster.address:
        from aotwatch.cluster.workers import ClusterUnreachable, cluster_sink

        try:
            return cluster_sink(config), None, "pushed to this node's collector"
        except ClusterUnreachable as err:
            unreachable = err
    sink, server = local_sink(config)
    where = server.url if server else "not served (export.enabled: false)"
    if unreachable:
        log.warning(
            "aotwatch: %s; capturing in this process instead (metrics %s)", unreachable, where
        )
    return sink, server, where


def attach(config: Config | str | os.PathLike | None = None) -> Attachment:
    """Capture every compile in this process; idempotent.

    ``config`` is a Config, the path of a YAML file, or None for the defaults. In a Ray
    worker, or with ``cluster.address`` set, records go to the collector of this node;
    elsewhere, or when that cluster cannot be reached (one warning), this process aggregates
    them and serves its own /metrics (local mode). Raises ConfigError for a bad config,
    ExportError when /metrics cannot be served and OSError (``archive.UnsafePath`` among
    them) when the archive directory cannot be used; nothing is installed then.
    """
    global _current
    with _lock:
        if _current is not None:
            return _current
        if not isinstance(config, Config):
            config = load_config(config)
        _show_info_logs()
        sink, server, where = _sink(config)
        session = CaptureSession(
            sink,
            job_name=config.job_name,
            node_counts=config.capture.node_counts,
            graph_hashes=config.capture.graph_hashes,
            compare_group_env=config.capture.compare_group_env,
        )
        try:
            installed = hooks.install(session)
        except BaseException:
            if server:
                server.close()
            sink.close()
            raise
        log.info(
            "aotwatch: capturing compiles of job %r (%d hooks); metrics %s",
            config.job_name,
            installed,
            where,
        )
        _current = Attachment(config, sink, server)
        return _current


def detach() -> None:
    """Stop capturing; deliver or close what is pending; a no-op when not attached."""
    global _current
    with _lock:
        if _current is None:
            return
        hooks.uninstall()
        if _current.server:
            _current.server.close()
        _current.sink.close()
        _current = None


def current() -> Attachment | None:
    """The live attachment of this process, if any."""
    return _current
