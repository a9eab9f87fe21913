"""The driver side of ``aotwatch run``, ``serve`` and ``status``: connect, watch, report."""

from __future__ import annotations

import contextlib
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

import ray

from aotwatch.cluster.head import ensure_head, stop_daemon
from aotwatch.cluster.jobs import JobConfig, run_command, run_trainer
from aotwatch.cluster.paths import HEAD_NAME, archive_root, collector_name
from aotwatch.cluster.progress import Progress, RayLogFile
from aotwatch.cluster.workers import ClusterUnreachable, probe, runtime_env
from aotwatch.core.aggregate import Snapshot
from aotwatch.core.archive import private_directory
from aotwatch.core.config import Config
from aotwatch.core.job_archives import job_slug
from aotwatch.core.metrics import (
    BY_NAME,
    COMPILE_SECONDS,
    GRAPH_BREAKS,
    GRAPHS,
    IN_PROGRESS,
    RECOMPILES,
    WORKERS_ATTACHED,
    Family,
)
from aotwatch.core.wire import Status
from aotwatch.report import summary as report

PROGRESS_S = 2.0
TIMEOUT_S = 30.0


def connect(
    config: Config,
    job_runtime_env: dict[str, Any] | None = None,
    ray_log: RayLogFile | None = None,
) -> None:
    """Join the configured cluster, or start a local one when none is named; with
    ``ray_log`` (installed), the workers' lines go to its file. Raises ClusterUnreachable
    when the named cluster does not answer."""
    address = config.cluster.address
    if address is not None:
        probe(address)
    try:
        ray.init(
            address=address,
            include_dashboard=False,
            runtime_env=job_runtime_env,
            logging_level="WARNING",
            log_to_driver=True,
        )
    except ConnectionError as err:  # "auto" with no cluster running
        if address is None:
            raise
        raise ClusterUnreachable.at(address, err) from None
    if ray_log is not None:
        ray_log.hook_workers()


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


def merged_snapshot(config: Config, job_name: str | None = None, detail: bool = False) -> Snapshot:
    """Every collector's aggregate in one (label sets of different ranks do not overlap);
    with ``job_name``, that job's series and the families that have no job label; with
    ``detail``, that job's series per rank, rebuilt from the collectors' archives of it."""
    calls = [
        c.job_detail.remote(job_name) if detail else c.snapshot.remote()
        for c in collectors(config).values()
    ]
    snapshots = ray.get(calls, timeout=TIMEOUT_S)
    merged = Snapshot({}, {}, all(snapshot.per_rank for snapshot in snapshots))
    for snapshot in snapshots:
        for metric, table in snapshot.values.items():
            for labels, value in table.items():
                if _of_job(metric, labels, job_name, snapshot.per_rank):
                    target = merged.values.setdefault(metric, {})
                    target[labels] = target.get(labels, 0) + value
        for metric, table in snapshot.histograms.items():
            for labels, histogram in table.items():
                if _of_job(metric, labels, job_name, snapshot.per_rank):
                    merged.histograms.setdefault(metric, {})[labels] = histogram
    return merged


def _of_job(metric: str, labels: tuple[str, ...], job_name: str | None, per_rank: bool) -> bool:
    """Whether a series belongs in a snapshot of ``job_name`` (any series when None): one of
    that job, or of a family without a job label."""
    if job_name is None:
        return True
    return BY_NAME[metric].named(labels, per_rank).get("job_name", job_name) == job_name


def progress_counts(snapshot: Snapshot) -> tuple[int, int, str]:
    """Workers attached, AOT graphs captured, and the line of counts that shows them."""

    def total(family: Family) -> float:
        return sum(snapshot.values.get(family.name, {}).values())

    seconds = total(COMPILE_SECONDS)
    workers, graphs = int(total(WORKERS_ATTACHED)), int(total(GRAPHS))
    line = (
        f"workers attached {workers}, graphs captured {graphs}, compile {seconds:.1f} s, "
        f"recompiles {total(RECOMPILES):.0f}, graph breaks {total(GRAPH_BREAKS):.0f}"
    )
    return workers, graphs, line


COMPILING_HOLD_S = 10.0
"""A job is shown as compiling until this long after its last new graph (graphs arrive in
bursts: a frame's forward, its backward at the first backward pass)."""


def compiles_in_progress(snapshot: Snapshot, now: float) -> str:
    """The compile that most ranks are in (the longest running among as many), from the
    collectors' live notices: ``frame 0/0 on 2 ranks for 32 s``, and how many others; "" when
    no rank is compiling."""
    began: dict[str, dict[str, float]] = {}  # compile id -> rank -> when it began
    for labels, since in snapshot.values.get(IN_PROGRESS.name, {}).items():
        named = IN_PROGRESS.named(labels)
        began.setdefault(named["compile_id"], {})[named["rank"]] = since
    if not began:
        return ""
    compile_id, ranks = max(began.items(), key=lambda item: (len(item[1]), -min(item[1].values())))
    seconds = max(0.0, now - min(ranks.values()))
    text = f"frame {compile_id} on {_count(len(ranks), 'rank')} for {seconds:.0f} s"
    others = len(began) - 1
    return text + (f" (and {_count(others, 'other compile')})" if others else "")


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'s' * (n != 1)}"


def _stage(
    workers: int, expected: int | None, graphs: int, compiling: bool, in_progress: bool
) -> str:
    if in_progress:
        return "compiling"
    if workers == 0 or (expected and workers < expected):
        return f"waiting for {expected or 'the'} workers"
    if graphs == 0:
        return "running, no graph captured yet"
    return "compiling" if compiling else "training"


