"""A head round at scale: bytes and time when nothing changed, and after one compile per rank.

    python benchmarks/head_scale.py [--ranks 128,1024,10240] [--ids 200]

One job spread over collectors of 8 ranks each; every rank has compiled ``--ids`` frames
(a forward and a backward graph and a frame record each). What runs is the real code of
both ends of a round, without Ray: each collector's ``NodeCollector.fingerprints_since``
(called on an object holding just the state it reads), pickled as Ray would send it (the
bytes column), then the head's ``divergence.Digest.update`` for every answer and
``divergence.find`` at the compile ids that changed (what ``Head.check_divergences`` does
between its Ray calls). Not measured: Ray's own call overhead per collector. Rounds: the first (the
head knows nothing), a steady one (nothing new), and one after each rank compiled one more
frame.
"""

from __future__ import annotations

import argparse
import pickle
import threading
import time
import types
import uuid

from aotwatch import divergence
from aotwatch.cluster.collector import NodeCollector
from aotwatch.liveness import Liveness
from aotwatch.records import SCHEMA_VERSION, Record

JOB = "big-job"
RANKS_PER_COLLECTOR = 8


def collector_state(first_rank: int, ids: int) -> types.SimpleNamespace:
    """What a collector of 8 ranks holds after ``ids`` compiles per rank."""
    state = types.SimpleNamespace(
        _accept_lock=threading.Lock(),
        _lock=threading.Lock(),
        liveness=Liveness(None, RANKS_PER_COLLECTOR, 1),
        _epoch=uuid.uuid4().hex,
        _versions={},
        _fingerprints={},
        _changes={},
        _changes_since={},
    )
    for method in (NodeCollector._delta, NodeCollector._live):
        setattr(state, method.__name__, types.MethodType(method, state))
    for rank in range(first_rank, first_rank + RANKS_PER_COLLECTOR):
        for index in range(ids):
            compile_one(state, rank, index)
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


def compile_one(state: types.SimpleNamespace, rank: int, index: int) -> None:
    base = {"job_name": JOB, "rank": rank, "compile_id": f"{index}/0"}
    for graph in ("forward", "backward"):
        record = Record(**IDENTITY, **base, graph=graph, graph_hash=f"{index:016x}{graph[0]}")
        NodeCollector._observe(state, record)
    frame = Record(**IDENTITY, **base, cache={"fx_graph": {"miss": 1}})
    NodeCollector._observe(state, frame)


def head_round(digest: divergence.Digest, states: list) -> tuple[int, float, int]:
    """(bytes sent, seconds, findings) of one round over every collector."""
    started, sent = time.perf_counter(), 0
    for node, state in enumerate(states):
        answer = NodeCollector.fingerprints_since(state, *digest.known(str(node)))
        payload = pickle.dumps(answer, protocol=5)
        sent += len(payload)
        digest.update(str(node), pickle.loads(payload))
    findings = sum(
        len(divergence.find(job, digest.ranks(job), compile_ids))
        for job, compile_ids in digest.changes().items()
    )
    return sent, time.perf_counter() - started, findings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", default="128,1024,10240")
    parser.add_argument("--ids", type=int, default=200)
    args = parser.parse_args()
    print(
        f"one job, {RANKS_PER_COLLECTOR} ranks per collector, {args.ids} compile ids per "
        "rank (forward, backward, frame)\n"
    )
    print("| ranks | collectors | round | bytes sent | seconds | findings |")
    print("|---|---|---|---|---|---|")
    for ranks in (int(r) for r in args.ranks.split(",")):
        states = [
            collector_state(first, args.ids) for first in range(0, ranks, RANKS_PER_COLLECTOR)
        ]
        digest = divergence.Digest()
        rows = [
            ("first (all)", head_round(digest, states)),
            ("nothing new", head_round(digest, states)),
        ]
        for node, state in enumerate(states):
            for rank in range(node * RANKS_PER_COLLECTOR, (node + 1) * RANKS_PER_COLLECTOR):
                compile_one(state, rank, args.ids)
        rows.append(("one new compile per rank", head_round(digest, states)))
        rows.append(("nothing new", head_round(digest, states)))
        for name, (sent, seconds, findings) in rows:
            print(
                f"| {ranks:,} | {len(states):,} | {name} | {sent:,} | {seconds:.3f} | {findings} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
