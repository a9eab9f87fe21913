"""The driver side of ``aotwatch run``, ``serve`` and ``status``: connect, watch, report."""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from typing import Any

import ray

from aotwatch import report
from aotwatch.aggregate import Snapshot
from aotwatch.cluster.attach import runtime_env
from aotwatch.cluster.collector import HEAD_NAME, collector_name
from aotwatch.cluster.head import ensure_head, stop_daemon
from aotwatch.config import Config
from aotwatch.jobs import JobConfig, run_command, run_trainer
from aotwatch.metrics import PER_JOB

PROGRESS_S = 2.0
TIMEOUT_S = 30.0


def connect(config: Config, job_runtime_env: dict[str, Any] | None = None) -> None:
    """Join the configured cluster, or start a local one when none is named."""
    ray.init(
        address=config.cluster.address,
        include_dashboard=False,
        runtime_env=job_runtime_env,
        logging_level="WARNING",
        log_to_driver=True,
    )


def collectors(config: Config) -> dict[str, Any]:
    """Node id -> collector handle, for every alive node that has one."""
    handles = {}
    for node in ray.nodes():
        if node["Alive"]:
            with contextlib.suppress(ValueError):  # a node the head has not reached yet
                handles[node["NodeID"]] = ray.get_actor(
                    collector_name(node["NodeID"]), namespace=config.cluster.namespace
                )
    return handles


def merged_snapshot(config: Config, job_name: str | None = None) -> Snapshot:
    """Every collector's aggregate in one (label sets of different ranks do not overlap);
    with ``job_name``, that job's series and the families that have no job label."""
    merged = Snapshot({}, {})
    snapshots = ray.get(
        [c.snapshot.remote() for c in collectors(config).values()], timeout=TIMEOUT_S
    )
    for snapshot in snapshots:
        for metric, table in snapshot.values.items():
            for labels, value in table.items():
                if job_name is None or labels[0] == job_name or metric not in PER_JOB:
                    target = merged.values.setdefault(metric, {})
                    target[labels] = target.get(labels, 0) + value
        for metric, table in snapshot.histograms.items():
            for labels, histogram in table.items():
                if job_name is None or labels[0] == job_name or metric not in PER_JOB:
                    merged.histograms.setdefault(metric, {})[labels] = histogram
    return merged


def progress_line(snapshot: Snapshot, started: float) -> str:
    def total(metric: str) -> float:
        return sum(snapshot.values.get(metric, {}).values())

    seconds = sum(
        h.sum
        for labels, h in snapshot.histograms.get("torch_compile_duration_seconds", {}).items()
        if labels[-1] in ("total", "backward")
    )
    return (
        f"[{time.monotonic() - started:5.0f} s]"
        f" workers attached {total('aotwatch_workers_attached'):.0f}"
        f", graphs captured {total('torch_compile_graphs'):.0f}"
        f", compile {seconds:.1f} s, recompiles {total('torch_compile_recompiles'):.0f}"
        f", graph breaks {total('torch_compile_graph_breaks'):.0f}"
    )


def run_with_progress(work: Any, config: Config) -> tuple[Any, BaseException | None]:
    """Run ``work()`` in a thread, printing progress from the collectors until it ends."""
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["result"] = work()
        except BaseException as err:  # noqa: BLE001 - reported by the caller
            outcome["error"] = err

    thread = threading.Thread(target=target, name="aotwatch-job", daemon=True)
    started = time.monotonic()
    thread.start()
    while thread.is_alive():
        thread.join(PROGRESS_S)
        try:
            print(progress_line(merged_snapshot(config, config.job_name), started), flush=True)
        except Exception as err:  # noqa: BLE001 - progress is best effort
            print(f"[progress unavailable: {err}]", file=sys.stderr)
    return outcome.get("result"), outcome.get("error")


def head_handle(config: Config) -> Any:
    return ray.get_actor(HEAD_NAME, namespace=config.cluster.namespace)


def start(config: Config, job_runtime_env: bool = True) -> Any:
    """Connect (with aotwatch's runtime_env for this driver's job) and start the daemon."""
    connect(config, runtime_env(config) if job_runtime_env else None)
    return ensure_head(config)


def targets(status: dict[str, Any]) -> list[str]:
    """The collectors' /metrics URLs in a head's ``status``."""
    return [
        f"{c.get('scheme', 'http')}://{c['ip']}:{c['port']}/metrics"
        for c in status["collectors"]
        if "port" in c
    ]


def run_job(job: JobConfig, linger: float = 0) -> int:
    """``aotwatch run`` once its checks passed: start the daemon, run the job with progress,
    print its report and where the metrics are, stop a local daemon. The exit status."""
    config = job.config
    head = start(config)
    try:
        status = ray.get(head.status.remote(), timeout=TIMEOUT_S)
        print(f"aotwatch: job {job.name!r}; collectors: {', '.join(targets(status))}")
        if job.entrypoint:
            work = lambda: run_trainer(job)  # noqa: E731
        else:
            address = ray.get_runtime_context().gcs_address
            work = lambda: run_command(job, address, runtime_env(config))  # noqa: E731
        result, error = run_with_progress(work, config)
        time.sleep(PROGRESS_S)  # the workers' last pushes
        findings = ray.get(head.check_divergences.remote(final=True), timeout=TIMEOUT_S)
        print()
        print(report.job_summary(job.name, merged_snapshot(config, job.name), findings))
        status = ray.get(head.status.remote(), timeout=TIMEOUT_S)
        head_endpoint = status["head"]
        print(f"\nmetrics: {', '.join(targets(status))}")
        print(
            f"head (divergences): {head_endpoint['scheme']}://{head_endpoint['ip']}:"
            f"{head_endpoint['port']}/metrics"
        )
        print(f"Prometheus file_sd: {status['file_sd']}")
        if linger:
            print(f"serving for {linger} s (Ctrl-C to stop)", flush=True)
            with contextlib.suppress(KeyboardInterrupt):
                time.sleep(linger)
        if error is not None:
            print(f"aotwatch: the job failed: {error}", file=sys.stderr)
        failed = error is not None or (isinstance(result, int) and result != 0)
        return 1 if failed else 0
    finally:
        if config.cluster.address is None:
            stop_daemon(config)
        ray.shutdown()
