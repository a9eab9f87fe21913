"""The per-node collector: its workers' records in, an archive on disk, /metrics out.

One ``NodeCollector`` actor runs on every alive node (the head places them).
It persists every record it accepts before acknowledging it, and when Ray
restarts it, it rebuilds its aggregate from that archive before it reports
ready, so a collector killed mid-job loses nothing and counts nothing twice.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from aotwatch.cluster.job_life import JobLife
from aotwatch.cluster.paths import collector_directory, spool_directory
from aotwatch.cluster.spool import read_spool, remove_abandoned, spooled
from aotwatch.cluster.worker_counts import CountsLedger
from aotwatch.core import cost
from aotwatch.core.aggregate import Aggregate, Snapshot
from aotwatch.core.archive import (
    ARCHIVE_FILE,
    UnsafePath,
    read_records,
    set_aside,
)
from aotwatch.core.config import Config
from aotwatch.core.digest import ChangeLog
from aotwatch.core.job_archives import JobArchives
from aotwatch.core.liveness import Attached, Liveness
from aotwatch.core.lru import LruCache
from aotwatch.core.metrics import RECORDS_REJECTED, WORKERS_REFUSED
from aotwatch.core.records import Record, RecordError
from aotwatch.core.sink import RecordSink
from aotwatch.core.wire import (
    Answer,
    CompileNotice,
    Compiling,
    Endpoint,
    Live,
    Running,
    SpoolHeader,
    WireError,
    Worker,
    decode,
)
from aotwatch.export.collector import AggregateCollector, registry_for
from aotwatch.export.server import serve_metrics

log = logging.getLogger(__name__)

SPOOL_BATCH = 500
"""Spooled records taken in per archive write."""
PRUNE_S = 10.0
"""How often finished jobs' archives are checked against the retention limits."""
REFUSED_WORKERS = 10_000
"""Ids of refused workers remembered, so each is logged and counted once."""
HOUSEKEEPING_S = 2.0
"""How often a collector looks for spooled files and advances the life of its jobs."""


