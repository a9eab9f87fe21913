"""The per-node collector: its workers' records in, an archive on disk, /metrics out.

One ``NodeCollector`` actor runs on every alive node (the head places them).
It persists every record it accepts before acknowledging it, and when Ray
restarts it, it rebuilds its aggregate from that archive before it reports
ready, so a collector killed mid-job loses nothing and counts nothing twice.
"""

from __future__ import annotations

import logging
import os
import socket
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from aotwatch import divergence
from aotwatch.aggregate import Snapshot
from aotwatch.archive import ArchiveWriter, read_archive
from aotwatch.cluster.worker_counts import CountsLedger
from aotwatch.config import Config
from aotwatch.export.collector import AggregateCollector, registry_for
from aotwatch.export.server import serve_metrics
from aotwatch.records import RecordError
from aotwatch.sink import LocalSink

log = logging.getLogger(__name__)

HEAD_NAME = "aotwatch-head"


def collector_name(node_id: str) -> str:
    """The Ray actor name of a node's collector."""
    return f"aotwatch-collector-{node_id}"


def archive_root(config: Config) -> Path:
    """Where collectors keep their archives and the head its file_sd file."""
    return Path(config.archive.path or os.path.join(tempfile.gettempdir(), "aotwatch"))


class NodeCollector:
    """Aggregates the records of one node's workers (a Ray actor: see ``cluster.daemon``)."""

    def __init__(self, node_id: str, config: Config) -> None:
        self.node_id = node_id
        self.config = config
        self._ready = False
        self._lock = threading.Lock()
        self._workers: dict[str, dict[str, Any]] = {}  # worker id -> announcement + last_seen
        directory = archive_root(config) / "collectors" / node_id
        self.sink = LocalSink(config.limits.max_series_per_metric)
        self._fingerprints: divergence.Fingerprints = {}
        self.replayed = self._replay(directory)
        self.sink.archive = ArchiveWriter(directory)
        self.counts = CountsLedger(directory, self.sink)
        registry = registry_for(AggregateCollector(self.snapshot, config.labels))
        self.server = serve_metrics(
            registry,
            config.collector.address,
            config.collector.port,
            lambda: self._ready,
            web_config=config.collector.web_config,
        )
        self.hostname = socket.gethostname()
        self._ready = True
        log.info("collector %s: %d records replayed, serving %s", node_id, self.replayed,
                 self.server.url)  # fmt: skip

    def _replay(self, directory: Path) -> int:
        if not (directory / "records.jsonl").exists():
            return 0
        count = 0
        for item in read_archive(directory):
            if not isinstance(item, RecordError) and self.sink.aggregate.add(item):
                divergence.observe(self._fingerprints, item)
                count += 1
        return count

    # -- called by workers (cluster.push) ------------------------------------------------

    def push(self, worker: dict[str, Any], records: list[dict], counts: dict[str, dict]) -> int:
        """Accept a batch and the worker's running drop and capture-error totals, both
        persisted before this returns."""
        self._seen(worker)
        accepted = self.sink.record_batch(records)
        for record in accepted:
            divergence.observe(self._fingerprints, record)
        if counts:
            self.counts.add(worker["worker_id"], worker["job_name"], counts)
        return len(accepted)

    def goodbye(self, worker: dict[str, Any]) -> None:
        """A worker is exiting: its gauges go now rather than at its timeout."""
        with self._lock:
            self._workers.pop(worker["worker_id"], None)

    def _seen(self, worker: dict[str, Any]) -> None:
        with self._lock:
            self._workers[worker["worker_id"]] = {**worker, "last_seen": time.monotonic()}

    def _live_workers(self) -> list[dict[str, Any]]:
        deadline = time.monotonic() - self.config.collector.worker_timeout_s
        with self._lock:
            for worker_id in [
                w for w, info in self._workers.items() if info["last_seen"] < deadline
            ]:
                del self._workers[worker_id]
            return list(self._workers.values())

    # -- exported state ------------------------------------------------------------------

    def snapshot(self) -> Snapshot:
        """The aggregate, with gauges of departed workers expired."""
        snapshot = self.sink.snapshot()
        workers = self._live_workers()
        attached: dict[tuple[str], int] = {}
        for worker in workers:
            attached[(worker["job_name"],)] = attached.get((worker["job_name"],), 0) + 1
        snapshot.values["aotwatch_workers_attached"] = attached
        live_ranks = {(w["job_name"], str(w["rank"])) for w in workers}
        timestamps = snapshot.values.get("torch_compile_last_compile_timestamp_seconds", {})
        snapshot.values["torch_compile_last_compile_timestamp_seconds"] = {
            labels: value for labels, value in timestamps.items() if labels[:2] in live_ranks
        }
        return snapshot

    def endpoint(self) -> dict[str, Any]:
        """What file_sd and ``aotwatch status`` need to know about this collector."""
        return {
            "node_id": self.node_id,
            "hostname": self.hostname,
            "ip": scrape_host(self.config.collector.address),
            "port": self.server.port,
            "scheme": "https" if self.server.tls else "http",
            "ready": self._ready,
            "replayed": self.replayed,
            "workers": self._live_workers(),
        }

    def fingerprints(self) -> divergence.Fingerprints:
        """Per job and rank, what each compile produced: the input of divergence checks."""
        return self._fingerprints


def scrape_host(bind_address: str) -> str:
    """Where Prometheus reaches an endpoint bound to ``bind_address``: that address, or the
    node's IP for a wildcard bind."""
    if bind_address not in ("0.0.0.0", "::"):
        return bind_address
    import ray

    return ray.util.get_node_ip_address()
