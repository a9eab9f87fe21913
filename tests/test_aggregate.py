"""The pure fold: idempotent, bounded, and strict about what it accepts."""

from __future__ import annotations

import pytest

from aotwatch.core import categories, metrics
from aotwatch.core.aggregate import Aggregate
from aotwatch.core.records import new_record


def graph_record(**fields):
    return new_record(graph="forward", nodes=12, hostname="h", pid=1, **fields)


def test_redelivered_record_is_counted_once():
    aggregate = Aggregate()
    record = graph_record()
    assert aggregate.add(record) is True
    assert aggregate.add(dict(record)) is False
    values = aggregate.snapshot().values
    assert values["torch_compile_graphs"] == {("default", "0", "cpu", "forward"): 1}
    assert values["aotwatch_records_received"] == {("default",): 1}


@pytest.mark.parametrize(
    ("broken", "reason"),
    [
        ("not a dict", "not_an_object"),
        ({"schema": 2}, "schema_version"),
        ({**new_record(), "rank": None}, "wrong_type"),
        ({**new_record(), "rank": True}, "wrong_type"),
        ({k: v for k, v in new_record().items() if k != "device"}, "missing_field"),
        ({**new_record(), "graph": "sideways"}, "wrong_type"),
        ({**new_record(), "durations_s": {"total": -1}}, "wrong_type"),
        ({**new_record(), "recompile_reason": "x" * 100_000}, "too_large"),
        ({**new_record(), "job_name": "j" * 257}, "too_large"),
        ({**new_record(), "job_name": "\ud800"}, "wrong_type"),
        ({**new_record(), "mutation_placement": None}, "wrong_type"),
        ({**new_record(), "mutation_placement": {"in_graph": "1"}}, "wrong_type"),
        ({**new_record(), "fail_type": "x", "fail_reason": 5}, "wrong_type"),
        ({**new_record(), "time": float("nan")}, "wrong_type"),
    ],
)
def test_malformed_records_are_rejected_and_counted(broken, reason):
    aggregate = Aggregate()
    assert aggregate.add(broken) is False
    values = aggregate.snapshot().values
    assert values["aotwatch_records_rejected"] == {(reason,): 1}
    assert "torch_compile_frames" not in values


def test_cardinality_cap_drops_new_label_sets_and_counts_them():
    aggregate = Aggregate(max_series_per_metric=2)
    for job in ("a", "b", "c", "d"):
        aggregate.add(new_record(job_name=job))
    values = aggregate.snapshot().values
    assert set(values["torch_compile_frames"]) == {("a", "0", "cpu"), ("b", "0", "cpu")}
    assert values["aotwatch_series_dropped"][("torch_compile_frames",)] == 2


def test_free_text_never_becomes_a_label():
    aggregate = Aggregate()
    aggregate.add(
        new_record(
            durations_s={"my phase": 1.0},
            cache={"some cache": {"weird": 1}},
            recompile_reason="a brand new reason",
            fail_type="SomethingNew",
            graph_breaks=[{"reason": "x", "category": "free text", "user_frame": None}],
        )
    )
    values, histograms = aggregate.snapshot().values, aggregate.snapshot().histograms
    rank = ("default", "0", "cpu")
    assert values["torch_compile_recompiles"] == {(*rank, "other"): 1}
    assert values["torch_compile_frame_failures"] == {(*rank, "other"): 1}
    assert values["torch_compile_graph_breaks"] == {(*rank, "other"): 1}
    assert values["torch_compile_cache_lookups"] == {(*rank, "other", "other"): 1}
    assert values["torch_compile_phase_seconds"] == {(*rank, "other"): 1.0}
    assert "torch_compile_duration_seconds" not in histograms  # no whole-frame time


def test_histogram_buckets_are_cumulative_with_inf():
    aggregate = Aggregate()
    for seconds in (0.005, 0.2, 2000.0):
        aggregate.add(new_record(durations_s={"total": seconds}))
    (histogram,) = aggregate.snapshot().histograms["torch_compile_duration_seconds"].values()
    buckets = dict(histogram.cumulative())
    assert buckets["0.01"] == 1 and buckets["0.25"] == 2 and buckets["1800.0"] == 2
    assert buckets["+Inf"] == histogram.count == 3
    assert histogram.sum == pytest.approx(2000.205)


def test_snapshot_is_not_changed_by_later_records():
    aggregate = Aggregate()
    aggregate.add(new_record())
    snapshot = aggregate.snapshot()
    aggregate.add(new_record())
    assert snapshot.values["torch_compile_frames"] == {("default", "0", "cpu"): 1}


