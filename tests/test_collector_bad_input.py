"""A real NodeCollector actor fed bad batches: malformed records are refused and counted on its
/metrics, valid ones beside them still count, floods are capped, and it keeps serving in bounded
memory."""

from __future__ import annotations

import uuid
from collections import Counter
from pathlib import Path

import pytest
import ray
from prometheus_client.parser import text_string_to_metric_families

from aotwatch.cluster.placement import ensure_collector
from aotwatch.core.config import LimitsConfig
from aotwatch.core.records import MAX_NUMBER, SCHEMA_VERSION, new_record
from cluster_helpers import (
    actor_pid,
    cluster_config,
)
from helpers import scrape

pytestmark = pytest.mark.ray

CAP = 200
"""max_series_per_metric of the collector under test."""
HUGE = 10 * 1024 * 1024
"""Characters in each huge string (10 MB)."""


@pytest.fixture
def collector(ray_session, tmp_path):
    config = cluster_config(
        tmp_path,
        namespace=f"aotwatch-bad-input-{uuid.uuid4().hex[:8]}",
        limits=LimitsConfig(max_series_per_metric=CAP),
    )
    handle = ensure_collector(ray.get_runtime_context().get_node_id(), config)
    endpoint = ray.get(handle.endpoint.remote(), timeout=120)
    yield handle, f"http://127.0.0.1:{endpoint.port}"
    ray.kill(handle, no_restart=True)  # detached: it would outlive the test


WORKER = {"worker_id": uuid.uuid4().hex, "job_name": "bad-input", "rank": 0, "hostname": "h"}


def push(handle, records: list) -> int:
    return ray.get(handle.push.remote(WORKER, records, {}), timeout=120)


def families(url: str) -> dict[str, list]:
    """Family name -> its samples, from a real scrape of /metrics."""
    return {f.name: f.samples for f in text_string_to_metric_families(scrape(f"{url}/metrics"))}


def counter(scraped: dict[str, list], family: str, label: str) -> dict[str, float]:
    return {s.labels[label]: s.value for s in scraped.get(family, []) if s.name.endswith("_total")}


def rss_anon_bytes(handle) -> int:
    """The actor process's anonymous resident memory (shared Ray object-store pages excluded)."""
    pid = actor_pid(handle)
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no RssAnon in /proc/{pid}/status")


def assert_serving(handle, url: str) -> None:
    assert scrape(f"{url}/healthz") == "ok\n"
    assert scrape(f"{url}/readyz") == "ok\n"
    assert push(handle, [new_record(job_name="after")]) == 1


def without(record: dict, key: str) -> dict:
    return {k: v for k, v in record.items() if k != key}


def test_malformed_records_are_counted_and_valid_ones_beside_them_accepted(collector):
    handle, url = collector
    malformed = {
        "schema_version": [{**new_record(), "schema": SCHEMA_VERSION + 1}, {"schema": None}],
        "missing_field": [without(new_record(), "record_id"), without(new_record(), "job_name")],
        "wrong_type": [
            new_record(rank="0"),
            new_record(graph="forward", nodes=1.5),
            new_record(inputs={"data": -1}),
            new_record(time=float("nan")),
        ],
        "too_large": [
            new_record(job_name="j" * HUGE),
            new_record(recompile_reason="r" * HUGE),
            new_record(graph_breaks=[{"reason": "b" * HUGE, "category": "other"}]),
            new_record(durations_s={"total": MAX_NUMBER * 2}),
            new_record(graph="forward", nodes=10**400),
        ],
        "not_an_object": ["a string", 5, None, [new_record()], b"bytes"],
    }
    valid = [new_record(job_name="good", graph="forward", nodes=3) for _ in range(3)]
    batch = [valid[0], *(r for records in malformed.values() for r in records), *valid[1:]]
    assert push(handle, batch) == len(valid)
    scraped = families(url)
    rejected = counter(scraped, "aotwatch_records_rejected", "reason")
    assert rejected == {reason: len(records) for reason, records in malformed.items()}
    assert counter(scraped, "aotwatch_records_received", "job_name") == {"good": 3}
    assert_serving(handle, url)


def flood(size: int, jobs: int, start: int = 0) -> list[dict]:
    """Valid records with a distinct 500-character reason each and ``jobs`` job names."""
    return [
        new_record(
            job_name=f"job-{i % jobs}",
            recompile_reason=f"{i} {'r' * 500}",
            graph_breaks=[{"reason": f"{i} {'b' * 500}", "category": f"made-up-{i}"}],
            durations_s={f"phase-{i}": 0.5},
            cache={f"cache-{i}": {f"result-{i}": 1}},
            fail_type=f"Error{i}",
        )
        for i in range(start, start + size)
    ]


def test_floods_are_capped_counted_and_memory_stays_bounded(collector):
    handle, url = collector
    for batch in range(5):  # warm up: every family exists, allocator pools are in use
        push(handle, flood(1000, jobs=5000, start=batch * 1000))
    before = rss_anon_bytes(handle)
    for _ in range(20):  # 200 MB of strings, all refused
        assert push(handle, [new_record(job_name="j" * HUGE)]) == 0
    records, jobs = 50_000, 5000
    for start in range(5000, 5000 + records, 1000):
        assert push(handle, flood(1000, jobs=jobs, start=start)) == 1000
    growth = rss_anon_bytes(handle) - before
    # Kept per record: only its id in the dedupe window (~200 bytes with its slot; 10 MB for
    # 50k). Label sets are capped (CAP per family), reasons map to fixed categories. Keeping
    # the refused strings (200 MB) or the reasons' text (50k x 1 KB = 50 MB) would exceed this.
    assert growth < 40 * 2**20, f"the collector grew by {growth / 2**20:.1f} MiB"

    scraped = families(url)
    for name, samples in scraped.items():
        label_sets = {
            tuple(sorted((k, v) for k, v in s.labels.items() if k != "le")) for s in samples
        }
        assert len(label_sets) <= CAP, name
    received = counter(scraped, "aotwatch_records_received", "job_name")
    assert len(received) == CAP
    dropped = counter(scraped, "aotwatch_series_dropped", "metric")
    # Jobs known only from records finish (no worker of theirs is attached) and make room
    # for newer ones; a label set refused is counted once, not once per record.
    assert 0 < dropped["aotwatch_records_received"] <= jobs
    assert dropped["torch_compile_frames"] > 0 and dropped["torch_compile_recompiles"] > 0
    breaks = Counter(s.labels["reason"] for s in scraped["torch_compile_graph_breaks"])
    assert set(breaks) == {"other"}  # 55k made-up categories, one label value
    assert counter(scraped, "aotwatch_records_rejected", "reason") == {"too_large": 20}
    assert_serving(handle, url)
