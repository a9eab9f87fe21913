"""Reports of an Aggregate: a terminal table, JSON per metric and label set, Prometheus text."""

from __future__ import annotations

import os
import shlex
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from aotwatch.core import cost, divergence
from aotwatch.core.aggregate import Aggregate, Snapshot
from aotwatch.core.archive import ARCHIVE_FILE, archive_files, read_archive
from aotwatch.core.divergence import Finding
from aotwatch.core.liveness import Liveness
from aotwatch.core.metrics import (
    BY_NAME,
    CACHE_LOOKUPS,
    COMPILE_SECONDS,
    EFFECT_TOKENS,
    FRAME_FAILURES,
    FRAMES,
    GRAPH_BREAKS,
    GRAPH_OUTPUTS,
    GRAPHS,
    MUTATED_INPUTS,
    RANK_DIVERGENCES,
    RANK_LABELS,
    RECOMPILES,
    RECORDS_REJECTED,
    REDUNDANT_SECONDS,
    WAIT_RANK_SECONDS,
    Family,
)
from aotwatch.core.records import Record, RecordError, printable
from aotwatch.core.wire import Worker
from aotwatch.export.collector import exposition, family_exposition, render


def read_archives(
    paths: list[Path],
    max_series_per_metric: int = 1000,
    also: Callable[[Record], None] | None = None,
) -> tuple[Snapshot, list[Finding]]:
    """What a live scrape showed of these archives (every record folded, the workers that
    wrote them attached, malformed lines counted as rejected), and the divergences between
    their ranks that the head finds live. ``also`` is handed each record folded (valid, not
    a duplicate), as it is read: the HTML page folds them in the same pass."""
    aggregate = Aggregate(max_series_per_metric)
    workers = Liveness(None, max_series_per_metric, max_series_per_metric)
    fingerprints: divergence.Fingerprints = {}
    for path in paths:
        for item in read_archive(path):
            if isinstance(item, RecordError):
                aggregate.inc(RECORDS_REJECTED, reason=item.reason)
            elif aggregate.add(item):
                divergence.observe(fingerprints, item)
                if also is not None:
                    also(item)
                worker_id = f"{item.hostname} {item.pid}"
                workers.seen(Worker(worker_id, item.job_name, item.rank))
    findings = [
        finding
        for job, ranks in sorted(fingerprints.items())
        for finding in divergence.find_in_groups(job, ranks)
    ]
    return workers.apply(aggregate.snapshot()), findings


def trusted_archives(paths: list[Path]) -> tuple[list[Path], list[str]]:
    """The archives of ``paths`` that the running user or root owns (the file and its
    directory), and one line for each other one, saying why it is skipped: in a directory
    others can write to, an archive another user planted (a forged rank) must not count."""
    trusted, skipped = [], []
    for path in paths:
        try:
            owners = {os.lstat(p).st_uid for p in (path, path.parent)} - {os.geteuid(), 0}
        except OSError:  # gone meanwhile: reading it says so
            owners = set()
        if owners:
            skipped.append(
                f"aotwatch: skipping {path}: it belongs to uid {min(owners)}, neither to this "
                f"user (uid {os.geteuid()}) nor to root"
            )
        else:
            trusted.append(path)
    return trusted, skipped


def job_archives(root: str | os.PathLike, job_name: str | None = None) -> list[Path]:
    """The archive files of ``job_name`` (None: of every job) under an archive root: one per
    node whose collector saw the job (``collectors/<node>/jobs/<slug>/records.jsonl``)."""
    from aotwatch.core.job_archives import JOBS_DIR, job_directories

    return [
        directory / ARCHIVE_FILE
        for jobs in sorted(Path(root).glob(f"collectors/*/{JOBS_DIR}"))
        for directory, info in job_directories(jobs)
        if job_name in (None, info.job_name) and (directory / ARCHIVE_FILE).is_file()
    ]


def archives_at(path: str | os.PathLike) -> list[Path]:
    """The archive files a report of ``path`` reads: an archive, a directory of them
    (``archive_files``), or an archive root (``aotwatch run``'s) and every job it holds."""
    return archive_files(path) or job_archives(path)