@pytest.mark.parametrize(
    ("reason", "category"),
    [
        ("0/0: tensor 'x' size mismatch at index 0. expected 4, actual 5", "shape"),
        ("0/1: tensor 'x' dtype mismatch. expected Float, actual Double", "dtype"),
        ("0/0: tensor 'x' device mismatch. expected cpu, actual cuda:0", "device"),
        ("0/0: tensor 'x' requires_grad mismatch. expected requires_grad=0", "requires_grad"),
        ("0/0: GLOBAL_STATE changed: grad_mode ", "global_state"),
        ("0/0: ___check_obj_id(L['self'].fn, 140234)", "object_identity"),
        ("2/0: n == 0   # h = torch.compile(...)", "value"),
        ("Dynamo recompile limit exceeded", "recompile_limit"),
        ("something nobody has seen", "other"),
        (None, "other"),
    ],
)
def test_recompile_categories(reason, category):
    assert categories.recompile_category(reason) == category
    assert category in categories.RECOMPILE_CATEGORIES


def test_graph_break_categories_use_the_registry_id():
    message = "Failed to trace builtin operator ... see .../compile-graph-break-site/gb/gb0059.html"
    assert categories.graph_break_category(message) == "gb0059"
    assert categories.graph_break_category("data-dependent branching") == "data_dependent"
    assert categories.graph_break_category("???") == "other"
    assert categories.is_graph_break_category("gb0059")
    assert not categories.is_graph_break_category("gb59; drop table")


def test_fail_type_categories():
    assert categories.fail_type_category("BackendCompilerFailed") == "backend_compiler_failed"
    limit = "Dynamo recompile limit exceeded\\n  Explanation: ..."
    assert categories.fail_type_category("Unsupported", limit) == "recompile_limit"
    assert categories.fail_type_category("torch._dynamo.exc.Unsupported") == "unsupported"
    assert categories.fail_type_category("Weird") == "other"


def test_dedupe_window_is_bounded_and_forgets_the_oldest_ids():
    aggregate = Aggregate(dedupe_window=2)
    first, second, third = new_record(), new_record(), new_record()
    for record in (first, second, third):
        assert aggregate.add(record)
    assert not aggregate.add(third) and not aggregate.add(second)
    assert aggregate.add(first)  # forgotten: outside the window of 2


def _job_series(aggregate: Aggregate, job: str) -> set[tuple[str, tuple]]:
    """Every (family, labels) of ``job`` in a snapshot."""
    snapshot = aggregate.snapshot()
    return {
        (metric, labels)
        for tables in (snapshot.values, snapshot.histograms)
        for metric, table in tables.items()
        for labels in table
        if labels[:1] == (job,) and metric not in ("aotwatch_jobs",)
    }


def _run_job(aggregate: Aggregate, job: str) -> None:
    """A frame and a forward graph with a mutation on two ranks."""
    for rank in (0, 1):
        aggregate.add(new_record(job_name=job, rank=rank, hostname="h", pid=rank))
        aggregate.add(graph_record(job_name=job, rank=rank, inputs={"total": 2, "data": 1}))


def test_a_new_job_gets_every_series_while_finished_jobs_hold_the_cap():
    aggregate = Aggregate(max_series_per_metric=12)  # one job's worth: 6 mutation kinds x 2
    _run_job(aggregate, "first")
    wanted = {(metric, labels[1:]) for metric, labels in _job_series(aggregate, "first")}
    previous = "first"
    for job in ("second", "third", "fourth"):  # far more than the cap holds
        aggregate.finish_job(previous)
        _run_job(aggregate, job)
        assert {(m, labels[1:]) for m, labels in _job_series(aggregate, job)} == wanted
        previous = job
    values = aggregate.snapshot().values
    assert not any(values.get("aotwatch_series_dropped", {}).values())
    assert values["aotwatch_jobs"] == {("running",): 1, ("finished",): 3}


def test_running_jobs_are_never_evicted_and_a_refused_label_set_counts_once():
    aggregate = Aggregate(max_series_per_metric=2)
    for job in ("a", "b", "c", "d"):
        for _ in range(5):  # the same refused label sets, again and again
            aggregate.add(new_record(job_name=job))
    values = aggregate.snapshot().values
    assert set(values["torch_compile_frames"]) == {("a", "0", "cpu"), ("b", "0", "cpu")}
    dropped = values["aotwatch_series_dropped"]
    assert dropped[("torch_compile_frames",)] == 2  # c and d, once each


def test_forgetting_a_job_removes_its_series_and_only_its():
    aggregate = Aggregate()
    _run_job(aggregate, "old")
    _run_job(aggregate, "new")
    aggregate.inc(metrics.RECORDS_REJECTED, reason="not_json")
    kept = _job_series(aggregate, "new")
    aggregate.finish_job("old")
    assert aggregate.snapshot().values["aotwatch_jobs"] == {("running",): 1, ("finished",): 1}
    aggregate.forget_job("old")
    assert _job_series(aggregate, "old") == set()
    assert _job_series(aggregate, "new") == kept
    values = aggregate.snapshot().values
    assert values["aotwatch_records_rejected"] == {("not_json",): 1}
    assert values["aotwatch_jobs"] == {("running",): 1, ("finished",): 0}
    aggregate.finish_job("new")
    aggregate.finish_job("new", finished=False)  # running again: a worker came back
    assert aggregate.snapshot().values["aotwatch_jobs"][("running",)] == 1
