"""Local mode: capture in this process, aggregate here, serve /metrics from here."""

from __future__ import annotations

import logging
import os
import sys
import threading
from dataclasses import dataclass
from typing import Any

from aotwatch.archive import ArchiveWriter
from aotwatch.capture import hooks
from aotwatch.capture.identity import local_rank, rank_and_world_size
from aotwatch.capture.session import CaptureSession
from aotwatch.config import Config, ConfigError, load_config
from aotwatch.export.collector import AggregateCollector, registry_for
from aotwatch.export.server import MetricsServer, serve_metrics
from aotwatch.liveness import LOCAL_WORKER, Liveness
from aotwatch.sink import LocalSink
from aotwatch.wire import Worker

log = logging.getLogger("aotwatch")


@dataclass
class Attachment:
    """What ``attach()`` set up; ``detach()`` takes it down."""

    config: Config
    sink: Any  # LocalSink, or in a Ray worker a cluster.push.RecordPusher
    server: MetricsServer | None

    @property
    def url(self) -> str | None:
        """The /metrics URL, or None when export is disabled."""
        return self.server.url if self.server else None


_lock = threading.Lock()
_current: Attachment | None = None


def export_port(config: Config) -> int:
    """The configured port, offset by the local rank (LOCAL_RANK or another launcher's) so
    ranks on one machine don't collide; ConfigError (key export.port) past 65535."""
    port = config.export.port
    name, offset = local_rank()
    if not port:
        return port
    if port + offset > 65535:
        problem = f"{port} plus {name} {offset} is past 65535"
        raise ConfigError(problem, key="export.port", expected="a lower port or 0 (any free port)")
    return port + offset


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
    from aotwatch.cluster.attach import in_ray_worker

    return in_ray_worker()


def _sink(config: Config) -> tuple[Any, MetricsServer | None, str]:
    """The cluster sink in a Ray worker or with ``cluster.address`` set, else local mode (and
    local mode, after one warning, when the cluster cannot be reached)."""
    unreachable = None
    if _in_ray() or config.cluster.address:
        from aotwatch.cluster.attach import ClusterUnreachable, cluster_sink

        try:
            return cluster_sink(config), None, "pushed to this node's collector"
        except ClusterUnreachable as err:
            unreachable = err
    sink, server = _local_sink(config)
    where = server.url if server else "not served (export.enabled: false)"
    if unreachable:
        log.warning(
            "aotwatch: %s; capturing in this process instead (metrics %s)", unreachable, where
        )
    return sink, server, where


def _local_sink(config: Config) -> tuple[LocalSink, MetricsServer | None]:
    """Aggregate here and serve /metrics; the archive is opened once the port is bound, so
    a port in use leaves no archive behind."""
    limits = config.limits
    liveness = Liveness(None, limits.max_workers_per_job, limits.max_series_per_metric)
    liveness.seen(Worker(LOCAL_WORKER, config.job_name, rank_and_world_size()[0]))  # never leaves
    sink = LocalSink(limits.max_series_per_metric, liveness=liveness)
    server = None
    if config.export.enabled:
        collector = AggregateCollector(sink.snapshot, config.labels)
        server = serve_metrics(
            registry_for(collector),
            config.export.address,
            export_port(config),
            web_config=config.export.web_config,
            limits=config.limits,
        )
    if config.archive.path:
        try:
            sink.archive = ArchiveWriter(config.archive.path)
        except OSError:
            if server:
                server.close()
            raise
    return sink, server


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
