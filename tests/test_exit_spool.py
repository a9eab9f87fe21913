"""Records still unacknowledged when a worker exits go to the spool, and its collector takes
them in: what a stalled or restarting collector could not acknowledge within
``push.exit_timeout_s`` is neither lost nor left uncounted (a real local Ray cluster, real
SIGSTOP/SIGKILL).

Each test fails on the old exit path, which waited and then only logged "N records not
delivered at exit" (N one too high whenever drop or error totals were pending): no spool file
was written, no collector read one, and the records were lost with no drop counted.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import signal
import threading
import uuid

import pytest
import ray

from aotwatch.cluster.head import stop_daemon
from aotwatch.cluster.paths import spool_directory
from aotwatch.cluster.push import MAX_CALLS, RecordPusher
from aotwatch.cluster.spool import SPOOL_SUFFIX, write_spool
from aotwatch.core.archive import private_directory
from aotwatch.core.config import PushConfig
from aotwatch.core.records import new_record
from cluster_helpers import (
    Worker,
    collector_pid,
    lines,
    start_daemon,
    total,
)
from helpers import wait_for
from programs import PROGRAMS, observed, truth_of

pytestmark = pytest.mark.ray

JOB = "ray-test"


def spooled(directory) -> list:
    return sorted(directory.glob(f"*{SPOOL_SUFFIX}"))


def read_spool(path) -> tuple[dict, list[dict]]:
    header, *records = (json.loads(line) for line in path.read_text().splitlines())
    return header, records


def worker_id_of(worker) -> str:
    """The id the attached worker's pusher announces (its spool file is named after it)."""
    return ray.get(
        worker.__ray_call__.remote(
            lambda self: (
                importlib.import_module("aotwatch.attachment.process")
                .current()
                .sink.worker.worker_id
            )
        ),
        timeout=30,
    )


def test_records_undelivered_at_exit_are_spooled_and_taken_in(ray_session, tmp_path):
    # batch_size=1: at most MAX_CALLS records are in flight to the stalled collector, the rest
    # never leave the worker. The old exit path lost those for good (the worker is killed
    # below, as its process would exit) and no spool file appeared: both assertions on the
    # spool and received == captured fail there.
    push = PushConfig(exit_timeout_s=1, batch_size=1, flush_interval_ms=20)
    config, collector, node_id = start_daemon(tmp_path, "aotwatch-spool", push=push)
    names = list(PROGRAMS)
    delivered_names, spooled_names = names[:3], names[3:]
    spool = spool_directory(config, node_id)
    worker = Worker.remote()
    pid = None
    try:
        ray.get(worker.attach.remote(config), timeout=120)
        ray.get(worker.run.remote(*delivered_names), timeout=300)
        assert ray.get(worker.flush.remote(), timeout=60)
        acknowledged = ray.get(worker.state.remote(), timeout=30)["captured"]
        worker_id = worker_id_of(worker)

        pid = collector_pid(collector)
        os.kill(pid, signal.SIGSTOP)
        ray.get(worker.run.remote(*spooled_names), timeout=300)
        state = ray.get(worker.state.remote(), timeout=30)
        captured, unacknowledged = state["captured"], state["captured"] - acknowledged
        assert state["pending"] == unacknowledged  # no drop totals waiting: no "+1"
        assert unacknowledged > MAX_CALLS * push.batch_size  # some were never sent
        ray.get(worker.detach.remote(), timeout=60)  # waits 1 s, spools, goodbye times out

        files = spooled(spool)
        assert [path.name for path in files] == [f"{worker_id}{SPOOL_SUFFIX}"]
        header, records = read_spool(files[0])
        assert header["worker"]["worker_id"] == worker_id
        assert header["worker"]["job_name"] == JOB
        assert header["counts"] is None  # nothing dropped, no capture error
        assert len(records) == unacknowledged
        assert len({record["record_id"] for record in records}) == unacknowledged
        ray.kill(worker)  # its process exits: only the spool holds what it did not deliver
    finally:
        if pid is not None:
            os.kill(pid, signal.SIGCONT)
    try:
        wait_for(lambda: not spooled(spool), timeout=30, message="the spool to be taken in")
        received = lambda: int(total(collector, "aotwatch_records_received"))  # noqa: E731
        wait_for(lambda: received() >= captured, timeout=30, message="every record")
        snapshot = ray.get(collector.snapshot.remote(), timeout=60)
        dropped = snapshot.values.get("aotwatch_records_dropped", {})
        print(
            f"\nexit spool: captured {captured}, {unacknowledged} spooled, "
            f"received {received()}, dropped {dropped}"
        )
        assert received() == captured  # resends (in-flight calls, the spool) count once
        assert not any(dropped.values())
        assert observed(snapshot) == truth_of(*names)
    finally:
        stop_daemon(config)


