"""``aotwatch report --format html``: one self-contained page per set of archives.

It opens on what a user needs first (how long compiling cost, what to fix first, with the
metric table's own advice), then per job: a timeline of every compile per rank, compile time
by phase, the top recompile, graph-break and cache-bypass reasons with their text, cache
results, the cross-rank divergences, and the AOT metadata of every distinct graph. Charts are
plotly figures with plotly.js inlined (no network fetch when opened); the page is a jinja2
template.
"""

from __future__ import annotations

import datetime
import html
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aotwatch.archive import read_archive
from aotwatch.divergence import Finding
from aotwatch.metrics import BY_NAME, RANK_DIVERGENCES
from aotwatch.records import PHASES, Record

MAX_TIMELINE = 5000
"""Compiles drawn per job (the earliest); the counts above the chart are over all."""
MAX_GRAPH_ROWS = 500
"""Distinct graphs listed per job."""
TOP = 10
"""Reasons listed per kind."""

_COLORS = {"compile": "#4c78a8", "recompile": "#f58518", "backward": "#72b7b2", "failed": "#e45756"}


@dataclass
class Compile:
    """One bar of the timeline: a frame's compile or a lazy backward's."""

    rank: int
    start: float
    seconds: float
    kind: str
    text: str
    graph_breaks: int = 0


@dataclass
class JobView:
    """What the page shows of one job, gathered from its records."""

    name: str
    ranks: set[int] = field(default_factory=set)
    compiles: list[Compile] = field(default_factory=list)
    seconds_by_rank: Counter = field(default_factory=Counter)
    phases: dict[int, Counter] = field(default_factory=lambda: defaultdict(Counter))
    cache: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))
    recompiles: Counter = field(default_factory=Counter)
    graph_breaks: Counter = field(default_factory=Counter)
    bypasses: Counter = field(default_factory=Counter)
    failures: Counter = field(default_factory=Counter)
    graphs: dict[tuple, dict[str, Any]] = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)

    def add(self, record: Record) -> None:
        self.ranks.add(record.rank)
        for cache, results in record.cache.items():
            self.cache[cache].update(results)
        for bypass in record.cache_bypasses:
            self.bypasses[(bypass["category"], bypass.get("reason") or "")] += 1
        if record.graph is None:
            self._add_frame(record)
        else:
            self._add_graph(record)

    def _add_frame(self, record: Record) -> None:
        seconds = record.durations_s.get("total", 0.0)
        self.seconds_by_rank[record.rank] += seconds
        for phase, value in record.durations_s.items():
            self.phases[record.rank][phase] += value
        for graph_break in record.graph_breaks:
            self.graph_breaks[(graph_break["category"], graph_break.get("reason") or "")] += 1
        if record.recompile_reason:
            self.recompiles[(record.recompile_category or "other", record.recompile_reason)] += 1
        if record.fail_type:
            self.failures[(record.fail_type, record.fail_reason or "")] += 1
        kind = (
            "failed" if record.fail_type else "recompile" if record.recompile_reason else "compile"
        )
        where = (record.frame or {}).get("co_name") or "?"
        text = (
            f"rank {record.rank} · frame {record.compile_id} ({where})<br>{kind}, {seconds:.2f} s"
            f"<br>{_phase_text(record.durations_s)}"
            f"<br>graph breaks: {len(record.graph_breaks)}"
        )
        if record.recompile_reason:
            text += f"<br>recompile: {html.escape(record.recompile_reason[:200])}"
        start, breaks = record.time - seconds, len(record.graph_breaks)
        self.compiles.append(Compile(record.rank, start, seconds, kind, text, breaks))

    def _add_graph(self, record: Record) -> None:
        if record.graph == "backward" and record.durations_s.get("backward"):
            seconds = record.durations_s["backward"]
            self.seconds_by_rank[record.rank] += seconds
            self.phases[record.rank]["backward"] += seconds
            text = f"rank {record.rank} · backward of {record.compile_id}<br>{seconds:.2f} s"
            self.compiles.append(
                Compile(record.rank, record.time - seconds, seconds, "backward", text)
            )
        key = (record.compile_id, record.graph, record.graph_hash)
        row = self.graphs.get(key)
        if row is None:
            if len(self.graphs) >= MAX_GRAPH_ROWS:
                return
            row = self.graphs[key] = _graph_row(record)
        row["ranks"].add(record.rank)

    @property
    def compile_seconds(self) -> float:
        return sum(self.seconds_by_rank.values())


