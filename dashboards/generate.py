#!/usr/bin/env python3
"""Generate aotwatch's Grafana dashboards: the one source of truth for dashboards/grafana/.

``python3 dashboards/generate.py`` rewrites the JSON files (Grafana 10 dashboard model);
``--check`` writes nothing and exits 1 listing the files that differ from this script's output.

Every query filters on ``$job_name``, ``$instance`` and ``$rank`` where its family carries
that label (docs/metrics.md). Every sample name but Prometheus's own goes through
``aotwatch.core.metrics.sample``: a name the metric table does not declare fails here, not as a
blank panel. Counters that aotwatch creates on their first increment (failures,
recompiles, drops, errors, divergences) have no series at all on a healthy run; their queries
fall back to 0, which is the truthful value there.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from aotwatch.core.metrics import RANK_LABELS, sample

OUT_DIR = Path(__file__).resolve().parent / "grafana"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
WINDOW = "[$__rate_interval]"

# Template-variable matchers, by the labels a family carries.
RANK = ('job_name=~"$job_name"', 'instance=~"$instance"', 'rank=~"$rank"')
JOB = RANK[:2]
INSTANCE = RANK[1:2]
HEAD = RANK[:1]  # served by the head, not a collector: no rank, and another instance
PER_RANK = ", ".join(RANK_LABELS)
PER_NODE = "job_name, instance"
"""What a family kept per job on a node (docs/metrics.md) can be broken down by."""
PROMETHEUS_OWN = ("up",)
"""Samples Prometheus itself writes for every target."""
RANK_LEGEND = "rank {{rank}} · {{device}} · {{job_name}}"
NODE_LEGEND = "{{instance}} · {{job_name}}"

EXAMPLE_VALUES = {
    "job_name": ".*",
    "instance": ".*",
    "rank": ".*",
    "__rate_interval": "1m",
}
"""Values for every variable a query uses: all jobs, instances and ranks, a 1 m rate window."""

# -- queries ---------------------------------------------------------------------------------


def sel(metric: str, scope: tuple[str, ...], *matchers: str) -> str:
    """``metric{...}`` filtered on ``scope``'s template variables and extra ``matchers``."""
    name = metric if metric in PROMETHEUS_OWN else sample(metric)
    return f"{name}{{{', '.join((*scope, *matchers))}}}"


def total(selector: str, by: str = "") -> str:
    """The cumulative value, summed (by ``by``)."""
    return f"sum{_by(by)} ({selector})"


def per_minute(selector: str, by: str = "") -> str:
    """Events per minute over the rate window, summed (by ``by``)."""
    return f"60 * sum{_by(by)} (rate({selector}{WINDOW}))"


def quantile(q: float, bucket_selector: str, by: str, window: bool = True) -> str:
    """``histogram_quantile`` of a histogram's buckets: over the rate window, or cumulative."""
    buckets = f"rate({bucket_selector}{WINDOW})" if window else bucket_selector
    return f"histogram_quantile({q}, sum by (le, {by}) ({buckets}))"


def or_zero(expr: str, label: str = "") -> str:
    """``expr``, or one 0 series (with ``label="none"``) when ``expr`` has no series."""
    zero = f'label_replace(vector(0), "{label}", "none", "", "")' if label else "vector(0)"
    return f"{expr} or on() {zero}"


def or_zero_per_rank(expr: str) -> str:
    """``expr`` per rank, 0 for ranks that compiled frames but have no series in ``expr``."""
    return f"{expr} or 0 * {total(sel('torch_compile_frames_total', RANK), PER_RANK)}"


def or_zero_per_node(expr: str) -> str:
    """``expr`` per job and collector, 0 where graphs were compiled but ``expr`` has none."""
    graph_inputs = sel("torch_compile_graph_inputs_total", JOB)
    return f"{expr} or 0 * {total(graph_inputs, PER_NODE)}"


def _by(labels: str) -> str:
    return f" by ({labels})" if labels else ""


# -- panels ----------------------------------------------------------------------------------


def target(expr: str, legend: str = "", *, fmt: str = "time_series", instant: bool = False):
    """One Prometheus query of a panel (refIds are given by ``panel``)."""
    return {
        "datasource": DATASOURCE,
        "editorMode": "code",
        "expr": expr,
        "format": fmt,
        "instant": instant,
        "legendFormat": legend,
        "range": not instant,
    }


