"""The drop and capture-error counts that workers send beside their records.

A worker sends its running totals (since it started) with every batch, so a
lost, resent or reordered batch costs nothing: the collector adds only what a
worker's totals grew by since it last saw them. It appends every growth to
``counts.jsonl`` before applying it, and a restarted collector rebuilds the same
totals from that file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from aotwatch.core.archive import ArchiveWriter, UnsafePath, read_json_lines, set_aside
from aotwatch.core.lru import LruCache
from aotwatch.core.metrics import CAPTURE_ERRORS, RECORDS_DROPPED, RECORDS_REJECTED
from aotwatch.core.records import RecordError
from aotwatch.core.sink import RecordSink
from aotwatch.core.wire import CountsEntry, Totals, WireError, decode, to_wire

COUNTS_FILE = "counts.jsonl"
KINDS = {"dropped": (RECORDS_DROPPED, "reason"), "capture_errors": (CAPTURE_ERRORS, "stage")}
"""What a worker counts (a field of ``wire.Totals``) -> the family it adds to and the label its
counts are by (besides job_name)."""
MAX_WORKERS = 100_000
"""Workers whose totals are remembered; the least recently heard from are forgotten first
(one forgotten and then heard from again would have its totals added again)."""


class CountsLedger:
    """Turns workers' running totals into counter increments, persisted (see module doc)."""

    def __init__(
        self, directory: str | os.PathLike, sink: RecordSink, skip: set[str] = frozenset()
    ) -> None:
        """Rebuild the totals from ``counts.jsonl``, but for the jobs in ``skip`` (finished
        jobs, whose series a restarted collector no longer shows)."""
        self.sink = sink
        self._known = LruCache(MAX_WORKERS)  # worker id -> totals applied
        path = Path(directory) / COUNTS_FILE
        if os.path.lexists(path):
            try:
                self._replay(path, skip)
            except UnsafePath as problem:  # not aotwatch's own: a fresh file replaces it
                sink.inc(RECORDS_REJECTED, reason="unsafe_file")
                set_aside(path, problem)
        self._writer = ArchiveWriter(directory, COUNTS_FILE)

    def _replay(self, path: Path, skip: set[str]) -> None:
        for entry in read_json_lines(path, private=True):
            if isinstance(entry, RecordError):  # a torn, corrupt or hostile line
                self.sink.inc(RECORDS_REJECTED, reason=entry.reason)
                continue
            try:
                entry = decode(CountsEntry, entry)
            except WireError:
                self.sink.inc(RECORDS_REJECTED, reason="wrong_type")
                continue
            if entry.job_name not in skip:
                self._apply(entry.worker_id, entry.job_name, entry.totals)

    def add(self, worker_id: str, job_name: str, totals: Any) -> None:
        """Apply what ``totals`` (a ``wire.Totals`` as builtins; ignored when refused) adds
        to this worker's last ones, persisted first: OSError, with nothing applied, when the
        write fails."""
        entry = {"worker_id": worker_id, "job_name": job_name, "totals": totals}
        try:
            entry = decode(CountsEntry, entry)
        except WireError:
            return
        if self._grew(worker_id, entry.totals):
            self._writer.append(to_wire(entry))
            self._apply(worker_id, job_name, entry.totals)

    def close(self) -> None:
        self._writer.close()

    def _grew(self, worker_id: str, totals: Totals) -> bool:
        known = self._known.get(worker_id, {})
        return any(
            count > known.get(kind, {}).get(label, 0)
            for kind in KINDS
            for label, count in getattr(totals, kind).items()
        )

    def _apply(self, worker_id: str, job_name: str, totals: Totals) -> None:
        known = self._known.pop(worker_id, {})
        for kind, (family, by) in KINDS.items():
            applied = known.setdefault(kind, {})
            for label, count in getattr(totals, kind).items():
                growth = count - applied.get(label, 0)
                if growth > 0:
                    self.sink.inc(family, growth, job_name=job_name, **{by: label})
                    applied[label] = count
        self._known.put(worker_id, known)
