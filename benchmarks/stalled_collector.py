"""A stalled collector costs training nothing: step and compile times, collector up vs stopped.

    python benchmarks/stalled_collector.py [--blocks 3] [--steps 200]

One Ray worker with aotwatch attached trains a small compiled MLP (aot_eager) and compiles
new functions between blocks of steps, so records keep flowing. Blocks alternate between a
healthy collector and one frozen with SIGSTOP (it accepts connections and answers nothing).
Printed per state: the median training step, the median compile of a new function, the
worker's records waiting (bounded by push.buffer_size plus the calls in flight) and the
records dropped and counted.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import tempfile
import time

import ray_env  # noqa: F401 - sets Ray's environment before Ray is imported

# isort: split

import ray

from aotwatch.core.config import (
    ArchiveConfig,
    ClusterConfig,
    CollectorConfig,
    Config,
    PushConfig,
)


@ray.remote(num_cpus=1)
class Trainer:
    def __init__(self, config: Config) -> None:
        import torch

        import aotwatch

        aotwatch.attach(config)
        self.model = torch.compile(
            torch.nn.Sequential(
                torch.nn.Linear(256, 256), torch.nn.ReLU(), torch.nn.Linear(256, 1)
            ),
            backend="aot_eager",
        )
        self.x = torch.randn(64, 256)
        self.compiled = 0

    def steps(self, count: int) -> list[float]:
        times = []
        for _ in range(count):
            start = time.perf_counter()
            self.model(self.x).sum().backward()
            times.append(time.perf_counter() - start)
        return times

    def compiles(self, count: int) -> list[float]:
        import torch

        times = []
        for _ in range(count):
            self.compiled += 1
            fn = eval(f"lambda x: x * {self.compiled} + 1")
            start = time.perf_counter()
            torch.compile(fn, backend="aot_eager")(torch.ones(4))
            times.append(time.perf_counter() - start)
        return times

    def pending(self) -> int:
        import aotwatch.attachment.process

        return aotwatch.attachment.process.current().sink.pending()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=3)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--compiles", type=int, default=40)
    args = parser.parse_args()

    from aotwatch.cluster.head import ensure_head, stop_daemon

    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    push = PushConfig(batch_size=10, buffer_size=50)
    config = Config(
        job_name="stall-bench",
        archive=ArchiveConfig(path=tempfile.mkdtemp(prefix="aotwatch-bench-archive-")),
        cluster=ClusterConfig(namespace="aotwatch-stall-bench"),
        collector=CollectorConfig(address="127.0.0.1", port=0, head_port=0),
        push=push,
    )
    ensure_head(config)
    node_id = ray.get_runtime_context().get_node_id()
    collector = ray.get_actor(f"aotwatch-collector-{node_id}", namespace="aotwatch-stall-bench")
    collector_pid = ray.get(collector.__ray_call__.remote(lambda self: os.getpid()))
    trainer = Trainer.remote(config)
    ray.get(trainer.steps.remote(20))  # compile and warm up

    results: dict[str, dict[str, list[float]]] = {
        state: {"step": [], "compile": [], "pending": []} for state in ("up", "stopped")
    }
    try:
        for _ in range(args.blocks):
            for state in ("up", "stopped"):
                if state == "stopped":
                    os.kill(collector_pid, signal.SIGSTOP)
                try:
                    results[state]["compile"] += ray.get(trainer.compiles.remote(args.compiles))
                    results[state]["step"] += ray.get(trainer.steps.remote(args.steps))
                    results[state]["pending"].append(ray.get(trainer.pending.remote()))
                finally:
                    if state == "stopped":
                        os.kill(collector_pid, signal.SIGCONT)
                time.sleep(2)  # let the resumed collector catch up
        values = ray.get(collector.snapshot.remote(), timeout=60).values
    finally:
        stop_daemon(config)
        ray.shutdown()

    print(f"{os.cpu_count()} CPUs; push batch {push.batch_size}, buffer {push.buffer_size}")
    for state, result in results.items():
        print(
            f"collector {state:7}: step median {statistics.median(result['step']) * 1e3:.3f} ms "
            f"({len(result['step'])} steps), compile median "
            f"{statistics.median(result['compile']) * 1e3:.1f} ms, records waiting at most "
            f"{max(result['pending']):.0f}"
        )
    ratio = statistics.median(results["stopped"]["step"]) / statistics.median(results["up"]["step"])
    received = sum(values.get("aotwatch_records_received", {}).values())
    dropped = sum(values.get("aotwatch_records_dropped", {}).values())
    print(
        f"step time stopped/up: {ratio:.3f}; records received {received:.0f}, dropped "
        f"(counted) {dropped:.0f}"
    )


if __name__ == "__main__":
    main()
