"""The exported metric families: one row each, the only place a metric is written down.

A row says what the family is (name, type, help, unit, label names and their allowed
values), how a record folds into it (``fold``), and what a user should do when it moves
(``action``). ``Aggregate`` folds records by looping over this table, the exporter renders
it, and the reserved label names, the dashboards' names, the golden exposition and
docs/metrics.md (``python -m aotwatch.core.metrics``) are derived from it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from aotwatch.core import categories, cost, divergence
from aotwatch.core.records import (
    CACHE_RESULTS,
    CACHES,
    GRAPH_KINDS,
    MUTATION_KINDS,
    PHASES,
    PLACEMENTS,
    READ_BY,
    RECOMPILE_LIMITS,
    SUBCLASS_ROLES,
    TANGENT_LAYOUTS,
    TOKEN_DIRECTIONS,
    Record,
    parse_compile_id,
)

RANK_LABELS = ("job_name", "rank", "device")
JOB_LABELS = ("job_name",)
NODE_SUMMED = RANK_LABELS[1:]
"""The labels a family kept per job on a node sums over (see ``Family.kept``)."""
SAVED_KINDS = ("tensors", "symints")
LIMIT_NAMES = tuple(name for _, name in RECOMPILE_LIMITS)
SUBCLASS_TYPES = ("DTensor", "NestedTensor", "Float8Tensor", "TwoTensor")
"""Subclass types named in labels; any other is ``other``."""
BUILD_INFO_LABELS = ("version", "torch_version", "ray_version", "python_version")
"""``aotwatch_build_info``'s own labels: what is running."""
SCRAPE_LABELS = ("instance", "job", "le", "quantile")
"""Labels Prometheus itself sets on every series, or histograms and summaries carry."""

DURATION_BUCKETS = (
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
    600.0,
    1200.0,
    1800.0,
)
"""Compile time buckets in seconds: 10 ms to 30 min."""
TOP_PHASES = ("total", "backward")
"""The phases that no other phase holds: a rank's compile seconds are their sum."""

NODE_BUCKETS = (10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10_000, 25_000, 100_000)
"""FX nodes per AOT graph."""

WORKER_REFUSALS = (
    "max_workers_per_job",
    "max_workers_per_collector",
    "max_series_per_metric",
    "worker_id_reused",
)
"""Why a collector does not track a worker (``liveness``): the bound it met, or its id."""

Labels = tuple[str, ...]
Folded = Sequence[tuple[Labels, float]]
Fold = Callable[[Record], Folded]
"""A record -> (values of the family's own labels, amount) pairs: the fold loop prepends the
job or rank labels and bounds the values by ``Family.values`` (``Family.labeller``)."""
FREE = "a bounded name (lower case, digits, _; others become other)"
"""The allowed values of a label whose values come from torch rather than a fixed list."""

_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")


def _name(value: str) -> str:
    return value if _NAME.fullmatch(value) else categories.OTHER


def _bound(allowed: tuple[str, ...] | str | None) -> Callable[[str], str] | None:
    """How a label's values are bounded: to ``allowed`` (others become ``other``), to a name
    (``FREE``); None when they are not (a job, or what a fold already bounded)."""
    if allowed == FREE:
        return _name
    if isinstance(allowed, tuple):
        kept = frozenset(allowed)
        return lambda value: value if value in kept else categories.OTHER
    return None


