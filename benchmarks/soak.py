"""A collector that lives while many jobs come and go: series, memory, disk and restart time.

    python benchmarks/soak.py [--jobs 1000] [--ranks 8] [--compiles 50] [--every 100]

One real collector actor (``cluster.head.ensure_collector``, as ``aotwatch serve`` places
it) on a local Ray cluster takes jobs in sequence: per job, ``--ranks`` workers each push
``--compiles`` compiles (a frame, a forward and a backward graph record each) in batches of
100, then say goodbye. ``collector.job_retention_s`` is short (``--retention-s``) and
``archive.max_bytes`` small (``--max-archive-mib``), so the retention windows pass many
times. Every ``--every`` jobs: the series in the collector's /metrics, its resident memory,
the bytes under its directory, and the time a restart (the actor killed, Ray starting it
again) takes until /readyz answers 200. After every job: whether the newest job has every
series the first job had (none dropped by the cardinality cap).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

import ray_env  # noqa: F401 - sets Ray's environment before Ray is imported

# isort: split

import ray

from aotwatch.cluster.paths import collector_directory
from aotwatch.cluster.placement import ensure_collector
from aotwatch.core.config import (
    ArchiveConfig,
    ClusterConfig,
    CollectorConfig,
    Config,
)
from aotwatch.core.records import new_record

BATCH = 100


def job_records(job: str, rank: int, compiles: int) -> list[dict]:
    records = []
    for index in range(compiles):
        common = {
            "job_name": job,
            "rank": rank,
            "hostname": "h",
            "pid": 1000 + rank,
            "compile_id": f"{index}/0",
        }
        records.append(new_record(**common, durations_s={"total": 0.5, "dynamo": 0.2}))
        for graph in ("forward", "backward"):
            records.append(
                new_record(
                    **common,
                    graph=graph,
                    nodes=100,
                    graph_hash=f"{index:x}",
                    inputs={"total": 4, "data": 1},
                )
            )
    return records


def scrape(url: str) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=30) as response:
        return response.status, response.read().decode()


def series_of(text: str, job: str | None = None) -> int:
    """Sample lines (histogram buckets included), of one job if named."""
    lines = [line for line in text.splitlines() if line and not line.startswith("#")]
    return sum(1 for line in lines if job is None or f'job_name="{job}"' in line)


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def disk_mib(directory: Path) -> float:
    """Bytes of the files under ``directory`` (retention may remove some while this runs)."""
    total = 0
    for parent, _, files in os.walk(directory):
        for name in files:
            with contextlib.suppress(FileNotFoundError):
                total += os.stat(os.path.join(parent, name)).st_size
    return total / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--ranks", type=int, default=8)
    parser.add_argument("--compiles", type=int, default=50)
    parser.add_argument("--every", type=int, default=100)
    parser.add_argument("--retention-s", type=int, default=5)
    parser.add_argument("--max-archive-mib", type=int, default=64)
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="aotwatch-soak-"))
    config = Config(
        archive=ArchiveConfig(path=str(root), max_bytes=args.max_archive_mib * 2**20),
        cluster=ClusterConfig(namespace=f"aotwatch-soak-{uuid.uuid4().hex[:8]}"),
        collector=CollectorConfig(
            address="127.0.0.1", port=0, worker_timeout_s=1, job_retention_s=args.retention_s
        ),
    )
    ray.init(num_cpus=2, include_dashboard=False)
    node_id = ray.get_runtime_context().get_node_id()
    collector = ensure_collector(node_id, config)
    endpoint = ray.get(collector.endpoint.remote(), timeout=120)
    url = f"http://127.0.0.1:{endpoint.port}"
    directory = collector_directory(config, node_id)
    pid = ray.get(collector.__ray_call__.remote(lambda self: os.getpid()), timeout=30)
    print(
        f"{args.jobs} jobs x {args.ranks} ranks x {args.compiles} compiles (3 records each); "
        f"job_retention_s {args.retention_s}, archive.max_bytes {args.max_archive_mib} MiB\n"
    )
    print(
        "| jobs | series in /metrics | newest job's series | collector RSS (MiB) | "
        "archive (MiB) | restart to ready (s) | replayed | records/s |"
    )
    print("|---|---|---|---|---|---|---|---|")
    first, short, started, pushed = None, 0, time.perf_counter(), 0
    for index in range(args.jobs):
        job = f"job-{index:05d}"
        workers = [
            {"worker_id": f"{job}-{r}", "job_name": job, "rank": r} for r in range(args.ranks)
        ]
        calls = []
        for worker in workers:
            records = job_records(job, worker["rank"], args.compiles)
            pushed += len(records)
            calls += [
                collector.push.remote(worker, records[i : i + BATCH], None)
                for i in range(0, len(records), BATCH)
            ]
        ray.get(calls, timeout=300)
        _, text = scrape(url + "/metrics")
        newest = series_of(text, job)
        first = first or newest
        short += newest < first
        ray.get([collector.goodbye.remote(worker) for worker in workers], timeout=60)
        if (index + 1) % args.every == 0:
            rate = pushed / (time.perf_counter() - started)
            total = series_of(text)
            memory, disk = rss_mib(pid), disk_mib(directory)
            ray.kill(collector, no_restart=False)
            killed, old_pid = time.perf_counter(), pid
            while pid == old_pid:  # the new actor answers once its __init__ (replay) is done
                pid = ray.get(collector.__ray_call__.remote(lambda self: os.getpid()), timeout=600)
            restart = time.perf_counter() - killed
            endpoint = ray.get(collector.endpoint.remote(), timeout=60)
            url, replayed = f"http://127.0.0.1:{endpoint.port}", endpoint.replayed
            assert scrape(url + "/readyz")[0] == 200
            print(
                f"| {index + 1} | {total} | {newest} | {memory:.0f} | {disk:.1f} | "
                f"{restart:.2f} | {replayed} | {rate:,.0f} |",
                flush=True,
            )
            started, pushed = time.perf_counter(), 0
    print(f"\njobs whose newest series were short of the first job's {first}: {short}")
    ray.kill(collector, no_restart=True)
    ray.shutdown()


if __name__ == "__main__":
    main()
