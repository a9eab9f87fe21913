"""``aotwatch report --format html``: one self-contained page per set of archives.

It opens on what a user needs first (how long compiling cost, what to fix first, with the
metric table's own advice), then per job: a timeline of every compile per rank, compile time
by phase, the top recompile, graph-break and cache-bypass reasons with their text, cache
results, the cross-rank divergences, and the AOT metadata of every distinct graph. Charts are
plotly figures with plotly.js inlined (no network fetch when opened); the page is a jinja2
template. Records are folded one at a time into a ``Page`` as the table's pass reads them, and
it keeps only what the page shows (the bounds below): memory does not grow with the archive,
and the page says what it left out.
"""

from __future__ import annotations

import datetime
import heapq
import html
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aotwatch.core.divergence import Finding
from aotwatch.core.metrics import (
    AOT_AUTOGRAD_CACHE_BYPASSES,
    CACHE_LOOKUPS,
    FRAME_FAILURES,
    GRAPH_BREAKS,
    RANK_DIVERGENCES,
    RECOMPILES,
    Family,
)
from aotwatch.core.records import CACHE_RESULTS, PHASES, Record

MAX_JOBS = 20
"""Jobs shown (the first seen); the records of others are counted, not shown."""
MAX_RANKS = 16_384
"""Ranks shown per job (the first seen: a job of 10,240 ranks fits)."""
MAX_TIMELINE = 5000
"""Compiles drawn per job (the earliest); the counts above the chart are over all."""
MAX_GRAPH_ROWS = 500
"""Distinct graphs listed per job (the first seen)."""
MAX_REASONS = 200
"""Distinct reasons tallied per kind and job (the first seen); the totals count every one."""
MAX_REASON_CHARS = 4000
"""Characters of a reason or category kept and shown (the archive keeps all of it)."""
MAX_FINDINGS = 500
"""Divergences listed per job (``--format json`` lists every one)."""
TOP = 10
"""Reasons listed per kind."""

BarText = Callable[[Record, str, float], str]
"""A bar's hover text, made only for the bars kept: (record, kind, seconds) -> HTML."""

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


def _clip(text: str) -> str:
    return text if len(text) <= MAX_REASON_CHARS else text[: MAX_REASON_CHARS - 3] + "..."


@dataclass
class Tally:
    """Occurrences of one kind (recompiles, graph breaks, ...): all of them counted, and by
    category and reason while fewer than MAX_REASONS distinct ones are held."""

    total: int = 0
    by_reason: Counter = field(default_factory=Counter)
    by_category: Counter = field(default_factory=Counter)
    untallied: int = 0
    """Occurrences whose reason (or category) came after MAX_REASONS others: in ``total`` only."""

    def add(self, category: str, reason: str) -> None:
        self.total += 1
        key = (_clip(category), _clip(reason))
        if key in self.by_reason or len(self.by_reason) < MAX_REASONS:
            self.by_reason[key] += 1
        else:
            self.untallied += 1
        if key[0] in self.by_category or len(self.by_category) < MAX_REASONS:
            self.by_category[key[0]] += 1

    def __bool__(self) -> bool:
        return self.total > 0


