"""What compiling costs a fleet (pure functions): the rank-seconds ranks wait for a straggler,
the compile seconds done twice, and why a straggler compiles while its peers wait.

Two kinds of work done twice, kept apart because their cures differ:

- ``job``: ranks of one job that each compiled the same graph (same compile id and graph
  hashes, not served by a cache): all but one rank's share is work that compiling once and
  sharing the result (or a cache warmed before the job) would save;
- ``fleet``: compiles of graphs (same hashes) that an earlier job had already compiled: what
  a persistent shared cache (``TORCHINDUCTOR_CACHE_DIR`` on shared storage, or the remote
  cache) would have served.

The collectors fold frame records into a ``Work`` table per job (``fold``); the head sums
the tables of every node and judges them (``redundant``) against a bounded table of the
graph hashes it has seen (``Seen``); the reports do the same from the archives, so the live
and the archive views agree.
"""

from __future__ import annotations

from typing import Any

from aotwatch.core import divergence
from aotwatch.core.lru import LruCache
from aotwatch.core.records import GRAPH_KINDS, Record, parse_compile_id

SCOPES = ("job", "fleet")
"""Where compile work was done twice (see the module's docstring)."""

MAX_COMPILE_S = 86_400.0
"""Most seconds one frame's compile counts for: a record claiming more (hostile, or a clock
gone wrong) cannot make the fleet's cost any larger than a day a compile."""

MAX_REASON = 200
"""Characters of a recompile's reason a report's cause quotes."""

SERVED = ("hit",)
"""Cache results that mean the work was not done."""

CURES = {
    "job": "compile once and share the result, or warm the cache before the job",
    "fleet": "a persistent shared cache (TORCHINDUCTOR_CACHE_DIR on shared storage, or the "
    "remote cache) would have served them",
}
"""What saves each scope's redundant seconds (the reports name it)."""

WorkKey = tuple[str, tuple[str, ...]]
"""(compile id, the frame's graph hashes, sorted)."""
Work = dict[str, dict[WorkKey, list[float]]]
"""job -> (compile id, hashes) -> [ranks that compiled it, their compile seconds]."""


def compiled(cache: dict[str, dict[str, int]]) -> bool:
    """Whether a frame's compile did the work: no cache served it (a miss or bypass on some
    cache, or no cache hit at all)."""
    results = {result for counts in cache.values() for result, n in counts.items() if n}
    return not results or not results <= set(SERVED)


def fold(
    work: Work,
    record: Record,
    fingerprints: dict[str, Any],
    max_keys: int,
    key: WorkKey | None = None,
) -> bool:
    """Fold one frame record into ``work`` (its rank's graph hashes from ``fingerprints``,
    ``divergence.observe``'s, which hold the graph records that came before it; ``key``: its
    ``work_key`` when the caller has it); at most ``max_keys`` keys per job (later ones are
    not counted). Returns whether it counted."""
    seconds = record.durations_s.get("total")
    if record.graph is not None or record.compile_id is None or not seconds:
        return False
    if not compiled(record.cache):
        return False
    key = key or work_key(record, fingerprints)
    table = work.setdefault(record.job_name, {})
    if key not in table and len(table) >= max_keys:
        return False
    entry = table.setdefault(key, [0, 0.0])
    entry[0] += 1
    entry[1] += min(seconds, MAX_COMPILE_S)
    return True


def work_key(record: Record, fingerprints: dict[str, Any]) -> WorkKey:
    """A frame record's compile id and its rank's graph hashes there, as ``fold`` keys them
    (a rank that compiled the same compile id again after ``torch._dynamo.reset()`` made
    other graphs under another key; the same graphs again count as another compile)."""
    graphs = fingerprints.get(record.job_name, {}).get(str(record.rank), {}).get("graphs", {})
    hashes = {h for g in GRAPH_KINDS for h in graphs.get((record.compile_id, g), ())}
    return record.compile_id, tuple(sorted(hashes))


def merge(tables: list[dict[WorkKey, list[float]]]) -> dict[WorkKey, list[float]]:
    """One job's work tables from several collectors, summed."""
    merged: dict[WorkKey, list[float]] = {}
    for table in tables:
        for key, (ranks, seconds) in table.items():
            entry = merged.setdefault(key, [0, 0.0])
            entry[0] += ranks
            entry[1] += seconds
    return merged


