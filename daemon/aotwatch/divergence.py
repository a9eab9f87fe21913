"""Cross-rank divergence: ranks of one job that compiled different things (pure functions).

Ranks that compile different graphs under the same compile id, compile
different sets of frames, or hit the cache differently are the usual cause
of collective hangs. Collectors keep a small fingerprint of every record;
the head merges them per job and compares the ranks.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

from aotwatch.lru import trim_oldest
from aotwatch.records import GRAPH_KINDS, Record

KINDS = ("graph_hash", "collective_schedule", "compile_ids", "cache_pattern", "compile_straggler")
"""What a finding says differs between ranks."""

PARTS = ("graphs", "collectives", "cache")
"""The parts of a rank's fingerprint: graph hashes and collective schedules per graph key,
cache patterns per compile id."""

MAX_GRAPHS_PER_ID = 64
"""Distinct graph hashes kept per compile id and graph kind (DDP buckets make several)."""

MAX_SCHEDULE_TEXT = 200
"""Characters of a collective schedule kept in a fingerprint: its hash and its first ops."""

MAX_COMPILE_IDS = 10_000
"""Compile ids remembered per rank (the oldest go first): memory stays bounded however long
a job runs."""

GraphKey = tuple[str, str]
"""(compile id, graph kind): a tuple, so a compile id is never cut back out of a string."""
Fingerprints = dict[str, dict[str, dict[str, dict[Any, Any]]]]
"""job -> rank (str) -> {"graphs": {(compile_id, graph): [distinct hashes]},
"collectives": {(compile_id, graph): [distinct schedule hashes]},
"cache": {compile_id: pattern}}."""
Change = tuple[str, str, GraphKey | str]
"""(rank, part, graph key or compile id): one entry of a rank's fingerprint."""


def empty_parts() -> dict[str, dict[str, Any]]:
    return {part: {} for part in PARTS}


def _add_distinct(part: dict[GraphKey, list[str]], key: GraphKey, value: str | None) -> None:
    values = part.setdefault(key, [])
    if value and value not in values and len(values) < MAX_GRAPHS_PER_ID:
        values.append(value)
        values.sort()
    trim_oldest(part, MAX_COMPILE_IDS)


def observe(fingerprints: Fingerprints, record: Record) -> list[Change]:
    """Fold one accepted record into ``fingerprints``; returns the entries it touched."""
    compile_id = record.compile_id
    if compile_id is None:
        return []
    rank_name = str(record.rank)
    rank = fingerprints.setdefault(record.job_name, {}).setdefault(rank_name, empty_parts())
    if record.graph is not None:
        key = (compile_id, record.graph)
        _add_distinct(rank["graphs"], key, record.graph_hash)
        changes = [(rank_name, "graphs", key)]
        if record.collective_hash:
            schedule = f"{record.collective_hash} {'; '.join(record.collectives)}"
            _add_distinct(rank["collectives"], key, schedule[:MAX_SCHEDULE_TEXT])
            changes.append((rank_name, "collectives", key))
        return changes
    rank["cache"][compile_id] = ",".join(
        f"{cache}:{result}"
        for cache, results in sorted(record.cache.items())
        for result in sorted(results)
    )
    trim_oldest(rank["cache"], MAX_COMPILE_IDS)
    return [(rank_name, "cache", compile_id)]


def compile_id_of(key: GraphKey | str) -> str:
    """The compile id of a fingerprint entry's key (a graph key, or a compile id itself)."""
    return key[0] if type(key) is tuple else key