@dataclass(frozen=True)
class Family:
    """One metric family (counters without ``_total``)."""

    name: str
    kind: Literal["counter", "gauge", "histogram"]
    help: str
    labels: tuple[str, ...]
    values: dict[str, tuple[str, ...] | str] = field(default_factory=dict)
    """Allowed values of the labels whose values are bounded (others: free text, a job)."""
    action: str = ""
    """What a user should do when it moves (docs/metrics.md)."""
    fed_by: str = ""
    """The record fields its fold reads, or the code that sets it (docs/metrics.md)."""
    records: Literal["graph", "frame", "any", "none"] = "none"
    """Which records fold into it; ``none``: aotwatch sets it itself."""
    fold: Fold | None = None
    latest: bool = False
    """A gauge that keeps the largest value it was given (a timestamp)."""
    live: bool = False
    """Shown only for ranks whose worker is attached (see ``liveness``)."""
    buckets: tuple[float, ...] = ()
    unit: str = ""
    kept: Literal["rank", "node"] | None = None
    """For a family labelled by rank, what a collector keeps its series per: ``rank``, what
    a person acts on for one rank; or ``node``, the job's ranks on the collector's node summed
    (no ``rank`` or ``device`` label): breakdowns and histograms, alike on the ranks of an SPMD
    job, whose rank differences the head's findings name. ``limits.per_rank_detail`` keeps
    these per rank too, as local mode (one rank) and the reports (rebuilt from the archives)
    always do."""

    def labels_kept(self, per_rank: bool) -> tuple[str, ...]:
        """Its label names when its series are kept per rank (``per_rank``) or as ``kept``."""
        if per_rank or self.kept != "node":
            return self.labels
        return tuple(label for label in self.labels if label not in NODE_SUMMED)

    @property
    def own(self) -> tuple[str, ...]:
        """Its labels after the job's or the rank's: those its ``fold`` gives values of."""
        if self.labels[: len(RANK_LABELS)] == RANK_LABELS:
            return self.labels[len(RANK_LABELS) :]
        return self.labels[len(JOB_LABELS) :] if self.per_job else self.labels

    def labeller(self) -> Callable[[Labels, Labels], Labels]:
        """How the fold loop makes a label set of the job's or the rank's labels and the
        values its ``fold`` gave of the family's own (when it has some), each bounded by
        ``values`` (see ``_bound``)."""
        allowed = [self.values.get(label) for label in self.own]
        other = categories.OTHER
        if all(isinstance(values, tuple) for values in allowed):  # the usual: fast paths
            kept = [frozenset(values) for values in allowed]
            if len(kept) == 1:
                (one,) = kept
                return lambda prefix, own: (*prefix, a if (a := own[0]) in one else other)
            if len(kept) == 2:
                one, two = kept
                return lambda prefix, own: (
                    *prefix,
                    a if (a := own[0]) in one else other,
                    b if (b := own[1]) in two else other,
                )
        bounds = [_bound(values) for values in allowed]
        if not any(bounds):
            return lambda prefix, own: prefix + own
        if len(bounds) == 1:
            (bound,) = bounds
            return lambda prefix, own: (*prefix, bound(own[0]))
        pairs = lambda own: zip(bounds, own, strict=True)  # noqa: E731
        return lambda prefix, own: (
            *prefix,
            *(value if bound is None else bound(value) for bound, value in pairs(own)),
        )

    def label_set(self, **values: str) -> Labels:
        """Its label values, given by name, in the order of its labels; KeyError for a name
        missing or not its own."""
        if len(values) != len(self.labels):
            raise KeyError(f"{self.name} has labels {self.labels}, not {tuple(values)}")
        return tuple(values[label] for label in self.labels)

    def named(self, labels: Labels, per_rank: bool = True) -> dict[str, str]:
        """A label set of it (kept per rank or as ``kept``, see ``labels_kept``), by name."""
        return dict(zip(self.labels_kept(per_rank), labels, strict=True))

    @property
    def per_job(self) -> bool:
        """Whether its first label is the job: a job's series leave with the job."""
        return self.labels[:1] == JOB_LABELS

    def samples(self) -> tuple[str, ...]:
        """The sample names it exposes."""
        if self.kind == "counter":
            return (f"{self.name}_total",)
        if self.kind == "histogram":
            return tuple(f"{self.name}_{suffix}" for suffix in ("bucket", "sum", "count"))
        return (self.name,)


def _rank_family(name, kind, help_text, extra=(), kept="rank", **options) -> Family:
    return Family(name, kind, help_text, RANK_LABELS + tuple(extra), kept=kept, **options)


def _once(record: Record) -> Folded:
    return (((), 1),)


def _failures(record: Record) -> Folded:
    if record.fail_type is None:
        return ()
    category = record.fail_category or categories.fail_type_category(
        record.fail_type, record.fail_reason
    )
    return (((category,), 1),)


def _graph_breaks(record: Record) -> Folded:
    return [
        ((category if categories.is_graph_break_category(category) else categories.OTHER,), 1)
        for category in (graph_break.category for graph_break in record.graph_breaks)
    ]


def _recompiles(record: Record) -> Folded:
    if record.recompile_reason is None:
        return ()
    category = record.recompile_category or categories.recompile_category(record.recompile_reason)
    return (((category,), 1),)


def _durations(record: Record) -> Folded:
    return [((phase,), s) for phase, s in record.durations_s.items()]


def _cache_lookups(record: Record) -> Folded:
    return [
        ((cache, result), count)
        for cache, results in record.cache.items()
        for result, count in results.items()
    ]


def _frame_compiles(record: Record) -> Folded:
    compile_id = parse_compile_id(record.compile_id)
    compiles = compile_id and compile_id.frame_compiles
    return [((), compiles)] if compiles else []


def _counts(field_name: str, names: tuple[str, ...]) -> Fold:
    """A fold of one of a record's fixed count mappings: every name, zero too."""

    def fold(record: Record) -> Folded:
        counts = getattr(record, field_name)
        return [((name,), counts.get(name, 0)) for name in names]

    return fold


FRAMES = _rank_family(
    "torch_compile_frames",
    "counter",
    "Frames that Dynamo compiled (successful or not).",
    records="frame",
    fold=_once,
    fed_by="every frame record, once",
    action="Rises with every compile; a rank that keeps rising after warm-up is "
    "recompiling: see torch_compile_recompiles_total.",
)

