"""Pieces shared by the Ray tests: a config for tests, a worker actor, a started daemon,
reading collectors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import ray

from aotwatch.core.config import (
    ArchiveConfig,
    ClusterConfig,
    CollectorConfig,
    Config,
    PushConfig,
)
from aotwatch.core.records import encode_record

TESTS = Path(__file__).parent
WORKER_ENV = {
    "env_vars": {"PYTHONPATH": os.pathsep.join([str(TESTS), str(TESTS.parent / "daemon")])}
}
"""Ray workers import the test helpers, and aotwatch from this tree (not an installed copy)."""


def lines(records: list[dict]) -> bytes:
    """Records as the JSON lines a worker sends and spools."""
    return b"".join(encode_record(record) for record in records)


def cluster_config(tmp_path: Path, namespace: str, **changes) -> Config:
    """Collectors on free loopback ports, archives in ``tmp_path``, quick timeouts."""
    return Config(
        job_name=changes.pop("job_name", "ray-test"),
        archive=ArchiveConfig(path=str(tmp_path / "archive")),
        cluster=ClusterConfig(namespace=namespace),
        collector=changes.pop(
            "collector",
            CollectorConfig(address="127.0.0.1", port=0, head_port=0, worker_timeout_s=3),
        ),
        push=changes.pop("push", PushConfig(flush_interval_ms=50)),
        **changes,
    )


LOOPBACK_COLLECTOR = CollectorConfig(address="127.0.0.1", port=0, head_port=0)
NODE = "node-under-test"
"""The node id of collectors built in the test process (without Ray)."""


def config_at(root: Path, **changes) -> Config:
    """A collector's config on loopback, free ports, archives under ``root``."""
    return Config(
        archive=ArchiveConfig(path=str(root)),
        collector=changes.pop("collector", LOOPBACK_COLLECTOR),
        **changes,
    )


@ray.remote(num_cpus=0)
class Worker:
    """A training worker: compiles test programs, optionally with aotwatch attached."""

    def attach(self, config: Config) -> int:
        import os

        import aotwatch

        aotwatch.attach(config)
        return os.getpid()

    def run(self, *names: str, backend: str = "aot_eager") -> None:
        import torch

        import programs

        for name in names:
            programs.PROGRAMS[name](backend, "cpu")
            torch._dynamo.reset()

    def compile_fn(self, source: str) -> None:
        """Compile and run ``lambda x: <source>`` once (graphs that differ between ranks)."""
        import torch

        torch.compile(eval(f"lambda x: {source}"), backend="aot_eager")(torch.ones(3))

    def compile_slowly(self, seconds: float, source: str = "x * 2") -> None:
        """Compile ``lambda x: <source>`` with a backend that first sleeps ``seconds``: a
        rank whose compile is slow (a cold cache, a recompile on this rank alone)."""
        import time

        import torch

        def slow_backend(gm, example_inputs):
            time.sleep(seconds)
            return gm.forward

        torch.compile(eval(f"lambda x: {source}"), backend=slow_backend)(torch.ones(3))

    def compile_many(self, count: int, start: int = 0) -> None:
        """Compile ``count`` distinct small functions (two records each, frame and graph)."""
        import torch

        for index in range(start, start + count):
            torch.compile(eval(f"lambda x: x * {index} + 1"), backend="aot_eager")(torch.ones(3))

    def compile_with_breaks(self, breaks: int) -> None:
        """One function with ``breaks`` graph breaks: ``breaks + 1`` frames compiled in turn."""
        import torch

        step = "    x = torch.sin(x) + 1\n    torch._dynamo.graph_break()\n"
        namespace = {"torch": torch}  # unrolled: Dynamo skips a frame that breaks in a loop
        exec("def fn(x):\n" + step * breaks + "    return x\n", namespace)
        torch.compile(namespace["fn"], backend="aot_eager")(torch.ones(8))

    def train(self, steps: int) -> int:
        """Steps of an already compiled model (no compile): what training does between compiles."""
        import torch

        model = torch.compile(torch.nn.Linear(16, 16), backend="aot_eager")
        x = torch.randn(4, 16)
        for _ in range(steps):
            model(x).sum().backward()
        return steps

    def join_gloo(self, address: str, rank: int, world_size: int) -> None:
        """Join a gloo process group (CPU collectives), every collective bounded by 60 s."""
        import datetime

        import torch.distributed as dist

        timeout = datetime.timedelta(seconds=60)
        dist.init_process_group(
            "gloo", init_method=address, rank=rank, world_size=world_size, timeout=timeout
        )

    def all_reduce(self) -> float:
        """One all_reduce over the process group: returns when every rank has reached it."""
        import torch
        import torch.distributed as dist

        total = torch.ones(1)
        dist.all_reduce(total)
        return float(total)

    def shift_clock(self, seconds: float) -> None:
        """This process's wall clock runs ``seconds`` ahead (behind, if negative) of the
        machine's, as on a node whose clock is off; its monotonic clock is untouched."""
        import time

        machine = time.time
        time.time = lambda: machine() + seconds

    def pid(self) -> int:
        import os

        return os.getpid()

    def state(self) -> dict:
        import sys

        import aotwatch.attachment.process

        attachment = aotwatch.attachment.process.current()
        sink = attachment.sink if attachment else None
        return {
            "attached": attachment is not None,
            "dynamo_imported": "torch._dynamo" in sys.modules,
            "pending": sink.pending() if sink else None,
            "captured": getattr(sink, "captured", None),
        }

    def flush(self) -> bool:
        import aotwatch.attachment.process

        return aotwatch.attachment.process.current().sink.flush(timeout=30)

    def detach(self) -> None:
        import aotwatch

        aotwatch.detach()


