"""Faults on a real local Ray cluster, with real signals: collectors SIGKILLed while workers
compile, a collector stalled with SIGSTOP, a worker SIGKILLed mid-compile. Nothing may be lost.

The figures these tests print (run with ``-s``) are in docs/reliability.md.
"""

from __future__ import annotations

import os
import random
import signal
import time

import pytest
import ray

from aotwatch.cluster.head import stop_daemon
from aotwatch.cluster.push import MAX_CALLS
from aotwatch.core.config import PushConfig
from aotwatch.core.metrics import IN_PROGRESS
from cluster_helpers import (
    Worker,
    collector_pid,
    collector_values,
    ranked_worker,
    start_daemon,
    total,
)
from helpers import samples, scrape, wait_for
from programs import PROGRAMS, observed, truth_of

pytestmark = [pytest.mark.ray, pytest.mark.subprocess]


def test_collector_sigkilled_again_and_again_while_workers_compile(ray_session, tmp_path):
    config, collector, _ = start_daemon(tmp_path, "aotwatch-faults")
    try:
        names = list(PROGRAMS)
        workers = [Worker.remote() for _ in range(2)]
        ray.get([w.attach.remote(config) for w in workers], timeout=120)
        rng = random.Random(20261126)
        kills = []  # records the collector had accepted when it was killed
        for name in names:  # one kill per program, at a random moment of its compile
            runs = [w.run.remote(name) for w in workers]
            time.sleep(rng.uniform(0.0, 0.5))
            pid = collector_pid(collector)
            kills.append(int(total(collector, "aotwatch_records_received")))
            os.kill(pid, signal.SIGKILL)
            ray.get(runs, timeout=300)
        assert all(ray.get([w.flush.remote() for w in workers], timeout=120))

        states = ray.get([w.state.remote() for w in workers], timeout=30)
        captured = sum(state["captured"] for state in states)
        snapshot = ray.get(collector.snapshot.remote(), timeout=60)
        received = int(sum(snapshot.values["aotwatch_records_received"].values()))
        print(
            f"\nSIGKILLs: {len(kills)} at {kills} records; captured {captured}, received {received}"
        )
        assert len(set(kills)) >= 3, kills  # at different moments
        assert received == captured
        assert not snapshot.values.get("aotwatch_records_dropped")
        assert observed(snapshot) == truth_of(*names, *names)  # two workers, same programs
    finally:
        stop_daemon(config)


def test_a_worker_killed_mid_compile_keeps_counters_and_loses_its_gauges(ray_session, tmp_path):
    config, collector, _ = start_daemon(tmp_path, "aotwatch-faults")
    try:
        survivor, victim = ranked_worker(0), ranked_worker(1)
        ray.get([w.attach.remote(config) for w in (survivor, victim)], timeout=120)
        ray.get(survivor.compile_many.remote(2), timeout=120)
        assert ray.get(survivor.flush.remote(), timeout=60)
        port = ray.get(collector.endpoint.remote(), timeout=30).port
        url = f"http://127.0.0.1:{port}/metrics"
        before = total(collector, "aotwatch_records_received")

        victim_pid = ray.get(victim.pid.remote(), timeout=30)  # it answers nothing while compiling
        compiling = victim.compile_with_breaks.remote(200)
        wait_for(
            lambda: total(collector, "aotwatch_records_received") >= before + 4,
            timeout=120,
            message="the victim's first records",
        )
        assert not ray.wait([compiling], timeout=0)[0], "killed after its compile, not during"
        assert collector_values(collector, "aotwatch_workers_attached") == {("ray-test",): 2}
        in_progress = lambda: collector_values(collector, IN_PROGRESS.name)  # noqa: E731
        wait_for(lambda: any(key[1] == "1" for key in in_progress()), timeout=30)
        mid_compile = samples(scrape(url), ("counter", "histogram"))
        os.kill(victim_pid, signal.SIGKILL)
        with pytest.raises(ray.exceptions.RayActorError):
            ray.get(compiling, timeout=60)

        attached = lambda: collector_values(collector, "aotwatch_workers_attached")  # noqa: E731
        wait_for(
            lambda: attached() == {("ray-test",): 1},
            timeout=30,
            message="the killed worker to expire",
        )
        after = samples(scrape(url), ("counter", "histogram"))
        shrunk = {
            key: (value, after.get(key))
            for key, value in mid_compile.items()
            if after.get(key, -1) < value
        }
        assert not shrunk, shrunk
        timestamps = collector_values(collector, "torch_compile_last_compile_timestamp_seconds")
        assert set(timestamps) == {("ray-test", "0", "cpu")}  # rank 1's gauge expired
        assert in_progress() == {}  # killed mid-compile: no longer compiling once it expired
        frames = collector_values(collector, "torch_compile_frames")
        assert frames[("ray-test", "1", "cpu")] >= 2  # what it compiled before dying stays
    finally:
        stop_daemon(config)


