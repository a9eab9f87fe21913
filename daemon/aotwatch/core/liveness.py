"""Which workers are attached now, and what of the live picture depends on it.

Counters are history and stay; three things are about the present. ``aotwatch_workers_attached``
counts the workers attached per job, the families marked ``live`` in the metric table
(a rank's last-compile timestamp) show only ranks whose worker is attached, and
``torch_compile_in_progress_since_timestamp_seconds`` shows the attached workers that say
they are compiling (``wire.Compiling``: compile id, device, since). Local mode has
one worker that never leaves; a collector's leave at goodbye or after ``timeout_s`` of
silence. Not thread-safe: its owner locks.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import msgspec

from aotwatch.core.aggregate import Snapshot
from aotwatch.core.metrics import IN_PROGRESS, LIVE, WORKERS_ATTACHED, Family, Labels
from aotwatch.core.wire import Compiling, Worker

LOCAL_WORKER = "this process"
"""The worker id of local mode's one worker: the process that captures and serves."""


class Attached(msgspec.Struct):
    """A worker tracked: its last announcement, the compile shown for it, when last heard."""

    worker: Worker
    compiling: Compiling | None
    last_seen: float


class Liveness:
    """The attached workers: at most ``max_per_job`` a job, ``max_jobs`` jobs and
    ``max_workers`` in all, and at most ``max_compiling`` of them shown compiling (the
    in-progress family's series cap); ``refuse(family, labels)`` hears of a compile not
    shown."""

    def __init__(
        self,
        timeout_s: float | None,
        max_per_job: int,
        max_jobs: int,
        max_workers: int | None = None,
        max_compiling: int | None = None,
        refuse: Callable[[Family, Labels], None] | None = None,
    ) -> None:
        self.timeout_s = timeout_s
        self.max_per_job = max_per_job
        self.max_jobs = max_jobs
        self.max_workers = max_workers
        self.max_compiling = max_compiling
        self._refuse = refuse
        self._workers: dict[str, Attached] = {}  # by worker id
        self._per_job: dict[str, int] = {}
        self._compiling: set[str] = set()  # ids of the workers shown compiling

    def seen(self, worker: Worker, compiling: Compiling | None = None) -> bool:
        """Note ``worker`` alive now; False when it is not tracked (see ``admit``)."""
        return self.admit(worker, compiling) is None

    def admit(self, worker: Worker, compiling: Compiling | None = None) -> str | None:
        """Note ``worker`` alive now, ``compiling`` or not; None when it is tracked, else why
        it is not: a cap is
        full (``max_workers_per_job``, ``max_series_per_metric`` jobs,
        ``max_workers_per_collector``) or its id belongs to another job
        (``worker_id_reused``)."""
        job = worker.job_name
        known = self._workers.get(worker.worker_id)
        if known is None:
            per_job = self._per_job.get(job, 0)
            if per_job >= self.max_per_job:
                return "max_workers_per_job"
            if not per_job and len(self._per_job) >= self.max_jobs:
                return "max_series_per_metric"
            if self.max_workers is not None and len(self._workers) >= self.max_workers:
                return "max_workers_per_collector"
            self._per_job[job] = per_job + 1
        elif known.worker.job_name != job:
            return "worker_id_reused"
        state = self._shown(worker.worker_id, job, worker.rank, compiling)
        self._workers[worker.worker_id] = Attached(worker, state, time.monotonic())
        return None

    def _shown(
        self, worker_id: str, job: str, rank: int, state: Compiling | None
    ) -> Compiling | None:
        """``state`` if the worker's compile may be shown, else None (refused and told)."""
        if not state:
            self._compiling.discard(worker_id)
            return None
        if (
            worker_id in self._compiling
            or self.max_compiling is None
            or len(self._compiling) < self.max_compiling
        ):
            self._compiling.add(worker_id)
            return state
        if self._refuse is not None:
            labels = IN_PROGRESS.label_set(
                job_name=job, rank=str(rank), device=state.device, compile_id=state.compile_id
            )
            self._refuse(IN_PROGRESS, labels)
        return None

    def leave(self, worker_id: str) -> str | None:
        """Forget a worker; the job it was the last worker of, if any."""
        worker = self._workers.pop(worker_id, None)
        if worker is None:
            return None
        self._compiling.discard(worker_id)
        job = worker.worker.job_name
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
        silent = [w for w, info in self._workers.items() if info.last_seen < deadline]
        return [job for job in map(self.leave, silent) if job is not None]

    def compiling(self, worker_id: str, state: Compiling | None, rank: int) -> None:
        """A worker (of ``rank`` now) began a compile (``state``) or ended one (None)."""
        attached = self._workers.get(worker_id)
        if attached is not None:
            attached.compiling = self._shown(worker_id, attached.worker.job_name, rank, state)
            attached.worker.rank = rank

    def workers(self) -> list[Attached]:
        return list(self._workers.values())

    def apply(self, snapshot: Snapshot) -> Snapshot:
        """``snapshot`` as it is now: workers attached per job, live families cut to the
        ranks of attached workers (all ranks where workers never leave: local mode)."""
        snapshot.values[WORKERS_ATTACHED.name] = {
            WORKERS_ATTACHED.label_set(job_name=job): n for job, n in self._per_job.items()
        }
        snapshot.values[IN_PROGRESS.name] = {
            IN_PROGRESS.label_set(
                job_name=a.worker.job_name,
                rank=str(a.worker.rank),
                device=c.device,
                compile_id=c.compile_id,
            ): c.since
            for a in self._workers.values()
            if (c := a.compiling)
        }
        if self.timeout_s is not None:
            ranks = {(a.worker.job_name, str(a.worker.rank)) for a in self._workers.values()}
            for family in LIVE:
                table = snapshot.values.get(family.name, {})
                snapshot.values[family.name] = {
                    labels: value
                    for labels, value in table.items()
                    if _job_and_rank(family.named(labels, snapshot.per_rank)) in ranks
                }
        return snapshot


def _job_and_rank(named: dict[str, str]) -> tuple[str, str]:
    return named["job_name"], named["rank"]