FRAME_FAILURES = _rank_family(
    "torch_compile_frame_failures",
    "counter",
    "Frames whose compile failed, by failure category.",
    ["fail_type"],
    values={"fail_type": categories.FAIL_TYPES},
    records="frame",
    fold=_failures,
    fed_by="`Record.fail_category` (else `fail_type`, `fail_reason` through `categories`)",
    action="A failed frame runs eagerly (slow) or stops training: read the failure in "
    "`aotwatch report` and fix the unsupported code or the backend error.",
)

GRAPHS = _rank_family(
    "torch_compile_graphs",
    "counter",
    "AOTAutograd graphs compiled (forward, backward, inference).",
    ["graph"],
    values={"graph": GRAPH_KINDS},
    records="graph",
    fold=lambda record: (((record.graph,), 1),),
    fed_by="`Record.graph`",
    action="Should stop rising after warm-up; growth means recompiles or graph breaks.",
)

GRAPH_NODES = _rank_family(
    "torch_compile_graph_nodes",
    "histogram",
    "FX nodes per compiled AOTAutograd graph.",
    ["graph"],
    values={"graph": GRAPH_KINDS},
    records="graph",
    buckets=NODE_BUCKETS,
    fold=lambda record: () if record.nodes is None else (((record.graph,), record.nodes),),
    fed_by="`Record.graph`, `Record.nodes`",
    action="Many tiny graphs mean graph breaks; huge ones mean long compiles.",
    kept="node",
)

COMPILE_SECONDS = _rank_family(
    "torch_compile_seconds",
    "counter",
    "Seconds this rank spent compiling: whole frames (phase total) and the backward graphs "
    "compiled at their first backward pass (phase backward).",
    records="any",
    fold=lambda record: (((), sum(record.durations_s.get(phase, 0.0) for phase in TOP_PHASES)),),
    unit="seconds",
    fed_by="`Record.durations_s` (phases `total` and `backward`)",
    action="A rank that compiles much longer than the others holds them in collectives: "
    "a cold cache on its node or recompiles of its own (see the reports).",
)

DURATION_SECONDS = _rank_family(
    "torch_compile_duration_seconds",
    "histogram",
    "Whole-frame compile time (phase total), per compiled frame.",
    records="any",
    fold=lambda record: [
        ((), seconds) for seconds in (record.durations_s.get("total"),) if seconds is not None
    ],
    buckets=DURATION_BUCKETS,
    unit="seconds",
    kept="node",
    fed_by="`Record.durations_s` (phase `total`)",
    action="A p95 far above the p50 means a few frames dominate compile time: "
    "`aotwatch report` names them.",
)

PHASE_SECONDS = _rank_family(
    "torch_compile_phase_seconds",
    "counter",
    "Compile seconds by phase, as torch reports them (phases nest: total holds dynamo, "
    "which holds aot_autograd, ...).",
    ["phase"],
    values={"phase": (*PHASES, categories.OTHER)},
    records="any",
    fold=_durations,
    unit="seconds",
    kept="node",
    fed_by="`Record.durations_s`",
    action="The phase that dominates is where to look: a warm cache (Inductor, "
    "AOTAutograd) removes most of inductor and aot_autograd.",
)

GRAPH_BREAKS = _rank_family(
    "torch_compile_graph_breaks",
    "counter",
    "Graph breaks, by registry id or category.",
    ["reason"],
    values={"reason": "a graph-break registry id (gbNNNN) or a category"},
    records="frame",
    fold=_graph_breaks,
    fed_by="`Record.graph_breaks` (each one's category)",
    action="Each break splits a graph: fix the top reasons (`aotwatch report` has "
    "their text), or mark the code with torch._dynamo.disable.",
)

RECOMPILES = _rank_family(
    "torch_compile_recompiles",
    "counter",
    "Recompilations of an already compiled frame, by reason category.",
    ["reason"],
    values={"reason": categories.RECOMPILE_CATEGORIES},
    records="frame",
    fold=_recompiles,
    fed_by="`Record.recompile_category` (else `recompile_reason` through `categories`)",
    action="shape: mark dynamic dimensions (torch._dynamo.mark_dynamic); others: keep "
    "guarded values stable between steps.",
)

CACHE_LOOKUPS = _rank_family(
    "torch_compile_cache_lookups",
    "counter",
    "Compile-cache lookups by cache and result.",
    ["cache", "result"],
    values={"cache": (*CACHES, categories.OTHER), "result": (*CACHE_RESULTS, categories.OTHER)},
    records="any",
    fold=_cache_lookups,
    fed_by="`Record.cache`",
    action="Misses on a restarted job mean a cold or unshared cache: point "
    "TORCHINDUCTOR_CACHE_DIR at shared storage; bypasses name what cannot be cached.",
)

GRAPH_INPUTS = _rank_family(
    "torch_compile_graph_inputs",
    "counter",
    "Graph inputs seen by AOTAutograd.",
    records="graph",
    fold=lambda record: (((), record.inputs.get("total", 0)),),
    fed_by="`Record.inputs` (`total`)",
    action="The denominator of the mutation ratios.",
    kept="node",
)

