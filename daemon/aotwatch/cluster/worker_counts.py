"""The drop and capture-error counts that workers send beside their records.

A worker sends its running totals (since it started) with every batch, so a
lost, resent or reordered batch costs nothing: the collector adds only what a
worker's totals grew by since it last saw them. It appends every growth to
``counts.jsonl`` before applying it, and a restarted collector rebuilds the same
totals from that file.
"""

from __future__ import annotations

import json
import logging
import os
from collections import OrderedDict
from pathlib import Path
from typing import Any

from aotwatch.archive import ArchiveWriter
from aotwatch.records import MAX_ID, MAX_LABEL, MAX_NUMBER
from aotwatch.sink import LocalSink

log = logging.getLogger(__name__)

COUNTS_FILE = "counts.jsonl"
KINDS = {"dropped": "aotwatch_records_dropped", "capture_errors": "aotwatch_capture_errors"}
"""What a worker counts -> the family it adds to (labels: job_name and the reason/stage)."""
MAX_LABELS = 64
"""Reasons or stages per kind that one worker may report (aotwatch's own are a handful)."""
MAX_WORKERS = 100_000
"""Workers whose totals are remembered; the least recently heard from are forgotten first
(one forgotten and then heard from again would have its totals added again)."""

Totals = dict[str, dict[str, int]]


class CountsLedger:
    """Turns workers' running totals into counter increments, persisted (see module doc)."""

    def __init__(self, directory: str | os.PathLike, sink: LocalSink) -> None:
        self.sink = sink
        self._known: OrderedDict[str, Totals] = OrderedDict()  # worker id -> totals applied
        for entry in _read(Path(directory) / COUNTS_FILE):
            self._apply(entry["worker_id"], entry["job_name"], entry["totals"])
        self._writer = ArchiveWriter(directory, COUNTS_FILE)

    def add(self, worker_id: str, job_name: str, totals: Any) -> None:
        """Apply what ``totals`` ({kind: {label: count}}) adds to this worker's last ones."""
        if not (_valid_names(worker_id, job_name) and _valid_totals(totals)):
            return
        if not self._grew(worker_id, totals):
            return
        entry = {"worker_id": worker_id, "job_name": job_name, "totals": totals}
        try:
            self._writer.append(entry)
        except OSError:
            log.warning("aotwatch: cannot append to %s", self._writer.path, exc_info=True)
        self._apply(worker_id, job_name, totals)

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
            applied = known.setdefault(kind, {})
            for label, count in counts.items():
                growth = count - applied.get(label, 0)
                if growth > 0:
                    self.sink.inc(KINDS[kind], (job_name, label), growth)
                    applied[label] = count
        self._known[worker_id] = known  # most recently heard from last
        if len(self._known) > MAX_WORKERS:
            self._known.popitem(last=False)


def _valid_names(worker_id: Any, job_name: Any) -> bool:
    return (
        isinstance(worker_id, str)
        and isinstance(job_name, str)
        and len(worker_id) <= MAX_ID
        and len(job_name) <= MAX_LABEL
    )


def _valid_totals(totals: Any) -> bool:
    """Known kinds, at most MAX_LABELS labels each, of bounded length, with bounded counts."""
    return isinstance(totals, dict) and all(
        kind in KINDS
        and isinstance(counts, dict)
        and len(counts) <= MAX_LABELS
        and all(
            isinstance(label, str)
            and len(label) <= MAX_LABEL
            and type(count) is int
            and 0 <= count <= MAX_NUMBER
            for label, count in counts.items()
        )
        for kind, counts in totals.items()
    )


def _read(path: Path) -> list[dict[str, Any]]:
    """The valid entries of a counts file (none if it does not exist)."""
    if not path.exists():
        return []
    entries = []
    with open(path, encoding="utf-8") as lines:
        for line in lines:
            try:
                entry = json.loads(line)
            except ValueError:
                continue  # a line torn by a crash: its batch was never acknowledged
            if (
                isinstance(entry, dict)
                and _valid_names(entry.get("worker_id"), entry.get("job_name"))
                and _valid_totals(entry.get("totals"))
            ):
                entries.append(entry)
    return entries
