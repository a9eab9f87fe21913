"""Cross-rank divergence: ranks of one job that compiled different things (pure functions).

Ranks that compile different graphs under the same compile id, compile
different sets of frames, or hit the cache differently are the usual cause
of collective hangs. Collectors keep a small fingerprint of every record;
the head merges them per job (``digest``) into a ``JobIndex`` and compares the ranks.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any

from aotwatch.core.lru import trim_oldest
from aotwatch.core.records import GRAPH_KINDS, Record
from aotwatch.core.wire import Live, Running

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


def find_in_groups(
    job_name: str, ranks: dict[str, dict[str, Any]], compile_ids: set[str] | None = None
) -> list[Finding]:
    """``find`` within each compare group of the job: what the reports call (the head keeps a
    ``JobIndex`` per job instead of rebuilding one)."""
    return JobIndex.of(ranks).find(job_name, compile_ids)


def find(
    job_name: str, ranks: dict[str, dict[str, Any]], compile_ids: set[str] | None = None
) -> list[Finding]:
    """Every divergence between the ranks of one job, at ``compile_ids`` (None: all), compare
    groups ignored."""
    return JobIndex.of(ranks).find(job_name, compile_ids, in_groups=False)


Mask = int
"""A set of a job's ranks: bit ``i`` stands for the ``i``-th rank its ``JobIndex`` met."""

_ONE = re.compile("1")


def _bits(mask: Mask) -> list[int]:
    """The bits set in ``mask`` (one alone without a scan)."""
    if not mask & (mask - 1):
        return [mask.bit_length() - 1] if mask else []
    text = bin(mask)
    top = len(text) - 1
    return [top - found.start() for found in _ONE.finditer(text, 2)]


class _Entry:
    """One fingerprint entry of a job (a part and its key): each distinct value, with the
    ranks that hold it, and all of those ranks."""

    __slots__ = ("holders", "values")

    def __init__(self) -> None:
        self.holders: Mask = 0
        self.values: dict[Any, Mask] = {}

    def drop(self, ranks: Mask) -> None:
        """Forget ``ranks``' values (a scan of the values only when one of them has one)."""
        if not self.holders & ranks:
            return
        self.holders &= ~ranks
        for value in [v for v, held in self.values.items() if held & ranks]:
            left = self.values[value] & ~ranks
            if left:
                self.values[value] = left
            else:
                del self.values[value]

    def add(self, value: Any, ranks: Mask) -> None:
        self.holders |= ranks
        self.values[value] = self.values.get(value, 0) | ranks


def _hashable(value: Any) -> Any:
    return tuple(value) if type(value) is list else value


