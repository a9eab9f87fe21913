"""When each job on a node started and ended, as its collector sees it.

A job runs while any of its workers is attached. Once the last one has said goodbye or timed
out it is ending; ``grace_s`` later it is finished (its series then make room for newer jobs
at the cardinality cap), and ``retention_s`` after that it is forgotten (its series leave
/metrics: Prometheus has scraped the final values by then and keeps the history). A job known
only from records, with no worker attached (replayed from the archive, taken from the spool),
is ending from the moment it is seen, a finished one again too.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

RUNNING, ENDING, FINISHED = "running", "ending", "finished"


@dataclass
class _Job:
    state: str
    since: float  # monotonic time of the last change of state


class JobLife:
    """The running, ending and finished jobs of one collector (not thread-safe)."""

    def __init__(
        self, grace_s: float, retention_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.grace_s, self.retention_s, self.clock = grace_s, retention_s, clock
        self._jobs: dict[str, _Job] = {}

    def running(self, job_name: str) -> bool:
        """A worker of the job is attached; True if the job had finished (it runs again)."""
        job = self._jobs.get(job_name)
        if job is not None and job.state == RUNNING:
            return False
        self._jobs[job_name] = _Job(RUNNING, self.clock())
        return job is not None and job.state == FINISHED

    def idle(self, job_name: str) -> None:
        """The job's last worker has left."""
        job = self._jobs.get(job_name)
        if job is None or job.state == RUNNING:
            self._jobs[job_name] = _Job(ENDING, self.clock())

    def known(self, job_name: str) -> bool:
        """A record of the job arrived. A job not seen before, or finished (a record from the
        spool, say), is ending from now: no worker of it is known. True if it had finished."""
        job = self._jobs.get(job_name)
        if job is None or job.state == FINISHED:
            self._jobs[job_name] = _Job(ENDING, self.clock())
        return job is not None and job.state == FINISHED

    def due(self) -> tuple[list[str], list[str]]:
        """Advance the clock: (jobs finished now, jobs to forget now)."""
        now, finished, forgotten = self.clock(), [], []
        for name, job in list(self._jobs.items()):
            if job.state == ENDING and now - job.since >= self.grace_s:
                self._jobs[name] = _Job(FINISHED, now)
                finished.append(name)
            elif job.state == FINISHED and self.retention_s and now - job.since >= self.retention_s:
                del self._jobs[name]
                forgotten.append(name)
        return finished, forgotten

    def state(self, job_name: str) -> str | None:
        job = self._jobs.get(job_name)
        return job.state if job is not None else None