@dataclass
class JobView:
    """What the page shows of one job, folded one record at a time: it holds what the page
    shows (bounded above), not the records."""

    name: str
    records: int = 0
    ranks: dict[int, int] = field(default_factory=dict)
    """Each rank shown, with its number in the order they came (a bit of a graph's ranks)."""
    compile_count: int = 0
    seconds_by_rank: Counter = field(default_factory=Counter)
    phases: dict[int, Counter] = field(default_factory=lambda: defaultdict(Counter))
    cache: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))
    recompiles: Tally = field(default_factory=Tally)
    graph_breaks: Tally = field(default_factory=Tally)
    bypasses: Tally = field(default_factory=Tally)
    failures: Tally = field(default_factory=Tally)
    graphs: dict[tuple, dict[str, Any]] = field(default_factory=dict)
    graph_records_unlisted: int = 0
    records_of_other_ranks: int = 0
    findings: list[Finding] = field(default_factory=list)
    _earliest: list[tuple[float, int, Compile]] = field(default_factory=list)
    """The timeline's bars: a heap of the MAX_TIMELINE earliest, latest start on top."""

    def add(self, record: Record) -> None:
        if record.rank not in self.ranks and len(self.ranks) >= MAX_RANKS:
            self.records_of_other_ranks += 1
            return
        self.records += 1
        self.ranks.setdefault(record.rank, len(self.ranks))
        for cache, results in record.cache.items():
            if cache in self.cache or len(self.cache) < MAX_REASONS:
                counts = self.cache[cache]
                for result in CACHE_RESULTS:  # the columns of the page's cache table
                    counts[result] += results.get(result, 0)
        for bypass in record.cache_bypasses:
            self.bypasses.add(bypass.category, bypass.reason or "")
        if record.graph is None:
            self._add_frame(record)
        else:
            self._add_graph(record)

    def _add_frame(self, record: Record) -> None:
        seconds = record.durations_s.get("total", 0.0)
        self.seconds_by_rank[record.rank] += seconds
        phases = self.phases[record.rank]
        for phase in PHASES:
            phases[phase] += record.durations_s.get(phase, 0.0)
        for graph_break in record.graph_breaks:
            self.graph_breaks.add(graph_break.category, graph_break.reason or "")
        if record.recompile_reason:
            self.recompiles.add(record.recompile_category or "other", record.recompile_reason)
        if record.fail_type:
            self.failures.add(record.fail_type, record.fail_reason or "")
        kind = (
            "failed" if record.fail_type else "recompile" if record.recompile_reason else "compile"
        )
        self._add_bar(record, seconds, kind, _frame_text, len(record.graph_breaks))

    def _add_graph(self, record: Record) -> None:
        if record.graph == "backward" and record.durations_s.get("backward"):
            seconds = record.durations_s["backward"]
            self.seconds_by_rank[record.rank] += seconds
            self.phases[record.rank]["backward"] += seconds
            self._add_bar(record, seconds, "backward", _backward_text)
        key = (record.compile_id, record.graph, record.graph_hash)
        row = self.graphs.get(key)
        if row is None:
            if len(self.graphs) >= MAX_GRAPH_ROWS:
                self.graph_records_unlisted += 1
                return
            row = self.graphs[key] = _graph_row(record)
        row["ranks"] |= 1 << self.ranks[record.rank]

    def _add_bar(
        self, record: Record, seconds: float, kind: str, text: BarText, breaks: int = 0
    ) -> None:
        """A bar from ``seconds`` before the record to it, kept if among the earliest (a
        start before 1970, from a duration longer than the time, is drawn at 1970)."""
        self.compile_count += 1
        start = max(record.time - seconds, 0.0)
        full = len(self._earliest) >= MAX_TIMELINE
        if full and start >= -self._earliest[0][0]:
            return
        bar = Compile(record.rank, start, seconds, kind, text(record, kind, seconds), breaks)
        entry = (-start, -self.compile_count, bar)
        (heapq.heapreplace if full else heapq.heappush)(self._earliest, entry)

    @property
    def compiles(self) -> list[Compile]:
        """The bars the timeline draws (at most MAX_TIMELINE), earliest first."""
        return [bar for *_, bar in sorted(self._earliest, reverse=True)]

    @property
    def compile_seconds(self) -> float:
        return sum(self.seconds_by_rank.values())


def _frame_text(record: Record, kind: str, seconds: float) -> str:
    where = html.escape(str((record.frame or {}).get("co_name") or "?"))
    text = (
        f"rank {record.rank} · frame {html.escape(str(record.compile_id))} ({where})<br>"
        f"{kind}, {seconds:.2f} s<br>{_phase_text(record.durations_s)}"
        f"<br>graph breaks: {len(record.graph_breaks)}"
    )
    if record.recompile_reason:
        text += f"<br>recompile: {html.escape(record.recompile_reason[:200])}"
    return text


def _backward_text(record: Record, kind: str, seconds: float) -> str:
    compile_id = html.escape(str(record.compile_id))
    return f"rank {record.rank} · backward of {compile_id}<br>{seconds:.2f} s"


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
        "subclasses": _clip(subclasses),
        "cache_hit": bool(record.cache_hit),
        "ranks": 0,
    }


def graph_rows(view: JobView) -> list[dict[str, Any]]:
    """The distinct graphs listed, by compile id and kind, each with its ranks as ranges."""
    by_bit = list(view.ranks)
    rows = []
    for row in view.graphs.values():
        bits = bin(row["ranks"])[:1:-1]  # bit 0 first
        ranks = sorted(by_bit[index] for index, bit in enumerate(bits) if bit == "1")
        rows.append({**row, "ranks": _ranges(ranks)})
    return sorted(rows, key=lambda g: (str(g["compile_id"]), str(g["graph"])))