INPUT_MUTATIONS = _rank_family(
    "torch_compile_input_mutations",
    "counter",
    "Mutated graph inputs by mutation flag (an input counts once per flag it carries).",
    ["kind"],
    values={"kind": MUTATION_KINDS},
    records="graph",
    fold=_counts("inputs", MUTATION_KINDS),
    fed_by="`Record.inputs`",
    action="Mutations of inputs cost copies or epilogues; metadata and storage "
    "mutations are the expensive ones: prefer out-of-place ops on inputs.",
    kept="node",
)

MUTATED_INPUTS = _rank_family(
    "torch_compile_mutated_inputs",
    "counter",
    "Mutated graph inputs by placement: kept in the graph or replayed by a runtime epilogue.",
    ["placement"],
    values={"placement": PLACEMENTS},
    records="graph",
    fold=_counts("mutation_placement", PLACEMENTS),
    fed_by="`Record.mutation_placement`",
    action="out_of_graph mutations run in Python after every call: make them "
    "in-graph (functional) where you can.",
    kept="node",
)

GRAPH_OUTPUTS = _rank_family(
    "torch_compile_graph_outputs",
    "counter",
    "Graph outputs by AOTAutograd alias type (OutputType).",
    ["output_type"],
    values={"output_type": FREE},
    records="graph",
    fold=lambda record: [((kind,), count) for kind, count in record.outputs.items()],
    fed_by="`Record.outputs`",
    action="Outputs that alias inputs or intermediates are regenerated at runtime: "
    "return fresh tensors from compiled regions where you can.",
    kept="node",
)

INTERMEDIATE_BASES = _rank_family(
    "torch_compile_intermediate_bases",
    "counter",
    "Intermediate bases (outputs aliasing one intermediate) summed over graphs.",
    records="graph",
    fold=lambda record: (((), record.intermediate_bases),),
    fed_by="`Record.intermediate_bases`",
    action="Each one is an extra output and a view replay: avoid returning several views "
    "of one intermediate.",
    kept="node",
)

EFFECT_TOKENS = _rank_family(
    "torch_compile_effect_tokens",
    "counter",
    "Effect tokens threaded through graphs, before Inductor unlifts them.",
    ["direction"],
    values={"direction": TOKEN_DIRECTIONS},
    records="graph",
    fold=_counts("tokens", TOKEN_DIRECTIONS),
    fed_by="`Record.tokens`",
    action="Tokens order side-effecting ops (prints, custom effectful ops); they "
    "serialise those ops.",
    kept="node",
)

SUBCLASS_TENSORS = _rank_family(
    "torch_compile_subclass_tensors",
    "counter",
    "Tensor subclasses among graph inputs, outputs and tangents (SubclassCreationMeta), "
    "by role and type.",
    ["role", "subclass"],
    values={
        "role": (*SUBCLASS_ROLES, categories.OTHER),
        "subclass": (*SUBCLASS_TYPES, categories.OTHER),
    },
    records="graph",
    fold=lambda record: [
        ((role, kind), count)
        for role, by_type in record.subclasses.items()
        for kind, count in by_type.items()
    ],
    fed_by="`Record.subclasses`",
    action="Each subclass is flattened into its inner tensors at every call, and a "
    "subclass tangent the backward did not expect costs a recompile or a copy: check "
    "that DTensor placements and Float8 scaling stay the same between steps.",
    kept="node",
)

SAVED_FOR_BACKWARD = _rank_family(
    "torch_compile_saved_for_backward",
    "counter",
    "Tensors and symints that forward graphs save for their backward (the activations "
    "kept between forward and backward, in count).",
    ["kind"],
    values={"kind": SAVED_KINDS},
    records="graph",
    fold=lambda record: (
        (("tensors",), record.tensors_saved_for_backward or 0),
        (("symints",), record.symints_saved_for_backward),
    ),
    fed_by="`Record.tensors_saved_for_backward`, `Record.symints_saved_for_backward`",
    action="Activation memory: many saved tensors per graph are what activation "
    "checkpointing (torch.utils.checkpoint) or a memory budget "
    "(torch._functorch.config.activation_memory_budget) trades for recompute.",
    kept="node",
)

SAVED_FOR_BACKWARD_BYTES = _rank_family(
    "torch_compile_saved_for_backward_bytes",
    "counter",
    "Bytes of the tensors that forward graphs save for their backward, where their sizes "
    "are static (the activation memory one call of each graph keeps).",
    records="graph",
    fold=lambda record: (((), record.bytes_saved_for_backward or 0),),
    unit="bytes",
    fed_by="`Record.bytes_saved_for_backward`",
    action="The activation memory compiled regions hold between forward and backward: "
    "when it dominates peak memory, checkpoint (torch.utils.checkpoint) or lower "
    "torch._functorch.config.activation_memory_budget to recompute instead.",
    kept="node",
)

