"""What counting compile cost costs: a collector's fold per frame record, the work table it
sends the head per changed job, and the head's judging of one job's tables from every
collector (``cost.merge`` and ``cost.redundant``, what ``DivergenceWatch`` runs for a job
whose fingerprints changed in a round).

    PYTHONPATH=daemon python3 benchmarks/cost_scale.py --ranks 10240 --ids 200
"""

from __future__ import annotations

import argparse
import pickle
import time

from aotwatch.core import cost, divergence
from aotwatch.core.records import SCHEMA_VERSION, Record

RANKS_PER_COLLECTOR = 8
IDENTITY = {"schema": SCHEMA_VERSION, "record_id": "r", "world_size": 1, "device": "cpu"}
IDENTITY |= {"hostname": "h", "pid": 1, "time": 0.0, "job_name": "big-job"}


def collector_work(first_rank: int, ids: int, max_keys: int) -> tuple[cost.Work, float, int]:
    """(the work table, seconds spent folding, frame records folded) of 8 ranks x ``ids``."""
    prints: divergence.Fingerprints = {}
    work: cost.Work = {}
    spent, folded = 0.0, 0
    for rank in range(first_rank, first_rank + RANKS_PER_COLLECTOR):
        for index in range(ids):
            base = {**IDENTITY, "rank": rank, "compile_id": f"{index}/0"}
            for graph in ("forward", "backward"):
                graph_hash = f"{index}{graph[0]}"
                divergence.observe(prints, Record(**base, graph=graph, graph_hash=graph_hash))
            frame = Record(**base, cache={"fx_graph": {"miss": 1}}, durations_s={"total": 10.0})
            divergence.observe(prints, frame)
            started = time.perf_counter()
            cost.fold(work, frame, prints, max_keys)
            spent += time.perf_counter() - started
            folded += 1
    return work, spent, folded


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, default=10_240)
    parser.add_argument("--ids", type=int, default=200)
    args = parser.parse_args()
    max_keys = 10_000
    first, spent, folded = collector_work(0, args.ids, max_keys)
    table = first["big-job"]
    collectors = max(1, args.ranks // RANKS_PER_COLLECTOR)
    tables = [table] * collectors  # SPMD: every collector's table alike
    sent = len(pickle.dumps(first))
    seen = cost.Seen(max_keys)
    started = time.process_time()
    merged = cost.merge(tables)
    scopes = cost.redundant("big-job", merged, seen)
    head_s = time.process_time() - started
    print(
        f"| {args.ranks:,} | {args.ids} | {spent / folded * 1e6:.1f} µs | {sent:,} B "
        f"| {head_s:.2f} s | {scopes['job'] / 3600:,.0f} |"
    )


if __name__ == "__main__":
    main()