class Seen:
    """The graph hashes compiled so far and the job that compiled each first: at most
    ``capacity`` (the least recently compiled go first; a hash forgotten counts as new)."""

    def __init__(self, capacity: int) -> None:
        self._jobs = LruCache(capacity)

    def earlier(self, job: str, hashes: tuple[str, ...]) -> bool:
        """Whether another job compiled every one of ``hashes`` first (none: never)."""
        return bool(hashes) and all(self._jobs.get(h, job) != job for h in hashes)

    def note(self, job: str, hashes: tuple[str, ...]) -> None:
        for graph_hash in hashes:
            if graph_hash not in self._jobs:
                self._jobs.put(graph_hash, job)

    def __len__(self) -> int:
        return len(self._jobs)


def redundant(job: str, table: dict[WorkKey, list[float]], seen: Seen) -> dict[str, float]:
    """Seconds of ``job``'s compiles done twice, by scope: compiles of graphs an earlier job
    compiled count whole (``fleet``); of the others, all ranks but one's share (``job``:
    n ranks at s seconds in all did (n - 1) / n x s more than one rank would). ``seen``
    learns the job's hashes."""
    cost = dict.fromkeys(SCOPES, 0.0)
    for (_, hashes), (ranks, seconds) in sorted(table.items()):
        if seen.earlier(job, hashes):
            cost["fleet"] += seconds
        elif ranks > 1:
            cost["job"] += seconds * (ranks - 1) / ranks
        seen.note(job, hashes)
    return cost


def graphs_twice(table: dict[WorkKey, list[float]]) -> tuple[int, int]:
    """(ranks that compiled a graph another rank also compiled, how many such graphs)."""
    twice = [ranks for ranks, _ in table.values() if ranks > 1]
    return int(max(twice, default=0)), len(twice)


def waited(
    counted: dict[tuple[str, str, str], float],
    alone: list[tuple[str, str, str, float, int]],
    after_s: float,
) -> dict[str, float]:
    """Rank-seconds spent waiting since the last round, per job. ``alone``: each rank
    compiling while others of its job are not (job, rank, compile id, how long it has
    compiled, how many ranks wait). Once past ``after_s`` (a straggler), it adds the time it
    compiled since it was last counted, or since the head first saw it compile alone (the
    others may have compiled too before that), times the ranks waiting. ``counted`` (how
    long each had compiled when last counted or first seen) keeps only those still alone."""
    added: dict[str, float] = {}
    now = {}
    for job, rank, compile_id, seconds, waiting in alone:
        key = (job, rank, compile_id)
        since = now[key] = counted.get(key, seconds)
        if seconds >= after_s and seconds > since:
            added[job] = added.get(job, 0.0) + (seconds - since) * waiting
            now[key] = seconds
    counted.clear()
    counted.update(now)
    return added


def _holds(parts: dict[str, Any], compile_id: str) -> bool:
    return compile_id in parts.get("cache", {}) or any(
        (compile_id, g) in parts.get("graphs", {}) for g in GRAPH_KINDS
    )


def cause(rank: str, compile_id: str, ranks: dict[str, dict[str, Any]]) -> str | None:
    """Why ``rank`` compiles ``compile_id`` while its peers wait, from the job's fingerprints
    (``divergence``'s), or None when they do not tell."""
    peers = {r: parts for r, parts in ranks.items() if r != rank and _holds(parts, compile_id)}
    if not peers:
        parsed = parse_compile_id(compile_id)
        if parsed and (parsed.frame_compiles or 0) > 1:
            return f"a recompile ({compile_id}) its peers did not make"
        return f"a compile id ({compile_id}) only it has"
    mine = ranks.get(rank, {}).get("graphs", {})
    for graph in GRAPH_KINDS:
        key = (compile_id, graph)
        theirs = {",".join(p["graphs"][key]) for p in peers.values() if key in p["graphs"]}
        if key in mine and theirs and ",".join(mine[key]) not in theirs:
            return f"a different {graph} graph ({','.join(mine[key])}; peers: {min(theirs)})"
    patterns = {p["cache"][compile_id] for p in peers.values() if compile_id in p["cache"]}
    hit = [p for p in patterns if p and not compiled(_pattern_counts(p))]
    own = ranks.get(rank, {}).get("cache", {}).get(compile_id)  # known once it is done
    if hit and (own is None or compiled(_pattern_counts(own) if own else {})):
        return f"a cache miss where its peers hit ({min(hit)})"
    return None


