"""Cross-rank divergence: ranks of one job that compiled different things (pure functions).

Ranks that compile different graphs under the same compile id, compile
different sets of frames, or hit the cache differently are the usual cause
of collective hangs. Collectors keep a small fingerprint of every record;
the head merges them per job and compares the ranks.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, replace
from typing import Any

from aotwatch.lru import trim_oldest
from aotwatch.records import GRAPH_KINDS, Record
from aotwatch.wire import Answer, Live, Running

KINDS = ("graph_hash", "collective_schedule", "compile_ids", "cache_pattern", "compile_straggler")
"""What a finding says differs between ranks."""

PARTS = ("graphs", "collectives", "cache", "compare_group")
"""The parts of a rank's fingerprint: graph hashes and collective schedules per graph key,
cache patterns per compile id, and the rank's compare group (under the key "")."""

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
"cache": {compile_id: pattern}, "compare_group": {"": group}}."""
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
    job = fingerprints.setdefault(record.job_name, {})
    rank = job.get(rank_name) or job.setdefault(rank_name, empty_parts())
    changes: list[Change] = []
    if record.compare_group is not None and rank["compare_group"].get("") != record.compare_group:
        rank["compare_group"][""] = record.compare_group
        changes.append((rank_name, "compare_group", ""))
    if record.graph is not None:
        key = (compile_id, record.graph)
        _add_distinct(rank["graphs"], key, record.graph_hash)
        changes.append((rank_name, "graphs", key))
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
    return [*changes, (rank_name, "cache", compile_id)]


def compile_id_of(key: GraphKey | str) -> str:
    """The compile id of a fingerprint entry's key (a graph key, or a compile id itself)."""
    return key[0] if type(key) is tuple else key


Classes = list[tuple[tuple[str, ...], dict[str, dict[Any, Any]]]]
"""A job's fingerprints in short: each distinct fingerprint once, with the ranks that have it
(the ranks of an SPMD job compile the same things)."""


def copy_parts(parts: dict[str, dict[Any, Any]]) -> dict[str, dict[Any, Any]]:
    """A copy of one rank's fingerprint that later records cannot change (about ten times
    faster than ``copy.deepcopy``: the shape is known, lists of hashes or a pattern)."""
    return {
        part: {
            key: list(value) if type(value) is list else value
            for key, value in parts.get(part, {}).items()
        }
        for part in PARTS
    }


def summary(ranks: dict[str, dict[str, Any]]) -> Classes:
    """One job's fingerprints as ``Classes``: equal fingerprints copied and sent once."""
    classes: list[tuple[list[str], dict[str, Any]]] = []
    for rank, parts in ranks.items():
        same = next((names for names, seen in classes if seen == parts), None)
        if same is None:
            classes.append(([rank], parts))
        else:
            same.append(rank)
    return [(tuple(names), copy_parts(parts)) for names, parts in classes]


