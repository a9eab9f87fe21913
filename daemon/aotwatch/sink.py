"""The in-process sink of local mode: a locked Aggregate, and optionally an archive."""

from __future__ import annotations

import logging
import threading
from typing import Any

from aotwatch.aggregate import Aggregate, Snapshot
from aotwatch.archive import ArchiveWriter

log = logging.getLogger(__name__)


class LocalSink:
    """Folds records into an Aggregate (and appends them to an archive) under one lock."""

    def __init__(self, max_series_per_metric: int, archive: ArchiveWriter | None = None) -> None:
        self.aggregate = Aggregate(max_series_per_metric)
        self.archive = archive
        self._lock = threading.Lock()

    def record(self, record: dict[str, Any]) -> bool:
        """Fold and archive ``record``; False if it was a duplicate or malformed."""
        return bool(self.record_batch([record]))

    def record_batch(self, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Fold records and archive the accepted ones with one write; returns those."""
        with self._lock:
            accepted = [record for record in records if self.aggregate.add(record)]
            if self.archive is not None and accepted:
                try:
                    self.archive.append(*accepted)
                except OSError:
                    for record in accepted:
                        labels = (record["job_name"], "archive_write")
                        self.aggregate.inc("aotwatch_records_dropped", labels)
                    log.warning("aotwatch: cannot append to %s", self.archive.path, exc_info=True)
            return accepted

    def inc(self, metric: str, labels: tuple[str, ...], amount: float = 1) -> None:
        """Add to one of aotwatch's own counters."""
        with self._lock:
            self.aggregate.inc(metric, labels, amount)

    def capture_error(self, job_name: str, stage: str) -> None:
        self.inc("aotwatch_capture_errors", (job_name, stage))

    def attach_worker(self, job_name: str, hostname: str, pid: int) -> None:
        with self._lock:
            self.aggregate.attach_worker(job_name, hostname, pid)

    def close(self) -> None:
        """Close the archive, if any."""
        if self.archive is not None:
            self.archive.close()

    def snapshot(self) -> Snapshot:
        with self._lock:
            return self.aggregate.snapshot()