def as_json(
    snapshot: Snapshot,
    findings: list[Finding] | None = None,
    costs: list[tuple[Family, dict[tuple[str, ...], float]]] | None = None,
) -> dict[str, list[dict[str, Any]]]:
    """Every metric with, per label set, its value (or histogram buckets, sum and count);
    with ``findings``, also their count per job and kind and the findings themselves; with
    ``costs`` (``cost_values``), the head's cost families."""
    result: dict[str, list[dict[str, Any]]] = {}
    for family, values in costs or ():
        result[family.name] = [
            {"labels": family.named(labels), "value": value}
            for labels, value in sorted(values.items())
        ]
    if findings is not None:
        result[RANK_DIVERGENCES.name] = [
            {"labels": RANK_DIVERGENCES.named(labels), "value": count}
            for labels, count in sorted(divergence.counts(findings).items())
        ]
        result["findings"] = [finding.to_dict() for finding in findings]
    for name, table in sorted(snapshot.values.items()):
        family = BY_NAME[name]
        result[name] = [
            {"labels": family.named(labels, snapshot.per_rank), "value": value}
            for labels, value in sorted(table.items())
        ]
    for name, table in sorted(snapshot.histograms.items()):
        family = BY_NAME[name]
        result[name] = [
            {
                "labels": family.named(labels, snapshot.per_rank),
                "buckets": dict(histogram.cumulative()),
                "sum": histogram.sum,
                "count": histogram.count,
            }
            for labels, histogram in sorted(table.items())
        ]
    return result


def cost_values(ledger: cost.Ledger) -> list[tuple[Family, dict[tuple[str, ...], float]]]:
    """The head's cost families as the archives give them (``cost.Ledger``; waits from the
    durations), the label sets above 0 only."""
    waits = {
        WAIT_RANK_SECONDS.label_set(job_name=job): seconds
        for job, seconds in ledger.waits().items()
        if seconds > 0
    }
    redundant = {key: seconds for key, seconds in ledger.redundant().items() if seconds > 0}
    families = ((WAIT_RANK_SECONDS, waits), (REDUNDANT_SECONDS, redundant))
    return [(family, values) for family, values in families if values]


def prometheus(
    snapshot: Snapshot,
    const_labels: Mapping[str, str] | None = None,
    findings: list[Finding] | None = None,
    costs: list[tuple[Family, dict[tuple[str, ...], float]]] | None = None,
) -> str:
    """Exactly what the live exporters serve: the collectors' for this snapshot and, when
    there are ``findings``, the head's count of them, and its ``costs`` (``cost_values``)."""
    text = exposition(snapshot, const_labels)
    if findings:
        counts = divergence.counts(findings)
        text += family_exposition(render(RANK_DIVERGENCES, counts, const_labels))
    for family, values in costs or ():
        text += family_exposition(render(family, values, const_labels))
    return text.decode()


def _hours(seconds: float) -> str:
    return f"{seconds:,.0f} s ({seconds / 3600:,.2f} rank-hours)"


def costs_by_job(
    redundant: dict[tuple[str, str], float],
    waits: dict[str, float],
    twice: dict[str, tuple[int, int]],
) -> dict[str, list[str]]:
    """Per job, the rank-seconds its ranks waited for a straggler and the compile seconds
    done twice (``cost.redundant``; ``twice``: ``cost.graphs_twice``), each scope with its
    cure; jobs with nothing to say are left out."""
    costs: dict[str, list[str]] = {}
    for job in sorted(set(waits) | {job for job, _ in redundant}):
        lines = []
        if waits.get(job):
            lines.append(f"ranks waited {_hours(waits[job])} for a slower rank's compile")
        ranks, graphs = twice.get(job, (0, 0))
        if redundant.get((job, "job")):
            lines.append(
                f"{ranks} ranks compiled the same {graphs} graphs: "
                f"{_hours(redundant[(job, 'job')])} done twice; {cost.CURES['job']}"
            )
        if redundant.get((job, "fleet")):
            lines.append(
                f"{_hours(redundant[(job, 'fleet')])} compiling graphs an earlier job had "
                f"compiled; {cost.CURES['fleet']}"
            )
        if lines:
            costs[job] = lines
    return costs


def cost_lines(
    redundant: dict[tuple[str, str], float],
    waits: dict[str, float],
    twice: dict[str, tuple[int, int]],
) -> list[str]:
    """``compile cost:`` and ``costs_by_job``'s lines, each after its job (escaped:
    ``printable``): the text report and ``aotwatch status``."""
    lines = [
        printable(f"  {job}: {line}")
        for job, said in costs_by_job(redundant, waits, twice).items()
        for line in said
    ]
    return [f"compile cost: {'' if lines else 'none'}".rstrip(), *lines]


