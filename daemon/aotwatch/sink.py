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

    def record(self, record: dict[str, Any]) -> None:
        with self._lock:
            self.aggregate.add(record)
            if self.archive is None:
                return
            try:
                self.archive.append(record)
            except OSError:
                self.aggregate.inc(
                    "aotwatch_records_dropped", (record["job_name"], "archive_write")
                )
                log.warning("aotwatch: cannot append to %s", self.archive.path, exc_info=True)

    def capture_error(self, job_name: str, stage: str) -> None:
        with self._lock:
            self.aggregate.inc("aotwatch_capture_errors", (job_name, stage))

    def attach_worker(self, job_name: str, hostname: str, pid: int) -> None:
        with self._lock:
            self.aggregate.attach_worker(job_name, hostname, pid)

    def snapshot(self) -> Snapshot:
        with self._lock:
            return self.aggregate.snapshot()