def _phase_text(durations: dict[str, float]) -> str:
    return ", ".join(f"{p} {durations[p]:.2f} s" for p in PHASES[1:] if durations.get(p))


def _graph_row(record: Record) -> dict[str, Any]:
    mutated = sum(record.mutation_placement.values())
    aliased = sum(n for kind, n in record.outputs.items() if kind != "non_alias")
    subclasses = ", ".join(
        f"{role}: {kind}×{n}"
        for role, kinds in record.subclasses.items()
        for kind, n in kinds.items()
    )
    return {
        "compile_id": record.compile_id,
        "graph": record.graph,
        "hash": record.graph_hash or "",
        "nodes": record.nodes if record.nodes is not None else "",
        "inputs": record.inputs.get("total", 0),
        "mutated": mutated,
        "aliased": aliased,
        "bases": record.intermediate_bases,
        "tokens": f"{record.tokens.get('forward', 0)}/{record.tokens.get('backward', 0)}",
        "saved": record.tensors_saved_for_backward if record.tensors_saved_for_backward else "",
        "saved_bytes": record.bytes_saved_for_backward or "",
        "subclasses": subclasses,
        "cache_hit": bool(record.cache_hit),
        "ranks": set(),
    }


def job_views(records: list[Record], findings: list[Finding]) -> list[JobView]:
    """One view per job, in name order."""
    views: dict[str, JobView] = {}
    for record in records:
        views.setdefault(record.job_name, JobView(record.job_name)).add(record)
    for finding in findings:
        if finding.job_name in views:
            views[finding.job_name].findings.append(finding)
    return [views[name] for name in sorted(views)]


def advice(view: JobView) -> list[dict[str, str]]:
    """What to fix first, most costly first: each item with the metric table's advice."""
    items = []
    if view.findings:
        kinds = Counter(f.kind for f in view.findings)
        title = f"cross-rank divergences: {len(view.findings)} ({_counts(kinds)})"
        items.append({"title": title, "advice": RANK_DIVERGENCES.action})
    for title, counter, family in (
        ("failed compiles", view.failures, "torch_compile_frame_failures"),
        ("recompiles", view.recompiles, "torch_compile_recompiles"),
        ("graph breaks", view.graph_breaks, "torch_compile_graph_breaks"),
        ("AOTAutogradCache bypasses", view.bypasses, "torch_compile_aot_autograd_cache_bypasses"),
    ):
        if counter:
            by_category = Counter()
            for (category, _), count in counter.items():
                by_category[category] += count
            total = sum(counter.values())
            items.append(_item(f"{title}: {total} ({_counts(by_category)})", family))
    misses = sum(results.get("miss", 0) for results in view.cache.values())
    hits = sum(results.get("hit", 0) for results in view.cache.values())
    if misses and not hits:
        items.append(_item(f"cache misses: {misses}, no hits", "torch_compile_cache_lookups"))
    return items


def _item(title: str, family: str) -> dict[str, str]:
    return {"title": title, "advice": BY_NAME[family].action}


def _counts(counter: Counter) -> str:
    return ", ".join(f"{name} {count}" for name, count in counter.most_common(4))


def _top(counter: Counter) -> list[dict[str, Any]]:
    return [
        {"category": category, "reason": reason, "count": count}
        for (category, reason), count in counter.most_common(TOP)
    ]


def _when(seconds: float) -> str:
    return datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc).isoformat()