STATIC_INPUTS = _rank_family(
    "torch_compile_static_inputs",
    "counter",
    "Graph inputs AOTAutograd treats as static: parameters and buffers that CUDA graphs "
    "may keep in place instead of copying.",
    records="graph",
    fold=lambda record: (((), record.static_inputs),),
    fed_by="`Record.static_inputs`",
    action="Under CUDA graphs (mode='reduce-overhead') every other input is copied into "
    "the graph at each call: inputs that are really fixed should be parameters or "
    "buffers (or marked with torch._dynamo.mark_static_address).",
    kept="node",
)

DONATED_BUFFERS = _rank_family(
    "torch_compile_donated_buffers",
    "counter",
    "Saved tensors whose memory the backward may reuse (AOTAutograd's donated buffers).",
    records="graph",
    fold=lambda record: (((), record.donated_buffers),),
    fed_by="`Record.donated_buffers`",
    action="Higher is better for peak memory; zero on a large model means the backward "
    "keeps every saved tensor alive to its end (check torch._functorch.config.donated_buffer).",
    kept="node",
)

TANGENT_LAYOUT_COUNTS = _rank_family(
    "torch_compile_tangent_layouts",
    "counter",
    "Tangents (the gradients a backward graph takes in) by the memory layout the backward "
    "expects them in (MemoryFormatMeta).",
    ["layout"],
    values={"layout": (*TANGENT_LAYOUTS, categories.OTHER)},
    records="graph",
    fold=lambda record: [((layout,), count) for layout, count in record.tangent_layouts.items()],
    fed_by="`Record.tangent_layouts`",
    action="A gradient that arrives in another layout than expected is copied into it "
    "in every backward: gradients usually arrive contiguous, so strided or channels_last "
    "tangents cost a copy each step unless the model is channels_last throughout; return "
    "contiguous outputs (.contiguous()) from compiled regions.",
    kept="node",
)

RNG_FUNCTIONALIZED_GRAPHS = _rank_family(
    "torch_compile_rng_functionalized_graphs",
    "counter",
    "Graphs whose random ops were functionalized (is_rng_op_functionalized): their RNG "
    "state is an explicit input and offset output.",
    records="graph",
    fold=lambda record: (((), int(record.rng_functionalized)),),
    fed_by="`Record.rng_functionalized`",
    action="Functionalized RNG makes recomputation (activation checkpointing) and CUDA "
    "graphs replay the same random numbers; zero with dropout under checkpointing on "
    "CUDA means torch._functorch.config.functionalize_rng_ops is off.",
    kept="node",
)

AOT_AUTOGRAD_CACHE_BYPASSES = _rank_family(
    "torch_compile_aot_autograd_cache_bypasses",
    "counter",
    "Graphs that bypassed AOTAutogradCache, by the category of torch's reason.",
    ["reason"],
    values={"reason": categories.CACHE_BYPASS_CATEGORIES},
    records="any",
    fold=lambda record: [((bypass.category,), 1) for bypass in record.cache_bypasses],
    fed_by="`Record.cache_bypasses` (each one's category)",
    action="A bypassed graph compiles from scratch in every process: unsupported_op "
    "names a function the cache cannot hash (`aotwatch report` has torch's text), "
    "fx_graph_cache_disabled and freezing are settings (torch._inductor.config).",
    kept="node",
)

RECOMPILE_LIMIT = _rank_family(
    "torch_compile_recompile_limit",
    "gauge",
    "torch's recompile limits on this rank: per_frame (recompile_limit: compiles of one "
    "frame) and accumulated (accumulated_recompile_limit).",
    ["limit"],
    values={"limit": (*LIMIT_NAMES, categories.OTHER)},
    records="frame",
    latest=True,
    fold=lambda record: [((name,), value) for name, value in record.recompile_limits.items()],
    fed_by="`Record.recompile_limits`",
    action="The denominator of the recompile headroom: "
    'torch_compile_recompile_limit{limit="per_frame"} - '
    "torch_compile_worst_frame_compiles.",
)

WORST_FRAME_COMPILES = _rank_family(
    "torch_compile_worst_frame_compiles",
    "gauge",
    "Compiles of this rank's most compiled frame (its frame compile id + 1): when it "
    "reaches the per-frame recompile limit, the next recompile of that frame runs eagerly.",
    records="frame",
    latest=True,
    fold=_frame_compiles,
    fed_by="`Record.compile_id` (`CompileId.frame_compiles`)",
    action="Headroom (the per-frame limit minus this) of 1 or 0: the frame recompiles "
    "every step (see torch_compile_recompiles_total and their reasons in `aotwatch "
    "report`); mark the changing dimension dynamic or stop the guarded value from "
    "changing. Raising torch._dynamo.config.recompile_limit only postpones it.",
)

LAST_COMPILE_TIMESTAMP_SECONDS = _rank_family(
    "torch_compile_last_compile_timestamp_seconds",
    "gauge",
    "Unix time when this rank last finished a compile.",
    records="any",
    latest=True,
    live=True,
    fold=lambda record: (((), record.time),),
    unit="seconds",
    fed_by="`Record.time`",
    action="A rank whose compiles keep coming long after the others stopped is "
    "recompiling, or compiling what the others are not.",
)