def panel(kind: str, title: str, unit: str, description: str, targets: list[dict], **spec):
    """A panel of ``kind``; ``spec`` holds w, h, options and optional fieldConfig parts."""
    defaults = {"unit": unit, "min": 0, **spec.get("defaults", {})}
    return {
        "datasource": DATASOURCE,
        "description": description,
        "fieldConfig": {"defaults": defaults, "overrides": spec.get("overrides", [])},
        "gridPos": {"h": spec["h"], "w": spec["w"], "x": 0, "y": 0},
        "options": spec["options"],
        "targets": [{**t, "refId": chr(ord("A") + i)} for i, t in enumerate(targets)],
        "title": title,
        "transformations": spec.get("transformations", []),
        "type": kind,
    }


def thresholds(warn_from: float | None = None, color: str = "red") -> dict:
    """Green, or ``color`` from ``warn_from`` on."""
    steps = [{"color": "green", "value": None}]
    if warn_from is not None:
        steps.append({"color": color, "value": warn_from})
    return {"mode": "absolute", "steps": steps}


def timeseries(title: str, unit: str, description: str, *targets: dict, w: int = 12, **extra):
    """A time series panel with a table legend (last and max per series)."""
    custom = {
        "drawStyle": "line",
        "fillOpacity": 10,
        "lineWidth": 1,
        "showPoints": "never",
        "spanNulls": False,
        "stacking": {"group": "A", "mode": "none"},
    }
    options = {
        "legend": {
            "calcs": ["lastNotNull", "max"],
            "displayMode": "table",
            "placement": "bottom",
            "showLegend": True,
        },
        "tooltip": {"mode": "multi", "sort": "desc"},
    }
    defaults = {"custom": custom, **extra.pop("defaults", {})}
    return panel(
        "timeseries",
        title,
        unit,
        description,
        list(targets),
        w=w,
        h=9,
        options=options,
        defaults=defaults,
        **extra,
    )


def stat(title: str, unit: str, description: str, *targets: dict, warn_from=None, w: int = 4):
    """A stat panel showing the last value in the time range, with a sparkline."""
    options = {
        "colorMode": "value",
        "graphMode": "area",
        "justifyMode": "auto",
        "orientation": "auto",
        "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
        "textMode": "auto",
    }
    return panel(
        "stat",
        title,
        unit,
        description,
        list(targets),
        w=w,
        h=4,
        options=options,
        defaults={"thresholds": thresholds(warn_from)},
    )


def bargauge(title: str, unit: str, description: str, *targets: dict, w: int = 12):
    """Horizontal bars, one per series (or per bucket for a heatmap-format target)."""
    options = {
        "displayMode": "gradient",
        "orientation": "horizontal",
        "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
        "showUnfilled": True,
        "valueMode": "color",
    }
    return panel(
        "bargauge",
        title,
        unit,
        description,
        list(targets),
        w=w,
        h=9,
        options=options,
        defaults={"thresholds": thresholds()},
    )


def table(title: str, description: str, keys: str, columns: list[tuple[str, str, str]]):
    """One row per ``keys`` label set, one column per ``(header, expr, unit)`` instant query."""
    key_names = [key.strip() for key in keys.split(",")]
    headers = {f"Value #{chr(ord('A') + i)}": header for i, (header, _, _) in enumerate(columns)}
    order = [*key_names, *headers.values()]
    transformations = [
        {"id": "merge", "options": {}},
        {
            "id": "organize",
            "options": {
                "excludeByName": {"Time": True},
                "indexByName": {name: i for i, name in enumerate(order)},
                "renameByName": headers,
            },
        },
    ]
    overrides = [
        {
            "matcher": {"id": "byName", "options": header},
            "properties": [{"id": "unit", "value": unit}],
        }
        for header, _, unit in columns
        if unit != "short"
    ]
    targets = [target(expr, fmt="table", instant=True) for _, expr, _ in columns]
    options = {
        "cellHeight": "sm",
        "footer": {"show": False},
        "showHeader": True,
        "sortBy": [{"desc": False, "displayName": key_names[0]}],
    }
    return panel(
        "table",
        title,
        "short",
        description,
        targets,
        w=24,
        h=9,
        options=options,
        overrides=overrides,
        transformations=transformations,
    )


