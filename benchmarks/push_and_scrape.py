"""The push path and the collector: enqueue cost, ingest rate, scrape time, memory.

    python benchmarks/push_and_scrape.py [--records 100000] [--scrapes 8x500,1000x3]

- enqueue: ``RecordPusher.record`` on the calling (training) thread, per record;
- ingest: records/s into a real collector actor, batches of 100, calls in flight;
- scrape: GET /metrics of a collector's exposition for 8 ranks x 500 graphs, and for
  1,000 workers (ranks) with a few graphs each;
- memory: the collector process's RSS after 100k, 200k, 300k and 400k records.

Targets (issue 3): enqueue <= 20 us; ingest >= 100k records/s; scrape <= 50 ms at 8x500 and
<= 500 ms at 1,000 workers; memory flat in the number of records.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import urllib.request
import uuid

import ray_env  # noqa: F401 - sets Ray's environment before Ray is imported

# isort: split

from aotwatch.core.aggregate import Aggregate
from aotwatch.core.config import (
    ArchiveConfig,
    ClusterConfig,
    CollectorConfig,
    Config,
    PushConfig,
)
from aotwatch.core.records import empty_record, encode_record, new_record
from aotwatch.export.collector import AggregateCollector, registry_for
from aotwatch.export.server import serve_metrics

WORKER = {"job_name": "bench", "hostname": "h", "pid": 1, "rank": 0, "worker_id": "w"}


def graph_record(rank: int, compile_index: int) -> dict:
    return new_record(
        job_name="bench",
        rank=rank,
        hostname="h",
        pid=1000 + rank,
        compile_id=f"{compile_index % 2000}/0",  # a long job: recompiles, not endless frames
        graph="forward",
        graph_hash=uuid.uuid4().hex[:16],
        nodes=100 + compile_index % 50,
        inputs={**empty_record()["inputs"], "total": 8, "data": 1},
        outputs={"non_alias": 2, "alias_of_input": 1},
        durations_s={"backward": 0.05},
    )


def frame_record(rank: int, compile_index: int) -> dict:
    return new_record(
        job_name="bench",
        rank=rank,
        hostname="h",
        pid=1000 + rank,
        compile_id=f"{compile_index}/0",
        durations_s={"total": 1.5, "dynamo": 1.5, "aot_autograd": 1.0, "inductor": 0.7},
        cache={"fx_graph": {"miss": 2}, "aot_autograd": {"miss": 1}},
        recompile_reason="0/0: tensor 'x' size mismatch at index 0" if compile_index else None,
        graph_breaks=[
            {"reason": "x", "category": f"gb{compile_index % 20:04d}", "user_frame": None}
        ],
    )


def scrape_ms(ranks: int, graphs_per_rank: int, repeats: int = 20) -> tuple[float, int]:
    """Median GET /metrics time over ``repeats``, and the exposition's size in bytes."""
    aggregate = Aggregate(max_series_per_metric=1_000_000)
    for rank in range(ranks):
        for index in range(graphs_per_rank):
            aggregate.add(graph_record(rank, index))
            aggregate.add(frame_record(rank, index))
    registry = registry_for(AggregateCollector(aggregate.snapshot))
    server = serve_metrics(registry, "127.0.0.1", 0)
    times, size = [], 0
    try:
        for _ in range(repeats):
            start = time.perf_counter()
            with urllib.request.urlopen(server.url, timeout=30) as response:
                size = len(response.read())
            times.append(time.perf_counter() - start)
    finally:
        server.close()
    return statistics.median(times) * 1e3, size


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def ray_benchmarks(count: int) -> None:
    import ray

    from aotwatch.cluster.placement import ensure_collector
    from aotwatch.cluster.push import MAX_CALLS, RecordPusher

    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    config = Config(
        archive=ArchiveConfig(path=tempfile.mkdtemp(prefix="aotwatch-bench-archive-")),
        cluster=ClusterConfig(namespace=f"bench-{uuid.uuid4().hex[:6]}"),
        collector=CollectorConfig(address="127.0.0.1", port=0),
    )
    collector = ensure_collector(ray.get_runtime_context().get_node_id(), config)
    pid = ray.get(collector.__ray_call__.remote(lambda self: os.getpid()), timeout=60)

    records = [graph_record(0, i) for i in range(count)]
    push = PushConfig(queue_size=1_000_000, buffer_size=1_000_000)
    pusher = RecordPusher(collector, dict(WORKER), push, heartbeat_s=5.0)
    chunk_us = []
    for start in range(0, len(records), 1000):
        begin = time.perf_counter()
        for record in records[start : start + 1000]:
            pusher.record(record)
        chunk_us.append((time.perf_counter() - begin) / 1000 * 1e6)
    print(
        f"enqueue: median {statistics.median(chunk_us):.2f} us/record "
        f"(max chunk {max(chunk_us):.2f} us), {count:,} records"
    )
    begin = time.perf_counter()
    assert pusher.flush(timeout=120), "the pusher did not drain"
    drained = time.perf_counter() - begin
    print(
        f"push path: the last of {count:,} records acknowledged {drained:.1f} s after the enqueue "
        f"ended (at most {MAX_CALLS} calls in flight)"
    )
    pusher.close()

    print(f"collector RSS after the pusher's {count:,} records: {rss_mb(pid):.0f} MB")
    ingested = count
    for _ in range(3):
        batches = [  # JSON lines, as workers send them (encoded on the worker, not timed here)
            b"".join(encode_record(graph_record(1, i)) for i in range(j, j + 100))
            for j in range(0, count, 100)
        ]
        begin = time.perf_counter()
        ray.get([collector.push.remote(WORKER, batch, {}) for batch in batches], timeout=600)
        rate = count / (time.perf_counter() - begin)
        ingested += count
        print(
            f"ingest: {count:,} records in batches of 100: {rate:,.0f} records/s; after "
            f"{ingested:,} records the collector's RSS is {rss_mb(pid):.0f} MB"
        )
    ray.kill(collector, no_restart=True)
    ray_ceiling(count)
    ray.shutdown()