def test_a_stalled_collector_blocks_no_step_and_drops_only_what_it_counts(ray_session, tmp_path):
    push = PushConfig(batch_size=5, buffer_size=20, flush_interval_ms=20)
    config, collector, _ = start_daemon(tmp_path, "aotwatch-faults", push=push)
    try:
        worker = Worker.remote()
        ray.get(worker.attach.remote(config), timeout=120)
        ray.get(worker.compile_many.remote(1), timeout=120)
        assert ray.get(worker.flush.remote(), timeout=60)
        pid = collector_pid(collector)
        os.kill(pid, signal.SIGSTOP)
        try:  # compiles and steps go on while nothing is acknowledged
            ray.get(worker.compile_many.remote(60, start=1), timeout=300)
            assert ray.get(worker.train.remote(50), timeout=120) == 50
            stalled = ray.get(worker.state.remote(), timeout=30)
        finally:
            os.kill(pid, signal.SIGCONT)
        assert stalled["pending"] <= push.buffer_size + MAX_CALLS * push.batch_size
        assert ray.get(worker.flush.remote(), timeout=120)

        captured = ray.get(worker.state.remote(), timeout=30)["captured"]
        received = int(total(collector, "aotwatch_records_received"))
        dropped = collector_values(collector, "aotwatch_records_dropped")
        print(
            f"\nstalled: captured {captured}, pending at most {stalled['pending']}, "
            f"received {received}, dropped {dropped}"
        )
        assert dropped.get(("ray-test", "buffer_full"), 0) > 0
        assert received + sum(dropped.values()) == captured  # every record accounted for
    finally:
        stop_daemon(config)


UNREACHABLE_SCRIPT = """
import sys, torch, aotwatch
from aotwatch.core.config import ClusterConfig, Config, ExportConfig
config = Config(cluster=ClusterConfig(address=sys.argv[1]), export=ExportConfig(port=0))
attachment = aotwatch.attach(config)
model = torch.compile(torch.nn.Linear(4, 4), backend="aot_eager")
for _ in range(3):
    model(torch.randn(2, 4)).sum().backward()
graphs = attachment.sink.snapshot().values["torch_compile_graphs"]
print("graphs", sorted(labels[-1] for labels in graphs), "served", attachment.url)
"""


def test_an_unreachable_cluster_leaves_training_going_and_capture_local(tmp_path):
    import socket
    import subprocess
    import sys

    with socket.socket() as probe:  # a port that nothing listens on once closed
        probe.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{probe.getsockname()[1]}"
    env = {**os.environ, "RAY_TMPDIR": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-c", UNREACHABLE_SCRIPT, address],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "graphs ['backward', 'forward'] served http://127.0.0.1:" in result.stdout
    warnings = [line for line in result.stderr.splitlines() if "unreachable" in line]
    assert len(warnings) == 1, result.stderr
    assert f"Ray cluster '{address}' unreachable" in warnings[0]
    assert "capturing in this process instead" in warnings[0]
    assert not any(tmp_path.iterdir())  # no Ray session was started