def info_table(title: str, description: str, expr: str) -> dict:
    """One row per series of an info metric (value 1): its labels, nothing else."""
    transformations = [
        {
            "id": "organize",
            "options": {"excludeByName": {"Time": True, "Value": True, "__name__": True}},
        }
    ]
    options = {"cellHeight": "sm", "footer": {"show": False}, "showHeader": True}
    return panel(
        "table",
        title,
        "short",
        description,
        [target(expr, fmt="table", instant=True)],
        w=24,
        h=7,
        options=options,
        transformations=transformations,
    )


# -- dashboards ------------------------------------------------------------------------------


def query_variable(name: str, label: str, query: str, sort: int = 1) -> dict:
    """A multi-value Prometheus label variable whose "All" matches every value (``.*``)."""
    return {
        "allValue": ".*",
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "datasource": DATASOURCE,
        "definition": query,
        "hide": 0,
        "includeAll": True,
        "label": label,
        "multi": True,
        "name": name,
        "options": [],
        "query": {
            "qryType": 1,
            "query": query,
            "refId": "PrometheusVariableQueryEditor-VariableQuery",
        },
        "refresh": 2,
        "regex": "",
        "skipUrlSync": False,
        "sort": sort,
        "type": "query",
    }


VARIABLES = [
    {
        "current": {},
        "hide": 0,
        "includeAll": False,
        "label": "Data source",
        "multi": False,
        "name": "datasource",
        "options": [],
        "query": "prometheus",
        "refresh": 1,
        "regex": "",
        "skipUrlSync": False,
        "type": "datasource",
    },
    # aotwatch_records_received_total exists for every job that sent a record.
    query_variable("job_name", "Job", "label_values(aotwatch_records_received_total, job_name)"),
    query_variable(
        "instance",
        "Collector",
        'label_values(aotwatch_records_received_total{job_name=~"$job_name"}, instance)',
    ),
    query_variable(
        "rank",
        "Rank",
        "label_values(torch_compile_frames_total"
        '{job_name=~"$job_name", instance=~"$instance"}, rank)',
        sort=3,  # numerical
    ),
]


def layout(panels: list[dict]) -> list[dict]:
    """Number the panels and place them left to right, top to bottom, on the 24-column grid."""
    x = y = row_height = 0
    for number, item in enumerate(panels, start=1):
        grid = item["gridPos"]
        if x + grid["w"] > 24:
            x, y, row_height = 0, y + row_height, 0
        grid.update(x=x, y=y)
        x, row_height = x + grid["w"], max(row_height, grid["h"])
        item["id"] = number
    return panels


def dashboard(uid: str, title: str, description: str, panels: list[dict]) -> dict:
    """A Grafana 10 dashboard with the shared variables and links to its siblings."""
    return {
        "annotations": {
            "list": [
                {
                    "builtIn": 1,
                    "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                    "enable": True,
                    "hide": True,
                    "iconColor": "rgba(0, 211, 255, 1)",
                    "name": "Annotations & Alerts",
                    "type": "dashboard",
                }
            ]
        },
        "description": description,
        "editable": True,
        "fiscalYearStartMonth": 0,
        "graphTooltip": 1,
        "id": None,
        "links": [
            {
                "asDropdown": True,
                "icon": "external link",
                "includeVars": True,
                "keepTime": True,
                "tags": ["aotwatch"],
                "title": "aotwatch",
                "type": "dashboards",
            }
        ],
        "panels": layout(panels),
        "refresh": "30s",
        "schemaVersion": 39,
        "tags": ["aotwatch"],
        "templating": {"list": VARIABLES},
        "time": {"from": "now-1h", "to": "now"},
        "timepicker": {},
        "timezone": "",
        "title": title,
        "uid": uid,
        "version": 1,
        "weekStart": "",
    }


