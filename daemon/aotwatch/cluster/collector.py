"""The per-node collector: its workers' records in, an archive on disk, /metrics out.

One ``NodeCollector`` actor runs on every alive node (the head places them).
It persists every record it accepts before acknowledging it, and when Ray
restarts it, it rebuilds its aggregate from that archive before it reports
ready, so a collector killed mid-job loses nothing and counts nothing twice.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from aotwatch import cost, divergence
from aotwatch.aggregate import Aggregate, Snapshot
from aotwatch.archive import (
    ARCHIVE_FILE,
    UnsafePath,
    open_private,
    private_directory,
    read_lines,
    read_records,
    set_aside,
)
from aotwatch.cluster.job_archives import JobArchives
from aotwatch.cluster.job_life import JobLife
from aotwatch.cluster.worker_counts import CountsLedger
from aotwatch.config import Config
from aotwatch.digest import ChangeLog
from aotwatch.export.collector import AggregateCollector, registry_for
from aotwatch.export.server import serve_metrics
from aotwatch.liveness import Liveness
from aotwatch.lru import LruCache
from aotwatch.records import (
    MAX_ID,
    MAX_NUMBER,
    Record,
    RecordError,
    label_value_problem,
    parse_json,
)
from aotwatch.sink import LocalSink

log = logging.getLogger(__name__)

HEAD_NAME = "aotwatch-head"
SPOOL_DIR = "spool"
SPOOL_SUFFIX = ".jsonl"
PARTIAL_SUFFIX = ".partial"
"""A spool file being written (``.<worker id>.partial``), renamed once whole."""
SPOOL_BATCH = 500
"""Spooled records taken in per archive write."""
PRUNE_S = 10.0
"""How often finished jobs' archives are checked against the retention limits."""
REFUSED_WORKERS = 10_000
"""Ids of refused workers remembered, so each is logged and counted once."""
HOUSEKEEPING_S = 2.0
"""How often a collector looks for spooled files and advances the life of its jobs."""


def collector_name(node_id: str) -> str:
    """The Ray actor name of a node's collector."""
    return f"aotwatch-collector-{node_id}"


def archive_root(config: Config) -> Path:
    """Where collectors keep their archives and the head its file_sd file."""
    return Path(config.archive.path or os.path.join(tempfile.gettempdir(), "aotwatch"))


def collector_directory(config: Config, node_id: str) -> Path:
    """A node's collector directory: its archive, its counts and the workers' spool.

    The root is private to this user (0711: Prometheus, as another user, may read file_sd
    in it by name); everything below it is 0700. UnsafePath when someone else controls it.
    """
    collectors = private_directory(archive_root(config), 0o711) / "collectors"
    return private_directory(private_directory(collectors) / node_id)


def spool_directory(config: Config, node_id: str) -> Path:
    """Where a worker leaves, at exit, what its collector did not acknowledge in time."""
    return private_directory(collector_directory(config, node_id) / SPOOL_DIR)


WORKER_FIELDS = {
    "worker_id": str,
    "job_name": str,
    "rank": int,
    "world_size": int,
    "node_id": str,
    "hostname": str,
    "pid": int,
    "compiling": dict,
}
"""What a worker announces with every push (cluster.push), and the types of each."""
REQUIRED_WORKER_FIELDS = ("worker_id", "job_name", "rank")


def worker_problem(worker: Any) -> str | None:
    """Why ``worker`` is not a worker announcement, or None."""
    if type(worker) is not dict or not worker.keys() <= WORKER_FIELDS.keys():
        return f"expected a mapping with keys among {', '.join(WORKER_FIELDS)}"
    for key, kind in WORKER_FIELDS.items():
        value = worker.get(key)
        if value is None and key not in REQUIRED_WORKER_FIELDS:
            continue
        if type(value) is not kind:
            return f"{key} is {type(value).__name__}"
        if kind is int and not 0 <= value <= MAX_NUMBER:
            return f"{key} is out of range"
        if kind is str and not 0 < len(value) <= MAX_ID:
            return f"{key} must have 1..{MAX_ID} characters"
    return label_value_problem(worker["job_name"])