class Digest:
    """The head's copy of every collector's fingerprints, kept up to date from what changed.

    A collector numbers each job's changes and answers, per round, every job's number and,
    for the jobs whose number moved since the head last saw it, the entries that changed
    since then (``NodeCollector.fingerprints_since``; a whole job, in ``summary`` form, when
    the head has nothing of it yet). So a round costs what is new, not ranks x history. A
    collector that restarted (a new ``epoch``) is read afresh. ``changes`` tells the head
    which compile ids of which jobs to compare again.

    Ranks read whole share one fingerprint object per distinct fingerprint, across
    collectors (what makes a restarted head's first round cost seconds at 10,240 ranks: it
    compares each distinct fingerprint once). A change to such a rank goes to a copy,
    shared by the ranks that had the same fingerprint and changed alike in the round (an
    SPMD job's ranks stay on one); a copy taken by one rank alone is its own from then on.
    """

    def __init__(self) -> None:
        self._nodes: dict[str, dict[str, Any]] = {}  # node -> epoch, versions, jobs, shared
        self._changed: dict[str, set[str] | None] = {}  # job -> compile ids; None: all
        self._last: dict[str, dict[str, Any]] = {}  # job -> the fingerprint last read whole
        self._copies: dict[tuple[int, str], tuple[dict, dict, list]] = {}  # this round:
        # (shared fingerprint, delta) -> (that fingerprint, its changed copy, who took it)

    def known(self, node: str) -> tuple[str | None, dict[str, int]]:
        """(epoch, job versions) the head holds for ``node``: what it asks the collector for."""
        entry = self._nodes.get(node)
        return (entry["epoch"], entry["versions"]) if entry else (None, {})

    def update(self, node: str, answer: Answer) -> None:
        """Take a collector's answer."""
        entry = self._nodes.get(node)
        if entry is None or entry["epoch"] != answer.epoch:
            for job in entry["jobs"] if entry else ():
                self._changed[job] = None
            entry = self._nodes[node] = {
                "epoch": answer.epoch,
                "versions": {},
                "jobs": {},
                "shared": {},  # job -> its ranks whose fingerprint object is shared
            }
        for job in set(entry["jobs"]) - set(answer.versions):  # forgotten by the collector
            del entry["jobs"][job]
            entry["shared"].pop(job, None)
            self._changed[job] = None
        for job, classes in answer.jobs.items():
            entry["jobs"][job] = self._whole(job, classes)
            entry["shared"][job] = set(entry["jobs"][job])
            self._changed[job] = None
        for job, delta in answer.deltas.items():
            ranks = entry["jobs"].setdefault(job, {})
            self._apply(ranks, entry["shared"].setdefault(job, set()), job, delta)
        entry["versions"] = answer.versions

    def _whole(self, job: str, classes: Classes) -> dict[str, dict[str, Any]]:
        """A job read whole: equal fingerprints (from any collector) become one object."""
        ranks = {}
        for names, parts in classes:
            if parts == self._last.get(job):
                parts = self._last[job]
            self._last[job] = parts
            ranks.update(dict.fromkeys(names, parts))
        return ranks

    def _apply(
        self, ranks: dict[str, dict[str, Any]], shared: set[str], job: str, delta: dict
    ) -> None:
        changed = self._changed.setdefault(job, set())
        for rank, parts in delta.items():
            if parts.get("compare_group"):  # a rank joined a group: its job is judged anew
                changed = self._changed[job] = None
            if changed is not None:
                for kind in PARTS:
                    if entries := parts.get(kind):
                        changed.update(map(compile_id_of, entries))
            mine = ranks.get(rank)
            if mine is None:
                mine = ranks[rank] = empty_parts()
            elif rank in shared:  # a copy, shared by the ranks that had it and change alike
                key = (id(mine), repr(parts))  # equal entries in the same order
                if key in self._copies:
                    ranks[rank] = self._copies[key][1]
                    self._copies[key][2].append((shared, rank))
                    continue
                copy = ranks[rank] = {kind: dict(mine.get(kind, {})) for kind in PARTS}
                self._copies[key] = (mine, copy, [(shared, rank)])  # keeps ``mine``'s id
                mine = copy
            for kind in PARTS:
                mine.setdefault(kind, {}).update(parts.get(kind, {}))
                trim_oldest(mine[kind], MAX_COMPILE_IDS)

    def forget(self, node: str) -> None:
        """A node is gone."""
        for job in self._nodes.pop(node, {"jobs": {}})["jobs"]:
            self._changed[job] = None

    def changes(self) -> dict[str, set[str] | None]:
        """The jobs changed since the last call: the compile ids to compare again (None: all)."""
        for _, _, takers in self._copies.values():
            if len(takers) == 1:  # its own copy: changed in place from now on
                shared, rank = takers[0]
                shared.discard(rank)
        self._copies.clear()
        changed, self._changed = self._changed, {}
        jobs = self.jobs()
        self._last = {job: parts for job, parts in self._last.items() if job in jobs}
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
    """One divergence: ``groups`` maps what each group of ranks had to those ranks, all of
    ``compare_group`` ("": the whole job)."""

    job_name: str
    kind: str
    compile_id: str
    groups: tuple[tuple[str, tuple[str, ...]], ...]
    compare_group: str = ""

    @property
    def key(self) -> tuple[str, str, str, str]:
        return self.job_name, self.kind, self.compile_id, self.compare_group

    def describe(self) -> str:
        parts = "; ".join(f"ranks {','.join(ranks)}: {value}" for value, ranks in self.groups)
        among = f" in compare group {self.compare_group}" if self.compare_group else ""
        return f"{self.job_name} {self.kind} at {self.compile_id}{among}: {parts}"

    def to_dict(self) -> dict[str, Any]:
        found = {
            "job_name": self.job_name,
            "kind": self.kind,
            "compile_id": self.compile_id,
            "groups": {value: list(ranks) for value, ranks in self.groups},
        }
        return {**found, "compare_group": self.compare_group} if self.compare_group else found


def counts(findings: list[Finding]) -> dict[tuple[str, str], int]:
    """Findings per (job, kind), as ``torch_compile_rank_divergences_total`` counts them."""
    return dict(Counter((finding.job_name, finding.kind) for finding in findings))