def compile_overview() -> dict:
    frames = sel("torch_compile_frames_total", RANK)
    recompiles = sel("torch_compile_recompiles_total", RANK)
    breaks = sel("torch_compile_graph_breaks_total", RANK)
    failures = sel("torch_compile_frame_failures_total", RANK)
    seconds = sel("torch_compile_seconds_total", RANK)
    phases = sel("torch_compile_phase_seconds_total", JOB)
    buckets = sel("torch_compile_duration_seconds_bucket", JOB)
    lookups = sel("torch_compile_cache_lookups_total", RANK)
    hits = sel("torch_compile_cache_lookups_total", RANK, 'result="hit"')
    compiling = sel("torch_compile_in_progress_since_timestamp_seconds", RANK)
    limit = sel("torch_compile_recompile_limit", RANK, 'limit="per_frame"')
    worst = sel("torch_compile_worst_frame_compiles", RANK)
    waited = sel("torch_compile_wait_rank_seconds_total", HEAD)
    redundant = sel("torch_compile_redundant_seconds_total", HEAD)
    windowed_lookups = f"sum by (cache) (rate({lookups}{WINDOW}))"
    windowed_hits = f"sum by (cache) (rate({hits}{WINDOW}))"
    cumulative = "Cumulative, as the collectors export it."
    panels = [
        stat(
            "Frames compiled",
            "short",
            f"Frames Dynamo compiled. {cumulative}",
            target(total(frames)),
        ),
        stat(
            "Recompiles",
            "short",
            f"Recompilations of compiled frames. {cumulative}",
            target(or_zero(total(recompiles))),
            warn_from=1,
        ),
        stat(
            "Graph breaks",
            "short",
            f"Graph breaks. {cumulative}",
            target(or_zero(total(breaks))),
            warn_from=1,
        ),
        stat(
            "Failed frames",
            "short",
            f"Frames whose compile failed. {cumulative}",
            target(or_zero(total(failures))),
            warn_from=1,
        ),
        stat(
            "Compile time",
            "s",
            f"Seconds spent compiling: whole frames and backward graphs. {cumulative}",
            target(total(seconds)),
        ),
        stat(
            "Cache hit ratio",
            "percentunit",
            f"Hits over lookups, all compile caches together. {cumulative}",
            target(f"({total(hits)} or 0 * {total(lookups)}) / {total(lookups)}"),
        ),
        timeseries(
            "Compile time by phase",
            "s",
            "Compile seconds spent per second of wall time, by phase (phases nest: "
            "total contains dynamo, which contains aot_autograd, ...).",
            target(f"sum by (phase) (rate({phases}{WINDOW}))", "{{phase}}"),
        ),
        timeseries(
            "Compile time per frame, p50 / p95",
            "s",
            "Quantiles of the whole-frame compile time per job over the rate window; "
            "empty while nothing compiles.",
            target(quantile(0.5, buckets, "job_name"), "p50 {{job_name}}"),
            target(quantile(0.95, buckets, "job_name"), "p95 {{job_name}}"),
        ),
        timeseries(
            "Compiling now: seconds per rank",
            "s",
            "How long each rank has been in the compile it is in now (frame/attempt in the "
            "legend); 0 when no rank is compiling. A rank far above the others holds them in "
            "a collective.",
            target(
                or_zero(f"max by ({PER_RANK}, compile_id) (time() - {compiling})", "compile_id"),
                f"{RANK_LEGEND} · {{{{compile_id}}}}",
            ),
        ),
        timeseries(
            "What compiling cost: GPU time waited and compiles done twice",
            "s",
            "Rank-seconds ranks spent waiting for a straggler's compile (GPU time lost), and "
            "compile seconds done twice by scope: job (ranks of the job compiled the same "
            "graph: compile once and share, or warm the cache before the job), fleet (an "
            "earlier job compiled it: a shared TORCHINDUCTOR_CACHE_DIR or remote cache would "
            "have served it). Cumulative, from the head ('none': nothing yet).",
            target(or_zero(total(waited, "job_name"), "job_name"), "waited · {{job_name}}"),
            target(
                or_zero(total(redundant, "job_name, scope"), "scope"),
                "done twice ({{scope}}) · {{job_name}}",
            ),
        ),
        timeseries(
            "Recompile headroom, worst frame per rank",
            "short",
            "Recompiles left before a rank's most compiled frame reaches torch's per-frame "
            "recompile_limit and runs eagerly; 1 or 0 alerts (TorchCompileRecompileLimitNear).",
            target(f"min by ({PER_RANK}) ({limit} - ignoring (limit) {worst})", RANK_LEGEND),
        ),
        timeseries(
            "Compiles and recompiles per minute",
            "cpm",
            "Frames compiled (recompiles included) and recompiles, per minute.",
            target(per_minute(frames), "frames compiled"),
            target(or_zero(per_minute(recompiles)), "recompiles"),
        ),
        timeseries(
            "Cache hit ratio by cache",
            "percentunit",
            "Hits over lookups per compile cache over the rate window; empty while "
            "nothing is looked up.",
            target(
                f"({windowed_hits} or 0 * {windowed_lookups}) / {windowed_lookups}", "{{cache}}"
            ),
            defaults={"max": 1},
        ),
        timeseries(
            "Recompiles by reason",
            "cpm",
            "Recompilations per minute by reason category ('none': no recompiles).",
            target(or_zero(per_minute(recompiles, "reason"), "reason"), "{{reason}}"),
        ),
        timeseries(
            "Graph breaks by reason",
            "cpm",
            "Graph breaks per minute by registry id or category ('none': no breaks).",
            target(or_zero(per_minute(breaks, "reason"), "reason"), "{{reason}}"),
        ),
        timeseries(
            "Frame failures by type",
            "cpm",
            "Failed frame compiles per minute by failure category ('none': none failed).",
            target(or_zero(per_minute(failures, "fail_type"), "fail_type"), "{{fail_type}}"),
        ),
        timeseries(
            "Cache lookups by cache and result",
            "cpm",
            "Compile-cache lookups per minute: hit, miss or bypass, per cache.",
            target(per_minute(lookups, "cache, result"), "{{cache}} {{result}}"),
        ),
        table(
            "Per rank",
            "Cumulative totals per rank and device.",
            PER_RANK,
            [
                ("frames", total(frames, PER_RANK), "short"),
                ("recompiles", or_zero_per_rank(total(recompiles, PER_RANK)), "short"),
                ("graph breaks", or_zero_per_rank(total(breaks, PER_RANK)), "short"),
                ("failures", or_zero_per_rank(total(failures, PER_RANK)), "short"),
                ("compile time", total(seconds, PER_RANK), "s"),
                (
                    "cache hit ratio",
                    f"({total(hits, PER_RANK)} or 0 * {total(lookups, PER_RANK)})"
                    f" / {total(lookups, PER_RANK)}",
                    "percentunit",
                ),
            ],
        ),
    ]
    return dashboard(
        "aotwatch-compile-overview",
        "aotwatch / Compile overview",
        "torch.compile cost per job: compile time by phase, recompiles, graph breaks, "
        "compile-cache hits and failures.",
        panels,
    )


