"""The worker side of the push path: a bounded queue drained by a background thread.

``record`` only appends to a bounded deque (the training thread never waits on
the network; a full queue drops the record and counts it). The thread sends
batches to the node's collector with non-blocking calls, keeps each batch until
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
from typing import Any

import ray

from aotwatch.capture.identity import rank_and_world_size
from aotwatch.config import PushConfig

log = logging.getLogger(__name__)

HEARTBEAT_S = 5.0
MAX_BACKOFF_S = 5.0


@dataclass(eq=False)  # compared by identity: removing one must not compare record lists
class _Batch:
    records: list[dict]
    counts: dict[str, dict[str, int]]
    ref: Any = None
    attempts: int = 0


@dataclass
class _Counts:
    """Drops and capture errors not yet delivered to the collector."""

    dropped: collections.Counter = field(default_factory=collections.Counter)
    capture_errors: collections.Counter = field(default_factory=collections.Counter)

    def take(self) -> dict[str, dict[str, int]]:
        taken = {"dropped": dict(+self.dropped), "capture_errors": dict(+self.capture_errors)}
        self.dropped.clear()
        self.capture_errors.clear()
        return taken


class RecordPusher:
    """A capture Sink that delivers records to a collector actor (see module docstring)."""

    def __init__(self, collector: Any, worker: dict[str, Any], config: PushConfig) -> None:
        self._collector = collector  # the named actor's handle stays valid across its restarts
        self.worker = {**worker, "worker_id": uuid.uuid4().hex}
        self.config = config
        self._queue: collections.deque = collections.deque()
        self._counts = _Counts()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._in_flight: collections.deque[_Batch] = collections.deque()
        self._unacknowledged = 0  # records in _in_flight
        self._closing = self._closed = False
        self._thread = threading.Thread(target=self._run, name="aotwatch-push", daemon=True)
        self._thread.start()
        atexit.register(self.close)

    # -- the Sink protocol: called from compiling threads ---------------------------------

    def record(self, record: dict[str, Any]) -> None:
        with self._lock:
            if len(self._queue) >= self.config.queue_size:
                self._counts.dropped["queue_full"] += 1
                return
            self._queue.append(record)
            if len(self._queue) >= self.config.batch_size:
                self._wake.set()

    def capture_error(self, job_name: str, stage: str) -> None:
        with self._lock:
            self._counts.capture_errors[stage] += 1

    # -- the background thread ------------------------------------------------------------

    def _take_batch(self) -> _Batch | None:
        """Move up to batch_size queued records (and the pending counts) into a batch in flight.

        One critical section, so ``pending()`` never misses records between the two.
        """
        with self._lock:
            records = [
                self._queue.popleft() for _ in range(min(len(self._queue), self.config.batch_size))
            ]
            counts = self._counts.take()
            if not records and not any(counts.values()):
                return None
            batch = _Batch(records, counts)
            self._in_flight.append(batch)
            self._unacknowledged += len(records)
            self._evict()
            return batch

    def _evict(self) -> None:
        """Drop the oldest unacknowledged batches past buffer_size records (lock held)."""
        while self._unacknowledged > self.config.buffer_size and len(self._in_flight) > 1:
            lost = self._in_flight.popleft()
            self._unacknowledged -= len(lost.records)
            self._counts.dropped["buffer_full"] += len(lost.records)

    def _send(self, batch: _Batch) -> None:
        """Send (or resend) a batch; on failure leave ``ref`` None so the next round retries."""
        batch.attempts += 1
        self.worker["rank"], self.worker["world_size"] = rank_and_world_size()
        try:
            batch.ref = self._collector.push.remote(self.worker, batch.records, batch.counts)
        except Exception:  # noqa: BLE001 - no collector handle right now
            batch.ref = None

    def _check_acks(self) -> float:
        """Forget acknowledged batches; resend failed ones. Returns the backoff to wait."""
        with self._lock:
            batches = list(self._in_flight)
        refs = [batch.ref for batch in batches if batch.ref is not None]
        ready = set(ray.wait(refs, num_returns=len(refs), timeout=0)[0]) if refs else set()
        backoff = 0.0
        for batch in batches:
            if batch.ref is not None:
                if batch.ref not in ready:
                    continue
                try:
                    ray.get(batch.ref)
                except Exception:  # noqa: BLE001 - collector away: keep the batch, retry
                    batch.ref = None
                else:
                    with self._lock:
                        self._in_flight.remove(batch)
                        self._unacknowledged -= len(batch.records)
                    continue
            backoff = max(backoff, min(MAX_BACKOFF_S, 0.05 * 2 ** min(batch.attempts, 7)))
            self._send(batch)
        return backoff

    def _run(self) -> None:
        last_sent = time.monotonic()
        while True:
            self._wake.wait(self.config.flush_interval_ms / 1000)
            self._wake.clear()
            try:
                backoff = self._check_acks()
                sent = False
                while (batch := self._take_batch()) is not None:
                    self._send(batch)
                    sent = True
                if sent:
                    last_sent = time.monotonic()
                elif time.monotonic() - last_sent > HEARTBEAT_S and not self._in_flight:
                    heartbeat = _Batch([], {})  # keeps the worker's gauges alive
                    with self._lock:
                        self._in_flight.append(heartbeat)
                    self._send(heartbeat)
                    last_sent = time.monotonic()
                if backoff:
                    time.sleep(backoff)
            except Exception:  # noqa: BLE001 - the push thread must survive anything
                log.debug("aotwatch: push round failed", exc_info=True)
            if self._closed and not self._queue:
                return

    # -- exit ----------------------------------------------------------------------------

    def pending(self) -> int:
        """Records queued or sent but not acknowledged (1 more while counts wait to be sent)."""
        with self._lock:
            counts_waiting = any(self._counts.dropped.values()) or any(
                self._counts.capture_errors.values()
            )
            return len(self._queue) + self._unacknowledged + counts_waiting

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything queued is acknowledged; False on timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._wake.set()
            if not self.pending():
                return True
            time.sleep(0.02)
        return False

    def close(self, timeout: float = 10.0) -> None:
        """Flush, say goodbye to the collector, stop the thread (idempotent)."""
        with self._lock:
            if self._closing:
                return
            self._closing = True
        delivered = self.flush(timeout)
        self._closed = True
        self._wake.set()
        if not delivered:
            log.warning("aotwatch: %d records not delivered at exit", self.pending())
        with contextlib.suppress(Exception):  # the collector may be gone already
            ray.get(self._collector.goodbye.remote(self.worker), timeout=2)
        atexit.unregister(self.close)