IN_PROGRESS = _rank_family(
    "torch_compile_in_progress_since_timestamp_seconds",
    "gauge",
    "Unix time when the compile this rank is in began (absent while it is not "
    "compiling), with that compile's id (frame/attempt).",
    ["compile_id"],
    values={"compile_id": "a compile id, F/A (one series per compiling rank)"},
    unit="seconds",
    fed_by="`Liveness.apply`: the compile each attached worker says it is in",
    action="A rank compiling for minutes while the others wait in a collective is what "
    "the NCCL watchdog kills: time() minus this is how long; a cold cache on its node "
    "or a recompile on this rank alone are the usual causes.",
)
"""Set by ``liveness``: when each attached rank's compile in progress began."""

JOBS = Family(
    "aotwatch_jobs",
    "gauge",
    "Jobs with series in this collector, by state: running, or finished and kept for "
    "collector.job_retention_s.",
    ("state",),
    values={"state": ("running", "finished")},
    fed_by="`Aggregate.snapshot`: the jobs with series",
    action="finished jobs leave after collector.job_retention_s; a growing count means "
    "the retention is longer than the jobs come.",
)

WORKERS_ATTACHED = Family(
    "aotwatch_workers_attached",
    "gauge",
    "Worker processes currently attached to this collector.",
    JOB_LABELS,
    fed_by="`Liveness.apply`: the workers attached",
    action="Fewer than the job's ranks: workers that never attached or stopped pushing.",
)
"""Set by ``liveness``: workers attached now, per job."""

WORKERS_REFUSED = Family(
    "aotwatch_workers_refused",
    "counter",
    "Workers a collector does not keep track of (their records are still counted), by "
    "the bound they met.",
    ("reason",),
    values={"reason": WORKER_REFUSALS},
    fed_by="the collector: why `Liveness.admit` refused a worker",
    action="Their ranks show no in-progress compile or attached worker: raise the "
    "limits.<reason> key, or look for workers restarting under new ids "
    "(worker_id_reused: one id announced by two jobs; max_series_per_metric also bounds the "
    "jobs a collector tracks).",
)

RECORDS_RECEIVED = Family(
    "aotwatch_records_received",
    "counter",
    "Compile records accepted.",
    JOB_LABELS,
    records="any",
    fold=lambda record: (((), 1),),
    fed_by="every record folded, once",
    action="Flat during a compile-heavy phase means capture is off or not reaching the collector.",
)

RECORDS_DROPPED = Family(
    "aotwatch_records_dropped",
    "counter",
    "Compile records lost on the way, by reason.",
    ("job_name", "reason"),
    values={"reason": "queue_full, buffer_full, unencodable, archive_write"},
    fed_by="the workers' drop counts (`cluster.worker_counts`); `RecordSink` when an archive "
    "write fails",
    action="queue_full or buffer_full: the collector is slow or away; raise "
    "push.queue_size / push.buffer_size or look at the collector.",
)

RECORDS_REJECTED = Family(
    "aotwatch_records_rejected",
    "counter",
    "Compile records refused as malformed, by reason.",
    ("reason",),
    values={
        "reason": "not_an_object, schema_version, missing_field, unknown_field, "
        "wrong_type, too_large, not_json, not_utf8, bad_worker, unsafe_file"
    },
    fed_by="`RecordError.reason`: `Aggregate.add`, `RecordSink`, the collector's replay and "
    "spool, `cluster.worker_counts`",
    action="A version mismatch between workers and collectors, or a client that is not "
    "aotwatch: check aotwatch_build_info.",
)

CAPTURE_ERRORS = Family(
    "aotwatch_capture_errors",
    "counter",
    "Failures inside the capture hooks (swallowed, never raised into training).",
    ("job_name", "stage"),
    fed_by="the workers' capture-error counts (`cluster.worker_counts`); "
    "`RecordSink.capture_error`",
    action="Capture missed something: report it with the torch version "
    "(aotwatch_build_info); training is not affected.",
)

SERIES_DROPPED = Family(
    "aotwatch_series_dropped",
    "counter",
    "Label sets refused by the per-metric cardinality cap.",
    ("metric",),
    fed_by="`Aggregate.refuse`: what a family's series cap refused",
    action="Raise limits.max_series_per_metric, or shorten collector.job_retention_s.",
)