def aot_metadata() -> dict:
    graphs = sel("torch_compile_graphs_total", RANK)
    inputs = sel("torch_compile_graph_inputs_total", JOB)
    mutations = sel("torch_compile_input_mutations_total", JOB)
    mutated = sel("torch_compile_mutated_inputs_total", JOB)
    outputs = sel("torch_compile_graph_outputs_total", JOB)
    bases = sel("torch_compile_intermediate_bases_total", JOB)
    tokens = sel("torch_compile_effect_tokens_total", JOB)
    nodes = sel("torch_compile_graph_nodes_bucket", JOB)
    saved = sel("torch_compile_saved_for_backward_total", JOB)
    saved_bytes = sel("torch_compile_saved_for_backward_bytes_total", JOB)
    static = sel("torch_compile_static_inputs_total", JOB)
    donated = sel("torch_compile_donated_buffers_total", JOB)
    subclasses = sel("torch_compile_subclass_tensors_total", JOB)
    layouts = sel("torch_compile_tangent_layouts_total", JOB)
    rng = sel("torch_compile_rng_functionalized_graphs_total", JOB)
    bypasses = sel("torch_compile_aot_autograd_cache_bypasses_total", JOB)
    cumulative = "Cumulative, as the collectors export it."

    def per_node(title: str, description: str, selector: str, kind: str = "") -> dict:
        by = f"{kind}, {PER_NODE}" if kind else PER_NODE
        legend = f"{{{{{kind}}}}} · {NODE_LEGEND}" if kind else NODE_LEGEND
        return timeseries(
            title, "short", f"{description} {cumulative}", target(total(selector, by), legend)
        )

    panels = [
        stat(
            "AOT graphs",
            "short",
            f"AOTAutograd graphs compiled. {cumulative}",
            target(total(graphs)),
        ),
        stat(
            "Graph inputs",
            "short",
            f"Graph inputs seen by AOTAutograd. {cumulative}",
            target(total(inputs)),
        ),
        stat(
            "Mutated inputs",
            "short",
            f"Inputs mutated in place. {cumulative}",
            target(total(mutated)),
        ),
        stat(
            "Aliased outputs",
            "short",
            f"Outputs that alias an input or an intermediate. {cumulative}",
            target(
                total(sel("torch_compile_graph_outputs_total", JOB, 'output_type!="non_alias"'))
            ),
        ),
        stat(
            "Intermediate bases", "short", f"Intermediate bases. {cumulative}", target(total(bases))
        ),
        stat(
            "Effect tokens",
            "short",
            f"Effect tokens, forward and backward. {cumulative}",
            target(total(tokens, "direction"), "{{direction}}"),
        ),
        timeseries(
            "AOT graphs by kind",
            "short",
            f"AOTAutograd graphs (forward, backward, inference), per rank. {cumulative}",
            target(total(graphs, f"graph, {PER_RANK}"), f"{{{{graph}}}} · {RANK_LEGEND}"),
        ),
        timeseries(
            "AOT graphs compiled per minute",
            "cpm",
            "AOTAutograd graphs compiled per minute, by kind and device.",
            target(per_minute(graphs, "graph, device"), "{{graph}} · {{device}}"),
        ),
        per_node(
            "Input mutations by kind",
            "Inputs per mutation flag (an input counts once per flag).",
            mutations,
            "kind",
        ),
        per_node(
            "Mutated inputs by placement",
            "Mutated inputs kept in the graph (in_graph) "
            "or replayed by a runtime epilogue (out_of_graph).",
            mutated,
            "placement",
        ),
        per_node(
            "Graph outputs by alias type", "Graph outputs by OutputType.", outputs, "output_type"
        ),
        per_node("Intermediate bases per node", "Intermediate bases summed over graphs.", bases),
        per_node(
            "Effect tokens, forward / backward",
            "Effect tokens threaded through graphs.",
            tokens,
            "direction",
        ),
        timeseries(
            "Tensor subclasses by role and type",
            "short",
            f"Subclass inputs, outputs and tangents (DTensor, NestedTensor, Float8Tensor, ...); "
            f"0 when the job uses none. {cumulative}",
            target(or_zero(total(subclasses, "role, subclass"), "role"), "{{role}} · {{subclass}}"),
        ),
        per_node(
            "Saved for backward, tensors / symints",
            "What forward graphs keep for their backward: activation memory, in count.",
            saved,
            "kind",
        ),
        timeseries(
            "Saved for backward, bytes",
            "bytes",
            f"Bytes of the tensors forward graphs keep for their backward (static sizes "
            f"only): the activation memory of one call of each graph. {cumulative}",
            target(total(saved_bytes, PER_NODE), NODE_LEGEND),
        ),
        per_node(
            "Static inputs",
            "Inputs treated as static (parameters, buffers): what CUDA graphs keep in place.",
            static,
        ),
        per_node(
            "Donated backward buffers",
            "Saved tensors whose memory the backward may reuse.",
            donated,
        ),
        timeseries(
            "Tangents by expected layout",
            "short",
            f"The layout each backward expects its gradients in; gradients that arrive in "
            f"another layout (usually contiguous) are copied at every backward. 0 when no "
            f"graph has a backward. {cumulative}",
            target(or_zero(total(layouts, "layout"), "layout"), "{{layout}}"),
        ),
        per_node(
            "RNG-functionalized graphs",
            "Graphs whose random ops replay the same numbers under recomputation and CUDA "
            "graphs (torch._functorch.config.functionalize_rng_ops, CUDA only).",
            rng,
        ),
        timeseries(
            "AOTAutogradCache bypasses by reason",
            "short",
            f"Graphs the AOTAutogradCache could not cache, by reason category; 0 when "
            f"nothing bypassed it. {cumulative}",
            target(or_zero(total(bypasses, "reason"), "reason"), "{{reason}}"),
        ),
        timeseries(
            "FX nodes per graph, p50 / p95",
            "short",
            f"Graph size quantiles by kind, job and collector. {cumulative}",
            target(
                quantile(0.5, nodes, f"graph, {PER_NODE}", window=False),
                f"p50 {{{{graph}}}} · {NODE_LEGEND}",
            ),
            target(
                quantile(0.95, nodes, f"graph, {PER_NODE}", window=False),
                f"p95 {{{{graph}}}} · {NODE_LEGEND}",
            ),
        ),
        bargauge(
            "Graph size distribution",
            "short",
            f"AOT graphs per FX-node bucket (upper bound). {cumulative}",
            target(total(nodes, "le"), "{{le}}", fmt="heatmap"),
        ),
        table(
            "Per job and collector",
            f"AOT metadata of each job's ranks on each collector's node. {cumulative}",
            PER_NODE,
            [
                ("graphs", total(graphs, PER_NODE), "short"),
                ("inputs", total(inputs, PER_NODE), "short"),
                ("mutated inputs", total(mutated, PER_NODE), "short"),
                ("outputs", or_zero_per_node(total(outputs, PER_NODE)), "short"),
                ("intermediate bases", total(bases, PER_NODE), "short"),
                (
                    "forward tokens",
                    total(
                        sel("torch_compile_effect_tokens_total", JOB, 'direction="forward"'),
                        PER_NODE,
                    ),
                    "short",
                ),
                (
                    "backward tokens",
                    total(
                        sel("torch_compile_effect_tokens_total", JOB, 'direction="backward"'),
                        PER_NODE,
                    ),
                    "short",
                ),
                ("p95 FX nodes", quantile(0.95, nodes, PER_NODE, window=False), "short"),
            ],
        ),
    ]
    return dashboard(
        "aotwatch-aot-metadata",
        "aotwatch / AOT metadata",
        "What AOTAutograd built: graphs by kind per rank; input mutations, output aliasing, "
        "intermediate bases, effect tokens and graph sizes per job and collector (the "
        "collectors sum these over a node's ranks; `aotwatch report` has every rank's).",
        panels,
    )


