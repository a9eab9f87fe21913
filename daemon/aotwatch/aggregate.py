"""A pure fold of CompileRecords into bounded counters, histograms and gauges.

``Aggregate`` is not thread-safe: its owner serialises ``add`` and
``snapshot`` (see ``aotwatch.sink``). Label sets per family are capped. A family full to its
cap makes room for a new label set by dropping one of a finished job (see ``finish_job``), so
the newest job keeps its series while old ones still hold some; what the cap refuses all the
same is counted in ``aotwatch_series_dropped_total``, once per label set.
"""

from __future__ import annotations

import bisect
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from aotwatch import categories
from aotwatch.lru import LruCache
from aotwatch.metrics import BY_NAME, PER_JOB
from aotwatch.records import (
    CACHE_RESULTS,
    CACHES,
    MUTATION_KINDS,
    PLACEMENTS,
    TOKEN_DIRECTIONS,
    Record,
    RecordError,
    to_record,
)

Labels = tuple[str, ...]
"""Label values in the order of the family's label names."""

PHASES = (
    "total",
    "dynamo",
    "aot_autograd",
    "inductor",
    "inductor_codegen",
    "backward",
    "pre_grad_passes",
    "joint_graph_passes",
    "post_grad_passes",
    "triton_compile",
    categories.OTHER,
)
_LABEL_VALUE = re.compile(r"[a-z][a-z0-9_]{0,63}")

REFUSED_MEMORY = 100_000
"""Refused label sets remembered (by hash, about 100 bytes each), so each is counted in
series_dropped once; past this many, the least recently refused may be counted again."""
DEDUPE_WINDOW = 100_000
"""Record ids remembered to make re-delivery a no-op. Resends come within seconds (and a
restarted collector replays its archive, newest ids last), so a window of recent ids keeps
memory flat in the number of records."""


