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

from aotwatch.archive import ArchiveWriter, UnsafePath, read_json_lines, set_aside
from aotwatch.lru import LruCache
from aotwatch.metrics import CAPTURE_ERRORS, RECORDS_DROPPED, RECORDS_REJECTED
from aotwatch.records import MAX_ID, MAX_NUMBER, RecordError, label_value_problem
from aotwatch.sink import RecordSink

COUNTS_FILE = "counts.jsonl"
KINDS = {"dropped": (RECORDS_DROPPED, "reason"), "capture_errors": (CAPTURE_ERRORS, "stage")}
"""What a worker counts -> the family it adds to and the label its counts are by (besides
job_name)."""
MAX_LABELS = 64
"""Reasons or stages per kind that one worker may report (aotwatch's own are a handful)."""
MAX_WORKERS = 100_000
"""Workers whose totals are remembered; the least recently heard from are forgotten first
(one forgotten and then heard from again would have its totals added again)."""

Totals = dict[str, dict[str, int]]


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
            elif _valid_entry(entry):
                if entry["job_name"] not in skip:
                    self._apply(entry["worker_id"], entry["job_name"], entry["totals"])
            else:
                self.sink.inc(RECORDS_REJECTED, reason="wrong_type")

    def add(self, worker_id: str, job_name: str, totals: Any) -> None:
        """Apply what ``totals`` ({kind: {label: count}}) adds to this worker's last ones,
        persisted first: OSError, with nothing applied, when the write fails."""
        entry = {"worker_id": worker_id, "job_name": job_name, "totals": totals}
        if not _valid_entry(entry) or not self._grew(worker_id, totals):
            return
        self._writer.append(entry)
        self._apply(worker_id, job_name, totals)

    def close(self) -> None:
        self._writer.close()

    def _grew(self, worker_id: str, totals: Totals) -> bool:
        known = self._known.get(worker_id, {})
        return any(
            count > known.get(kind, {}).get(label, 0)
            for kind, counts in totals.items()
            for label, count in counts.items()
        )

    def _apply(self, worker_id: str, job_name: str, totals: Totals) -> None:
        known = self._known.pop(worker_id, {})
        for kind, counts in totals.items():
            family, by = KINDS[kind]
            applied = known.setdefault(kind, {})
            for label, count in counts.items():
                growth = count - applied.get(label, 0)
                if growth > 0:
                    self.sink.inc(family, growth, job_name=job_name, **{by: label})
                    applied[label] = count
        self._known.put(worker_id, known)


def _valid_entry(entry: Any) -> bool:
    """A dict of a worker id, a job name and totals, each in shape."""
    return (
        isinstance(entry, dict)
        and _valid_names(entry.get("worker_id"), entry.get("job_name"))
        and _valid_totals(entry.get("totals"))
    )


def _valid_names(worker_id: Any, job_name: Any) -> bool:
    return (
        isinstance(worker_id, str)
        and isinstance(job_name, str)
        and len(worker_id) <= MAX_ID
        and label_value_problem(job_name) is None
    )


def _valid_totals(totals: Any) -> bool:
    """Known kinds, at most MAX_LABELS labels each, of bounded length, with bounded counts."""
    return isinstance(totals, dict) and all(
        kind in KINDS
        and isinstance(counts, dict)
        and len(counts) <= MAX_LABELS
        and all(
            isinstance(label, str)
            and label_value_problem(label) is None
            and type(count) is int
            and 0 <= count <= MAX_NUMBER
            for label, count in counts.items()
        )
        for kind, counts in totals.items()
    )