def copy_ranks(ranks: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """A copy of one job's fingerprints that later records cannot change (about ten times
    faster than ``copy.deepcopy``: the shape is known, lists of hashes or a pattern)."""
    return {
        rank: {
            part: {
                key: list(value) if type(value) is list else value
                for key, value in parts.get(part, {}).items()
            }
            for part in PARTS
        }
        for rank, parts in ranks.items()
    }


class Digest:
    """The head's copy of every collector's fingerprints, kept up to date from what changed.

    A collector numbers each job's changes and answers, per round, every job's number and,
    for the jobs whose number moved since the head last saw it, the entries that changed
    since then (``NodeCollector.fingerprints_since``; a whole job when the head has nothing
    of it yet). So a round costs what is new, not ranks x history. A collector that
    restarted (a new ``epoch``) is read afresh. ``changes`` tells the head which compile ids
    of which jobs to compare again.
    """

    def __init__(self) -> None:
        self._nodes: dict[str, dict[str, Any]] = {}  # node -> epoch, versions, jobs
        self._changed: dict[str, set[str] | None] = {}  # job -> compile ids; None: all

    def known(self, node: str) -> tuple[str | None, dict[str, int]]:
        """(epoch, job versions) the head holds for ``node``: what it asks the collector for."""
        entry = self._nodes.get(node)
        return (entry["epoch"], entry["versions"]) if entry else (None, {})

    def update(self, node: str, answer: dict[str, Any]) -> None:
        """Take a collector's answer."""
        entry = self._nodes.get(node)
        if entry is None or entry["epoch"] != answer["epoch"]:
            for job in entry["jobs"] if entry else ():
                self._changed[job] = None
            entry = self._nodes[node] = {"epoch": answer["epoch"], "versions": {}, "jobs": {}}
        for job in set(entry["jobs"]) - set(answer["versions"]):  # forgotten by the collector
            del entry["jobs"][job]
            self._changed[job] = None
        for job, ranks in answer["jobs"].items():
            entry["jobs"][job] = ranks
            self._changed[job] = None
        for job, delta in answer.get("deltas", {}).items():
            self._apply(entry["jobs"].setdefault(job, {}), job, delta)
        entry["versions"] = answer["versions"]

    def _apply(self, ranks: dict[str, dict[str, Any]], job: str, delta: dict) -> None:
        changed = self._changed.setdefault(job, set())
        for rank, parts in delta.items():
            mine = ranks.setdefault(rank, empty_parts())
            for kind in PARTS:
                mine.setdefault(kind, {}).update(parts.get(kind, {}))
                trim_oldest(mine[kind], MAX_COMPILE_IDS)
                if changed is not None:
                    changed.update(map(compile_id_of, parts.get(kind, {})))

    def forget(self, node: str) -> None:
        """A node is gone."""
        for job in self._nodes.pop(node, {"jobs": {}})["jobs"]:
            self._changed[job] = None

    def changes(self) -> dict[str, set[str] | None]:
        """The jobs changed since the last call: the compile ids to compare again (None: all)."""
        changed, self._changed = self._changed, {}
        return changed

    def nodes(self) -> set[str]:
        return set(self._nodes)

    def jobs(self) -> set[str]:
        return {job for entry in self._nodes.values() for job in entry["jobs"]}

    def ranks(self, job: str) -> dict[str, dict[str, Any]]:
        """One job's ranks across every node."""
        merged: dict[str, dict[str, Any]] = {}
        for entry in self._nodes.values():
            merged.update(entry["jobs"].get(job, {}))
        return merged


@dataclass(frozen=True)
class Finding:
    """One divergence: ``groups`` maps what each group of ranks had to those ranks."""

    job_name: str
    kind: str
    compile_id: str
    groups: tuple[tuple[str, tuple[str, ...]], ...]

    @property
    def key(self) -> tuple[str, str, str]:
        return self.job_name, self.kind, self.compile_id

    def describe(self) -> str:
        parts = "; ".join(f"ranks {','.join(ranks)}: {value}" for value, ranks in self.groups)
        return f"{self.job_name} {self.kind} at {self.compile_id}: {parts}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "job_name": self.job_name,
            "kind": self.kind,
            "compile_id": self.compile_id,
            "groups": {value: list(ranks) for value, ranks in self.groups},
        }


def counts(findings: list[Finding]) -> dict[tuple[str, str], int]:
    """Findings per (job, kind), as ``torch_compile_rank_divergences_total`` counts them."""
    return dict(Counter((finding.job_name, finding.kind) for finding in findings))