class JobIndex:
    """One job's fingerprints by entry: for each compile id, each entry's distinct values and
    the ranks holding each (a ``Mask``), so ranks are shared per entry rather than per whole
    fingerprint. Judging a compile id costs its entries' distinct values, not ranks; a change
    costs the entries it touches (see ``digest.Digest``)."""

    def __init__(self) -> None:
        self.bit: dict[str, int] = {}  # rank -> its bit
        self.names: list[str] = []  # bit -> rank
        self.numbers: list[int] = []  # bit -> rank, as a number (ranks sort as numbers)
        self.members: Mask = 0
        self.at: dict[str, dict[tuple[str, Any], _Entry]] = {}  # compile id -> entries
        self.group_of: dict[str, str] = {}  # rank -> the compare group it names

    @classmethod
    def of(cls, ranks: dict[str, dict[str, Any]]) -> JobIndex:
        """The index of plain fingerprints (ranks sharing one object are read once)."""
        index = cls()
        by_object: dict[int, tuple[dict[str, Any], list[str]]] = {}
        for rank, parts in ranks.items():
            by_object.setdefault(id(parts), (parts, []))[1].append(rank)
        for parts, names in by_object.values():
            index.add(names, parts)
        return index

    def mask(self, ranks: Iterable[str]) -> Mask:
        """The mask of ``ranks``, bits given to those new to the index."""
        mask = 0
        for rank in ranks:
            bit = self.bit.get(rank)
            if bit is None:
                bit = self.bit[rank] = len(self.names)
                self.names.append(rank)
                self.numbers.append(int(rank))
            mask |= 1 << bit
        return mask

    def add(self, ranks: list[str] | tuple[str, ...], parts: dict[str, dict[Any, Any]]) -> None:
        """``ranks`` hold ``parts`` (entries they held none of before: a class read whole)."""
        mask = self.mask(ranks)
        self.members |= mask
        for part in PARTS:
            for key, value in parts.get(part, {}).items():
                if part == "compare_group":
                    self.group_of.update(dict.fromkeys(ranks, value))
                    continue
                self._entry(part, key).add(_hashable(value), mask)

    def _entry(self, part: str, key: Any) -> _Entry:
        """The entry of ``part`` at ``key``, made empty when it is new."""
        compile_id = compile_id_of(key)
        entries = self.at.get(compile_id) or self.at.setdefault(compile_id, {})
        return entries.get((part, key)) or entries.setdefault((part, key), _Entry())

    def change(self, delta: dict[str, dict[str, dict[Any, Any]]]) -> None:
        """Each rank's entries in ``delta`` (rank -> part -> key -> value) replace its own."""
        by_entry: dict[tuple[str, Any], dict[Any, Mask]] = {}
        for rank, parts in delta.items():
            bit = 1 << self.bit[rank] if rank in self.bit else self.mask((rank,))
            self.members |= bit
            for part, entries in parts.items():
                for key, value in entries.items():
                    if part == "compare_group":
                        self.group_of[rank] = value
                        continue
                    values = by_entry.setdefault((part, key), {})
                    value = _hashable(value)
                    values[value] = values.get(value, 0) | bit
        for (part, key), values in by_entry.items():
            entry = self._entry(part, key)
            changed = 0
            for ranks in values.values():
                changed |= ranks
            entry.drop(changed)
            for value, ranks in values.items():
                entry.add(value, ranks)

    def drop(self, ranks: set[str]) -> None:
        """Forget ``ranks`` (their collector restarted, forgot the job or left)."""
        mask = self.mask(ranks)
        self.members &= ~mask
        for rank in ranks:
            self.group_of.pop(rank, None)
        for compile_id in list(self.at):
            entries = self.at[compile_id]
            for key in list(entries):
                entries[key].drop(mask)
                if not entries[key].holders:
                    del entries[key]
            if not entries:
                del self.at[compile_id]

    def trim(self, capacity: int) -> None:
        """Forget the compile ids first seen longest ago beyond ``capacity``."""
        trim_oldest(self.at, capacity)

    def fingerprints(self, compile_id: str | None = None) -> dict[str, dict[str, Any]]:
        """Every rank's fingerprint (only its entries at ``compile_id``, if given)."""
        ranks = {self.names[bit]: empty_parts() for bit in _bits(self.members)}
        for rank, group in self.group_of.items():
            ranks[rank]["compare_group"][""] = group
        at = self.at if compile_id is None else {compile_id: self.at.get(compile_id, {})}
        for entries in at.values():
            for (part, key), entry in entries.items():
                for value, held in entry.values.items():
                    value = list(value) if type(value) is tuple else value
                    for bit in _bits(held):
                        ranks[self.names[bit]][part][key] = value
        return ranks

    def groups(self) -> dict[str, Mask]:
        """Compare group -> its ranks (see ``Record.compare_group``; "": ranks that name none)."""
        named: dict[str, Mask] = {}
        for rank, group in self.group_of.items():
            named[group] = named.get(group, 0) | 1 << self.bit[rank]
        rest = self.members
        for mask in named.values():
            rest &= ~mask
        if rest:
            named[""] = named.get("", 0) | rest
        return {group: mask & self.members for group, mask in named.items() if mask}

    def find(
        self, job_name: str, compile_ids: set[str] | None = None, in_groups: bool = True
    ) -> list[Finding]:
        """Every divergence at ``compile_ids`` (None: all) within each compare group (or in
        the whole job): a compile id costs its entries' distinct values, and the ranks
        missing one are named from the fewer of those who have it and those who lack it."""
        groups = self.groups() if in_groups else {"": self.members}
        ids = sorted(self.at if compile_ids is None else compile_ids & self.at.keys())
        findings = []
        for group, members in sorted(groups.items()):
            if not members & (members - 1):  # one rank alone never diverges
                continue
            among = _Among(self, members)
            for compile_id in ids:
                for finding in among.find(job_name, compile_id, self.at[compile_id]):
                    findings.append(replace(finding, compare_group=group) if group else finding)
        return findings


