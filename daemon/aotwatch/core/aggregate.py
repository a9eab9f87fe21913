"""A pure fold of CompileRecords into bounded counters, histograms and gauges.

``Aggregate`` is not thread-safe: its owner serialises ``add`` and
``snapshot`` (see ``aotwatch.core.sink``). Label sets per family are capped. A family full to its
cap makes room for a new label set by dropping one of a finished job (see ``finish_job``), so
the newest job keeps its series while old ones still hold some; what the cap refuses all the
same is counted in ``aotwatch_series_dropped_total``, once per label set.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Any

from aotwatch.core.lru import LruCache
from aotwatch.core.metrics import (
    BY_NAME,
    FOLDED,
    JOBS,
    PER_JOB,
    RANK_LABELS,
    RECORDS_REJECTED,
    SERIES_DROPPED,
    Family,
    Labels,
)
from aotwatch.core.records import Record, RecordError, to_record

REFUSED_MEMORY = 100_000
"""Refused label sets remembered (by hash, about 100 bytes each), so each is counted in
series_dropped once; past this many, the least recently refused may be counted again."""
DEDUPE_WINDOW = 100_000
"""Record ids remembered to make re-delivery a no-op. Resends come within seconds (and a
restarted collector replays its archive, newest ids last), so a window of recent ids keeps
memory flat in the number of records."""


@dataclass
class Histogram:
    """Observations per bucket (the last one is +Inf), their sum and count."""

    buckets: tuple[float, ...]
    counts: list[int] = field(default_factory=list)
    sum: float = 0.0

    def __post_init__(self) -> None:
        self.counts = self.counts or [0] * (len(self.buckets) + 1)

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.sum += value

    def copy(self) -> Histogram:
        return Histogram(self.buckets, list(self.counts), self.sum)

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[tuple[str, int]]:
        """``(le, cumulative count)`` pairs as Prometheus wants them."""
        pairs, total = [], 0
        for bound, count in zip((*self.buckets, float("inf")), self.counts, strict=True):
            total += count
            pairs.append(("+Inf" if bound == float("inf") else repr(float(bound)), total))
        return pairs


@dataclass
class Snapshot:
    """Everything an exporter needs, copied out of an Aggregate at one moment."""

    values: dict[str, dict[Labels, float]]
    histograms: dict[str, dict[Labels, Histogram]]
    per_rank: bool = True
    """Whether every family is kept per rank, or those kept per node as the table says."""


class Aggregate:
    """Counters, histograms and gauges folded from records, keyed by bounded labels."""

    def __init__(
        self,
        max_series_per_metric: int = 1000,
        dedupe_window: int = DEDUPE_WINDOW,
        per_rank: bool = True,
    ) -> None:
        """``per_rank``: every family keeps its series per rank; otherwise those the table
        keeps per job on a node (``Family.kept``) sum the ranks of each job."""
        self.max_series_per_metric = max_series_per_metric
        self.per_rank = per_rank
        self._values: dict[str, dict[Labels, float]] = {}
        self._histograms: dict[str, dict[Labels, Histogram]] = {}
        self._seen_ids = LruCache(dedupe_window)
        self._jobs: dict[str, bool] = {}  # job -> finished
        self._evictable: set[str] = set()  # families that may hold a finished job's series
        self._refused = LruCache(REFUSED_MEMORY)  # hashes of (family, labels) counted
        self._folds = {  # is a frame record -> (family, fold, how it updates, by rank, labeller)
            is_frame: [
                (
                    f.name,
                    f.fold,
                    self._update(f),
                    f.labels_kept(per_rank)[: len(RANK_LABELS)] == RANK_LABELS,
                    f.labeller(),
                )
                for f in FOLDED[kind]
            ]
            for is_frame, kind in ((False, "graph"), (True, "frame"))
        }

    def _update(self, family: Family) -> Any:
        """How a family takes a folded value; None for a counter (see ``fold_batch``)."""
        if family.kind == "histogram":
            return self._observe
        return self._set_latest if family.latest else None

    # -- jobs ------------------------------------------------------------

    def finish_job(self, job_name: str, finished: bool = True) -> None:
        """Mark a job finished (its series make room for others at the cap) or running again."""
        if job_name in self._jobs:
            self._jobs[job_name] = finished
            if finished:
                self._evictable.update(PER_JOB)

    def forget_job(self, job_name: str) -> None:
        """Drop every series of a job (a finished one, past its retention)."""
        self._jobs.pop(job_name, None)
        for tables in (self._values, self._histograms):
            for metric, table in tables.items():
                if metric in PER_JOB:
                    for labels in [labels for labels in table if labels[0] == job_name]:
                        del table[labels]

    # -- generic updates -------------------------------------------------

    def _admit(self, table: dict[Labels, Any], metric: str, labels: Labels) -> bool:
        if labels in table or len(table) < self.max_series_per_metric:
            return True
        if metric == SERIES_DROPPED.name:  # one label set per family: bounded already
            return True
        if (
            metric in PER_JOB
            and not self._jobs.get(labels[0])
            and self._evict_finished(table, metric)
        ):
            return True
        self._refuse(metric, labels)
        return False

    def refuse(self, family: Family, labels: Labels) -> None:
        """Count a label set that ``family``'s cap refused in ``aotwatch_series_dropped_total``,
        once per label set (also for a family kept outside: ``liveness``'s)."""
        self._refuse(family.name, labels)

    def _refuse(self, metric: str, labels: Labels) -> None:
        refused = hash((metric, labels))
        if self._refused.get(refused) is None:
            self._refused.put(refused, True)
            self.inc(SERIES_DROPPED, metric=metric)

    def _evict_finished(self, table: dict[Labels, Any], metric: str) -> bool:
        """Drop one series of a finished job from a full family; False if it holds none."""
        if metric in self._evictable:
            for labels in table:
                if self._jobs.get(labels[0]):
                    del table[labels]
                    return True
            self._evictable.discard(metric)  # until another job finishes
        return False

    def inc(self, family: Family, amount: float = 1, **labels: str) -> None:
        """Add ``amount`` (>= 0) to one of aotwatch's own counters, its labels given by name."""
        self._inc(family.name, family.label_set(**labels), amount)

    def _inc(self, metric: str, labels: Labels, amount: float) -> None:
        """Add ``amount`` (>= 0) to a counter, created at zero (so zero series exist too)."""
        table = self._values.get(metric)
        if table is None:
            table = self._values[metric] = {}
        current = table.get(labels)
        if current is not None:
            if amount > 0:
                table[labels] = current + amount
        elif amount >= 0 and self._admit(table, metric, labels):
            table[labels] = amount

    def _set_gauge(self, metric: str, labels: Labels, value: float) -> None:
        table = self._values.setdefault(metric, {})
        if self._admit(table, metric, labels):
            table[labels] = value

    def _set_latest(self, metric: str, labels: Labels, value: float) -> None:
        """Set a gauge to ``value`` unless it holds a larger one (a timestamp)."""
        current = self._values.get(metric, {}).get(labels)
        if current is None or value > current:
            self._set_gauge(metric, labels, value)

    def _observe(self, metric: str, labels: Labels, value: float) -> None:
        table = self._histograms.setdefault(metric, {})
        histogram = table.get(labels)
        if histogram is None:
            if not self._admit(table, metric, labels):
                return
            histogram = table[labels] = Histogram(BY_NAME[metric].buckets)
        histogram.observe(value)

    # -- records ---------------------------------------------------------

    def add(self, obj: Any) -> bool:
        """Fold one record; False when it was a duplicate or was rejected (and counted)."""
        try:
            record = to_record(obj)
        except RecordError as err:
            self.inc(RECORDS_REJECTED, reason=err.reason)
            return False
        if self.has_seen(record.record_id):
            return False
        self.fold(record)
        return True

    def has_seen(self, record_id: str) -> bool:
        """Whether a record with this id was folded (within the dedupe window)."""
        return record_id in self._seen_ids

    def fold(self, record: Record) -> None:
        """Fold a validated record that was not seen before."""
        self.fold_batch([record])

    def fold_batch(self, records: list[Record]) -> None:
        """Fold validated records not seen before: every family of the table
        (``metrics.FAMILIES``) that takes their kind of record, by the row's own ``fold``: its
        values of the family's own labels, bounded by the row's ``values``, after the job's or
        the rank's. A batch's counter increments are summed first and applied once per label
        set."""
        counts: dict[tuple[str, Labels], float] = {}
        for record in records:
            if record.job_name not in self._jobs and len(self._jobs) < self.max_series_per_metric:
                self._jobs[record.job_name] = False  # as many jobs as a family has series
            job = (record.job_name,)
            rank = (*job, str(record.rank), record.device)
            for name, fold, update, by_rank, labeller in self._folds[record.graph is None]:
                prefix = rank if by_rank else job
                if update is None:  # a counter: summed over the batch
                    for own, amount in fold(record):
                        key = (name, labeller(prefix, own) if own else prefix)
                        counts[key] = counts.get(key, 0) + amount
                else:
                    for own, amount in fold(record):
                        update(name, labeller(prefix, own) if own else prefix, amount)
            self._seen_ids.put(record.record_id, None)  # only once folded: validation made it safe
        for (name, labels), amount in counts.items():
            self._inc(name, labels, amount)

    def snapshot(self) -> Snapshot:
        """A copy that later updates cannot change."""
        finished = sum(self._jobs.values())
        jobs = {
            JOBS.label_set(state="running"): len(self._jobs) - finished,
            JOBS.label_set(state="finished"): finished,
        }
        return Snapshot(
            {metric: dict(table) for metric, table in self._values.items()} | {JOBS.name: jobs},
            {
                metric: {labels: h.copy() for labels, h in table.items()}
                for metric, table in self._histograms.items()
            },
            self.per_rank,
        )