def _ranges(ranks: list[int]) -> str:
    """Sorted ranks as ``0-3,5,7-9``."""
    spans: list[list[int]] = []
    for rank in ranks:
        if spans and rank == spans[-1][1] + 1:
            spans[-1][1] = rank
        else:
            spans.append([rank, rank])
    return ",".join(f"{a}-{b}" if b > a else str(a) for a, b in spans)


class Page:
    """The jobs of a report, folded one record at a time (``add``): what it holds is bounded
    by what the page shows, whatever the size of the archives."""

    def __init__(self) -> None:
        self.views: dict[str, JobView] = {}
        self.records = 0
        self.records_of_other_jobs = 0
        self.other_jobs: list[str] = []
        """The first MAX_JOBS names of the jobs not shown."""
        self.more_other_jobs = False

    def add(self, record: Record) -> None:
        """Fold one record (a valid one, not seen before: ``summary.read_archives`` hands them)."""
        self.records += 1
        view = self.views.get(record.job_name)
        if view is None:
            if len(self.views) >= MAX_JOBS:
                self.records_of_other_jobs += 1
                if record.job_name not in self.other_jobs:
                    if len(self.other_jobs) < MAX_JOBS:
                        self.other_jobs.append(record.job_name)
                    else:
                        self.more_other_jobs = True
                return
            view = self.views[record.job_name] = JobView(record.job_name)
        view.add(record)

    def job_views(self, findings: list[Finding]) -> list[JobView]:
        """One view per job shown, in name order, with its ``findings``."""
        for view in self.views.values():
            view.findings = [f for f in findings if f.job_name == view.name]
        return [self.views[name] for name in sorted(self.views)]

    def left_out(self) -> list[str]:
        """What the page does not show of other jobs, in sentences (none: nothing)."""
        if not self.records_of_other_jobs:
            return []
        names = ", ".join(self.other_jobs) + (", ..." if self.more_other_jobs else "")
        return [
            f"{self.records_of_other_jobs} records of jobs beyond the first {MAX_JOBS} are not "
            f"shown ({names}): report them with --job NAME or their own archive."
        ]


def left_out(view: JobView) -> list[str]:
    """What the page does not show of a job, in sentences (none: it shows everything)."""
    lines = []
    if view.records_of_other_ranks:
        lines.append(
            f"{view.records_of_other_ranks} records of ranks beyond the first {MAX_RANKS} are "
            "not shown."
        )
    if view.compile_count > MAX_TIMELINE:
        lines.append(
            f"Timeline: the earliest {MAX_TIMELINE} of {view.compile_count} compiles are drawn."
        )
    if len(view.findings) > MAX_FINDINGS:
        lines.append(
            f"Cross-rank divergences: the first {MAX_FINDINGS} of {len(view.findings)} are "
            "listed (--format json lists every one)."
        )
    for title, tally in (
        ("Recompile reasons", view.recompiles),
        ("Graph-break reasons", view.graph_breaks),
        ("AOTAutogradCache bypass reasons", view.bypasses),
        ("Failures", view.failures),
    ):
        if tally.untallied:
            lines.append(
                f"{title}: the first {MAX_REASONS} distinct reasons are tallied; "
                f"{tally.untallied} of {tally.total} had a later one and count in the totals only."
            )
    if view.graph_records_unlisted:
        lines.append(
            f"AOT graphs: the first {MAX_GRAPH_ROWS} distinct graphs are listed; "
            f"{view.graph_records_unlisted} records of later ones are not."
        )
    return lines


def advice(view: JobView) -> list[dict[str, str]]:
    """What to fix first, most costly first: each item with the metric table's advice."""
    items = []
    if view.findings:
        kinds = Counter(f.kind for f in view.findings)
        title = f"cross-rank divergences: {len(view.findings)} ({_counts(kinds)})"
        items.append({"title": title, "advice": RANK_DIVERGENCES.action})
    for title, tally, family in (
        ("failed compiles", view.failures, FRAME_FAILURES),
        ("recompiles", view.recompiles, RECOMPILES),
        ("graph breaks", view.graph_breaks, GRAPH_BREAKS),
        ("AOTAutogradCache bypasses", view.bypasses, AOT_AUTOGRAD_CACHE_BYPASSES),
    ):
        if tally:
            items.append(_item(f"{title}: {tally.total} ({_counts(tally.by_category)})", family))
    misses = sum(results.get("miss", 0) for results in view.cache.values())
    hits = sum(results.get("hit", 0) for results in view.cache.values())
    if misses and not hits:
        items.append(_item(f"cache misses: {misses}, no hits", CACHE_LOOKUPS))
    return items