def _groups(values: dict[str, str]) -> tuple[tuple[str, tuple[str, ...]], ...]:
    by_value: dict[str, list[str]] = {}
    for rank, value in values.items():
        by_value.setdefault(value, []).append(rank)
    return tuple(
        sorted((value, tuple(sorted(ranks, key=int))) for value, ranks in by_value.items())
    )


def find(
    job_name: str, ranks: dict[str, dict[str, Any]], compile_ids: set[str] | None = None
) -> list[Finding]:
    """Every divergence between the ranks of one job, at ``compile_ids`` (None: all)."""
    if len(ranks) < 2:
        return []
    if compile_ids is None:
        compile_ids = {key[0] for v in ranks.values() for key in v["graphs"]}
        compile_ids |= {compile_id for v in ranks.values() for compile_id in v["cache"]}
    findings = []
    for compile_id in sorted(compile_ids):
        findings += _find_at(job_name, ranks, compile_id)
    return findings


def _find_at(job_name: str, ranks: dict[str, dict[str, Any]], compile_id: str) -> list[Finding]:
    findings, present = [], {}
    for graph in GRAPH_KINDS:
        key = (compile_id, graph)
        hashes = {r: ",".join(v["graphs"][key]) for r, v in ranks.items() if key in v["graphs"]}
        schedules = {
            r: f"{graph}: " + (" | ".join(ranks[r].get("collectives", {}).get(key, ())) or "none")
            for r in hashes
        }
        if len(set(schedules.values())) > 1:  # may hang, or silently corrupt the values
            findings.append(
                Finding(job_name, "collective_schedule", compile_id, _groups(schedules))
            )
        elif len(set(hashes.values())) > 1:
            findings.append(Finding(job_name, "graph_hash", compile_id, _groups(hashes)))
        present.update(dict.fromkeys(hashes, "compiled"))
    patterns = {
        r: v["cache"][compile_id] or "none" for r, v in ranks.items() if compile_id in v["cache"]
    }
    if len(set(patterns.values())) > 1:
        findings.append(Finding(job_name, "cache_pattern", compile_id, _groups(patterns)))
    present.update(dict.fromkeys(patterns, "compiled"))
    if present and len(present) < len(ranks):
        missing = {r: present.get(r, "missing") for r in ranks}
        findings.append(Finding(job_name, "compile_ids", compile_id, _groups(missing)))
    return findings


Live = dict[str, dict[str, Any]]
"""A collector's present: {"attached": {job: [ranks]}, "compiling": {job: {rank: {"compile_id",
"since"}}}} (ranks as strings)."""


def stragglers(
    lives: list[Live], now: float, after_s: float
) -> tuple[list[Finding], dict[str, float], dict[str, set[str]]]:
    """Ranks compiling for ``after_s`` or longer while other attached ranks of their job are
    not: a ``compile_straggler`` finding each (the compile id; the rank with how long, and
    the ranks waiting), the longest such wait per job (0: none; every job with attached
    ranks), and the ranks compiling now per job."""
    attached: dict[str, set[str]] = {}
    compiling: dict[str, dict[str, dict[str, Any]]] = {}
    for live in lives:
        for job, ranks in live.get("attached", {}).items():
            attached.setdefault(job, set()).update(ranks)
        for job, ranks in live.get("compiling", {}).items():
            compiling.setdefault(job, {}).update(ranks)
    findings, longest = [], dict.fromkeys(attached, 0.0)
    for job, ranks in compiling.items():
        waiting = tuple(sorted(attached.get(job, set()) - set(ranks), key=int))
        for rank, state in sorted(ranks.items()):
            seconds = now - state["since"]
            if not waiting or seconds < after_s:
                continue
            longest[job] = max(longest.get(job, 0.0), seconds)
            groups = ((f"compiling for {seconds:.0f} s", (rank,)), ("waiting", waiting))
            findings.append(Finding(job, "compile_straggler", state["compile_id"], groups))
    return findings, longest, {job: set(ranks) for job, ranks in compiling.items()}
