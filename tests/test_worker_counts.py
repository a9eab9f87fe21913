"""Workers' drop and capture-error totals: applied once, persisted, rebuilt after a restart."""

from __future__ import annotations

from aotwatch.cluster.worker_counts import COUNTS_FILE, CountsLedger
from aotwatch.core.sink import RecordSink


def values(sink: RecordSink, metric: str) -> dict:
    return sink.snapshot().values.get(metric, {})


def test_resent_and_reordered_totals_add_only_their_growth(tmp_path):
    sink = RecordSink(100)
    ledger = CountsLedger(tmp_path, sink)
    ledger.add("w1", "job", {"dropped": {"queue_full": 2}})
    ledger.add("w1", "job", {"dropped": {"queue_full": 5}, "capture_errors": {"post_compile": 1}})
    ledger.add("w1", "job", {"dropped": {"queue_full": 2}})  # a late resend of older totals
    ledger.add("w1", "job", {"dropped": {"queue_full": 5}, "capture_errors": {"post_compile": 1}})
    ledger.add("w2", "job", {"dropped": {"queue_full": 1}})
    assert values(sink, "aotwatch_records_dropped") == {("job", "queue_full"): 6}
    assert values(sink, "aotwatch_capture_errors") == {("job", "post_compile"): 1}


def test_a_restarted_collector_rebuilds_the_same_totals_from_its_file(tmp_path):
    first = RecordSink(100)
    ledger = CountsLedger(tmp_path, first)
    ledger.add("w1", "job", {"dropped": {"buffer_full": 100}})
    ledger.add("w1", "job", {"dropped": {"buffer_full": 300}})
    with open(tmp_path / COUNTS_FILE, "a") as file:
        file.write('{"worker_id": "w1", "job_na')  # torn by a crash mid-write
    second = RecordSink(100)
    restarted = CountsLedger(tmp_path, second)
    assert values(second, "aotwatch_records_dropped") == {("job", "buffer_full"): 300}
    restarted.add("w1", "job", {"dropped": {"buffer_full": 300}})  # resent after the restart
    restarted.add("w1", "job", {"dropped": {"buffer_full": 301}})
    assert values(second, "aotwatch_records_dropped") == {("job", "buffer_full"): 301}


def test_malformed_totals_are_ignored(tmp_path):
    sink = RecordSink(100)
    ledger = CountsLedger(tmp_path, sink)
    for totals in (
        None,
        [],
        {"stolen": {"x": 1}},
        {"dropped": {"queue_full": -1}},
        {"dropped": {"queue_full": 1.5}},
        {"dropped": {7: 1}},
        {"dropped": {"queue_full": 10**400}},
        {"dropped": {"x" * 10_000: 1}},
        {"dropped": {f"reason{i}": 1 for i in range(1000)}},
    ):
        ledger.add("w1", "job", totals)
    ledger.add("w1", "j" * 10_000, {"dropped": {"queue_full": 1}})
    ledger.add("w" * 10_000, "job", {"dropped": {"queue_full": 1}})
    assert values(sink, "aotwatch_records_dropped") == {}
    assert not (tmp_path / COUNTS_FILE).read_text()