def timeline_figure(view: JobView) -> Any:
    """Every compile per rank as a bar from its start to its end, coloured by kind."""
    import plotly.graph_objects as go

    figure = go.Figure()
    shown = sorted(view.compiles, key=lambda c: c.start)[:MAX_TIMELINE]
    for kind, color in _COLORS.items():
        bars = [c for c in shown if c.kind == kind]
        if not bars:
            continue
        figure.add_trace(
            go.Bar(
                name=kind,
                orientation="h",
                y=[f"rank {c.rank}" for c in bars],
                base=[_when(c.start) for c in bars],
                x=[max(c.seconds, 0.001) * 1000 for c in bars],  # a date axis counts in ms
                marker_color=color,
                hovertext=[c.text for c in bars],
                hoverinfo="text",
            )
        )
    breaks = [c for c in shown if c.graph_breaks]
    if breaks:
        figure.add_trace(
            go.Scatter(
                name="graph break",
                mode="markers",
                y=[f"rank {c.rank}" for c in breaks],
                x=[_when(c.start + c.seconds) for c in breaks],
                marker={"symbol": "x", "size": 11, "color": "#222"},
                hovertext=[f"{c.graph_breaks} graph break(s)<br>{c.text}" for c in breaks],
                hoverinfo="text",
            )
        )
    ranks = [f"rank {r}" for r in sorted(view.ranks)]
    figure.update_layout(
        barmode="overlay",
        height=140 + 36 * len(ranks),
        margin={"l": 80, "r": 20, "t": 50, "b": 40},
        xaxis={"type": "date", "title": "time (UTC)"},
        yaxis={"categoryorder": "array", "categoryarray": ranks[::-1], "type": "category"},
        legend={"orientation": "h", "y": 1.02, "yanchor": "bottom", "x": 0},
    )
    return figure


def phase_figure(view: JobView) -> Any:
    """Compile seconds per phase and rank (phases nest: dynamo contains aot_autograd...)."""
    import plotly.graph_objects as go

    figure = go.Figure()
    for phase in PHASES:
        values = [view.phases[rank].get(phase, 0.0) for rank in sorted(view.ranks)]
        if any(values):
            figure.add_trace(
                go.Bar(name=phase, x=[f"rank {r}" for r in sorted(view.ranks)], y=values)
            )
    figure.update_layout(
        barmode="group",
        height=320,
        margin={"l": 60, "r": 20, "t": 30, "b": 40},
        yaxis={"title": "seconds"},
        legend={"orientation": "h", "y": 1.02, "yanchor": "bottom", "x": 0},
    )
    return figure


def render_archives(paths: list[Path], findings: list[Finding]) -> str:
    """The page for the records of these archives (malformed lines skipped)."""
    records = [item for path in paths for item in read_archive(path) if isinstance(item, Record)]
    return render(records, findings, paths)


def render(records: list[Record], findings: list[Finding], sources: list[Path]) -> str:
    """The page for ``records`` (read from ``sources``) and their ``findings``."""
    import jinja2
    import plotly.offline

    views = job_views(records, findings)
    environment = jinja2.Environment(
        loader=jinja2.PackageLoader("aotwatch", "templates"),
        autoescape=jinja2.select_autoescape(["html"]),
    )
    jobs = [
        {
            "view": view,
            "advice": advice(view),
            "ranks": sorted(view.ranks),
            "slowest": view.seconds_by_rank.most_common(1)[0] if view.seconds_by_rank else None,
            "timeline": timeline_figure(view).to_html(
                full_html=False, include_plotlyjs=False, div_id=f"timeline-{index}"
            ),
            "phases": phase_figure(view).to_html(
                full_html=False, include_plotlyjs=False, div_id=f"phases-{index}"
            ),
            "recompiles": _top(view.recompiles),
            "graph_breaks": _top(view.graph_breaks),
            "bypasses": _top(view.bypasses),
            "failures": _top(view.failures),
            "graphs": sorted(
                view.graphs.values(), key=lambda g: (str(g["compile_id"]), str(g["graph"]))
            ),
            "truncated": len(view.compiles) > MAX_TIMELINE,
        }
        for index, view in enumerate(views)
    ]
    return environment.get_template("report.html").render(
        jobs=jobs,
        sources=sources,
        records=len(records),
        plotly_js=plotly.offline.get_plotlyjs(),
        max_timeline=MAX_TIMELINE,
    )
