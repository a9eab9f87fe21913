"""``aotwatch report --format perfetto``: every rank's compile timeline as one file in the
Chrome Trace Event format (JSON), which ui.perfetto.dev and chrome://tracing open.

One process per rank of each job (``rank R (job J)``, sorted by rank); in it a thread per
traced process (``host:pid``) for its compiles, and one for its straggler waits. A compile (a
frame's, or a lazy backward's) is a slice with its phases nested inside; graph breaks,
recompiles, failures, cache misses and cache bypasses are instant events on its thread with
their reasons; the graphs a compile made are instant events too.

Layout: torch records how long each phase took, not when it began. A compile ends at its
record's time and began its ``total`` (a lazy backward: its ``backward``) earlier; its phases
are laid out from its start in the order they run (``PHASE_TREE``): Dynamo holds the
pre-grad passes then AOTAutograd, which holds the joint-graph passes then Inductor, which holds
the post-grad passes then code generation, which holds Triton's compile. A phase the record
lacks hands its room to its children; a phase longer than the room its parent has left is
clipped to it (its args keep the seconds measured). Times are whole microseconds, so children
stay inside their parents exactly, and a parent is written before what it holds (Perfetto
takes slices of equal times in file order). Should two compiles of one process overlap (their
records are made a little after they end), the later goes on an extra thread of that process.

Straggler waits, from durations alone (one clock per measurement: the wall clocks of two
machines are never subtracted): the ranks of a job reach a compile together (SPMD), so for
one compile (its compile id, graph and AOT id, within a compare group) every rank that
compiled it faster than the slowest rank waits the difference at its next collective. That
wait is a slice on the rank's waits thread, from the end of its own compile, naming the rank
it waits for.

Memory does not grow with the archive: records are streamed twice (first the slowest
compile per key, at most ``MAX_COMPILE_KEYS`` of them, then the events, written as they are
made), duplicates are dropped within ``DEDUPE_WINDOW`` record ids, and malformed lines are
read around and counted (``otherData`` of the file).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

import msgspec

from aotwatch.core.aggregate import DEDUPE_WINDOW
from aotwatch.core.archive import read_archive
from aotwatch.core.lru import LruCache
from aotwatch.core.records import Record, RecordError, to_json

PHASE_TREE = {
    "total": ("dynamo",),
    "backward": ("dynamo",),
    "dynamo": ("pre_grad_passes", "aot_autograd"),
    "aot_autograd": ("joint_graph_passes", "inductor"),
    "inductor": ("post_grad_passes", "inductor_codegen"),
    "inductor_codegen": ("triton_compile",),
}
"""Each phase -> the phases it holds, in the order they run; ``total`` (a frame) and
``backward`` (a lazy backward) are the roots."""
MAX_COMPILE_KEYS = 100_000
"""Compiles (job, compare group, compile id, graph, AOT id) whose slowest rank is remembered
for the waits; compiles beyond it get no wait (counted as ``waits untracked``)."""
MAX_LANES = 8
"""Threads per traced process for overlapping compiles; beyond, a compile is moved later."""

_ROOTS = {None: "total", "backward": "backward"}  # a record's graph -> its root phase
_US = 1_000_000
_Key = tuple[str, str | None, str | None, str | None, str]
_At = tuple[int, int]  # pid, tid


def _us(seconds: float) -> int:
    return round(seconds * _US)


def _root(record: Record) -> tuple[str, float] | None:
    """The phase that spans the whole compile and its seconds; None for an untimed record (a
    graph made inside its frame's compile)."""
    root = _ROOTS.get(record.graph)
    seconds = record.durations_s.get(root) if root else None
    return (root, seconds) if seconds else None


def _key(record: Record) -> _Key:
    return (
        record.job_name,
        record.compare_group,
        record.compile_id,
        record.graph,
        str(record.aot_id),
    )


def _records(paths: list[Path], counts: Counter | None = None) -> Iterator[Record]:
    """The records of ``paths``, each once; ``counts`` gets the malformed lines by reason and
    the duplicates."""
    seen = LruCache(DEDUPE_WINDOW)
    for path in paths:
        for item in read_archive(path):
            if isinstance(item, RecordError):
                if counts is not None:
                    counts[f"rejected {item.reason}"] += 1
            elif item.record_id in seen:
                if counts is not None:
                    counts["duplicates"] += 1
            else:
                seen.put(item.record_id, None)
                yield item


def slowest_ranks(paths: list[Path]) -> dict[_Key, tuple[float, int]]:
    """Per compile, its longest time on any rank and that rank (the first MAX_COMPILE_KEYS
    compiles)."""
    slowest: dict[_Key, tuple[float, int]] = {}
    for record in _records(paths):
        timed = _root(record)
        if timed is None:
            continue
        key = _key(record)
        if key in slowest:
            if timed[1] > slowest[key][0]:
                slowest[key] = (timed[1], record.rank)
        elif len(slowest) < MAX_COMPILE_KEYS:
            slowest[key] = (timed[1], record.rank)
    return slowest


class TraceWriter:
    """Writes the events of records, one JSON object a line, naming each process and thread
    the first time it is used."""

    def __init__(self, out: TextIO, slowest: dict[_Key, tuple[float, int]]) -> None:
        self.out = out
        self.slowest = slowest
        self._pids: dict[tuple[str, int], int] = {}
        self._lanes: dict[tuple[int, str, int, str], list[list[int]]] = {}  # [tid, end]
        self._next_tid = 1
        self._first = True
        self.counts: Counter = Counter()

    def _event(self, event: dict[str, Any]) -> None:
        self.out.write(("" if self._first else ",\n") + to_json(event))
        self._first = False

    def _pid(self, record: Record) -> int:
        key = (record.job_name, record.rank)
        pid = self._pids.get(key)
        if pid is None:
            pid = self._pids[key] = len(self._pids) + 1
            name = f"rank {record.rank} (job {record.job_name})"
            self._meta(pid, 0, "process_name", {"name": name})
            self._meta(pid, 0, "process_sort_index", {"sort_index": record.rank})
        return pid

    def _meta(self, pid: int, tid: int, meta: str, args: dict[str, Any]) -> None:
        self._event({"ph": "M", "name": meta, "pid": pid, "tid": tid, "args": args})

    def _lane(self, pid: int, record: Record, kind: str, start: int, end: int) -> int:
        """A thread of the record's process on which [start, end] overlaps nothing before it
        (records of one process come in time order); a new one while fewer than MAX_LANES."""
        lanes = self._lanes.setdefault((pid, record.hostname, record.pid, kind), [])
        for lane in lanes:
            if lane[1] <= start:
                lane[1] = end
                return lane[0]
        if len(lanes) >= MAX_LANES:
            return -1
        tid, self._next_tid = self._next_tid, self._next_tid + 1
        lanes.append([tid, end])
        name = f"{record.hostname}:{record.pid} {kind}"
        if len(lanes) > 1:
            name += f" (overlapping {len(lanes)})"
        self._meta(pid, tid, "thread_name", {"name": name})
        self._meta(pid, tid, "thread_sort_index", {"sort_index": tid})
        return tid

    def _thread(self, pid: int, record: Record) -> int:
        """The first compiles thread of the record's process, for its instant events (which
        nest anywhere, so they take no room)."""
        lanes = self._lanes.get((pid, record.hostname, record.pid, "compiles"))
        return lanes[0][0] if lanes else self._lane(pid, record, "compiles", 0, 0)

    def _placed(
        self, pid: int, record: Record, kind: str, start: int, end: int
    ) -> tuple[int, int, int]:
        """The thread for [start, end] and where it goes: moved after the last thread's end
        when every thread is taken (counted)."""
        tid = self._lane(pid, record, kind, start, end)
        if tid >= 0:
            return tid, start, end
        last = self._lanes[(pid, record.hostname, record.pid, kind)][-1]
        self.counts["moved later"] += 1
        moved = max(start, last[1])
        last[1] = moved + end - start
        return last[0], moved, last[1]

    def add(self, record: Record) -> None:
        """The events of one record."""
        pid = self._pid(record)
        end = _us(record.time)
        timed = _root(record)
        if timed is None:
            self._graph_made((pid, self._thread(pid, record)), end, record)
            return
        root, seconds = timed
        tid, start, end = self._placed(pid, record, "compiles", end - _us(seconds), end)
        self._compile((pid, tid), start, end, root, record)
        self._wait(pid, end, seconds, record)

    def _compile(self, at: _At, start: int, end: int, root: str, rec: Record) -> None:
        kind = "failed" if rec.fail_type else "recompile" if rec.recompile_reason else "compile"
        if root == "backward":
            kind, where = "backward", ""
        else:
            where = f" {(rec.frame or {}).get('co_name') or '?'}"
        args = {
            "compile_id": rec.compile_id,
            "frame": rec.frame,
            "seconds": rec.durations_s,
            "cache": rec.cache,
            "host": rec.hostname,
            "pid": rec.pid,
            "device": rec.device,
        }
        self._slice(at, start, end - start, f"{kind} {rec.compile_id}{where}", "compile", args)
        self._phases(at, PHASE_TREE[root], start, end, rec.durations_s)
        if rec.recompile_reason:
            name = f"recompile: {rec.recompile_category or 'other'}"
            self._instant(at, start, name, rec, {"reason": rec.recompile_reason})
        for graph_break in rec.graph_breaks:
            name = f"graph break: {graph_break.category}"
            self._instant(at, end, name, rec, msgspec.structs.asdict(graph_break))
        self._failure(at, end, rec)
        self._cache_events(at, end, rec)

    def _phases(self, at: _At, phases: tuple[str, ...], start: int, end: int, seconds: dict) -> int:
        """Slices for ``phases`` one after another from ``start``, each clipped to ``end``,
        with what they hold inside; returns where the last one ends."""
        cursor = start
        for phase in phases:
            if phase not in seconds:
                cursor = self._phases(at, PHASE_TREE.get(phase, ()), cursor, end, seconds)
                continue
            measured = _us(seconds[phase])
            length = min(measured, end - cursor)
            args = {"seconds": seconds[phase]}
            if length < measured:
                args["clipped to its parent"] = True
            self._slice(at, cursor, length, phase, "phase", args)
            self._phases(at, PHASE_TREE.get(phase, ()), cursor, cursor + length, seconds)
            cursor += length
        return cursor

    def _failure(self, at: _At, ts: int, record: Record) -> None:
        if record.fail_type:
            name = f"failure: {record.fail_category or record.fail_type}"
            args = {"fail_type": record.fail_type, "reason": record.fail_reason}
            self._instant(at, ts, name, record, args)

    def _cache_events(self, at: _At, ts: int, record: Record) -> None:
        for cache, results in sorted(record.cache.items()):
            if results.get("miss"):
                self._instant(at, ts, f"cache miss: {cache}", record, results)
        for bypass in record.cache_bypasses:
            name = f"cache bypass: {bypass.category}"
            self._instant(at, ts, name, record, msgspec.structs.asdict(bypass))

    def _graph_made(self, at: _At, ts: int, record: Record) -> None:
        args = {
            "graph_hash": record.graph_hash,
            "nodes": record.nodes,
            "cache_hit": record.cache_hit,
            "inputs": record.inputs,
            "outputs": record.outputs,
            "tokens": record.tokens,
        }
        self._instant(at, ts, f"{record.graph or 'frame'} graph {record.compile_id}", record, args)
        self._failure(at, ts, record)
        self._cache_events(at, ts, record)

    def _wait(self, pid: int, end: int, seconds: float, record: Record) -> None:
        """The straggler wait after this compile: the slowest rank's time less its own."""
        slowest = self.slowest.get(_key(record))
        if slowest is None:
            self.counts["waits untracked"] += 1
            return
        longest, rank = slowest
        wait = _us(longest) - _us(seconds)
        if wait <= 0 or rank == record.rank:
            return
        tid, start, stop = self._placed(pid, record, "straggler waits", end, end + wait)
        args = {
            "compile_id": record.compile_id,
            "slowest rank": rank,
            "its seconds": longest,
            "own seconds": seconds,
        }
        self._slice((pid, tid), start, stop - start, f"waiting for rank {rank}", "wait", args)

    def _slice(self, at: _At, ts: int, dur: int, name: str, cat: str, args: dict) -> None:
        pid, tid = at
        event = {"ph": "X", "name": name, "cat": cat, "pid": pid, "tid": tid, "ts": ts}
        self._event({**event, "dur": dur, "args": args})

    def _instant(self, at: _At, ts: int, name: str, record: Record, args: dict) -> None:
        pid, tid = at
        event = {"ph": "i", "s": "t", "name": name, "cat": "event", "pid": pid, "tid": tid}
        self._event({**event, "ts": ts, "args": {**args, "compile_id": record.compile_id}})


def write_trace(paths: list[Path], out: TextIO) -> Counter:
    """The trace of the records of ``paths`` written to ``out``; returns what it counted
    (records, duplicates, malformed lines by reason, waits untracked, compiles moved)."""
    writer = TraceWriter(out, slowest_ranks(paths))
    counts = writer.counts
    out.write('{"displayTimeUnit": "ms", "traceEvents": [\n')
    for record in _records(paths, counts):
        counts["records"] += 1
        writer.add(record)
    other = {"source": "aotwatch", "archives": [str(p) for p in paths], **dict(counts)}
    out.write(f'\n],\n"otherData": {to_json(other)}}}\n')
    return counts
