"""The exported metric families (METRICS.md): one table for the fold and the exporter."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

RANK_LABELS = ("job_name", "rank", "device")

DURATION_BUCKETS = (
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    120.0, 300.0, 600.0, 1200.0, 1800.0,
)  # fmt: skip
"""Compile time buckets in seconds: 10 ms to 30 min."""

NODE_BUCKETS = (10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10_000, 25_000, 100_000)
"""FX nodes per AOT graph."""


@dataclass(frozen=True)
class Family:
    """One metric family: its name (counters without ``_total``), type, help and labels."""

    name: str
    kind: Literal["counter", "gauge", "histogram"]
    help: str
    labels: tuple[str, ...]
    buckets: tuple[float, ...] = ()


def _rank(name: str, kind, help_text: str, *extra: str, buckets=()) -> Family:
    return Family(name, kind, help_text, RANK_LABELS + extra, buckets)


FAMILIES: tuple[Family, ...] = (
    _rank("torch_compile_frames", "counter", "Frames that Dynamo compiled (successful or not)."),
    _rank(
        "torch_compile_frame_failures",
        "counter",
        "Frames whose compile failed, by failure category.",
        "fail_type",
    ),
    _rank(
        "torch_compile_graphs",
        "counter",
        "AOTAutograd graphs compiled (forward, backward, inference).",
        "graph",
    ),
    _rank(
        "torch_compile_graph_nodes",
        "histogram",
        "FX nodes per compiled AOTAutograd graph.",
        "graph",
        buckets=NODE_BUCKETS,
    ),
    _rank(
        "torch_compile_duration_seconds",
        "histogram",
        "Compile time per frame and phase, as torch reports it (phases nest).",
        "phase",
        buckets=DURATION_BUCKETS,
    ),
    _rank(
        "torch_compile_graph_breaks",
        "counter",
        "Graph breaks, by registry id or category.",
        "reason",
    ),
    _rank(
        "torch_compile_recompiles",
        "counter",
        "Recompilations of an already compiled frame, by reason category.",
        "reason",
    ),
    _rank(
        "torch_compile_cache_lookups",
        "counter",
        "Compile-cache lookups by cache and result.",
        "cache",
        "result",
    ),
    _rank("torch_compile_graph_inputs", "counter", "Graph inputs seen by AOTAutograd."),
    _rank(
        "torch_compile_input_mutations",
        "counter",
        "Mutated graph inputs by mutation flag (an input counts once per flag it carries).",
        "kind",
    ),
    _rank(
        "torch_compile_mutated_inputs",
        "counter",
        "Mutated graph inputs by placement: kept in the graph or replayed by a runtime epilogue.",
        "placement",
    ),
    _rank(
        "torch_compile_graph_outputs",
        "counter",
        "Graph outputs by AOTAutograd alias type (OutputType).",
        "output_type",
    ),
    _rank(
        "torch_compile_intermediate_bases",
        "counter",
        "Intermediate bases (outputs aliasing one intermediate) summed over graphs.",
    ),
    _rank(
        "torch_compile_effect_tokens",
        "counter",
        "Effect tokens threaded through graphs, before Inductor unlifts them.",
        "direction",
    ),
    _rank(
        "torch_compile_last_compile_timestamp_seconds",
        "gauge",
        "Unix time when this rank last finished a compile.",
    ),
    Family(
        "aotwatch_jobs",
        "gauge",
        "Jobs with series in this collector, by state: running, or finished and kept for "
        "collector.job_retention_s.",
        ("state",),
    ),
    Family(
        "aotwatch_workers_attached",
        "gauge",
        "Worker processes currently attached to this collector.",
        ("job_name",),
    ),
    Family(
        "aotwatch_records_received",
        "counter",
        "Compile records accepted.",
        ("job_name",),
    ),
    Family(
        "aotwatch_records_dropped",
        "counter",
        "Compile records lost on the way, by reason.",
        ("job_name", "reason"),
    ),
    Family(
        "aotwatch_records_rejected",
        "counter",
        "Compile records refused as malformed, by reason.",
        ("reason",),
    ),
    Family(
        "aotwatch_capture_errors",
        "counter",
        "Failures inside the capture hooks (swallowed, never raised into training).",
        ("job_name", "stage"),
    ),
    Family(
        "aotwatch_series_dropped",
        "counter",
        "Label sets refused by the per-metric cardinality cap.",
        ("metric",),
    ),
)

RANK_DIVERGENCES = Family(
    "torch_compile_rank_divergences",
    "counter",
    "Compiles that differ across the ranks of a job, by kind.",
    ("job_name", "kind"),
)
"""Served by the head, once per job (no rank label), not by the collectors."""

BY_NAME = {family.name: family for family in FAMILIES}
PER_JOB = frozenset(family.name for family in FAMILIES if family.labels[:1] == ("job_name",))
"""The families whose first label is the job: a job's series leave with it."""
