"""A head round at scale: a restarted head, nothing new, one new compile per rank, and ranks
that each compile something the others do not.

    python benchmarks/head_scale.py [--ranks 128,1024,10240] [--ids 200]

One job spread over collectors of 8 ranks each; every rank has compiled ``--ids`` frames
(a forward and a backward graph and a frame record each). What runs is the real code of
both ends of a round, without Ray: each collector's ``NodeCollector.fingerprints_since``
(called on an object holding just the state it reads), pickled as Ray would send it (the
bytes column), then the head's ``DivergenceWatch.take`` of every answer (the digest, the
comparison at the compile ids that changed and the judging of findings: what
``Head.check_divergences`` does between its Ray calls). Not measured: Ray's own call
overhead per collector. The collectors' column is their answers one after another; on a
cluster they answer in parallel, each in about 1/collectors of it. Seconds are this
process's CPU time (``time.process_time``: what a head of its own would take; wall time on
a shared machine says more about the neighbours); the collectors' state is built first and
kept out of the garbage collector's passes (``gc.freeze``), as it is out of the head's
process on a cluster, then one pass paces the later ones by the head's own objects (without
it, when the build's last full pass happened could add or spare 0.4 s of them in a round).

Rounds: the first (the head knows nothing: a head just started or restarted), nothing new,
one new compile per rank (the same compile id and graph on every rank), nothing new; then
each rank compiles a compile id of its own (every id differs: a compile-id finding each once
settled), nothing new while they settle, the round that counts them (``final``); then each
rank compiles one more shared compile id with a graph hash of its own (one finding, a group
per rank); last, a restarted head reads it all in one round.
"""

from __future__ import annotations

import argparse
import gc
import logging
import pickle
import threading
import time
import types

from aotwatch.cluster.collector import NodeCollector
from aotwatch.core.config import Config
from aotwatch.core.digest import ChangeLog
from aotwatch.core.judging import DivergenceWatch
from aotwatch.core.liveness import Liveness
from aotwatch.core.records import SCHEMA_VERSION, Record

JOB = "big-job"
RANKS_PER_COLLECTOR = 8


def collector_state(first_rank: int, ids: int) -> types.SimpleNamespace:
    """What a collector of 8 ranks holds after ``ids`` compiles per rank."""
    state = types.SimpleNamespace(
        _accept_lock=threading.Lock(),
        _lock=threading.Lock(),
        liveness=Liveness(None, RANKS_PER_COLLECTOR, 1),
        _changes=ChangeLog(),
        _work={},
        config=Config(),
    )
    state._live = types.MethodType(NodeCollector._live, state)
    state.ranks = range(first_rank, first_rank + RANKS_PER_COLLECTOR)
    for rank in state.ranks:
        for index in range(ids):
            compile_one(state, rank, f"{index}/0")
    return state


IDENTITY = {
    "schema": SCHEMA_VERSION,
    "record_id": "r",
    "world_size": 1,
    "device": "cpu",
    "hostname": "h",
    "pid": 1,
    "time": 0.0,
}
"""What a validated record carries besides what the fingerprints read."""


def compile_one(state: types.SimpleNamespace, rank: int, compile_id: str, tag: str = "") -> None:
    """A frame compiled by ``rank``: forward and backward graphs (hashes from the compile id,
    and ``tag``) and the frame's cache record."""
    base = {"job_name": JOB, "rank": rank, "compile_id": compile_id}
    for graph in ("forward", "backward"):
        graph_hash = f"{compile_id}{tag}{graph[0]}"
        NodeCollector._observe(
            state, Record(**IDENTITY, **base, graph=graph, graph_hash=graph_hash)
        )
    NodeCollector._observe(state, Record(**IDENTITY, **base, cache={"fx_graph": {"miss": 1}}))


def head_round(
    watch: DivergenceWatch, states: list, final: bool = False
) -> tuple[int, float, float, int]:
    """(bytes sent, collectors' seconds, head's seconds, findings) of one round."""
    answers, sent, collectors, head = {}, 0, 0.0, 0.0
    for node, state in enumerate(states):
        started = time.process_time()
        answer = NodeCollector.fingerprints_since(state, *watch.known(str(node)))
        payload = pickle.dumps(answer, protocol=5)
        collectors += time.process_time() - started
        sent += len(payload)
        started = time.process_time()
        answers[str(node)] = pickle.loads(payload)
        head += time.process_time() - started
    started = time.process_time()
    watch.take(answers, set(answers), final)
    head += time.process_time() - started
    return sent, collectors, head, len(watch.divergences())


def rss_mib(field: str) -> float:
    """This process's ``VmRSS`` (now) or ``VmHWM`` (its peak) in MiB (Linux)."""
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith(f"{field}:"))
    return int(line.split()[1]) / 1024


def each_rank(states: list, compile: types.FunctionType) -> None:
    for state in states:
        for rank in state.ranks:
            compile(state, rank)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", default="128,1024,10240")
    parser.add_argument("--ids", type=int, default=200)
    args = parser.parse_args()
    quiet = logging.getLogger("aotwatch")  # each finding is logged (and timed), not printed
    quiet.addHandler(logging.NullHandler())
    quiet.propagate = False
    print(
        f"one job, {RANKS_PER_COLLECTOR} ranks per collector, {args.ids} compile ids per "
        "rank (forward, backward, frame)\n"
    )
    print("| ranks | collectors | round | bytes sent | collectors s | head s | findings |")
    print("|---|---|---|---|---|---|---|")
    for ranks in (int(r) for r in args.ranks.split(",")):
        states = [
            collector_state(first, args.ids) for first in range(0, ranks, RANKS_PER_COLLECTOR)
        ]
        gc.freeze()  # the collectors' objects live in their own processes: not the head's GC
        gc.collect()  # the head's passes paced by its own objects alone
        built = rss_mib("VmRSS")
        watch = DivergenceWatch(Config())
        rows = [
            ("first (all)", head_round(watch, states)),
            ("nothing new", head_round(watch, states)),
        ]
        each_rank(states, lambda state, rank: compile_one(state, rank, f"{args.ids}/0"))
        rows.append(("one new compile per rank", head_round(watch, states)))
        rows.append(("nothing new", head_round(watch, states)))
        each_rank(states, lambda state, rank: compile_one(state, rank, f"own/{rank}"))
        rows.append(("a compile id of its own per rank", head_round(watch, states)))
        rows.append(("nothing new, those settling", head_round(watch, states)))
        rows.append(("nothing new, final", head_round(watch, states, final=True)))
        each_rank(
            states, lambda state, rank: compile_one(state, rank, f"{args.ids + 1}/0", str(rank))
        )
        rows.append(("a graph hash of its own per rank", head_round(watch, states)))
        restarted = DivergenceWatch(Config())
        rows.append(("restarted head (first, all)", head_round(restarted, states, final=True)))
        same = sorted(map(str, watch.divergences())) == sorted(map(str, restarted.divergences()))
        for name, (sent, collectors, head, findings) in rows:
            print(
                f"| {ranks:,} | {len(states):,} | {name} | {sent:,} | {collectors:.3f} "
                f"| {head:.3f} | {findings:,} |",
                flush=True,
            )
        print(f"\nrestarted head's findings equal the running head's: {same}")
        print(
            f"RSS with the collectors' state built: {built:,.0f} MiB; peak: "
            f"{rss_mib('VmHWM'):,.0f} MiB (with both heads and a round's answers)\n"
        )


if __name__ == "__main__":
    main()