def on_this_clock(worker: Worker) -> Compiling | None:
    """The compile ``worker`` says it is in, begun on this collector's clocks by the time the
    worker says it has run (worker clocks that disagree with this one change nothing); None
    when it is in none, or when its notice is refused (dropped, not the worker's batch)."""
    if worker.compiling is None:
        return None
    try:
        notice = decode(CompileNotice, worker.compiling)
    except WireError as problem:  # an older worker's wall-clock ``since``, a broken clock
        log.debug("aotwatch: ignored a compile notice of worker %s: %s", worker.worker_id, problem)
        return None
    elapsed = notice.elapsed_s
    since, began = time.time() - elapsed, time.monotonic() - elapsed
    return Compiling(notice.compile_id, notice.device, since, began)


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
        self.sink = RecordSink(
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
                    self.sink.inc(RECORDS_REJECTED, reason=item.reason)
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
        self.sink.inc(RECORDS_REJECTED, reason="unsafe_file")
        set_aside(path, problem)

    # -- called by workers (cluster.push) ------------------------------------------------

    def push(self, worker: Any, records: bytes | list[Any], counts: Any) -> int:
        """Accept a batch (JSON lines, as ``cluster.push`` sends them, or record dicts) and
        the worker's running drop and capture-error totals, both persisted before this
        returns; OSError (the worker keeps the batch and sends it again) when they cannot
        be. A batch from a malformed worker (see ``wire.Worker``) is rejected whole."""
        try:
            announced = decode(Worker, worker)
        except WireError as problem:
            log.debug("aotwatch: refused a batch: worker %s", problem)
            size = records.count(b"\n") if isinstance(records, bytes) else len(records)
            self.sink.inc(RECORDS_REJECTED, size, reason="bad_worker")
            return 0
        self._seen(announced)
        return self._accept(announced, records, counts)

    def _accept(self, worker: Worker, records: bytes | list[Any], counts: Any) -> int:
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
                self.counts.add(worker.worker_id, worker.job_name, counts)
            return len(accepted)

    def _observe(self, record: Record) -> None:
        self._changes.observe(record)
        fingerprints = self._changes.fingerprints
        cost.fold(self._work, record, fingerprints, self.config.collector.max_cost_graphs)

    def goodbye(self, worker: Any) -> None:
        """A worker is exiting: its gauges go now rather than at its timeout."""
        with contextlib.suppress(WireError), self._lock:
            self._forget(decode(Worker, worker).worker_id)

    def _seen(self, worker: Worker) -> None:
        """Note the worker alive; at most ``limits.max_workers_per_job`` per job,
        ``limits.max_series_per_metric`` jobs and ``limits.max_workers_per_collector`` in all
        are tracked. A worker refused is logged and counted once (by id, within
        REFUSED_WORKERS); its records are still accepted."""
        with self._lock:
            reason = self.liveness.admit(worker, on_this_clock(worker))
            if reason is None:
                if self.jobs.running(worker.job_name):
                    self.sink.finish_job(worker.job_name, finished=False)
            elif self._refused_workers.get(worker.worker_id) is None:
                self._refused_workers.put(worker.worker_id, reason)
                log.warning(
                    "aotwatch: worker %s of job %s not tracked: %s reached",
                    worker.worker_id,
                    worker.job_name,
                    reason,
                )
                self.sink.inc(WORKERS_REFUSED, reason=reason)

    def _forget(self, worker_id: str) -> None:
        """Stop tracking a worker (lock held)."""
        job = self.liveness.leave(worker_id)
        if job is not None:
            self.jobs.idle(job)

    def _live_workers(self) -> list[Attached]:
        with self._lock:
            for job in self.liveness.expire():
                self.jobs.idle(job)
            return self.liveness.workers()

    # -- the spool: what workers could not deliver before they exited --------------------

    def drain_spool(self) -> int:
        """Accept every spooled file (see ``cluster.spool``) and delete it; one that cannot be
        archived now stays for the next round; one that is not aotwatch's own is skipped
        (``_unsafe``). Then remove what workers killed while spooling left. Returns the
        records accepted."""
        accepted = 0
        for path in spooled(self.spool):
            try:
                accepted += self._drain_file(path)
            except OSError:
                log.warning("aotwatch: cannot take in %s yet", path, exc_info=True)
        remove_abandoned(self.spool)
        return accepted

    def _drain_file(self, path: Path) -> int:
        try:
            header, lines = read_spool(path)
        except UnsafePath as problem:
            self._unsafe(path, problem)
            return 0
        accepted = self._take_in(header, lines)
        path.unlink()
        return accepted

    def _take_in(self, header: SpoolHeader | None, lines: Iterator[bytes | RecordError]) -> int:
        if header is None:
            self.sink.inc(RECORDS_REJECTED, 1 + sum(1 for _ in lines), reason="bad_worker")
            return 0
        accepted, batch = 0, []
        for line in lines:
            if isinstance(line, RecordError):
                self.sink.inc(RECORDS_REJECTED, reason=line.reason)
                continue
            batch.append(line)
            if len(batch) == SPOOL_BATCH:
                accepted += self._accept(header.worker, b"".join(batch), None)
                batch = []
        return accepted + self._accept(header.worker, b"".join(batch), header.counts)

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

    def endpoint(self) -> Endpoint:
        """What file_sd and ``aotwatch status`` need to know about this collector."""
        return Endpoint(
            ip=scrape_host(self.config.collector.address),
            port=self.server.port,
            scheme="https" if self.server.tls else "http",
            node_id=self.node_id,
            hostname=self.hostname,
            ready=self._ready,
            replayed=self.replayed,
            workers=[attached.worker for attached in self._live_workers()],
        )

    def close(self) -> None:
        """Stop serving and close the files (Ray kills the actor instead; tests call this)."""
        self._closed.set()
        self.server.close()
        self.sink.close()
        self.counts.close()

    def fingerprints_since(self, epoch: str | None, versions: dict[str, int]) -> Answer:
        """What the head lacks (see ``digest.Digest``): this instance's epoch, every job's
        version, the jobs it lacks whole and the entries changed since its versions of the
        others (``digest.ChangeLog.since``); ``work``: the ``cost.Work`` of those jobs;
        ``live``: the ranks attached and compiling now."""
        with self._accept_lock:
            jobs, deltas = self._changes.since(epoch, versions)
            work = {
                job: {key: list(entry) for key, entry in self._work.get(job, {}).items()}
                for job in [*jobs, *deltas]
            }
            changes = self._changes
            return Answer(changes.epoch, dict(changes.versions), jobs, deltas, work, self._live())

    def _live(self) -> Live:
        """The ranks attached now per job, and those compiling (for how long, what)."""
        live = Live()
        with self._lock:
            for attached in self.liveness.workers():
                job, rank = attached.worker.job_name, str(attached.worker.rank)
                live.attached.setdefault(job, []).append(rank)
                if state := attached.compiling:
                    running = Running(state.compile_id, time.monotonic() - state.began)
                    live.compiling.setdefault(job, {})[rank] = running
        return live


def scrape_host(bind_address: str) -> str:
    """Where Prometheus reaches an endpoint bound to ``bind_address``: that address, or the
    node's IP for a wildcard bind."""
    if bind_address not in ("0.0.0.0", "::"):
        return bind_address
    import ray

    return ray.util.get_node_ip_address()