def fleet_health() -> dict:
    collectors = sel("up", INSTANCE, 'role="collector"')
    workers = sel("aotwatch_workers_attached", JOB)
    received = sel("aotwatch_records_received_total", JOB)
    dropped = sel("aotwatch_records_dropped_total", JOB)
    rejected = sel("aotwatch_records_rejected_total", INSTANCE)
    errors = sel("aotwatch_capture_errors_total", JOB)
    series = sel("aotwatch_series_dropped_total", INSTANCE)
    divergences = sel("torch_compile_rank_divergences_total", HEAD)
    stragglers = sel("torch_compile_straggler_seconds", HEAD)
    live_ranks = sel("torch_compile_last_compile_timestamp_seconds", RANK)
    cumulative = "Cumulative, as the collectors export it."
    panels = [
        stat(
            "Collectors up",
            "short",
            "Collector targets (role=collector) that answer scrapes.",
            target(total(collectors)),
            w=3,
        ),
        stat(
            "Workers attached",
            "short",
            "Worker processes attached to the collectors now.",
            target(or_zero(total(workers))),
            w=3,
        ),
        stat(
            "Records received",
            "short",
            f"Compile records accepted. {cumulative}",
            target(total(received)),
            w=3,
        ),
        stat(
            "Records dropped",
            "short",
            f"Records lost on the way. {cumulative}",
            target(or_zero(total(dropped))),
            warn_from=1,
            w=3,
        ),
        stat(
            "Records rejected",
            "short",
            f"Records refused as malformed. {cumulative}",
            target(or_zero(total(rejected))),
            warn_from=1,
            w=3,
        ),
        stat(
            "Capture errors",
            "short",
            f"Failures inside the capture hooks. {cumulative}",
            target(or_zero(total(errors))),
            warn_from=1,
            w=3,
        ),
        stat(
            "Series dropped",
            "short",
            f"Label sets refused by the cardinality cap. {cumulative}",
            target(or_zero(total(series))),
            warn_from=1,
            w=3,
        ),
        stat(
            "Rank divergences",
            "short",
            "Compiles that differ across the ranks of a job (from the head). Cumulative.",
            target(or_zero(total(divergences))),
            warn_from=1,
            w=3,
        ),
        timeseries(
            "Collector up, per instance",
            "short",
            "1 while a collector answers its scrapes, 0 while it does not.",
            target(collectors, "{{instance}}"),
            defaults={"max": 1},
        ),
        timeseries(
            "Workers and live ranks",
            "short",
            "Worker processes attached, per job and collector, and ranks with a live "
            "worker, per job.",
            target(
                or_zero(total(workers, "job_name, instance"), "job_name"),
                "workers · {{job_name}} · {{instance}}",
            ),
            target(
                or_zero(f"count by (job_name) ({live_ranks})", "job_name"),
                "live ranks · {{job_name}}",
            ),
        ),
        timeseries(
            "Records received per minute",
            "cpm",
            "Records accepted, per job and collector.",
            target(per_minute(received, "job_name, instance"), "{{job_name}} · {{instance}}"),
        ),
        timeseries(
            "Records dropped per minute",
            "cpm",
            "Records lost on the way (full queue, collector unreachable, archive write), "
            "by reason ('none': no drops).",
            target(
                or_zero(per_minute(dropped, "job_name, reason"), "reason"),
                "{{reason}} · {{job_name}}",
            ),
        ),
        timeseries(
            "Records rejected per minute",
            "cpm",
            "Records refused as malformed, by reason and collector ('none': none).",
            target(
                or_zero(per_minute(rejected, "instance, reason"), "reason"),
                "{{reason}} · {{instance}}",
            ),
        ),
        timeseries(
            "Capture errors per minute",
            "cpm",
            "Failures inside the capture hooks (never raised into training), by stage "
            "('none': none).",
            target(
                or_zero(per_minute(errors, "job_name, stage"), "stage"), "{{stage}} · {{job_name}}"
            ),
        ),
        timeseries(
            "Series dropped per minute",
            "cpm",
            "Label sets refused by the per-metric cardinality cap, by metric ('none': none).",
            target(or_zero(per_minute(series, "metric"), "metric"), "{{metric}}"),
        ),
        timeseries(
            "Rank divergences by kind",
            "short",
            "Compiles that differ across the ranks of a job, by kind (collective_schedule, "
            "graph_hash, compile_ids, cache_pattern, compile_straggler; 'none': none). "
            "Cumulative, from the head.",
            target(
                or_zero(total(divergences, "job_name, kind"), "kind"), "{{kind}} · {{job_name}}"
            ),
        ),
        timeseries(
            "Compile stragglers: longest wait per job",
            "s",
            "How long a rank has been compiling while other ranks of its job wait for it, "
            "once past collector.straggler_after_s (0: none). The NCCL watchdog kills the "
            "job at 10 minutes by default. From the head.",
            target(or_zero(f"max by (job_name) ({stragglers})", "job_name"), "{{job_name}}"),
        ),
        info_table(
            "Running versions",
            "What each collector and the head run (aotwatch_build_info).",
            sel("aotwatch_build_info", INSTANCE),
        ),
    ]
    return dashboard(
        "aotwatch-fleet-health",
        "aotwatch / Fleet health",
        "The aotwatch daemon itself: collectors, attached workers, records received, dropped "
        "and rejected, capture errors, cardinality drops and rank divergences.",
        panels,
    )