RUN = 3
"""Consecutive ranks from this many on are named as a range ("0-4095"): a group of a
10,240-rank job stays a few names long."""


def _run(first: int, last: int) -> list[str]:
    """The names of the consecutive ranks ``first`` to ``last``."""
    if last - first + 1 >= RUN:
        return [f"{first}-{last}"]
    return [str(rank) for rank in range(first, last + 1)]


def ranges(ranks: list[int]) -> tuple[str, ...]:
    """Sorted ranks as names, runs of ``RUN`` or more consecutive ranks as "first-last"."""
    names: list[str] = []
    start = 0
    for end in range(1, len(ranks) + 1):
        if end == len(ranks) or ranks[end] != ranks[end - 1] + 1:
            names += _run(ranks[start], ranks[end - 1])
            start = end
    return tuple(names)


def _bounds(name: str) -> tuple[int, int]:
    """The first and last rank a name of ``ranges`` stands for ("-1" is a rank, "0-7" a run)."""
    dash = name.find("-", 1)
    if dash < 0:
        return int(name), int(name)
    return int(name[:dash]), int(name[dash + 1 :])


def expand(names: tuple[str, ...] | list[str]) -> list[str]:
    """The ranks a group names (``ranges`` undone)."""
    return [str(rank) for name in names for rank in range(_bounds(name)[0], _bounds(name)[1] + 1)]


def size(names: tuple[str, ...] | list[str]) -> int:
    """How many ranks a group names, without listing them."""
    return sum(last - first + 1 for first, last in map(_bounds, names))


class _Job:
    """One job's ranks for ``find``: ranks sharing one fingerprint object are compared once
    (a class), and each compile id is judged on the classes that hold it."""

    def __init__(self, ranks: dict[str, dict[str, Any]]) -> None:
        by_object: dict[int, tuple[dict[str, Any], list[int]]] = {}
        for rank, parts in ranks.items():
            by_object.setdefault(id(parts), (parts, []))[1].append(int(rank))
        self.classes = list(by_object.values())
        self.order = sorted(int(rank) for rank in ranks)  # every rank, for who is missing
        self.position = {rank: index for index, rank in enumerate(self.order)}
        self.run_end = list(range(len(self.order)))  # index -> last index of its run
        for index in range(len(self.order) - 2, -1, -1):
            if self.order[index + 1] == self.order[index] + 1:
                self.run_end[index] = self.run_end[index + 1]

    def holders(self, compile_ids: set[str] | None) -> dict[str, list[int]]:
        """compile id -> the classes that hold it (a graph or a cache pattern), for
        ``compile_ids`` (None: every compile id)."""
        keys = None if compile_ids is None else {(c, g) for c in compile_ids for g in GRAPH_KINDS}
        held: dict[str, list[int]] = {}
        for index, (parts, _) in enumerate(self.classes):
            graphs, cache = parts["graphs"].keys(), parts["cache"].keys()
            found = {key[0] for key in (graphs if keys is None else graphs & keys)}
            found.update(cache if compile_ids is None else cache & compile_ids)
            for compile_id in found:
                held.setdefault(compile_id, []).append(index)
        return held

    def groups(self, values: dict[int, str]) -> tuple[tuple[str, tuple[str, ...]], ...]:
        """Class -> value, as (value, ranks) pairs sorted by value."""
        by_value: dict[str, list[int]] = {}
        for index, value in values.items():
            by_value.setdefault(value, []).extend(self.classes[index][1])
        return tuple(sorted((value, ranges(sorted(r))) for value, r in by_value.items()))

    def missing(self, present: list[int]) -> tuple[str, ...]:
        """The ranks not in ``present`` (sorted), named by run: costs ``present``, not the job."""
        names: list[str] = []
        start = 0
        for stop in [self.position[rank] for rank in present] + [len(self.order)]:
            while start < stop:  # the runs of the gap before ``stop``
                end = min(self.run_end[start], stop - 1)
                names += _run(self.order[start], self.order[end])
                start = end + 1
            start = stop + 1
        return tuple(names)


