"""Helpers for tests of a ``NodeCollector`` run in the test process: workers, records, a
collector's job directories and families."""

from __future__ import annotations

from pathlib import Path

from aotwatch.cluster.collector import NodeCollector, collector_directory
from aotwatch.core.job_archives import JOBS_DIR, job_slug
from aotwatch.core.records import new_record
from cluster_helpers import NODE, config_at
from helpers import scrape

WORKER = {"worker_id": "w1", "job_name": "hostile", "rank": 0}


def metric(collector: NodeCollector, name: str) -> dict[tuple, float]:
    """One family as served: scraped over HTTP (so a bad label would fail the scrape)."""
    scrape(collector.server.url)
    return collector.snapshot().values.get(name, {})


def records(count: int, **fields) -> list[dict]:
    return [
        new_record(job_name="hostile", graph="forward", nodes=3, **fields) for _ in range(count)
    ]


def job_directory(root: Path, job: str = "hostile") -> Path:
    """Where a collector keeps one job's archive."""
    return collector_directory(config_at(root), NODE) / JOBS_DIR / job_slug(job)


def worker(job: str, index: int = 0) -> dict:
    return {"worker_id": f"{job}-w{index}", "job_name": job, "rank": index}


def compiles(job: str, count: int, **fields) -> list[dict]:
    return [new_record(job_name=job, graph="forward", nodes=3, **fields) for _ in range(count)]


def finish_all(collector: NodeCollector) -> list[str]:
    """Let the grace period pass (the job clock moved past it) and finish ended jobs."""
    clock = collector.jobs.clock
    collector.jobs.clock = lambda: clock() + collector.config.collector.worker_timeout_s + 1
    finished, _ = collector.advance_jobs()
    return finished


def fill(directory: Path) -> Path:
    """Write a file until the disk is full; returns it (delete it to free the space)."""
    filler = directory / "filler"
    with open(filler, "wb", buffering=0) as stream:
        try:
            while True:
                stream.write(b"\0" * 4096)
        except OSError:
            pass
    return filler