class NoOpCollector:
    """Takes a batch and does nothing with it: what Ray alone costs per batch."""

    def push(self, worker: dict, records: object, counts: dict) -> int:
        return 0


def ray_ceiling(count: int) -> None:
    """Records/s into an actor that does nothing, batches of 100: the ceiling Ray sets on
    ingest, for batches of JSON lines (what workers send) and of record dicts."""
    import ray

    actor = ray.remote(num_cpus=0)(NoOpCollector).remote()
    ray.get(actor.push.remote(WORKER, b"", {}), timeout=60)
    dicts = [[graph_record(2, i) for i in range(j, j + 100)] for j in range(0, count, 100)]
    lines = [b"".join(map(encode_record, batch)) for batch in dicts]
    for name, batches in (("JSON lines", lines), ("record dicts", dicts)):
        begin = time.perf_counter()
        ray.get([actor.push.remote(WORKER, batch, {}) for batch in batches], timeout=600)
        rate = count / (time.perf_counter() - begin)
        print(f"ceiling: an actor that does nothing takes {rate:,.0f} records/s as {name}")
    ray.kill(actor)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=100_000, help="records a round")
    parser.add_argument(
        "--scrapes", default="8x500,1000x3", help="scraped sizes, RANKSxGRAPHS, comma-separated"
    )
    args = parser.parse_args()
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs")
    for size in args.scrapes.split(","):
        ranks, graphs = map(int, size.split("x"))
        ms, size = scrape_ms(ranks, graphs)
        print(f"scrape: {ranks} ranks x {graphs} graphs: median {ms:.1f} ms, {size / 1e3:.0f} kB")
    ray_benchmarks(args.records)


if __name__ == "__main__":
    main()
