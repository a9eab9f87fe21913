"""The worker side of the push path: a bounded queue drained by a background thread.

``record`` only appends to a bounded deque (the training thread never waits on
the network; a full queue drops the record and counts it). The thread sends
batches to the node's collector with non-blocking calls, at most ``MAX_CALLS``
unanswered at a time, keeps each batch until
the collector acknowledges it, resends after a failure with backoff (the
collector may be restarting), and flushes what is left at process exit.
Delivery is at-least-once; record ids make a resend a no-op.
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import logging
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import ray

from aotwatch.cluster.spool import write_spool
from aotwatch.core.config import PushConfig
from aotwatch.core.identity import rank_and_world_size
from aotwatch.core.records import Record, RecordError, encode_record
from aotwatch.core.wire import CompileNotice, Compiling, SpoolHeader, Totals, Worker, to_wire

log = logging.getLogger(__name__)

MAX_BACKOFF_S = 5.0
MAX_CALLS = 8
"""Batches sent and not yet answered. A stalled collector holds no more than these; later
batches wait here, at most ``buffer_size`` records, and waiting ones are dropped (and
counted) past that: never sent ones first, then ones whose every send failed. A stall costs
bounded memory, and a call still in flight is never counted as dropped."""


@dataclass(eq=False)  # compared by identity: removing one must not compare record lists
class _Batch:
    records: list[Record]
    lines: bytes | None = None  # the records as JSON lines, encoded when first sent
    counts: Totals | None = None  # the totals when sent
    counts_version: int = 0
    ref: Any = None
    attempts: int = 0


@dataclass
class _Counts:
    """This worker's running totals of drops and capture errors (see cluster.worker_counts).

    ``version`` grows with every change; ``delivered`` is the newest version acknowledged.
    """

    dropped: collections.Counter = field(default_factory=collections.Counter)
    capture_errors: collections.Counter = field(default_factory=collections.Counter)
    version: int = 0
    sent: int = 0
    delivered: int = 0

    def add(self, kind: str, label: str, amount: int = 1) -> None:
        getattr(self, kind)[label] += amount
        self.version += 1

    def totals(self) -> Totals | None:
        if not self.version:
            return None
        return Totals(dict(self.dropped), dict(self.capture_errors))


class RecordPusher:
    """A capture Sink that delivers records to a collector actor (see module docstring)."""

    def __init__(
        self,
        collector: Any,
        where: dict[str, Any],
        config: PushConfig,
        heartbeat_s: float,
        spool: Path | None = None,
    ) -> None:
        """``where``: the ``wire.Worker`` fields that say where this worker runs (job_name,
        node_id, hostname, pid). ``heartbeat_s``: the longest silence before an empty batch
        tells the collector this worker is alive (well under the collector's worker timeout).
        ``spool``: where what is still unacknowledged after ``config.exit_timeout_s`` at exit
        is left for the collector (None: it is lost, and logged)."""
        self._collector = collector  # the named actor's handle stays valid across its restarts
        self.spool = spool
        self.heartbeat_s = heartbeat_s
        self.worker = Worker(**{"rank": 0, **where, "worker_id": uuid.uuid4().hex})
        self.config = config
        self._queue: collections.deque = collections.deque()
        self._counts = _Counts()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._batches: collections.deque[_Batch] = collections.deque()  # oldest first
        self._unacknowledged = 0  # records in _batches
        self.captured = 0  # records handed over by capture: delivered, waiting or dropped
        self._state_changed = False  # ``compiling`` changed since the last batch was made
        self._compile: Compiling | None = None
        self._closing = self._closed = False
        self._thread = threading.Thread(target=self._run, name="aotwatch-push", daemon=True)
        self._thread.start()
        atexit.register(self.close)

    # -- the Sink protocol: called from compiling threads ---------------------------------

    def record(self, record: Record) -> None:
        with self._lock:
            self.captured += 1
            if len(self._queue) >= self.config.queue_size:
                self._counts.add("dropped", "queue_full")
                return
            self._queue.append(record)
            if len(self._queue) >= self.config.batch_size:
                self._wake.set()

    def capture_error(self, job_name: str, stage: str) -> None:
        with self._lock:
            self._counts.add("capture_errors", stage)

    def compiling(self, state: Compiling | None) -> None:
        """A compile began (``state``) or ended (None): sent at once, with or without records."""
        with self._lock:  # a new struct: one already handed to Ray is never changed
            self._compile = state
            self.worker = msgspec.structs.replace(self.worker, compiling=self._compiling_now())
            self._state_changed = True
        self._wake.set()

    def _compiling_now(self) -> dict[str, Any] | None:
        """The compile in progress as the collector is told it (lock held): how long it has
        run on this process's monotonic clock, never since when (another machine cannot
        subtract this one's wall clock from its own)."""
        state = self._compile
        if state is None:
            return None
        elapsed = round(time.monotonic() - state.began, 3)
        return to_wire(CompileNotice(state.compile_id, elapsed, state.device))

    # -- the background thread ------------------------------------------------------------

    def _take_batch(self) -> bool:
        """Move up to batch_size queued records into a waiting batch (an empty one when only
        the totals are newer and no batch waits to carry them).

        One critical section, so ``pending()`` never misses records between the two.
        """
        with self._lock:
            records = [
                self._queue.popleft() for _ in range(min(len(self._queue), self.config.batch_size))
            ]
            if not records and (
                (self._counts.sent == self._counts.version and not self._state_changed)
                or any(batch.ref is None for batch in self._batches)
            ):
                return False
            self._state_changed = False
            self._batches.append(_Batch(records))
            self._unacknowledged += len(records)
            self._evict()
            return True

    def _evict(self) -> None:
        """Drop waiting batches, never sent ones first, oldest first, past buffer_size
        records (lock held). Batches in flight stay: the collector may still answer them."""
        while self._unacknowledged > self.config.buffer_size:
            waiting = [b for b in self._batches if b.ref is None and b.records]
            if not waiting:
                return
            lost = next((b for b in waiting if not b.attempts), waiting[0])
            self._batches.remove(lost)
            self._unacknowledged -= len(lost.records)
            self._counts.add("dropped", "buffer_full", len(lost.records))

    def _calls(self) -> list[Any]:
        """The refs of the batches sent and not yet answered."""
        with self._lock:
            return [batch.ref for batch in self._batches if batch.ref is not None]

    def _send_waiting(self) -> None:
        """Send waiting batches, oldest first, while fewer than MAX_CALLS are unanswered."""
        with self._lock:
            waiting = [batch for batch in self._batches if batch.ref is None]
        for batch in waiting[: max(0, MAX_CALLS - len(self._calls()))]:
            batch.attempts += 1
            with self._lock:  # the newest totals: they are running totals, newer is right
                batch.counts, batch.counts_version = self._counts.totals(), self._counts.version
                self._counts.sent = max(self._counts.sent, self._counts.version)
            rank, world_size = rank_and_world_size()
            with self._lock:  # a new struct, as ``compiling`` makes one
                worker = self.worker = msgspec.structs.replace(
                    self.worker, rank=rank, world_size=world_size, compiling=self._compiling_now()
                )
            if batch.lines is None:
                batch.lines = self._encode(batch.records)
            counts = None if batch.counts is None else to_wire(batch.counts)
            try:
                batch.ref = self._collector.push.remote(to_wire(worker), batch.lines, counts)
            except Exception:  # noqa: BLE001 - no collector handle right now: next round
                return

    def _encode(self, records: list[Record]) -> bytes:
        """``records`` as JSON lines; one that cannot be encoded is counted as dropped."""
        lines = []
        for record in records:
            try:
                lines.append(encode_record(record))
            except RecordError:
                with self._lock:
                    self._counts.add("dropped", "unencodable")
        return b"".join(lines)

    def _check_answers(self) -> float:
        """Forget acknowledged batches; put failed ones back to wait. Returns the backoff."""
        with self._lock:
            sent = [batch for batch in self._batches if batch.ref is not None]
        refs = [batch.ref for batch in sent]
        ready = set(ray.wait(refs, num_returns=len(refs), timeout=0)[0]) if refs else set()
        backoff = 0.0
        for batch in sent:
            if batch.ref not in ready:
                continue
            try:
                ray.get(batch.ref)
            except Exception:  # noqa: BLE001 - collector away: keep the batch, retry
                batch.ref = None
                backoff = max(backoff, min(MAX_BACKOFF_S, 0.05 * 2 ** min(batch.attempts, 7)))
                continue
            with self._lock:
                self._batches.remove(batch)
                self._unacknowledged -= len(batch.records)
                self._counts.delivered = max(self._counts.delivered, batch.counts_version)
        return backoff

    def _wait(self) -> None:
        """Until a call is answered while batches wait for a free call, else until woken."""
        interval = self.config.flush_interval_ms / 1000
        with self._lock:
            waiting = any(batch.ref is None for batch in self._batches)
        calls = self._calls()
        if waiting and calls:
            ray.wait(calls, num_returns=1, timeout=interval)
        else:
            self._wake.wait(interval)
            self._wake.clear()

    def _run(self) -> None:
        last_sent = time.monotonic()
        while True:
            try:
                self._wait()
                backoff = self._check_answers()
                if backoff:
                    time.sleep(backoff)
                made = False
                while self._take_batch():
                    made = True
                if made:
                    last_sent = time.monotonic()
                elif (
                    time.monotonic() - last_sent > self.heartbeat_s
                    and not self._batches
                    and not self._closing
                ):
                    with self._lock:  # a heartbeat keeps the worker's gauges alive
                        self._batches.append(_Batch([]))
                    last_sent = time.monotonic()
                self._send_waiting()
            except Exception:  # noqa: BLE001 - the push thread must survive anything
                log.debug("aotwatch: push round failed", exc_info=True)
                self._wake.wait(self.config.flush_interval_ms / 1000)  # no busy loop
            if self._closed:
                return

    # -- exit ----------------------------------------------------------------------------

    def pending(self) -> int:
        """Records queued or sent but not acknowledged (1 more while newer totals are)."""
        with self._lock:
            counts_waiting = self._counts.delivered < self._counts.version
            return len(self._queue) + self._unacknowledged + counts_waiting

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything queued is acknowledged; False on timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._wake.set()
            if not self.pending():
                return True
            time.sleep(0.02)
        return not self.pending()

    def close(self) -> None:
        """Flush for at most ``exit_timeout_s``, spool what is left, say goodbye to the
        collector, stop the thread (idempotent)."""
        with self._lock:
            if self._closing:
                return
            self._closing = True
        delivered = self.flush(self.config.exit_timeout_s)
        self._closed = True
        self._wake.set()
        self._thread.join(timeout=1)  # no batch may re-announce this worker after goodbye
        if not delivered:
            self._spool_undelivered()
        with contextlib.suppress(Exception):  # the collector may be gone already
            ray.get(self._collector.goodbye.remote(to_wire(self.worker)), timeout=2)
        atexit.unregister(self.close)

    def _spool_undelivered(self) -> None:
        """Write what the collector has not acknowledged to the spool, where the collector
        takes it in (resent records and totals count once); log what happened to it."""
        with self._lock:
            batches, queued = list(self._batches), list(self._queue)
        records = [*(r for batch in batches for r in batch.records), *queued]
        # batches sent before are encoded already (and their unencodable records counted)
        encoded = [b.lines if b.lines is not None else self._encode(b.records) for b in batches]
        lines = b"".join(encoded) + self._encode(queued)
        with self._lock:
            totals = self._counts.totals()
            header = SpoolHeader(self.worker, None if totals is None else to_wire(totals))
        within = f"within {self.config.exit_timeout_s} s at exit"
        if self.spool is None:
            log.warning("aotwatch: %d records not delivered %s, and no spool", len(records), within)
            return
        try:
            path = write_spool(self.spool, self.worker.worker_id, header, lines)
        except OSError as err:
            log.warning(
                "aotwatch: %d records not delivered %s and lost: cannot spool them: %s",
                len(records),
                within,
                err,
            )
            return
        log.warning(
            "aotwatch: %d records not delivered %s; spooled to %s for the collector",
            len(records),
            within,
            path,
        )