MAX_COMPILE_S = 7 * 86_400.0
"""The longest a compile may say it has run: beyond it, a broken clock or a forged value."""


def compiling_problem(state: dict[str, Any]) -> str | None:
    """Why a worker's ``compiling`` (compile_id, elapsed_s, device) cannot be shown, or None.
    ``elapsed_s`` is how long the compile has run on the worker's monotonic clock: a
    worker's wall-clock ``since`` is refused (see ``on_this_clock``)."""
    if state.keys() != {"compile_id", "elapsed_s", "device"}:
        return "expected compile_id, elapsed_s and device"
    compile_id, elapsed, device = state["compile_id"], state["elapsed_s"], state["device"]
    if type(compile_id) is not str or not 0 < len(compile_id) <= MAX_ID:
        return "compile_id is not a short string"
    if type(elapsed) not in (int, float) or not 0 <= elapsed <= MAX_COMPILE_S:
        return f"elapsed_s is not 0..{MAX_COMPILE_S:.0f} s"
    if type(device) is not str:
        return "device is not a string"
    return label_value_problem(compile_id) or label_value_problem(device)


def on_this_clock(worker: dict[str, Any]) -> dict[str, Any]:
    """``worker`` with its compile's start on this collector's clocks, from the time the worker
    says it has run: ``since`` (wall clock, the in-progress gauge) and ``began`` (monotonic,
    the head's straggler wait). Worker clocks that disagree with this one change nothing; a
    notice ``compiling_problem`` refuses is dropped, not the worker's batch."""
    state = worker.get("compiling")
    if state is None:
        return worker
    problem = compiling_problem(state)
    if problem:  # an older worker's wall-clock ``since``, a broken clock: its records still count
        log.debug(
            "aotwatch: ignored a compile notice of worker %s: %s", worker["worker_id"], problem
        )
        return {**worker, "compiling": None}
    elapsed = state["elapsed_s"]
    since, began = time.time() - elapsed, time.monotonic() - elapsed
    clocked = {"compile_id": state["compile_id"], "device": state["device"]}
    return {**worker, "compiling": {**clocked, "since": since, "began": began}}