def divergence_lines(findings: list[Finding] | list[dict[str, Any]]) -> list[str]:
    """``rank divergences: N`` and one line per finding: which ranks had what (escaped:
    ``printable``)."""
    lines = [f"rank divergences: {len(findings) or 'none'}"]
    for finding in findings:
        found = finding if isinstance(finding, dict) else finding.to_dict()
        groups = "; ".join(f"ranks {','.join(r)}: {v}" for v, r in found["groups"].items())
        among = f" in compare group {found['compare_group']}" if "compare_group" in found else ""
        lines.append(printable(f"  {found['kind']} at {found['compile_id']}{among}: {groups}"))
    return lines


def _named(snapshot: Snapshot, family: Family) -> list[tuple[dict[str, str], float]]:
    """``family``'s series in ``snapshot``, their labels by name."""
    table = snapshot.values.get(family.name, {})
    return [(family.named(labels, snapshot.per_rank), value) for labels, value in table.items()]


def _rank(named: dict[str, str]) -> tuple[str, ...]:
    return tuple(named[label] for label in RANK_LABELS)


def _total(snapshot: Snapshot, family: Family, rank: tuple[str, ...], **match: str) -> float:
    return sum(
        value
        for named, value in _named(snapshot, family)
        if _rank(named) == rank and all(named.get(k) == v for k, v in match.items())
    )


_COLUMNS = (
    ("frames", lambda s, r: _total(s, FRAMES, r)),
    (
        "graphs f/b/i",
        lambda s, r: "/".join(
            f"{_total(s, GRAPHS, r, graph=g):.0f}" for g in ("forward", "backward", "inference")
        ),
    ),
    ("compile s", lambda s, r: f"{_total(s, COMPILE_SECONDS, r):.2f}"),
    ("breaks", lambda s, r: _total(s, GRAPH_BREAKS, r)),
    ("recompiles", lambda s, r: _total(s, RECOMPILES, r)),
    (
        "cache hit/miss",
        lambda s, r: "{:.0f}/{:.0f}".format(
            _total(s, CACHE_LOOKUPS, r, result="hit"),
            _total(s, CACHE_LOOKUPS, r, result="miss"),
        ),
    ),
    ("mutated inputs", lambda s, r: _total(s, MUTATED_INPUTS, r)),
    (
        "aliased outputs",
        lambda s, r: (
            _total(s, GRAPH_OUTPUTS, r) - _total(s, GRAPH_OUTPUTS, r, output_type="non_alias")
        ),
    ),
    (
        "tokens f/b",
        lambda s, r: "{:.0f}/{:.0f}".format(
            _total(s, EFFECT_TOKENS, r, direction="forward"),
            _total(s, EFFECT_TOKENS, r, direction="backward"),
        ),
    ),
    ("failures", lambda s, r: _total(s, FRAME_FAILURES, r)),
)


def table(snapshot: Snapshot) -> str:
    """One row per (job, rank, device): what compiling cost and what it found (escaped:
    ``printable``)."""
    ranks = sorted(
        {_rank(named) for family in (FRAMES, GRAPHS) for named, _ in _named(snapshot, family)}
    )
    header = [*RANK_LABELS, *(name for name, _ in _COLUMNS)]
    rows = [header]
    for rank in ranks:
        cells = [column(snapshot, rank) for _, column in _COLUMNS]
        cells = [*rank, *(f"{c:.0f}" if isinstance(c, float) else c for c in cells)]
        rows.append([printable(cell) for cell in cells])
    if not ranks:
        return "no compiles recorded"
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows
    )


def job_summary(job_name: str, snapshot: Snapshot, findings: list[dict[str, Any]]) -> str:
    """The end of ``aotwatch run``: the job's table and its rank divergences."""
    lines = [f"aotwatch report for job {job_name!r}:", table(snapshot), ""]
    return "\n".join(lines + divergence_lines(findings))


def html_command(root: str | os.PathLike, *options: str) -> str:
    """The command that makes the HTML report of the archives under ``root``."""
    words = ["aotwatch", "report", *options, os.fspath(root), "--format", "html"]
    return "HTML report: " + " ".join(shlex.quote(w) for w in [*words, "-o", "report.html"])