class _Among:
    """The ranks of one compare group, judged one compile id at a time."""

    def __init__(self, index: JobIndex, members: Mask) -> None:
        self.index = index
        self.members = members
        self.count = members.bit_count()
        self._order: list[int] | None = None  # every rank, sorted, once a run is named

    def find(self, job_name: str, compile_id: str, entries: dict) -> list[Finding]:
        holders = 0
        for (part, _), entry in entries.items():
            if part != "collectives":
                holders |= entry.holders
        holders &= self.members
        if not holders:
            return []
        findings = self._values_at(job_name, compile_id, entries) if holders & (holders - 1) else []
        if holders != self.members:
            missing = self.members & ~holders
            groups = (("compiled", self.names(holders)), ("missing", self.names(missing)))
            findings.append(Finding(job_name, "compile_ids", compile_id, groups))
        return findings

    def _values_at(self, job_name: str, compile_id: str, entries: dict) -> list[Finding]:
        """Graphs, schedules and cache patterns that differ at ``compile_id``."""
        findings = []
        for graph in GRAPH_KINDS:
            key = (compile_id, graph)
            hashes = self._values(entries.get(("graphs", key)), ",".join)
            if not hashes:
                continue
            holders = 0
            for ranks in hashes.values():
                holders |= ranks
            schedules: dict[str, Mask] = {}
            for value, ranks in self._values(entries.get(("collectives", key)), tuple).items():
                if ranks := ranks & holders:
                    text = f"{graph}: " + (" | ".join(value) or "none")
                    schedules[text] = schedules.get(text, 0) | ranks
                    holders &= ~ranks
            if holders:
                schedules[f"{graph}: none"] = schedules.get(f"{graph}: none", 0) | holders
            if len(schedules) > 1:  # may hang, or silently corrupt the values
                groups = self.groups(schedules)
                findings.append(Finding(job_name, "collective_schedule", compile_id, groups))
            elif len(hashes) > 1:
                findings.append(Finding(job_name, "graph_hash", compile_id, self.groups(hashes)))
        patterns = self._values(entries.get(("cache", compile_id)), lambda p: p or "none")
        if len(patterns) > 1:
            findings.append(Finding(job_name, "cache_pattern", compile_id, self.groups(patterns)))
        return findings

    def _values(self, entry: _Entry | None, text: Callable[[Any], Any]) -> dict[Any, Mask]:
        """An entry's values as ``text`` shows them -> the group's ranks that hold each."""
        shown: dict[Any, Mask] = {}
        if entry is None or not entry.holders & self.members:
            return shown
        for value, ranks in entry.values.items():
            if ranks := ranks & self.members:
                value = text(value)
                shown[value] = shown.get(value, 0) | ranks
        return shown

    def groups(self, values: dict[str, Mask]) -> tuple[tuple[str, tuple[str, ...]], ...]:
        """Value -> ranks, as (value, rank names) pairs sorted by value."""
        return tuple(sorted((value, self.names(ranks)) for value, ranks in values.items()))

    def ranks(self, mask: Mask) -> list[int]:
        numbers = self.index.numbers
        return sorted([numbers[bit] for bit in _bits(mask)])

    def names(self, mask: Mask) -> tuple[str, ...]:
        """``ranges`` of the ranks in ``mask``: listed from the fewer of them and the rest of
        the group (a rank missing from 10,239 costs one, not 10,239)."""
        count = mask.bit_count()
        if count * 4 <= self.count:
            return ranges(self.ranks(mask))
        return self._others(self.ranks(self.members & ~mask))

    def _others(self, absent: list[int]) -> tuple[str, ...]:
        """The group's ranks not in ``absent`` (sorted), named by run: costs ``absent`` and
        the runs, not the group."""
        if self._order is None:
            self._order = self.ranks(self.members)
            self._position = {rank: index for index, rank in enumerate(self._order)}
            self._run_end = list(range(len(self._order)))  # index -> last index of its run
            for index in range(len(self._order) - 2, -1, -1):
                if self._order[index + 1] == self._order[index] + 1:
                    self._run_end[index] = self._run_end[index + 1]
        order = self._order
        names: list[str] = []
        start = 0
        for stop in [self._position[rank] for rank in absent] + [len(order)]:
            while start < stop:  # the runs of the gap before ``stop``
                end = min(self._run_end[start], stop - 1)
                names += _run(order[start], order[end])
                start = end + 1
            start = stop + 1
        return tuple(names)


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