class NodeCollector:
    """Aggregates the records of one node's workers (a Ray actor: see ``cluster.placement``)."""

    def __init__(self, node_id: str, config: Config) -> None:
        self.node_id = node_id
        self.config = config
        self._ready = False
        self._closed = threading.Event()
        self._lock = threading.Lock()  # the attached workers and the life of jobs
        self._accept_lock = threading.Lock()  # pushes, the spool thread and the head's reads
        limits = config.limits
        self.sink = LocalSink(
            limits.max_series_per_metric, strict=True, per_rank=limits.per_rank_detail
        )
        self.liveness = Liveness(
            config.collector.worker_timeout_s,
            limits.max_workers_per_job,
            limits.max_series_per_metric,
            max_workers=limits.max_workers_per_collector,
            max_compiling=limits.max_series_per_metric,
            refuse=self.sink.refuse,
        )
        self._refused_workers = LruCache(REFUSED_WORKERS)  # ids of workers refused, told once
        self.jobs = JobLife(config.collector.worker_timeout_s, config.collector.job_retention_s)
        directory = collector_directory(config, node_id)
        self._changes = ChangeLog()  # the fingerprints, and what changed for the head
        self._work: cost.Work = {}  # job -> the compile seconds of graphs compiled here
        self._restore(directory)
        self.spool = spool_directory(config, node_id)
        self.drain_spool()
        self.server = serve_metrics(
            registry_for(AggregateCollector(self.snapshot, config.labels)),
            config.collector.address,
            config.collector.port,
            lambda: self._ready,
            web_config=config.collector.web_config,
            limits=config.limits,
        )
        self.hostname = socket.gethostname()
        self._ready = True
        threading.Thread(
            target=self._housekeeping, name="aotwatch-housekeeping", daemon=True
        ).start()
        log.info(
            "collector %s: %d records replayed, serving %s", node_id, self.replayed, self.server.url
        )

    def _restore(self, directory: Path) -> None:
        """Replay the live jobs' archives and the workers' totals, then archive from here."""
        self.archives = JobArchives(directory)
        live, finished = self.archives.survey()
        legacy = directory / ARCHIVE_FILE  # the one file of collectors before per-job archives
        legacy_found = os.path.lexists(legacy)
        self.replayed = sum(self._replay(path) for path in [legacy] * legacy_found + live)
        self.sink.archive = self.archives
        self.counts = CountsLedger(directory, self.sink, skip=finished)
        self._pruned_at = 0.0

    def _replay(self, path: Path) -> int:
        count = 0
        try:
            for item in read_records(path, private=True):
                if isinstance(item, RecordError):  # a torn, corrupt or hostile line: skipped
                    self.sink.inc("aotwatch_records_rejected", (item.reason,))
                elif self.sink.aggregate.add(item):
                    self._observe(item)
                    self.jobs.known(item.job_name)
                    count += 1
        except UnsafePath as problem:  # raised at the open: not one line of it was read
            self._unsafe(path, problem)
        return count

    def _unsafe(self, path: Path, problem: UnsafePath) -> None:
        """Skip a file that is not aotwatch's own (see ``archive.open_private``): counted,
        logged once, moved out of the way of the next start and of the next write."""
        self.sink.inc("aotwatch_records_rejected", ("unsafe_file",))
        set_aside(path, problem)

    # -- called by workers (cluster.push) ------------------------------------------------

    def push(self, worker: Any, records: bytes | list[Any], counts: Any) -> int:
        """Accept a batch (JSON lines, as ``cluster.push`` sends them, or record dicts) and
        the worker's running drop and capture-error totals, both persisted before this
        returns; OSError (the worker keeps the batch and sends it again) when they cannot
        be. A batch from a malformed worker is rejected whole."""
        problem = worker_problem(worker)
        if problem is not None:
            log.debug("aotwatch: refused a batch: worker %s", problem)
            size = records.count(b"\n") if isinstance(records, bytes) else len(records)
            self.sink.inc("aotwatch_records_rejected", ("bad_worker",), size)
            return 0
        self._seen(on_this_clock(worker))
        return self._accept(worker, records, counts)

    def _accept(self, worker: dict[str, Any], records: bytes | list[Any], counts: Any) -> int:
        with self._accept_lock:
            accepted = self.sink.record_batch(records)
            for record in accepted:
                self._observe(record)
            for job_name in {record.job_name for record in accepted}:
                with self._lock:
                    finished = self.jobs.known(job_name)
                if finished:  # it ends again, and its archive is marked again when it finishes
                    self.sink.finish_job(job_name, finished=False)
            if counts:
                self.counts.add(worker["worker_id"], worker["job_name"], counts)
            return len(accepted)

    def _observe(self, record: Record) -> None:
        self._changes.observe(record)
        fingerprints = self._changes.fingerprints
        cost.fold(self._work, record, fingerprints, self.config.collector.max_cost_graphs)

    def goodbye(self, worker: Any) -> None:
        """A worker is exiting: its gauges go now rather than at its timeout."""
        if worker_problem(worker) is None:
            with self._lock:
                self._forget(worker["worker_id"])

    def _seen(self, worker: dict[str, Any]) -> None:
        """Note the worker alive; at most ``limits.max_workers_per_job`` per job,
        ``limits.max_series_per_metric`` jobs and ``limits.max_workers_per_collector`` in all
        are tracked. A worker refused is logged and counted once (by id, within
        REFUSED_WORKERS); its records are still accepted."""
        with self._lock:
            reason = self.liveness.admit(worker)
            if reason is None:
                if self.jobs.running(worker["job_name"]):
                    self.sink.finish_job(worker["job_name"], finished=False)
            elif self._refused_workers.get(worker["worker_id"]) is None:
                self._refused_workers.put(worker["worker_id"], reason)
                log.warning(
                    "aotwatch: worker %s of job %s not tracked: %s reached",
                    worker["worker_id"],
                    worker["job_name"],
                    reason,
                )
                self.sink.inc("aotwatch_workers_refused", (reason,))

    def _forget(self, worker_id: str) -> None:
        """Stop tracking a worker (lock held)."""
        job = self.liveness.leave(worker_id)
        if job is not None:
            self.jobs.idle(job)

    def _live_workers(self) -> list[dict[str, Any]]:
        with self._lock:
            for job in self.liveness.expire():
                self.jobs.idle(job)
            return self.liveness.workers()

    # -- the spool: what workers could not deliver before they exited --------------------

    def drain_spool(self) -> int:
        """Accept every spooled file (see ``cluster.push``) and delete it; one that cannot be
        archived now stays for the next round; one that is not aotwatch's own is skipped
        (``_unsafe``). Then remove what workers killed while spooling left. Returns the
        records accepted."""
        accepted = 0
        for path in sorted(self.spool.glob(f"*{SPOOL_SUFFIX}")):
            try:
                accepted += self._drain_file(path)
            except OSError:
                log.warning("aotwatch: cannot take in %s yet", path, exc_info=True)
        self._remove_abandoned()
        return accepted

    def _drain_file(self, path: Path) -> int:
        try:
            lines = read_lines(path, private=True)
        except UnsafePath as problem:
            self._unsafe(path, problem)
            return 0
        accepted = self._take_in(lines)
        path.unlink()
        return accepted

    def _take_in(self, lines: Iterator[bytes | RecordError]) -> int:
        first = next(lines, None)
        try:
            header = parse_json(first) if isinstance(first, bytes) else None
        except RecordError:
            header = None
        worker = header.get("worker") if isinstance(header, dict) else None
        if worker_problem(worker) is not None:
            self.sink.inc("aotwatch_records_rejected", ("bad_worker",), 1 + sum(1 for _ in lines))
            return 0
        accepted, batch = 0, []
        for line in lines:
            if isinstance(line, RecordError):
                self.sink.inc("aotwatch_records_rejected", (line.reason,))
                continue
            batch.append(line)
            if len(batch) == SPOOL_BATCH:
                accepted += self._accept(worker, b"".join(batch), None)
                batch = []
        return accepted + self._accept(worker, b"".join(batch), header.get("counts"))

    def _remove_abandoned(self) -> None:
        """Remove the partial spool files of workers that died writing them: a live writer
        holds a lock on its file (see ``cluster.push.write_spool``)."""
        for path in self.spool.glob(f".*{PARTIAL_SUFFIX}"):
            try:
                fd = open_private(path, os.O_RDONLY)
            except OSError:  # renamed into place meanwhile, or not aotwatch's: left alone
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # BlockingIOError: it lives
                path.unlink()
                log.info("aotwatch: removed %s, left by a worker that died writing it", path)
            except OSError:
                pass
            finally:
                os.close(fd)

    # -- housekeeping: the spool and the life of jobs ----------------------------------

    def _housekeeping(self) -> None:
        while not self._closed.wait(HOUSEKEEPING_S):
            try:
                self.drain_spool()
                self.advance_jobs()
            except Exception:  # noqa: BLE001 - keep going; the next round retries
                log.warning("aotwatch: housekeeping failed", exc_info=True)

    def advance_jobs(self) -> tuple[list[str], list[str]]:
        """Expire silent workers, then finish ended jobs and forget those past their
        retention: (finished, forgotten)."""
        self._live_workers()
        with self._lock:
            finished, forgotten = self.jobs.due()
        for job_name in finished:
            self.sink.finish_job(job_name)
            with self._accept_lock:
                self.archives.finish(job_name)
        if forgotten:
            with self._accept_lock:
                for job_name in forgotten:
                    self.sink.forget_job(job_name)
                    self._changes.forget(job_name)
                    self._work.pop(job_name, None)
            log.info("aotwatch: forgot finished jobs %s", ", ".join(forgotten))
        if time.monotonic() - self._pruned_at >= PRUNE_S:
            self._pruned_at = time.monotonic()
            archive = self.config.archive
            with self._accept_lock:
                self.archives.prune(archive.retention_days, archive.max_bytes)
        return finished, forgotten

    # -- exported state ------------------------------------------------------------------

    def snapshot(self) -> Snapshot:
        """The aggregate as it is now (see ``liveness``)."""
        snapshot = self.sink.snapshot()
        self._live_workers()
        with self._lock:
            return self.liveness.apply(snapshot)

    def job_detail(self, job_name: str) -> Snapshot:
        """A job's series per rank, rebuilt from this node's archive of it: what ``aotwatch
        run`` prints at the end, whatever ``limits.per_rank_detail`` says."""
        aggregate = Aggregate(self.config.limits.max_series_per_metric)
        path = self.archives.archive_file(job_name)
        with self._accept_lock, contextlib.suppress(FileNotFoundError, UnsafePath):
            for item in read_records(path, private=True):
                if not isinstance(item, RecordError):
                    aggregate.add(item)
        return aggregate.snapshot()

    def endpoint(self) -> dict[str, Any]:
        """What file_sd and ``aotwatch status`` need to know about this collector."""
        return {
            "node_id": self.node_id,
            "hostname": self.hostname,
            "ip": scrape_host(self.config.collector.address),
            "port": self.server.port,
            "scheme": "https" if self.server.tls else "http",
            "ready": self._ready,
            "replayed": self.replayed,
            "workers": self._live_workers(),
        }

    def close(self) -> None:
        """Stop serving and close the files (Ray kills the actor instead; tests call this)."""
        self._closed.set()
        self.server.close()
        self.sink.close()
        self.counts.close()

    def fingerprints_since(self, epoch: str | None, versions: dict[str, int]) -> dict[str, Any]:
        """What the head lacks (see ``digest.Digest``): this instance's epoch, every job's
        version, the jobs it lacks whole and the entries changed since its versions of the
        others (``digest.ChangeLog.since``); ``work``: the ``cost.Work`` of those jobs;
        ``live``: the ranks attached and compiling now."""
        with self._accept_lock:
            jobs, deltas = self._changes.since(epoch, versions)
            return {
                "epoch": self._changes.epoch,
                "versions": dict(self._changes.versions),
                "jobs": jobs,
                "deltas": deltas,
                "work": {
                    job: {key: list(entry) for key, entry in self._work.get(job, {}).items()}
                    for job in [*jobs, *deltas]
                },
                "live": self._live(),
            }

    def _live(self) -> divergence.Live:
        """The ranks attached now per job, and those compiling (for how long, what)."""
        live: divergence.Live = {"attached": {}, "compiling": {}}
        with self._lock:
            for worker in self.liveness.workers():
                job, rank = worker["job_name"], str(worker["rank"])
                live["attached"].setdefault(job, []).append(rank)
                if state := worker.get("compiling"):
                    elapsed = time.monotonic() - state["began"]
                    running = {"compile_id": state["compile_id"], "for_s": elapsed}
                    live["compiling"].setdefault(job, {})[rank] = running
        return live


def scrape_host(bind_address: str) -> str:
    """Where Prometheus reaches an endpoint bound to ``bind_address``: that address, or the
    node's IP for a wildcard bind."""
    if bind_address not in ("0.0.0.0", "::"):
        return bind_address
    import ray

    return ray.util.get_node_ip_address()
