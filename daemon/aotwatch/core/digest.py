"""Fingerprints on their way from the collectors to the head (pure).

A collector keeps its ranks' fingerprints (``divergence.observe``) in a ``ChangeLog``, which
numbers each job's changes and remembers which entries each change touched; per round it
answers the head what the head lacks. The head keeps a ``Digest``: every job's fingerprints
as a ``divergence.JobIndex``, kept up to date from those answers.
"""

from __future__ import annotations

import copy
import uuid
from collections import OrderedDict
from typing import Any

from aotwatch.core.divergence import (
    MAX_COMPILE_IDS,
    PARTS,
    Change,
    Finding,
    Fingerprints,
    JobIndex,
    compile_id_of,
    empty_parts,
    observe,
)
from aotwatch.core.lru import trim_oldest
from aotwatch.core.records import Record
from aotwatch.core.wire import Answer

MAX_CHANGES = 200_000
"""Fingerprint entries whose last change a collector remembers per job (each entry once), to
send the head only what changed; a head further behind gets the whole job."""

MAX_JOB_COMPILE_IDS = 10 * MAX_COMPILE_IDS
"""Compile ids the head keeps per job (those first seen longest ago go): a job's ranks each
keep ``MAX_COMPILE_IDS``, and ranks that each compiled ids of their own hold more between
them."""

Classes = list[tuple[tuple[str, ...], dict[str, dict[Any, Any]]]]
"""A job's fingerprints in short: (ranks, entries) pairs; a rank's fingerprint is the union
of the entries of the pairs that name it, and no two of those share a key. Entries that all
of a collector's ranks hold alike come once, then each distinct rest once."""


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


_NONE = object()


def summary(ranks: dict[str, dict[str, Any]]) -> Classes:
    """One job's fingerprints as ``Classes``, copied: equal fingerprints once; when they
    differ, the entries all hold alike once and each distinct rest once (ranks that each
    compiled an id of their own send their shared history once, not once per rank)."""
    classes: list[tuple[list[str], dict[str, Any]]] = []
    for rank, parts in ranks.items():
        same = next((names for names, seen in classes if seen == parts), None)
        if same is None:
            classes.append(([rank], parts))
        else:
            same.append(rank)
    if len(classes) < 2:
        return [(tuple(names), copy_parts(parts)) for names, parts in classes]
    common = {part: classes[0][1].get(part, {}) for part in PARTS}
    for _, other in classes[1:]:
        for part in PARTS:
            theirs = other.get(part, {})
            common[part] = {k: v for k, v in common[part].items() if theirs.get(k, _NONE) == v}
    shared = any(common.values())
    answer = [(tuple(rank for names, _ in classes for rank in names), copy_parts(common))]
    for names, parts in classes:
        rest = {
            part: {key: v for key, v in parts.get(part, {}).items() if key not in common[part]}
            for part in PARTS
        }
        if any(rest.values()) or not shared:
            answer.append((tuple(names), copy_parts(rest)))
    return answer[0 if shared else 1 :]


class ChangeLog:
    """A collector's fingerprints and what changed in them: each job's changes numbered
    (its version), and per entry the version that last changed it, oldest first, so a head
    gets only the entries changed since the version it has (``since``)."""

    def __init__(self) -> None:
        self.fingerprints: Fingerprints = {}
        self.epoch = uuid.uuid4().hex  # this instance: a head re-reads a restarted collector
        self.versions: dict[str, int] = {}  # job -> how often its fingerprints changed
        self._changes: dict[str, OrderedDict[Change, int]] = {}  # job -> entry -> version
        self._covers: dict[str, int] = {}  # job -> oldest version its log still covers

    def observe(self, record: Record) -> None:
        """Fold an accepted record into the fingerprints; log the entries it changed."""
        changes = observe(self.fingerprints, record)
        if not changes:
            return
        job = record.job_name
        version = self.versions[job] = self.versions.get(job, 0) + 1
        log = self._changes.setdefault(job, OrderedDict())
        for change in changes:
            log[change] = version
            log.move_to_end(change)
        # the oldest entries go; a head that far behind reads the whole job
        trim_oldest(log, MAX_CHANGES, lambda _, oldest: self._covers.update({job: oldest}))

    def forget(self, job: str) -> None:
        for table in (self.fingerprints, self.versions, self._changes, self._covers):
            table.pop(job, None)

    def since(self, epoch: str | None, versions: dict[str, int]) -> tuple[dict, dict]:
        """(jobs, deltas) for a head that holds ``versions`` of this ``epoch``: the jobs it
        has none of, or is too far behind on, whole (``summary``); for the others, the
        entries changed since (copies: Ray serialises them later, while records come in)."""
        jobs, deltas = {}, {}
        for job, version in self.versions.items():
            known = versions.get(job) if epoch == self.epoch else None
            if known == version:
                continue
            if known is None or known < self._covers.get(job, 0):
                jobs[job] = summary(self.fingerprints[job])
            else:
                deltas[job] = self._delta(job, known)
        return jobs, deltas

    def _delta(self, job: str, since: int) -> dict[str, dict[str, dict[str, Any]]]:
        """The entries of ``job`` changed after version ``since``, per rank and part."""
        ranks, delta = self.fingerprints[job], {}
        for (rank, kind, key), version in reversed(self._changes[job].items()):
            if version <= since:
                break
            value = ranks.get(rank, {}).get(kind, {}).get(key)
            if value is not None:  # None: forgotten since (the oldest compile ids go)
                parts = delta.setdefault(rank, empty_parts())
                parts[kind][key] = copy.copy(value)
        return delta


