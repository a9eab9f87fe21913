"""What a collector costs Prometheus: families kept per rank or per job on a node, the
in-progress series under the per-metric cap, and the workers a collector tracks bounded."""

from __future__ import annotations

import sys
from pathlib import Path

from aotwatch.core.config import LimitsConfig
from aotwatch.core.metrics import FAMILIES, IN_PROGRESS, NODE_SUMMED
from aotwatch.core.records import new_record
from cluster_helpers import lines
from collector_helpers import metric
from helpers import scrape

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
import footprint  # noqa: E402

JOB = "budget"


def worker(number: int, job: str = JOB, compiling: str | None = None) -> dict:
    announced = {"worker_id": f"w{number}", "job_name": job, "rank": number}
    if compiling is not None:
        announced["compiling"] = {"compile_id": compiling, "elapsed_s": 1.0, "device": "cuda:0"}
    return announced


def rank_records(rank: int) -> bytes:
    common = {"job_name": JOB, "rank": rank, "device": f"cuda:{rank}"}
    return lines(
        [
            new_record(graph="forward", nodes=40, outputs={"alias_of_input": 1}, **common),
            new_record(compile_id="0/0", durations_s={"total": 2.0, "dynamo": 2.0}, **common),
        ]
    )


# -- kept per rank or per job on a node ------------------------------------------------------


def test_a_collector_sums_node_families_over_the_ranks_of_a_job(node_collector):
    collector = node_collector()
    for rank in range(4):
        collector.push(worker(rank), rank_records(rank), None)
    snapshot = collector.snapshot()
    assert snapshot.values["torch_compile_graph_outputs"] == {(JOB, "alias_of_input"): 4}
    assert snapshot.values["torch_compile_phase_seconds"] == {
        (JOB, "total"): 8.0,
        (JOB, "dynamo"): 8.0,
    }
    (histogram,) = snapshot.histograms["torch_compile_duration_seconds"].values()
    assert histogram.count == 4
    assert len(snapshot.values["torch_compile_seconds"]) == 4  # kept per rank
    text = scrape(collector.server.url)
    for family in FAMILIES:
        if family.kept == "node":
            assert not any(
                line.startswith(family.name) and f'{label}="' in line
                for line in text.splitlines()
                for label in NODE_SUMMED
            ), family.name
    # the end-of-run summary rebuilds every rank from the archive
    detail = collector.job_detail(JOB)
    assert detail.values["torch_compile_graph_outputs"] == {
        (JOB, str(rank), f"cuda:{rank}", "alias_of_input"): 1 for rank in range(4)
    }


def test_per_rank_detail_keeps_every_family_per_rank(node_collector):
    collector = node_collector(limits=LimitsConfig(per_rank_detail=True))
    for rank in range(2):
        collector.push(worker(rank), rank_records(rank), None)
    assert metric(collector, "torch_compile_graph_outputs") == {
        (JOB, str(rank), f"cuda:{rank}", "alias_of_input"): 1 for rank in range(2)
    }
    assert 'rank="1"' in next(
        line
        for line in scrape(collector.server.url).splitlines()
        if line.startswith("torch_compile_duration_seconds_count") and 'rank="1"' in line
    )


def test_eight_ranks_of_the_demo_job_cost_at_most_the_budget(node_collector, tmp_path):
    """The benchmark's smoke run: real records (the demo job's loop, aot_eager, 2 steps:
    a recompile, a graph break, a mutation, an effect token), 8 ranks, a real collector."""
    records = footprint.demo_records(tmp_path / "job", backend="aot_eager", steps=2)
    assert any(r["recompile_reason"] for r in records) and any(r["graph_breaks"] for r in records)
    found = footprint.node_footprint(records, 8, tmp_path / "collector")
    assert 0 < found["per_rank"] <= footprint.BUDGET, found
    detail = footprint.node_footprint(records, 8, tmp_path / "detail", per_rank_detail=True)
    assert detail["per_rank"] > found["per_rank"]


# -- in-progress series under the cap --------------------------------------------------------


def test_in_progress_series_are_capped_and_the_refused_counted(node_collector):
    collector = node_collector(limits=LimitsConfig(max_series_per_metric=5))
    for number in range(20):
        collector.push(worker(number, compiling=f"{number}/0"), [], None)
    for number in range(20):  # announced again: counted once per label set
        collector.push(worker(number, compiling=f"{number}/0"), [], None)
    shown = metric(collector, IN_PROGRESS.name)
    assert len(shown) == 5
    assert metric(collector, "aotwatch_series_dropped") == {(IN_PROGRESS.name,): 15}
    # a rank that ends its compile makes room for another's
    collector.push(worker(0), [], None)
    collector.push(worker(7, compiling="7/0"), [], None)
    ranks = {labels[1] for labels in metric(collector, IN_PROGRESS.name)}
    assert len(ranks) == 5 and "7" in ranks and "0" not in ranks


def test_a_compiling_worker_that_leaves_frees_its_series(node_collector):
    collector = node_collector(limits=LimitsConfig(max_series_per_metric=1))
    collector.push(worker(0, compiling="0/0"), [], None)
    collector.push(worker(1, compiling="0/0"), [], None)
    assert [labels[1] for labels in metric(collector, IN_PROGRESS.name)] == ["0"]
    collector.goodbye(worker(0))
    collector.push(worker(1, compiling="0/0"), [], None)
    assert [labels[1] for labels in metric(collector, IN_PROGRESS.name)] == ["1"]


# -- workers per collector --------------------------------------------------------------------


def test_workers_per_collector_are_bounded_across_jobs(node_collector):
    collector = node_collector(limits=LimitsConfig(max_workers_per_collector=3))
    for round_ in range(2):
        for number in range(6):
            job = f"job-{number % 2}"
            announced = worker(number, job=job)
            record = new_record(job_name=job, rank=number, record_id=f"{round_}-{number}")
            assert collector.push(announced, [record], None) == 1  # records still taken
    assert len(collector._live_workers()) == 3
    assert sum(metric(collector, "aotwatch_workers_attached").values()) == 3
    assert metric(collector, "aotwatch_workers_refused") == {("max_workers_per_collector",): 3}
    assert sum(metric(collector, "aotwatch_records_received").values()) == 12
    # one leaves: the next worker announcing itself takes its place
    collector.goodbye(worker(0, job="job-0"))
    collector.push(worker(5, job="job-1"), [], None)
    assert {a.worker.worker_id for a in collector._live_workers()} == {"w1", "w2", "w5"}


def test_a_worker_past_the_per_job_bound_is_counted_with_its_reason(node_collector):
    collector = node_collector(limits=LimitsConfig(max_workers_per_job=2))
    for number in range(4):
        collector.push(worker(number), [], None)
    assert metric(collector, "aotwatch_workers_refused") == {("max_workers_per_job",): 2}
