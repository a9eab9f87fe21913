"""``aotwatch serve``'s lifecycle: start the daemon on a Ray cluster, print the head's status
until SIGINT/SIGTERM, then remove the collectors within a bound."""

from __future__ import annotations

import os
import signal
import sys
import threading
from typing import Any

import ray

from aotwatch.cluster import driver
from aotwatch.cluster.head import stop_daemon
from aotwatch.core.config import Config
from aotwatch.core.records import printable
from aotwatch.core.wire import Status, Worker
from aotwatch.report.summary import cost_lines


def print_status(status: Status) -> bool:
    """Print the head's status (``Head.status``): collectors, jobs, divergences, cost. False,
    with one line on stderr, for a head of another aotwatch version (it answers a dict)."""
    if not isinstance(status, Status):
        print(
            "aotwatch: the head on this cluster runs another version of aotwatch; restart the "
            "daemon (`aotwatch serve`) with this one",
            file=sys.stderr,
        )
        return False
    print("collectors:")
    for c in status.collectors:
        target = f"{c.endpoint.ip}:{c.endpoint.port}" if c.endpoint else "-"
        hostname = c.endpoint.hostname if c.endpoint else "?"
        health = "healthy" if c.healthy else "unreachable"
        print(printable(f"  node {c.node_id[:12]}  {hostname}  {target}  {health}"))
    jobs: dict[str, list[Worker]] = {}
    for c in status.collectors:
        for w in c.endpoint.workers if c.endpoint else []:
            jobs.setdefault(w.job_name, []).append(w)
    print("jobs:" if jobs else "jobs: none attached")
    for name, workers in sorted(jobs.items()):
        ranks = ",".join(str(w.rank) for w in sorted(workers, key=lambda w: str(w.rank)))
        print(printable(f"  {name}: {len(workers)} workers attached (ranks {ranks})"))
    print(f"divergences: {len(status.divergences) or 'none'}")
    for f in status.divergences:
        print(printable(f"  {f['job_name']} {f['kind']} at {f['compile_id']}: {f['groups']}"))
    if status.cost is not None:  # a head before issue 22 answers none
        known = status.cost
        redundant = {(job, scope): s for job, scope, s in known["redundant"]}
        twice = {job: tuple(counts) for job, counts in known["twice"].items()}
        print("\n".join(cost_lines(redundant, known["waits"], twice)))
    print(f"file_sd: {status.file_sd}")
    return True


SERVE_CLEANUP_TIMEOUT_S = 5.0
"""How long ``serve`` waits, once stopped, for its collectors to be removed and Ray to let go;
past it (a cluster that is gone or does not answer) it says so and exits 1 without waiting."""


def first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else repr(err)


def watch_status(head: object, interval: float, stop: threading.Event, where: str) -> None:
    """Print the head's status every ``interval`` seconds until ``stop``; say once when the
    cluster stops answering (and when it answers again) instead of failing."""
    answering = True
    while not stop.is_set():
        try:
            status = ray.get(head.status.remote(), timeout=driver.TIMEOUT_S)
        except Exception as err:  # noqa: BLE001 - a cluster that is gone or busy: keep waiting
            if answering and not stop.is_set():
                print(
                    f"aotwatch: the Ray cluster at {where} did not answer ({first_line(err)}); "
                    "still waiting, Ctrl-C stops",
                    file=sys.stderr,
                    flush=True,
                )
            answering = False
        else:
            if stop.is_set():
                break
            if not answering:
                print(f"aotwatch: the Ray cluster at {where} answers again", file=sys.stderr)
            answering = True
            print_status(status)
            sys.stdout.flush()
        stop.wait(interval)


def stop_serving(config: Config, watcher: threading.Thread, where: str) -> int:
    """Remove the collectors and leave Ray within SERVE_CLEANUP_TIMEOUT_S. Returns the exit
    status, or ends the process (os._exit: Ray's own atexit shutdown would block as long)."""
    failure: list[str] = []

    def cleanup() -> None:
        try:
            watcher.join()  # no status call in flight while Ray shuts down
            stop_daemon(config)
        except Exception as err:  # noqa: BLE001 - reported below
            failure.append(first_line(err))
        finally:
            ray.shutdown()

    thread = threading.Thread(target=cleanup, name="aotwatch-stop", daemon=True)
    thread.start()
    thread.join(SERVE_CLEANUP_TIMEOUT_S)
    if thread.is_alive():
        print(
            f"aotwatch: could not stop the collectors within {SERVE_CLEANUP_TIMEOUT_S:g} s: "
            f"the Ray cluster at {where} did not answer",
            file=sys.stderr,
        )
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(1)
    if failure:
        print(f"aotwatch: could not stop the collectors: {failure[0]}", file=sys.stderr)
        return 1
    return 0


def serve(config: Config, interval: float, verbose: bool) -> int:
    """Serve until SIGINT/SIGTERM, then remove the collectors: exit 0, or 1 with one line on
    stderr when they could not be removed (a cluster that is gone takes SERVE_CLEANUP_TIMEOUT_S
    at most). A cluster that stops answering meanwhile is reported once; serve keeps waiting
    (Ray itself ends a driver whose GCS stays unreachable, after its reconnect timeout)."""
    with driver.quiet_ray(config, "serve", verbose) as ray_log:
        head = driver.start(config, job_runtime_env=False, ray_log=ray_log)
        return _serve_connected(config, head, interval)


def _serve_connected(config: Config, head: Any, interval: float) -> int:
    where = ray.get_runtime_context().gcs_address or config.cluster.address
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    print(f"aotwatch: serving on the cluster at {config.cluster.address}; Ctrl-C stops", flush=True)
    watcher = threading.Thread(
        target=watch_status,
        args=(head, interval, stop, where),
        name="aotwatch-status",
        daemon=True,
    )
    watcher.start()
    try:
        while not stop.wait(1.0):  # the main thread never blocks on Ray: signals act at once
            pass
        print("aotwatch: stopping the collectors", flush=True)
    finally:
        stop.set()
        code = stop_serving(config, watcher, where)
    return code