def test_a_restarted_collector_takes_in_a_spool_left_while_it_was_down(ray_session, tmp_path):
    # The old collector never read a spool: the files stayed, no record, drop or rejected line
    # was counted, and the first wait_for below times out.
    config, collector, node_id = start_daemon(tmp_path, "aotwatch-spool")
    spool = spool_directory(config, node_id)
    staging = private_directory(tmp_path / "staging")  # written whole, then moved in
    worker = {"worker_id": uuid.uuid4().hex, "job_name": JOB, "rank": 0}
    first = [new_record(job_name=JOB, graph="forward", nodes=3) for _ in range(5)]
    pid = None
    try:
        path = write_spool(
            staging,
            worker["worker_id"],
            {"worker": worker, "counts": {"dropped": {"queue_full": 2}}},
            lines(first),
        )
        with open(path, "ab") as stream:
            stream.write(b"\x80garbage\n")
        os.replace(path, spool / path.name)
        wait_for(lambda: not spooled(spool), timeout=15, message="the spool to be taken in")

        def counts() -> dict:
            snapshot = ray.get(collector.snapshot.remote(), timeout=30)
            return {
                name: snapshot.values.get(name, {})
                for name in (
                    "aotwatch_records_received",
                    "aotwatch_records_dropped",
                    "aotwatch_records_rejected",
                    "torch_compile_graphs",
                )
            }

        taken_in = counts()
        assert sum(taken_in["aotwatch_records_received"].values()) == 5
        assert taken_in["aotwatch_records_dropped"] == {(JOB, "queue_full"): 2}
        assert taken_in["aotwatch_records_rejected"] == {("not_utf8",): 1}
        assert sum(taken_in["torch_compile_graphs"].values()) == 5

        # Down: stopped, so its poll thread cannot take the next file in, then killed. The
        # same worker's later spool: two new records, one resent, and totals grown by one.
        pid = collector_pid(collector)
        os.kill(pid, signal.SIGSTOP)
        second = [new_record(job_name=JOB, graph="forward", nodes=3) for _ in range(2)]
        path = write_spool(
            staging,
            f"{worker['worker_id']}-again",
            {"worker": worker, "counts": {"dropped": {"queue_full": 3}}},
            lines([first[0], *second]),
        )
        os.replace(path, spool / path.name)
        os.kill(pid, signal.SIGKILL)
        killed, pid = pid, None
        assert collector_pid(collector) != killed  # answers once restarted
        # The restarted collector drains in __init__, before it answers anything (its poll
        # thread first sleeps HOUSEKEEPING_S): the file is gone by its first answer.
        assert not spooled(spool)

        restarted = counts()
        print(f"\nspool across a restart: before {taken_in}, after {restarted}")
        assert sum(restarted["aotwatch_records_received"].values()) == 7  # 5 replayed + 2
        assert restarted["aotwatch_records_dropped"] == {(JOB, "queue_full"): 3}  # not 5
        assert sum(restarted["torch_compile_graphs"].values()) == 7
        # Never counted twice; the restarted process starts its unpersisted counters afresh.
        assert restarted["aotwatch_records_rejected"].get(("not_utf8",), 0) <= 1
    finally:
        if pid is not None:
            os.kill(pid, signal.SIGCONT)
        stop_daemon(config)


@ray.remote(num_cpus=0, max_concurrency=4)
class Unanswering:
    """A collector that never acknowledges a batch (and answers goodbye)."""

    def __init__(self) -> None:
        self._never = threading.Event()

    def push(self, worker, records, counts) -> int:
        self._never.wait()
        return 0

    def goodbye(self, worker) -> None:
        return None


def test_the_exit_warning_names_the_records_spooled_and_where(ray_session, tmp_path, caplog):
    # The old warning said "6 records not delivered at exit" here: it added 1 for the drop
    # totals still pending, and there was no spool to name.
    collector = Unanswering.remote()
    spool = private_directory(tmp_path / "spool")
    # A 60 s flush interval and batches larger than the queue: the push thread stays asleep
    # while the records come, so exactly 5 are queued and 2 dropped (queue_full).
    push = PushConfig(exit_timeout_s=1, queue_size=5, batch_size=100, flush_interval_ms=60_000)
    pusher = None
    try:
        pusher = RecordPusher(
            collector, {"job_name": JOB, "pid": os.getpid()}, push, heartbeat_s=3600, spool=spool
        )
        records = [new_record(job_name=JOB, graph="forward", nodes=3) for _ in range(7)]
        for record in records:
            pusher.record(record)
        assert pusher.pending() == 5 + 1  # five records, and the drop totals
        with caplog.at_level(logging.WARNING, logger="aotwatch"):
            pusher.close()

        path = spool / f"{pusher.worker.worker_id}{SPOOL_SUFFIX}"
        warnings = [r.getMessage() for r in caplog.records if "not delivered" in r.getMessage()]
        assert warnings == [
            f"aotwatch: 5 records not delivered within 1 s at exit; spooled to {path} "
            "for the collector"
        ]
        header, spooled_records = read_spool(path)
        assert header["worker"]["worker_id"] == pusher.worker.worker_id
        assert header["counts"] == {"dropped": {"queue_full": 2}, "capture_errors": {}}
        assert [r["record_id"] for r in spooled_records] == [r["record_id"] for r in records[:5]]
    finally:
        if pusher is not None:
            pusher.close()
        ray.kill(collector)