def ranked_worker(rank: int, world_size: int = 2):
    """A Worker whose process has RANK and WORLD_SIZE set, as a launcher would."""
    env = {**WORKER_ENV["env_vars"], "RANK": str(rank), "WORLD_SIZE": str(world_size)}
    return Worker.options(runtime_env={"env_vars": env}).remote()


def actor_pid(handle) -> int:
    """The process id of any actor, whatever its class."""
    return ray.get(handle.__ray_call__.remote(lambda self: __import__("os").getpid()), timeout=30)


def collector_values(handle, metric: str) -> dict:
    """One metric's values (label tuple -> value) from a collector actor's snapshot."""
    return ray.get(handle.snapshot.remote(), timeout=30).values.get(metric, {})


def total(handle, metric: str) -> float:
    return sum(collector_values(handle, metric).values())


def start_daemon(tmp_path: Path, prefix: str, **changes) -> tuple[Config, object, str]:
    """A head and this node's collector in a namespace of their own: (config, collector
    handle, node id)."""
    from aotwatch.cluster.head import ensure_head
    from aotwatch.cluster.paths import collector_name

    config = cluster_config(tmp_path, namespace=f"{prefix}-{uuid.uuid4().hex[:8]}", **changes)
    ensure_head(config)
    node_id = ray.get_runtime_context().get_node_id()
    collector = ray.get_actor(collector_name(node_id), namespace=config.cluster.namespace)
    return config, collector, node_id


def collector_pid(collector) -> int:
    """The collector's process id, once it answers (it may be restarting)."""
    from helpers import wait_for

    def pid():
        try:
            return actor_pid(collector)
        except ray.exceptions.RayActorError:
            return None

    return wait_for(pid, timeout=60, message="the collector to answer")


def start_serve(config_path: Path) -> subprocess.Popen:
    """``aotwatch serve`` on this process's Ray cluster with the config at ``config_path``,
    returned once it reports a healthy collector (output merged into ``stdout``)."""
    serve = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "aotwatch.cli",
            "serve",
            "--config",
            str(config_path),
            "--address",
            ray.get_runtime_context().gcs_address,
            "--interval",
            "1",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    while "healthy" not in "".join(lines):
        line = serve.stdout.readline()
        if not line:
            serve.kill()
            raise AssertionError("aotwatch serve ended:\n" + "".join(lines))
        lines.append(line)
    return serve


def read_file_sd(path: Path) -> list[dict]:
    return json.loads(path.read_text())


def collector_targets(path: Path) -> dict[str, str]:
    """Node id -> host:port of every collector that file_sd lists."""
    return {
        group["labels"]["node_id"]: group["targets"][0]
        for group in read_file_sd(path)
        if group["labels"]["role"] == "collector"
    }