class _RecentIds:
    """The last ``capacity`` ids seen, as an insertion-ordered set."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._ids: OrderedDict[str, None] = OrderedDict()

    def __contains__(self, record_id: str) -> bool:
        return record_id in self._ids

    def add(self, record_id: str) -> None:
        self._ids[record_id] = None
        if len(self._ids) > self.capacity:
            self._ids.popitem(last=False)


def _bounded(value: Any, allowed: tuple[str, ...]) -> str:
    return value if value in allowed else categories.OTHER


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


class Aggregate:
    """Counters, histograms and gauges folded from records, keyed by bounded labels."""

    def __init__(
        self,
        max_series_per_metric: int = 1000,
        dedupe_window: int = DEDUPE_WINDOW,
        max_workers_per_job: int = 1024,
    ) -> None:
        self.max_series_per_metric = max_series_per_metric
        self.max_workers_per_job = max_workers_per_job
        self._values: dict[str, dict[Labels, float]] = {}
        self._histograms: dict[str, dict[Labels, Histogram]] = {}
        self._seen_ids = _RecentIds(dedupe_window)
        self._workers: dict[str, set[int]] = {}  # job -> hashes of (hostname, pid)
        self._jobs: dict[str, bool] = {}  # job -> finished
        self._evictable: set[str] = set()  # families that may hold a finished job's series
        self._refused = LruCache(REFUSED_MEMORY)  # hashes of (family, labels) counted

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
        self._workers.pop(job_name, None)
        for tables in (self._values, self._histograms):
            for metric, table in tables.items():
                if metric in PER_JOB:
                    for labels in [labels for labels in table if labels[0] == job_name]:
                        del table[labels]

    # -- generic updates -------------------------------------------------

    def _admit(self, table: dict[Labels, Any], metric: str, labels: Labels) -> bool:
        if labels in table or len(table) < self.max_series_per_metric:
            return True
        if metric == "aotwatch_series_dropped":  # one label set per family: bounded already
            return True
        if (
            metric in PER_JOB
            and not self._jobs.get(labels[0])
            and self._evict_finished(table, metric)
        ):
            return True
        refused = hash((metric, labels))
        if self._refused.get(refused) is None:
            self._refused.put(refused, True)
            self.inc("aotwatch_series_dropped", (metric,))
        return False

    def _evict_finished(self, table: dict[Labels, Any], metric: str) -> bool:
        """Drop one series of a finished job from a full family; False if it holds none."""
        if metric in self._evictable:
            for labels in table:
                if self._jobs.get(labels[0]):
                    del table[labels]
                    return True
            self._evictable.discard(metric)  # until another job finishes
        return False

    def inc(self, metric: str, labels: Labels, amount: float = 1) -> None:
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

    def set_gauge(self, metric: str, labels: Labels, value: float) -> None:
        table = self._values.setdefault(metric, {})
        if self._admit(table, metric, labels):
            table[labels] = value

    def remove_gauge(self, metric: str, labels: Labels) -> None:
        self._values.get(metric, {}).pop(labels, None)

    def attach_worker(self, job_name: str, hostname: str, pid: int) -> None:
        """Count a worker process in ``aotwatch_workers_attached`` (records do this too)."""
        workers = self._workers.get(job_name)
        if workers is None:
            table = self._values.setdefault("aotwatch_workers_attached", {})
            if not self._admit(table, "aotwatch_workers_attached", (job_name,)):
                return  # capped like the gauge: past the cap, a job's workers are not kept
            workers = self._workers[job_name] = set()
            self._jobs.setdefault(job_name, False)
        worker = hash((hostname, pid))
        if worker not in workers and len(workers) < self.max_workers_per_job:
            workers.add(worker)
            self.set_gauge("aotwatch_workers_attached", (job_name,), len(workers))

    def observe(self, metric: str, labels: Labels, value: float) -> None:
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
            self.inc("aotwatch_records_rejected", (err.reason,))
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
        job = record.job_name
        self.inc("aotwatch_records_received", (job,))
        self.attach_worker(job, record.hostname, record.pid)
        rank = (job, str(record.rank), record.device)
        if record.graph is None:
            self._fold_frame(rank, record)
        else:
            self._fold_graph(rank, record)
        for phase, seconds in record.durations_s.items():
            self.observe(
                "torch_compile_duration_seconds", (*rank, _bounded(phase, PHASES)), seconds
            )
        for cache, results in record.cache.items():
            for result, count in results.items():
                labels = (*rank, _bounded(cache, CACHES), _bounded(result, CACHE_RESULTS))
                self.inc("torch_compile_cache_lookups", labels, count)
        last = self._values.get("torch_compile_last_compile_timestamp_seconds", {}).get(rank, 0)
        self.set_gauge("torch_compile_last_compile_timestamp_seconds", rank, max(last, record.time))
        self._seen_ids.add(record.record_id)  # only once folded: validation made it safe

    def _fold_frame(self, rank: Labels, record: Record) -> None:
        self.inc("torch_compile_frames", rank)
        if record.fail_type is not None:
            category = record.fail_category or categories.fail_type_category(
                record.fail_type, record.fail_reason
            )
            fail_label = _bounded(category, categories.FAIL_TYPES)
            self.inc("torch_compile_frame_failures", (*rank, fail_label))
        for graph_break in record.graph_breaks:
            category = graph_break["category"]
            if not categories.is_graph_break_category(category):
                category = categories.OTHER
            self.inc("torch_compile_graph_breaks", (*rank, category))
        if record.recompile_reason is not None:
            category = record.recompile_category or categories.recompile_category(
                record.recompile_reason
            )
            recompile_label = _bounded(category, categories.RECOMPILE_CATEGORIES)
            self.inc("torch_compile_recompiles", (*rank, recompile_label))

    def _fold_graph(self, rank: Labels, record: Record) -> None:
        graph = record.graph
        self.inc("torch_compile_graphs", (*rank, graph))
        if record.nodes is not None:
            self.observe("torch_compile_graph_nodes", (*rank, graph), record.nodes)
        inputs = record.inputs
        self.inc("torch_compile_graph_inputs", rank, inputs.get("total", 0))
        for kind in MUTATION_KINDS:
            self.inc("torch_compile_input_mutations", (*rank, kind), inputs.get(kind, 0))
        for placement in PLACEMENTS:
            count = record.mutation_placement.get(placement, 0)
            self.inc("torch_compile_mutated_inputs", (*rank, placement), count)
        for output_type, count in record.outputs.items():
            label = output_type if _LABEL_VALUE.fullmatch(output_type) else categories.OTHER
            self.inc("torch_compile_graph_outputs", (*rank, label), count)
        self.inc("torch_compile_intermediate_bases", rank, record.intermediate_bases)
        for direction in TOKEN_DIRECTIONS:
            count = record.tokens.get(direction, 0)
            self.inc("torch_compile_effect_tokens", (*rank, direction), count)

    def snapshot(self) -> Snapshot:
        """A copy that later updates cannot change."""
        finished = sum(self._jobs.values())
        jobs = {("running",): len(self._jobs) - finished, ("finished",): finished}
        return Snapshot(
            {metric: dict(table) for metric, table in self._values.items()}
            | {"aotwatch_jobs": jobs},
            {
                metric: {labels: h.copy() for labels, h in table.items()}
                for metric, table in self._histograms.items()
            },
        )