def _item(title: str, family: Family) -> dict[str, str]:
    return {"title": title, "advice": family.action}


def _counts(counter: Counter) -> str:
    return ", ".join(f"{name} {count}" for name, count in counter.most_common(4))


def _top(tally: Tally) -> list[dict[str, Any]]:
    return [
        {"category": category, "reason": reason, "count": count}
        for (category, reason), count in tally.by_reason.most_common(TOP)
    ]


def _when(seconds: float) -> str:
    return datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc).isoformat()


def timeline_figure(view: JobView, causes: list[tuple[str, float, str]] = ()) -> Any:
    """Every compile per rank as a bar from its start to its end, coloured by kind; a mark
    where a slow rank's compile ended, saying why it compiled (``causes``, the first
    MAX_FINDINGS)."""
    import plotly.graph_objects as go

    figure = go.Figure()
    shown = view.compiles
    for kind, color in _COLORS.items():
        _add_bars(figure, kind, [c for c in shown if c.kind == kind], color)
    _add_marks(
        figure,
        "graph break",
        [
            (c.rank, c.start + c.seconds, f"{c.graph_breaks} graph break(s)<br>{c.text}")
            for c in shown
            if c.graph_breaks
        ],
        {"symbol": "x", "size": 11, "color": "#222"},
    )
    shown_causes = [c for c in causes if int(c[0]) in view.ranks][:MAX_FINDINGS]
    _add_marks(
        figure,
        "why a rank was slow",
        [(rank, ended, html.escape(said)) for rank, ended, said in shown_causes],
        {"symbol": "star", "size": 13, "color": "#d62728"},
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


def _add_bars(figure: Any, kind: str, bars: list, color: str) -> None:
    """A trace of compiles of one kind, each a bar from its start to its end."""
    import plotly.graph_objects as go

    if bars:
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


def _add_marks(figure: Any, name: str, marks: list[tuple[Any, float, str]], marker: dict) -> None:
    """A trace of marks (rank, when, hover text) on the timeline; none when there are none."""
    import plotly.graph_objects as go

    if marks:
        figure.add_trace(
            go.Scatter(
                name=name,
                mode="markers",
                y=[f"rank {rank}" for rank, _, _ in marks],
                x=[_when(when) for _, when, _ in marks],
                marker=marker,
                hovertext=[text for _, _, text in marks],
                hoverinfo="text",
            )
        )


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


def render(
    page: Page,
    findings: list[Finding],
    sources: list[Path],
    costs: dict[str, list[str]] | None = None,
    causes: dict[str, list[tuple[str, float, str]]] | None = None,
) -> str:
    """The page for the records folded into ``page`` (read from ``sources``), their
    ``findings``, what compiling cost each job (``summary.costs_by_job``) and why its slow
    ranks compiled (``cost.Ledger.causes``, marked on the timeline)."""
    import jinja2
    import plotly.offline

    environment = jinja2.Environment(
        loader=jinja2.PackageLoader("aotwatch.report", "templates"),
        autoescape=jinja2.select_autoescape(["html"]),
    )
    jobs = [
        {
            "view": view,
            "advice": advice(view),
            "ranks": sorted(view.ranks),
            "slowest": view.seconds_by_rank.most_common(1)[0] if view.seconds_by_rank else None,
            "timeline": timeline_figure(view, (causes or {}).get(view.name, [])).to_html(
                full_html=False, include_plotlyjs=False, div_id=f"timeline-{index}"
            ),
            "phases": phase_figure(view).to_html(
                full_html=False, include_plotlyjs=False, div_id=f"phases-{index}"
            ),
            "findings": view.findings[:MAX_FINDINGS],
            "costs": (costs or {}).get(view.name, []),
            "causes": [said for _, _, said in (causes or {}).get(view.name, [])][:MAX_FINDINGS],
            "recompiles": _top(view.recompiles),
            "graph_breaks": _top(view.graph_breaks),
            "bypasses": _top(view.bypasses),
            "failures": _top(view.failures),
            "graphs": graph_rows(view),
            "left_out": left_out(view),
        }
        for index, view in enumerate(page.job_views(findings))
    ]
    return environment.get_template("report.html").render(
        jobs=jobs,
        sources=sources,
        records=page.records,
        left_out=page.left_out(),
        plotly_js=plotly.offline.get_plotlyjs(),
    )
