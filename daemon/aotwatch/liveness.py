"""Which workers are attached now, and what of the live picture depends on it.

Counters are history and stay; three things are about the present. ``aotwatch_workers_attached``
counts the workers attached per job, the families marked ``live`` in the metric table
(a rank's last-compile timestamp) show only ranks whose worker is attached, and
``torch_compile_in_progress_since_timestamp_seconds`` shows the attached workers that say
they are compiling (their announcement's ``compiling``: compile id, since, device). Local mode has
one worker that never leaves; a collector's leave at goodbye or after ``timeout_s`` of
silence. Not thread-safe: its owner locks.
"""

from __future__ import annotations

import time
from typing import Any

from aotwatch.aggregate import Snapshot
from aotwatch.metrics import IN_PROGRESS, LIVE, WORKERS_ATTACHED

Worker = dict[str, Any]
"""A worker's announcement: ``worker_id``, ``job_name``, ``rank`` and where it runs."""

LOCAL_WORKER = "this process"
"""The worker id of local mode's one worker: the process that captures and serves."""


class Liveness:
    """The attached workers, at most ``max_per_job`` a job and ``max_jobs`` jobs."""

    def __init__(self, timeout_s: float | None, max_per_job: int, max_jobs: int) -> None:
        self.timeout_s = timeout_s
        self.max_per_job = max_per_job
        self.max_jobs = max_jobs
        self._workers: dict[str, Worker] = {}  # worker id -> announcement + last_seen
        self._per_job: dict[str, int] = {}

    def seen(self, worker: Worker) -> bool:
        """Note ``worker`` alive now; False when it is not tracked (a cap is full, or its
        id already belongs to another job)."""
        job = worker["job_name"]
        known = self._workers.get(worker["worker_id"])
        if known is None:
            per_job = self._per_job.get(job, 0)
            if per_job >= self.max_per_job or (not per_job and len(self._per_job) >= self.max_jobs):
                return False
            self._per_job[job] = per_job + 1
        elif known["job_name"] != job:
            return False
        self._workers[worker["worker_id"]] = {**worker, "last_seen": time.monotonic()}
        return True

    def leave(self, worker_id: str) -> str | None:
        """Forget a worker; the job it was the last worker of, if any."""
        worker = self._workers.pop(worker_id, None)
        if worker is None:
            return None
        job = worker["job_name"]
        self._per_job[job] -= 1
        if self._per_job[job]:
            return None
        del self._per_job[job]
        return job

    def expire(self) -> list[str]:
        """Forget workers silent for longer than the timeout; the jobs left without any."""
        if self.timeout_s is None:
            return []
        deadline = time.monotonic() - self.timeout_s
        silent = [w for w, info in self._workers.items() if info["last_seen"] < deadline]
        return [job for job in map(self.leave, silent) if job is not None]

    def compiling(self, worker_id: str, state: dict[str, Any] | None, rank: int) -> None:
        """A worker (of ``rank`` now) began a compile (``state``: compile_id, since, device)
        or ended one (None)."""
        if worker_id in self._workers:
            self._workers[worker_id].update(compiling=state, rank=rank)

    def workers(self) -> list[Worker]:
        return list(self._workers.values())

    def apply(self, snapshot: Snapshot) -> Snapshot:
        """``snapshot`` as it is now: workers attached per job, live families cut to the
        ranks of attached workers (all ranks where workers never leave: local mode)."""
        snapshot.values[WORKERS_ATTACHED] = {(job,): n for job, n in self._per_job.items()}
        snapshot.values[IN_PROGRESS] = {
            (w["job_name"], str(w["rank"]), c["device"], c["compile_id"]): c["since"]
            for w in self._workers.values()
            if (c := w.get("compiling"))
        }
        if self.timeout_s is not None:
            ranks = {(w["job_name"], str(w["rank"])) for w in self._workers.values()}
            for name in LIVE:
                table = snapshot.values.get(name, {})
                snapshot.values[name] = {k: v for k, v in table.items() if k[:2] in ranks}
        return snapshot