FAMILIES: tuple[Family, ...] = (
    FRAMES,
    FRAME_FAILURES,
    GRAPHS,
    GRAPH_NODES,
    COMPILE_SECONDS,
    DURATION_SECONDS,
    PHASE_SECONDS,
    GRAPH_BREAKS,
    RECOMPILES,
    CACHE_LOOKUPS,
    GRAPH_INPUTS,
    INPUT_MUTATIONS,
    MUTATED_INPUTS,
    GRAPH_OUTPUTS,
    INTERMEDIATE_BASES,
    EFFECT_TOKENS,
    SUBCLASS_TENSORS,
    SAVED_FOR_BACKWARD,
    SAVED_FOR_BACKWARD_BYTES,
    STATIC_INPUTS,
    DONATED_BUFFERS,
    TANGENT_LAYOUT_COUNTS,
    RNG_FUNCTIONALIZED_GRAPHS,
    AOT_AUTOGRAD_CACHE_BYPASSES,
    RECOMPILE_LIMIT,
    WORST_FRAME_COMPILES,
    LAST_COMPILE_TIMESTAMP_SECONDS,
    IN_PROGRESS,
    JOBS,
    WORKERS_ATTACHED,
    WORKERS_REFUSED,
    RECORDS_RECEIVED,
    RECORDS_DROPPED,
    RECORDS_REJECTED,
    CAPTURE_ERRORS,
    SERIES_DROPPED,
)

RANK_DIVERGENCES = Family(
    "torch_compile_rank_divergences",
    "counter",
    "Compiles that differ across the ranks of a job, by kind.",
    ("job_name", "kind"),
    values={"kind": divergence.KINDS},
    fed_by="`DivergenceWatch.divergence_counts` (the head)",
    action="Ranks that compile different graphs hang in collectives: see the head's log "
    "or `aotwatch report` for the ranks and compile ids.",
)
"""Served by the head, once per job (no rank label), not by the collectors."""

STRAGGLER_SECONDS = Family(
    "torch_compile_straggler_seconds",
    "gauge",
    "The longest a rank of this job has been compiling while other ranks were not (waiting "
    "for it), once past collector.straggler_after_s; 0 when no rank is.",
    ("job_name",),
    unit="seconds",
    fed_by="`DivergenceWatch.straggler_seconds` (the head)",
    action="Above 0, a rank holds the others in a collective: the head's log and `aotwatch "
    "status` name the rank and compile id. Act before the NCCL watchdog (10 minutes by "
    "default) kills the job: warm that node's compile cache, or fix what recompiles there.",
)
"""Served by the head, once per job."""

WAIT_RANK_SECONDS = Family(
    "torch_compile_wait_rank_seconds",
    "counter",
    "Rank-seconds the ranks of this job spent waiting for a straggler's compile (each "
    "second a rank compiled alone, once past collector.straggler_after_s, times the ranks "
    "not compiling): GPU time lost.",
    ("job_name",),
    unit="seconds",
    fed_by="`DivergenceWatch.wait_seconds` (the head)",
    action="GPU time lost to one rank's compile: the straggler finding in `aotwatch status` "
    "says why that rank compiles (a cache miss, a recompile, a different graph); warm its "
    "cache or fix what it alone compiles.",
)
"""Served by the head, once per job."""

REDUNDANT_SECONDS = Family(
    "torch_compile_redundant_seconds",
    "counter",
    "Compile seconds done twice: by ranks of this job compiling the same graph beyond one "
    "rank's share (scope job), or on graphs an earlier job had compiled (scope fleet), "
    "not served by a cache.",
    ("job_name", "scope"),
    values={"scope": cost.SCOPES},
    unit="seconds",
    fed_by="`DivergenceWatch.redundant_seconds` (the head)",
    action="scope job: compile once and share the result, or warm the cache before the job; "
    "scope fleet: put TORCHINDUCTOR_CACHE_DIR on shared storage or use the remote cache.",
)
"""Served by the head, once per job and scope."""

BUILD_INFO = Family(
    "aotwatch_build_info",
    "gauge",
    "What is running: aotwatch, torch, ray and Python versions.",
    BUILD_INFO_LABELS,
    fed_by="`export.collector.build_info`: the installed versions",
    action="Mixed versions across collectors or workers explain rejected records.",
)

HEAD_FAMILIES = (RANK_DIVERGENCES, STRAGGLER_SECONDS, WAIT_RANK_SECONDS, REDUNDANT_SECONDS)
"""The families the head serves (per job), not the collectors."""


def _checked(families: tuple[Family, ...]) -> tuple[Family, ...]:
    """The table, refused at import as prometheus_client refuses a metric when it is built:
    a duplicate or malformed name, or a unit the name does not end in; and a row that does
    not say what feeds it."""
    names = [family.name for family in families]
    for family in families:
        if names.count(family.name) > 1 or not _NAME.fullmatch(family.name):
            raise ValueError(f"metric table: {family.name!r} is a duplicate or malformed")
        if family.unit and not family.name.endswith(f"_{family.unit}"):
            raise ValueError(f"metric table: {family.name} does not end in its unit")
        if not family.fed_by:
            raise ValueError(f"metric table: {family.name} does not say what feeds it")
    return families


