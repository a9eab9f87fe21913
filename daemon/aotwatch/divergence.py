"""Cross-rank divergence: ranks of one job that compiled different things (pure functions).

Ranks that compile different graphs under the same compile id, compile
different sets of frames, or hit the cache differently are the usual cause
of collective hangs. Collectors keep a small fingerprint of every record;
the head merges them per job and compares the ranks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

MAX_GRAPHS_PER_ID = 64
"""Distinct graph hashes kept per compile id and graph kind (DDP buckets make several)."""

MAX_COMPILE_IDS = 10_000
"""Compile ids remembered per rank (the oldest go first): memory stays bounded however long
a job runs."""

Fingerprints = dict[str, dict[str, dict[str, dict[str, Any]]]]
"""job -> rank (str) -> {"graphs": {"<compile_id> <graph>": [distinct hashes]},
"cache": {compile_id: pattern}}."""


def observe(fingerprints: Fingerprints, record: dict[str, Any]) -> None:
    """Fold one accepted record into ``fingerprints``."""
    compile_id = record.get("compile_id")
    if compile_id is None:
        return
    rank = fingerprints.setdefault(record["job_name"], {}).setdefault(
        str(record["rank"]), {"graphs": {}, "cache": {}}
    )
    if record["graph"] is not None:
        key, graph_hash = f"{compile_id} {record['graph']}", record.get("graph_hash")
        hashes = rank["graphs"].setdefault(key, [])
        if graph_hash and graph_hash not in hashes and len(hashes) < MAX_GRAPHS_PER_ID:
            hashes.append(graph_hash)
            hashes.sort()
        _forget_oldest(rank["graphs"])
    else:
        rank["cache"][compile_id] = ",".join(
            f"{cache}:{result}"
            for cache, results in sorted(record["cache"].items())
            for result in sorted(results)
        )
        _forget_oldest(rank["cache"])


def _forget_oldest(table: dict[str, Any]) -> None:
    while len(table) > MAX_COMPILE_IDS:
        del table[next(iter(table))]


class Digest:
    """The head's copy of every collector's fingerprints, kept up to date from what changed.

    A collector numbers each job's changes and sends, per round, every job's number and the
    fingerprints of the jobs whose number moved since the head last saw them
    (``NodeCollector.fingerprints_since``): a round with nothing new costs a few bytes per
    job, not all history. A collector that restarted (a new ``epoch``) is read afresh.
    """

    def __init__(self) -> None:
        self._nodes: dict[str, dict[str, Any]] = {}  # node -> epoch, versions, jobs

    def known(self, node: str) -> tuple[str | None, dict[str, int]]:
        """(epoch, job versions) the head holds for ``node``: what it asks the collector for."""
        entry = self._nodes.get(node)
        return (entry["epoch"], entry["versions"]) if entry else (None, {})

    def update(self, node: str, answer: dict[str, Any]) -> set[str]:
        """Take a collector's answer; returns the jobs whose fingerprints changed."""
        entry = self._nodes.get(node)
        dirty: set[str] = set()
        if entry is None or entry["epoch"] != answer["epoch"]:
            dirty |= set(entry["jobs"]) if entry else set()
            entry = self._nodes[node] = {"epoch": answer["epoch"], "versions": {}, "jobs": {}}
        for job in set(entry["jobs"]) - set(answer["versions"]):  # forgotten by the collector
            del entry["jobs"][job]
            dirty.add(job)
        entry["jobs"].update(answer["jobs"])
        entry["versions"] = answer["versions"]
        return dirty | set(answer["jobs"])

    def forget(self, node: str) -> set[str]:
        """A node is gone; returns the jobs it held."""
        entry = self._nodes.pop(node, None)
        return set(entry["jobs"]) if entry else set()

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


def _groups(values: dict[str, str]) -> tuple[tuple[str, tuple[str, ...]], ...]:
    by_value: dict[str, list[str]] = {}
    for rank, value in values.items():
        by_value.setdefault(value, []).append(rank)
    return tuple(
        sorted((value, tuple(sorted(ranks, key=int))) for value, ranks in by_value.items())
    )


def find(job_name: str, ranks: dict[str, dict[str, Any]]) -> list[Finding]:
    """Every divergence between the ranks of one job."""
    if len(ranks) < 2:
        return []
    findings = []
    graph_keys = sorted({key for rank in ranks.values() for key in rank["graphs"]})
    for key in graph_keys:
        hashes = {r: ",".join(v["graphs"][key]) for r, v in ranks.items() if key in v["graphs"]}
        if len(set(hashes.values())) > 1:
            findings.append(Finding(job_name, "graph_hash", key.split(" ")[0], _groups(hashes)))
    compile_ids = {
        r: {key.split(" ")[0] for key in v["graphs"]} | set(v["cache"]) for r, v in ranks.items()
    }
    for compile_id in sorted(set().union(*compile_ids.values())):
        present = {
            r: "compiled" if compile_id in ids else "missing" for r, ids in compile_ids.items()
        }
        if "missing" in present.values():
            findings.append(Finding(job_name, "compile_ids", compile_id, _groups(present)))
    for compile_id in sorted({c for v in ranks.values() for c in v["cache"]}):
        patterns = {r: v["cache"][compile_id] or "none" for r, v in ranks.items()
                    if compile_id in v["cache"]}  # fmt: skip
        if len(set(patterns.values())) > 1:
            findings.append(Finding(job_name, "cache_pattern", compile_id, _groups(patterns)))
    return findings