def dashboards() -> dict[str, dict]:
    """File name -> dashboard, for every dashboard this script generates."""
    return {
        "aotwatch-compile-overview.json": compile_overview(),
        "aotwatch-aot-metadata.json": aot_metadata(),
        "aotwatch-fleet-health.json": fleet_health(),
    }


# -- for tests -------------------------------------------------------------------------------


def panel_queries(board: dict) -> list[tuple[str, str]]:
    """``(panel title, expr)`` for every target of every panel of ``board``."""
    return [(item["title"], t["expr"]) for item in board["panels"] for t in item["targets"]]


def variable_queries(board: dict) -> list[tuple[str, str]]:
    """``(variable name, label_values(...) query)`` for every query variable of ``board``."""
    variables = board["templating"]["list"]
    return [(v["name"], v["definition"]) for v in variables if v["type"] == "query"]


def substitute(expr: str, values: dict[str, str] = EXAMPLE_VALUES) -> str:
    """``expr`` with ``$name`` / ``${name}`` replaced; KeyError names a variable not given."""
    return re.sub(r"\$\{?(\w+)\}?", lambda match: values[match.group(1)], expr)


# -- files -----------------------------------------------------------------------------------


def render(board: dict) -> str:
    """The committed form: 2-space indented, keys sorted, a trailing newline."""
    return json.dumps(board, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def stale_files(out_dir: Path = OUT_DIR) -> list[Path]:
    """Generated files that are missing from ``out_dir`` or differ from this script's output."""
    return [
        out_dir / name
        for name, board in dashboards().items()
        if not (out_dir / name).is_file() or (out_dir / name).read_text() != render(board)
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if a file is stale")
    parser.add_argument("--out-dir", type=Path, default=OUT_DIR, help="default: %(default)s")
    args = parser.parse_args(argv)
    if args.check:
        stale = stale_files(args.out_dir)
        for path in stale:
            print(f"stale: {path} (run python3 dashboards/generate.py)", file=sys.stderr)
        return 1 if stale else 0
    args.out_dir.mkdir(parents=True, exist_ok=True)
    for name, board in dashboards().items():
        (args.out_dir / name).write_text(render(board))
    return 0


if __name__ == "__main__":
    sys.exit(main())