def compare_groups(ranks: dict[str, dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """One job's ranks split by compare group (see ``Record.compare_group``; "": ranks that
    name none): ranks meant to compile different things (pipeline stages) are never compared."""
    split: dict[str, dict[str, dict[str, Any]]] = {}
    for rank, parts in ranks.items():
        split.setdefault(parts.get("compare_group", {}).get("", ""), {})[rank] = parts
    return split


def find_in_groups(
    job_name: str, ranks: dict[str, dict[str, Any]], compile_ids: set[str] | None = None
) -> list[Finding]:
    """``find`` within each compare group of the job: what the head and the reports call."""
    return [
        replace(finding, compare_group=group)
        for group, members in sorted(compare_groups(ranks).items())
        for finding in find(job_name, members, compile_ids)
    ]


def find(
    job_name: str, ranks: dict[str, dict[str, Any]], compile_ids: set[str] | None = None
) -> list[Finding]:
    """Every divergence between the ranks of one job, at ``compile_ids`` (None: all).

    Costs the classes holding each compile id (ranks sharing a fingerprint object count
    once), not ranks x compile ids: 10,240 ranks that each compiled an id of their own are
    judged in one pass."""
    if len(ranks) < 2:
        return []
    job = _Job(ranks)
    held = job.holders(compile_ids)
    findings = []
    for compile_id in sorted(held):
        findings += _find_at(job_name, job, compile_id, held[compile_id])
    return findings


def _find_at(job_name: str, job: _Job, compile_id: str, holders: list[int]) -> list[Finding]:
    findings = _values_at(job_name, job, compile_id, holders) if len(holders) > 1 else []
    present = sorted(rank for i in holders for rank in job.classes[i][1])
    if len(present) < len(job.order):
        groups = (("compiled", ranges(present)), ("missing", job.missing(present)))
        findings.append(Finding(job_name, "compile_ids", compile_id, groups))
    return findings


def _values_at(job_name: str, job: _Job, compile_id: str, holders: list[int]) -> list[Finding]:
    """Graphs, schedules and cache patterns that differ at ``compile_id`` between classes
    (one class alone has one of each)."""
    findings = []
    for graph in GRAPH_KINDS:
        key = (compile_id, graph)
        hashes = {
            i: ",".join(job.classes[i][0]["graphs"][key])
            for i in holders
            if key in job.classes[i][0]["graphs"]
        }
        schedules = {
            i: f"{graph}: "
            + (" | ".join(job.classes[i][0].get("collectives", {}).get(key, ())) or "none")
            for i in hashes
        }
        if len(set(schedules.values())) > 1:  # may hang, or silently corrupt the values
            findings.append(
                Finding(job_name, "collective_schedule", compile_id, job.groups(schedules))
            )
        elif len(set(hashes.values())) > 1:
            findings.append(Finding(job_name, "graph_hash", compile_id, job.groups(hashes)))
    patterns = {
        i: job.classes[i][0]["cache"][compile_id] or "none"
        for i in holders
        if compile_id in job.classes[i][0]["cache"]
    }
    if len(set(patterns.values())) > 1:
        findings.append(Finding(job_name, "cache_pattern", compile_id, job.groups(patterns)))
    return findings


Straggler = tuple[str, str, str, float, int]
"""(job, rank, compile id, seconds it has compiled, how many ranks wait for it)."""


def stragglers(
    lives: list[Live], after_s: float
) -> tuple[list[Finding], dict[str, float], dict[str, set[str]], list[Straggler]]:
    """Ranks compiling for ``after_s`` or longer while other attached ranks of their job are
    not: a ``compile_straggler`` finding each (the compile id; the rank with how long, and
    the ranks waiting), the longest such wait per job (0: none; every job with attached
    ranks), the ranks compiling now per job, and every rank compiling while others of its
    job wait, past ``after_s`` or not, as a ``Straggler``."""
    attached: dict[str, set[str]] = {}
    compiling: dict[str, dict[str, Running]] = {}
    for live in lives:
        for job, ranks in live.attached.items():
            attached.setdefault(job, set()).update(ranks)
        for job, ranks in live.compiling.items():
            compiling.setdefault(job, {}).update(ranks)
    findings, longest, late = [], dict.fromkeys(attached, 0.0), []
    for job, ranks in compiling.items():
        waiting = tuple(sorted(attached.get(job, set()) - set(ranks), key=int))
        for rank, state in sorted(ranks.items()):
            seconds = state.for_s
            if waiting:
                late.append((job, rank, state.compile_id, seconds, len(waiting)))
            if not waiting or seconds < after_s:
                continue
            longest[job] = max(longest.get(job, 0.0), seconds)
            groups = ((f"compiling for {seconds:.0f} s", (rank,)), ("waiting", waiting))
            findings.append(Finding(job, "compile_straggler", state.compile_id, groups))
    return findings, longest, {job: set(ranks) for job, ranks in compiling.items()}, late