ALL_FAMILIES = _checked((BUILD_INFO, *FAMILIES, *HEAD_FAMILIES))
BY_NAME = {family.name: family for family in FAMILIES}
PER_JOB = frozenset(family.name for family in FAMILIES if family.per_job)
"""The families whose first label is the job: a job's series leave with it."""
LIVE = tuple(family for family in FAMILIES if family.live)
"""The families that show only ranks whose worker is attached."""
FOLDED = {
    kind: tuple(f for f in FAMILIES if f.records in (kind, "any")) for kind in ("graph", "frame")
}
"""The families a graph record and a frame record fold into, in table order."""
RESERVED_LABEL_NAMES = frozenset(
    name for family in ALL_FAMILIES for name in family.labels
) | frozenset(SCRAPE_LABELS)
"""Label names that aotwatch or Prometheus set themselves: ``labels`` in a config may not
use them."""
SAMPLE_NAMES = frozenset(sample for family in ALL_FAMILIES for sample in family.samples())
"""Every sample name aotwatch exposes (what dashboards and alert rules may query)."""


def sample(name: str) -> str:
    """``name`` if aotwatch exposes a sample of that name; KeyError otherwise. Dashboards and
    rules write names through this, so a renamed metric fails where it is used."""
    if name not in SAMPLE_NAMES:
        raise KeyError(f"{name} is not a sample aotwatch exposes")
    return name


FREE_LABELS = {
    "job_name": "the job's name (a config's `job_name`)",
    "rank": "the worker's rank, `0` to world size - 1",
    "device": "the worker's device: `cpu`, `cuda:0`, ...",
    "stage": "the capture hook that failed",
    "metric": "a family's name",
}
"""What the values of labels without a fixed list are (docs/metrics.md)."""


_FIELD = re.compile(r"`Record\.(\w+)`")


def readers(family: Family) -> list[str]:
    """The modules that read the record fields a family's ``fed_by`` names (``READ_BY``)."""
    fields = _FIELD.findall(family.fed_by)
    return list(dict.fromkeys(READ_BY[field] for field in fields))


def _kept_text(family: Family) -> str:
    if family.kept == "node":
        return "per job on a node (`rank` and `device` only with `limits.per_rank_detail`)"
    if family.kept == "rank":
        return "per rank"
    return "per job" if family.per_job else "per collector"


def _values_text(family: Family, label: str) -> str:
    values = family.values.get(label, FREE_LABELS.get(label, "free text (a version)"))
    return values if isinstance(values, str) else ", ".join(f"`{v}`" for v in values)


def _anchor(family: Family) -> str:
    """The anchor GitHub gives the family's heading in docs/metrics.md."""
    return re.sub(r"[^a-z0-9_ -]", "", ", ".join(family.samples())).replace(" ", "-")


_FOLDED_TEXT = {
    "graph": "graph records",
    "frame": "frame records",
    "any": "every record",
    "none": "aotwatch itself",
}
"""``Family.records`` in docs/metrics.md's words."""


def _family_section(family: Family) -> list[str]:
    """One family's section of docs/metrics.md."""
    return [
        f"## `{', '.join(family.samples())}`",
        "",
        f"{family.kind}{f' ({family.unit})' if family.unit else ''}: {family.help} "
        f"Set from {_FOLDED_TEXT[family.records]}: {family.fed_by}. Kept {_kept_text(family)}.",
        "",
        "| label | values |",
        "| --- | --- |",
        *(f"| `{label}` | {_values_text(family, label)} |" for label in family.labels),
        "",
        f"When it moves: {family.action}",
        "",
    ]


def contract() -> str:
    """docs/metrics.md: the metric contract, generated from the table."""
    lines = [
        "# Metrics",
        "",
        "Generated from `daemon/aotwatch/core/metrics.py` by `python -m aotwatch.core.metrics > "
        "docs/metrics.md`; a test fails when this file is stale. The head serves "
        + ", ".join(f"`{family.name}`" for family in HEAD_FAMILIES)
        + "; collectors serve every other family (both serve `aotwatch_build_info`). The "
        "`labels:` of a config "
        "are added to every series and may not use the label names below.",
        "",
        "**Kept per.** A family kept *per rank* has one series per rank (what a person acts "
        "on for one rank). A family kept *per job on a node* sums, on each collector, the "
        "ranks of a job on that node: it has no `rank` or `device` label there (the ranks of "
        "an SPMD job compile the same graphs, and the head's findings name the rank that "
        "differs). `limits.per_rank_detail: true` keeps every family per rank; local mode "
        "(one rank) and `aotwatch report` (rebuilt from the archives) always do.",
        "",
        "| family | type | fed by | read from torch in |",
        "| --- | --- | --- | --- |",
        *(
            f"| [`{family.name}`](#{_anchor(family)}) | {family.kind} | {family.fed_by} | "
            f"{', '.join(f'`{module}`' for module in readers(family)) or '-'} |"
            for family in ALL_FAMILIES
        ),
        "",
    ]
    for family in ALL_FAMILIES:
        lines += _family_section(family)
    lines += [
        "## Reserved label names",
        "",
        ", ".join(f"`{n}`" for n in sorted(RESERVED_LABEL_NAMES)),
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    print(contract(), end="")