def _pattern_counts(pattern: str) -> dict[str, dict[str, int]]:
    """A fingerprint's cache pattern ("fx_graph:hit,aot_autograd:hit") as a record's counts."""
    counts: dict[str, dict[str, int]] = {}
    for item in pattern.split(","):
        cache, _, result = item.partition(":")
        counts.setdefault(cache, {})[result] = 1
    return counts


class Ledger:
    """What the reports count from archived records, as the head does live: the work table
    and the seconds each rank compiled each frame (the waits), ``max_keys`` compiles a job.
    ``add`` takes the records folded (valid, each once) in the order they are read."""

    def __init__(self, max_keys: int) -> None:
        self.max_keys = max_keys
        self.work: Work = {}
        self._fingerprints: dict[str, Any] = {}
        self._first: dict[str, float] = {}  # job -> its earliest record's time
        self._compiles: dict[str, dict[WorkKey, _Compile]] = {}  # job -> ``work_key`` -> ...

    def add(self, record: Record) -> None:
        job = record.job_name
        self._first[job] = min(self._first.get(job, record.time), record.time)
        divergence.observe(self._fingerprints, record)
        seconds = record.durations_s.get("total")
        if record.graph is None and record.compile_id is not None and seconds:
            key = work_key(record, self._fingerprints)
            fold(self.work, record, self._fingerprints, self.max_keys, key)
            compiles = self._compiles.setdefault(job, {})
            if key in compiles or len(compiles) < self.max_keys:
                seconds = min(seconds, MAX_COMPILE_S)
                entry = compiles.setdefault(key, _Compile())
                entry.ranks += 1
                entry.seconds += seconds
                if seconds > entry.slowest:
                    entry.slowest, entry.rank, entry.ended = seconds, str(record.rank), record.time
                    entry.reason = (record.recompile_reason or "")[:MAX_REASON]

    def redundant(self) -> dict[tuple[str, str], float]:
        """Seconds done twice per (job, scope), the jobs judged in the order they began."""
        seen = Seen(self.max_keys)
        return {
            (job, scope): seconds
            for job in sorted(self.work, key=lambda job: (self._first[job], job))
            for scope, seconds in redundant(job, self.work[job], seen).items()
        }

    def twice(self) -> dict[str, tuple[int, int]]:
        """``graphs_twice`` per job."""
        return {job: graphs_twice(table) for job, table in self.work.items()}

    def waits(self) -> dict[str, float]:
        """Rank-seconds each job's ranks waited for the slowest rank of each compile."""
        return {
            job: sum(entry.wait for entry in compiles.values())
            for job, compiles in sorted(self._compiles.items())
        }

    def causes(self) -> dict[str, list[tuple[str, float, str]]]:
        """Per job, the slowest rank of each compile that others waited for (or that only
        it made) and why it compiled, where the fingerprints tell: (rank, when its compile
        ended, what to say), the longest waits first."""
        found: dict[str, list[tuple[float, str, float, str]]] = {}
        for job, compiles in self._compiles.items():
            ranks = self._fingerprints.get(job, {})
            for (compile_id, _), entry in compiles.items():
                if len(ranks) < 2 or (entry.wait <= 0 and entry.ranks > 1):
                    continue
                because = cause(entry.rank, compile_id, ranks)
                if because is None:
                    continue
                if because.startswith("a recompile") and entry.reason:
                    because += f": {entry.reason}"
                said = f"rank {entry.rank} compiled {compile_id} for {entry.slowest:.1f} s"
                said += f", {entry.wait:.1f} rank-s waited" if entry.wait > 0 else ""
                found.setdefault(job, []).append(
                    (entry.wait, entry.rank, entry.ended, f"{said}: {because}")
                )
        return {
            job: [(rank, ended, said) for _, rank, ended, said in sorted(items, reverse=True)]
            for job, items in found.items()
        }


class _Compile:
    """One compile id of a job in the archives: how many ranks compiled it, their seconds,
    and its slowest rank's (seconds, rank, when it ended, recompile reason)."""

    __slots__ = ("ranks", "seconds", "slowest", "rank", "ended", "reason")

    def __init__(self) -> None:
        self.ranks, self.seconds, self.slowest = 0, 0.0, 0.0
        self.rank, self.ended, self.reason = "", 0.0, ""

    @property
    def wait(self) -> float:
        """Rank-seconds its ranks waited for the slowest, from the archived durations (no
        clock compared): the slowest rank's seconds less each rank's."""
        return self.ranks * self.slowest - self.seconds
