"""Local mode: aggregate this process's records here and serve /metrics from here."""

from __future__ import annotations

from aotwatch.core.archive import ArchiveWriter
from aotwatch.core.config import Config, ConfigError
from aotwatch.core.identity import local_rank, rank_and_world_size
from aotwatch.core.liveness import LOCAL_WORKER, Liveness
from aotwatch.core.sink import RecordSink
from aotwatch.core.wire import Worker
from aotwatch.export.collector import AggregateCollector, registry_for
from aotwatch.export.server import MetricsServer, serve_metrics


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


def local_sink(config: Config) -> tuple[RecordSink, MetricsServer | None]:
    """Aggregate here and serve /metrics; the archive is opened once the port is bound, so
    a port in use leaves no archive behind."""
    limits = config.limits
    liveness = Liveness(None, limits.max_workers_per_job, limits.max_series_per_metric)
    liveness.seen(Worker(LOCAL_WORKER, config.job_name, rank_and_world_size()[0]))  # never leaves
    sink = RecordSink(limits.max_series_per_metric, liveness=liveness)
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
