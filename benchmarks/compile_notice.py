"""What telling the collector "this rank is compiling" costs: on the compiling thread, per
compile (Dynamo's start and end callbacks, as aotwatch wraps them), and per training step.

    python benchmarks/compile_notice.py [--calls 20000]

Local mode (the notice updates this process's /metrics) and cluster mode (a real collector
actor on a local Ray cluster: the notice is handed to the push thread, which sends it).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import uuid

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")


def per_call_us(calls: int) -> list[float]:
    """Microseconds per start + end notice pair, five rounds of ``calls`` each."""
    from torch._dynamo.callback import CallbackArgs, CallbackTrigger, callback_handler

    args = CallbackArgs(CallbackTrigger.DYNAMO, "0/0")
    rounds = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(calls):
            callback_handler.run_start_callbacks(args)
            callback_handler.run_end_callbacks(args)
        rounds.append((time.perf_counter() - start) / calls * 1e6)
    return rounds


def notices_per_step(steps: int) -> int:
    """Start notices during ``steps`` training steps of an already compiled model."""
    import torch

    import aotwatch.attachment.process

    session_calls = []
    sink = aotwatch.attachment.process.current().sink
    original = sink.compiling
    sink.compiling = lambda state: (session_calls.append(state), original(state))[1]
    model = torch.compile(torch.nn.Linear(16, 16), backend="aot_eager")
    x = torch.randn(4, 16)
    model(x).sum().backward()  # compiles: notices here
    session_calls.clear()
    for _ in range(steps):
        model(x).sum().backward()
    sink.compiling = original
    return len(session_calls)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20_000)
    args = parser.parse_args()
    import torch._dynamo  # noqa: F401

    import aotwatch
    from aotwatch.core.config import ArchiveConfig, Config, ExportConfig

    bare = per_call_us(args.calls)
    archive = tempfile.mkdtemp()
    aotwatch.attach(Config(export=ExportConfig(port=0), archive=ArchiveConfig(path=archive)))
    local = per_call_us(args.calls)
    steps = notices_per_step(1000)
    aotwatch.detach()

    import ray

    from aotwatch.cluster.head import ensure_head, stop_daemon
    from aotwatch.core.config import ClusterConfig, CollectorConfig

    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    config = Config(
        archive=ArchiveConfig(path=archive),
        cluster=ClusterConfig(namespace=f"bench-{uuid.uuid4().hex[:6]}"),
        collector=CollectorConfig(address="127.0.0.1", port=0, head_port=0),
    )
    ensure_head(config)
    aotwatch.attach(config)  # this driver joins: it pushes to its node's collector
    cluster = per_call_us(args.calls)
    aotwatch.detach()
    stop_daemon(config)
    ray.shutdown()

    print("| mode | µs per compile (start + end notice), 5 rounds | median |")
    print("| --- | --- | --- |")
    for mode, rounds in (("no aotwatch", bare), ("local mode", local), ("cluster", cluster)):
        text = ", ".join(f"{r:.2f}" for r in rounds)
        print(f"| {mode} | {text} | {statistics.median(rounds):.2f} |")
    print(f"\nnotices during 1,000 training steps after the compile: {steps}")


if __name__ == "__main__":
    main()