class _Node:
    """What the head has of one collector: its epoch, job versions, and ranks per job."""

    def __init__(self, epoch: str) -> None:
        self.epoch = epoch
        self.versions: dict[str, int] = {}
        self.ranks: dict[str, set[str]] = {}


class Digest:
    """The head's copy of every collector's fingerprints, kept up to date from what changed.

    A collector answers, per round, every job's version and, for the jobs whose version
    moved since the head last saw it, the entries that changed since then
    (``ChangeLog.since``; a whole job, as ``Classes``, when the head has nothing of it yet).
    A collector that restarted (a new ``epoch``) is read afresh. ``changes`` tells the head
    which compile ids of which jobs to compare again, ``find`` compares them.

    Each job is one ``JobIndex`` across collectors: ranks share each entry they hold alike,
    so a round costs the entries that changed, and equal classes read whole from several
    collectors in one round (an SPMD job's) are added once.
    """

    def __init__(self) -> None:
        self._nodes: dict[str, _Node] = {}
        self._jobs: dict[str, JobIndex] = {}
        self._changed: dict[str, set[str] | None] = {}  # job -> compile ids; None: all
        self._pending: dict[str, dict[tuple[int, ...], list]] = {}  # job -> classes read
        # whole and not yet added, by size: (entries, their ranks), equal ones merged

    def known(self, node: str) -> tuple[str | None, dict[str, int]]:
        """(epoch, job versions) the head holds for ``node``: what it asks the collector for."""
        entry = self._nodes.get(node)
        return (entry.epoch, entry.versions) if entry else (None, {})

    def update(self, node: str, answer: Answer) -> None:
        """Take a collector's answer."""
        entry = self._nodes.get(node)
        if entry is None or entry.epoch != answer.epoch:
            if entry is not None:
                self.forget(node)
            entry = self._nodes[node] = _Node(answer.epoch)
        for job in set(entry.ranks) - set(answer.versions):  # forgotten by the collector
            self._drop(entry, job)
        for job, classes in answer.jobs.items():
            if job in entry.ranks:  # too far behind: read afresh
                self._drop(entry, job)
            names = entry.ranks[job] = set()
            pending = self._pending.setdefault(job, {})
            for ranks, parts in classes:
                names.update(ranks)
                alike = pending.setdefault(tuple(len(parts.get(part, ())) for part in PARTS), [])
                if alike and alike[-1][0] == parts:
                    alike[-1][1].extend(ranks)
                else:
                    alike.append((parts, list(ranks)))
            self._changed[job] = None
        for job, delta in answer.deltas.items():
            entry.ranks.setdefault(job, set()).update(delta)
            self._flush()
            self._index(job).change(delta)
            changed = self._changed.setdefault(job, set())
            if changed is None:
                continue
            for parts in delta.values():
                if parts.get("compare_group"):  # a rank joined a group: judged anew
                    self._changed[job] = None
                    break
                for kind in PARTS:
                    if entries := parts.get(kind):
                        changed.update(map(compile_id_of, entries))
        entry.versions = answer.versions

    def _index(self, job: str) -> JobIndex:
        return self._jobs.get(job) or self._jobs.setdefault(job, JobIndex())

    def _flush(self) -> None:
        """Add the classes read whole so far."""
        for job, by_size in self._pending.items():
            for alike in by_size.values():
                for parts, ranks in alike:
                    self._index(job).add(ranks, parts)
        self._pending.clear()

    def _drop(self, entry: _Node, job: str) -> None:
        self._flush()
        ranks = entry.ranks.pop(job)
        self._changed[job] = None
        if job in self._jobs:
            if any(job in node.ranks for node in self._nodes.values()):
                self._jobs[job].drop(ranks)
            else:
                del self._jobs[job]

    def forget(self, node: str) -> None:
        """A node is gone."""
        entry = self._nodes.pop(node, None)
        for job in list(entry.ranks) if entry else ():
            self._drop(entry, job)

    def changes(self) -> dict[str, set[str] | None]:
        """The jobs changed since the last call: the compile ids to compare again (None: all)."""
        self._flush()
        for job in self._changed:
            if job in self._jobs:
                self._jobs[job].trim(MAX_JOB_COMPILE_IDS)
        changed, self._changed = self._changed, {}
        return changed

    def nodes(self) -> set[str]:
        return set(self._nodes)

    def jobs(self) -> set[str]:
        return {job for entry in self._nodes.values() for job in entry.ranks}

    def find(self, job: str, compile_ids: set[str] | None = None) -> list[Finding]:
        """``divergence.find_in_groups`` of one job at ``compile_ids`` (None: all)."""
        self._flush()
        return self._jobs[job].find(job, compile_ids) if job in self._jobs else []

    def ranks(self, job: str, compile_id: str | None = None) -> dict[str, dict[str, Any]]:
        """One job's ranks across every node (only their entries at ``compile_id``, if
        given: what ``cost.cause`` reads)."""
        self._flush()
        return self._jobs[job].fingerprints(compile_id) if job in self._jobs else {}