def run_with_progress(
    work: Any, config: Config, progress: Progress, workers: int | None = None
) -> tuple[Any, BaseException | None]:
    """Run ``work()`` in a thread, showing its stage and counts from the collectors."""
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["result"] = work()
        except BaseException as err:  # noqa: BLE001 - reported by the caller
            outcome["error"] = err

    thread = threading.Thread(target=target, name="aotwatch-job", daemon=True)
    thread.start()
    graphs_before, new_graph_at = 0, float("-inf")
    while thread.is_alive():
        thread.join(PROGRESS_S)
        try:
            snapshot = merged_snapshot(config, config.job_name)
        except Exception as err:  # noqa: BLE001 - progress is best effort
            progress.update(counts=f"progress unavailable: {err}")
            continue
        attached, graphs, counts = progress_counts(snapshot)
        in_progress = compiles_in_progress(snapshot, time.time())
        if graphs > graphs_before:
            graphs_before, new_graph_at = graphs, time.monotonic()
        compiling = time.monotonic() - new_graph_at < COMPILING_HOLD_S
        stage = _stage(attached, workers, graphs, compiling, bool(in_progress))
        progress.update(stage, counts, in_progress)
    return outcome.get("result"), outcome.get("error")


def head_handle(config: Config) -> Any:
    return ray.get_actor(HEAD_NAME, namespace=config.cluster.namespace)


def start(config: Config, job_runtime_env: bool = True, ray_log: RayLogFile | None = None) -> Any:
    """Connect (with aotwatch's runtime_env for this driver's job) and start the daemon."""
    connect(config, runtime_env(config) if job_runtime_env else None, ray_log)
    return ensure_head(config)


def ray_log_path(config: Config, name: str) -> Path:
    """Where a run's Ray and worker log lines go: the archive root's ``logs/``."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return private_directory(archive_root(config) / "logs") / f"{job_slug(name)}-{stamp}.log"


def targets(status: Status) -> list[str]:
    """The collectors' /metrics URLs in a head's ``status``."""
    return [c.endpoint.url() for c in status.collectors if c.endpoint is not None]


def quiet_ray(
    config: Config, name: str, verbose: bool, say: Any = print
) -> contextlib.AbstractContextManager[RayLogFile | None]:
    """Where Ray's log lines go while a command runs: a file from now on (before ``connect``:
    ``ray.init`` logs too), and its workers' once ``connect`` is handed it, ``say``ing where
    once; or, ``verbose``, the terminal as Ray prints them (None). The file is closed however
    the command ends, a failed ``connect`` included."""
    if verbose:
        return contextlib.nullcontext()
    ray_log = RayLogFile(ray_log_path(config, name))
    ray_log.install()
    say(f"aotwatch: Ray and worker logs -> {ray_log.path}")
    return ray_log


def run_job(job: JobConfig, linger: float = 0, verbose: bool = False) -> int:
    """``aotwatch run`` once its checks passed: start the daemon, run the job showing its
    stage and counts, print its report and where the metrics are, stop a local daemon. Ray's
    and the workers' log lines go to a file (``verbose``: to the terminal, as Ray prints
    them); a failure of the job is shown in full. The exit status."""
    config = job.config
    progress = Progress()
    progress.update("starting the cluster")
    with quiet_ray(config, job.name, verbose, progress.print) as ray_log:
        try:
            connect(config, runtime_env(config), ray_log)
            return _run_connected(job, linger, progress)
        finally:
            progress.close()


def _run_connected(job: JobConfig, linger: float, progress: Progress) -> int:
    config = job.config
    try:
        progress.update("placing collectors")
        head = ensure_head(config)
        status = ray.get(head.status.remote(), timeout=TIMEOUT_S)
        progress.print(f"aotwatch: job {job.name!r}; collectors: {', '.join(targets(status))}")
        if job.entrypoint:
            work = lambda: run_trainer(job)  # noqa: E731
        else:
            address = ray.get_runtime_context().gcs_address
            work = lambda: run_command(job, address, runtime_env(config))  # noqa: E731
        workers = job.workers if job.entrypoint else None
        result, error = run_with_progress(work, config, progress, workers)
        progress.update("collecting the last records")
        time.sleep(PROGRESS_S)  # the workers' last pushes
        findings = ray.get(head.check_divergences.remote(final=True), timeout=TIMEOUT_S)
        progress.close()
        _print_summary(job, config, head, findings)
        if linger:
            print(f"serving for {linger} s (Ctrl-C to stop)", flush=True)
            with contextlib.suppress(KeyboardInterrupt):
                time.sleep(linger)
        if error is not None:
            print("aotwatch: the job failed:", file=sys.stderr)
            traceback.print_exception(error, file=sys.stderr)
        failed = error is not None or (isinstance(result, int) and result != 0)
        return 1 if failed else 0
    finally:
        progress.close()
        if config.cluster.address is None:
            stop_daemon(config)
        ray.shutdown()


def _print_summary(job: JobConfig, config: Config, head: Any, findings: list) -> None:
    print()
    detail = merged_snapshot(config, job.name, detail=True)
    print(report.job_summary(job.name, detail, findings))
    status = ray.get(head.status.remote(), timeout=TIMEOUT_S)
    print(f"\nmetrics: {', '.join(targets(status))}")
    print(f"head (divergences): {status.head.url()}")
    print(f"Prometheus file_sd: {status.file_sd}")
    print(report.html_command(archive_root(config), "--job", job.name))
