"""The records of the golden exposition file (tests/golden), shared by the exposition and
dashboard tests."""

from __future__ import annotations

from aotwatch.core import metrics
from aotwatch.core.aggregate import Aggregate
from aotwatch.core.records import empty_record, new_record


def fixed_records() -> list[dict]:
    """Records that touch every family, with fixed ids and times."""
    common = {"hostname": "node-1", "pid": 42, "time": 1_700_000_000.0, "job_name": "golden"}
    graph = {
        "nodes": 40,
        "inputs": {**empty_record()["inputs"], "total": 3, "data": 1, "under_no_grad": 1},
        "mutation_placement": {"in_graph": 1, "out_of_graph": 0},
        "outputs": {"non_alias": 1, "alias_of_input": 1},
        "intermediate_bases": 1,
        "tokens": {"forward": 1, "backward": 0},
        "tensors_saved_for_backward": 3,
        "bytes_saved_for_backward": 3 * 4096,
        "symints_saved_for_backward": 1,
        "static_inputs": 2,
        "donated_buffers": 1,
        "subclasses": {"input": {"DTensor": 2, "MyTensor": 1}, "tangent": {"DTensor": 1}},
        "tangent_layouts": {"contiguous": 1, "channels_last": 1},
        "rng_functionalized": True,
    }
    return [
        new_record(record_id="f0", compile_id="0/0", graph="forward", **graph, **common),
        new_record(
            record_id="b0",
            compile_id="0/0",
            graph="backward",
            nodes=55,
            durations_s={"backward": 0.3},
            **common,
        ),
        new_record(
            record_id="fr0",
            compile_id="0/0",
            durations_s={"total": 2.5, "dynamo": 2.5, "aot_autograd": 1.9, "inductor": 1.2},
            cache={"fx_graph": {"miss": 2, "bypass": 1}, "aot_autograd": {"bypass": 1}},
            recompile_limits={"per_frame": 8, "accumulated": 256},
            cache_bypasses=[{"category": "freezing", "reason": "Cannot cache a graph with ..."}],
            graph_breaks=[  # one more category than the cap of 12 admits
                {"reason": "...", "category": f"gb{n:04d}", "user_frame": "a.py:1"}
                for n in range(50, 63)
            ],
            **common,
        ),
        new_record(
            record_id="fr1",
            compile_id="0/1",
            durations_s={"total": 0.4},
            recompile_reason="0/0: tensor 'x' size mismatch at index 0",
            recompile_limits={"per_frame": 8, "accumulated": 256},
            recompile_category="shape",
            **common,
        ),
        new_record(
            record_id="fr2",
            compile_id="1/0",
            fail_type="BackendCompilerFailed",
            rank=1,
            device="cuda:1",
            **common,
        ),
        new_record(
            record_id="i0",
            compile_id="2/0",
            graph="inference",
            nodes=7,
            cache_hit=True,
            device="cuda:1",
            rank=1,
            **{**common, "pid": 43},
        ),
    ]


def golden_aggregate() -> Aggregate:
    """The golden file's records, in a collector's default layout (``Family.kept``): a
    failure, a recompile, graph breaks (one over the cap), a rejected record, a capture
    error, a dropped record and a refused worker."""
    aggregate = Aggregate(max_series_per_metric=12, per_rank=False)
    for record in fixed_records():
        aggregate.add(record)
    aggregate.add({"schema": 0})
    aggregate.inc(metrics.CAPTURE_ERRORS, job_name="golden", stage="graph_metadata")
    aggregate.inc(metrics.RECORDS_DROPPED, job_name="golden", reason="archive_write")
    aggregate.inc(metrics.WORKERS_REFUSED, reason="max_workers_per_collector")
    return aggregate
