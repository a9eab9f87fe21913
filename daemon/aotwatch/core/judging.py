"""The head's judging: what it knows of every job's ranks (a ``digest.Digest`` of the
collectors' answers) and what it found in them, counted once (pure: no Ray here, so
``benchmarks/head_scale.py`` and tests drive it as the head does).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import replace
from typing import Any

from aotwatch.core import cost, divergence
from aotwatch.core.config import Config
from aotwatch.core.digest import Digest
from aotwatch.core.records import printable
from aotwatch.core.wire import Answer, Live

log = logging.getLogger(__name__)

COMPILE_IDS_SETTLE_S = 10.0
"""A compile id missing on some ranks counts only once it is still missing after this long
(ranks compile the same frame at slightly different times)."""


class DivergenceWatch:
    """What the head knows of every job's ranks and what it found in them: takes a round of
    the collectors' answers (``NodeCollector.fingerprints_since``) and judges the compile ids
    they changed. No Ray here: ``benchmarks/head_scale.py`` drives it as the head does."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self._lock = threading.Lock()  # the findings: rounds write, scrapes and status read
        self._findings: dict[tuple[str, str, str, str], divergence.Finding] = {}
        self._candidates: dict[tuple[str, str, str, str], float] = {}  # compile_ids, first seen
        self._digest = Digest()
        self._lives: dict[str, Live] = {}  # node -> its collector's present
        self._stragglers: dict[str, float] = {}  # job -> longest wait now (0: none)
        self._work: dict[str, cost.Work] = {}  # node -> its collector's work per job
        self._waited: dict[str, float] = {}  # job -> rank-seconds spent waiting so far
        self._counted: dict[tuple[str, str, str], float] = {}  # see ``cost.waited``
        self._redundant: dict[tuple[str, str], float] = {}  # (job, scope) -> seconds
        self._seen = cost.Seen(config.collector.max_cost_graphs)
        self._twice: dict[str, tuple[int, int]] = {}  # job -> ``cost.graphs_twice``

    def known(self, node: str) -> tuple[str | None, dict[str, int]]:
        """What to ask ``node``'s collector for (see ``Digest.known``)."""
        return self._digest.known(node)

    def take(self, answers: dict[str, Answer], nodes: set[str], final: bool) -> set[str]:
        """One round: the answers of the collectors of ``nodes`` that answered; returns the
        nodes whose endpoint to ask again (restarted, maybe on a new port, or silent)."""
        restarted = self._receive(answers, nodes)
        jobs = self._digest.jobs() | {job for live in self._lives.values() for job in live.attached}
        self._forget_jobs_but(jobs)
        changed = self._digest.changes()
        with self._lock:
            for job, _, compile_id, _ in self._candidates:  # still settling: look again
                if changed.get(job, set()) is not None:
                    changed.setdefault(job, set()).add(compile_id)
        compiling = self._judge_waits(jobs, set(changed))
        now = time.monotonic()
        for job, compile_ids in changed.items():
            if job in jobs:
                found = self._digest.find(job, compile_ids)
                self._judge(job, found, compile_ids, now, final, compiling.get(job, set()))
        return restarted | (nodes - set(answers))

    def _receive(self, answers: dict[str, Answer], nodes: set[str]) -> set[str]:
        """Take in the answers; forget the collectors no longer among ``nodes``. Returns the
        nodes whose collector restarted (a new epoch)."""
        restarted = {
            node for node, answer in answers.items() if answer.epoch != self.known(node)[0]
        }
        for node, answer in answers.items():  # a collector that did not answer keeps what
            self._digest.update(node, answer)  # the head last had of it
            self._lives[node] = answer.live
            work = {} if node in restarted else self._work.get(node, {})
            work.update(answer.work)
            self._work[node] = {job: work[job] for job in answer.versions if job in work}
        for node in self._digest.nodes() - nodes:
            self._digest.forget(node)
        for table in (self._lives, self._work):
            for node in set(table) - nodes:
                del table[node]
        return restarted

    def _judge_waits(self, jobs: set[str], changed: set[str]) -> dict[str, set[str]]:
        """Stragglers, the rank-seconds waited for them and the seconds compiled twice, this
        round; returns the ranks compiling now per job."""
        after_s = self.config.collector.straggler_after_s
        late, longest, compiling, waits = divergence.stragglers(list(self._lives.values()), after_s)
        redundant, twice = self._judge_work(jobs, changed)
        with self._lock:
            self._stragglers = longest
            self._redundant = {key: s for key, s in redundant.items() if key[0] in jobs}
            self._twice = {job: n for job, n in twice.items() if job in jobs}
            for job, seconds in cost.waited(self._counted, waits, after_s).items():
                self._waited[job] = self._waited.get(job, 0.0) + seconds
            for finding in late:
                if finding.key not in self._findings:
                    ranks = self._digest.ranks(finding.job_name, finding.compile_id)
                    finding = _with_cause(finding, ranks)
                    self._findings[finding.key] = finding
                    log.warning("aotwatch: compile straggler: %s", printable(finding.describe()))
        return compiling

    def _judge_work(
        self, jobs: set[str], changed: set[str]
    ) -> tuple[dict[tuple[str, str], float], dict]:
        """Every job's redundant compile seconds by scope (see ``cost.redundant``) and its
        ``cost.graphs_twice``, judged again for the ``changed`` jobs only (a frame record
        changes its job's fingerprints); jobs first seen in one round are judged by name."""
        with self._lock:
            redundant = {key: s for key, s in self._redundant.items() if key[0] not in changed}
            twice = {job: n for job, n in self._twice.items() if job not in changed}
        for job in sorted(jobs & changed):
            tables = [work[job] for work in self._work.values() if job in work]
            if tables:
                merged = cost.merge(tables)
                twice[job] = cost.graphs_twice(merged)
                for scope, seconds in cost.redundant(job, merged, self._seen).items():
                    redundant[(job, scope)] = seconds
        return redundant, twice

    def wait_seconds(self) -> dict[str, float]:
        """Rank-seconds each job's ranks spent waiting for a straggler's compile so far."""
        with self._lock:
            return dict(self._waited)

    def redundant_seconds(self) -> dict[tuple[str, str], float]:
        """Compile seconds done twice per (job, scope) (see ``cost``)."""
        with self._lock:
            return dict(self._redundant)

    def cost(self) -> dict[str, Any]:
        """What ``aotwatch status`` shows of the cost (see ``report.cost_lines``)."""
        with self._lock:
            return {
                "waits": dict(self._waited),
                "redundant": [[job, scope, s] for (job, scope), s in self._redundant.items()],
                "twice": {job: list(n) for job, n in self._twice.items()},
            }

    def straggler_seconds(self) -> dict[str, float]:
        """The longest a rank of each job has been compiling while others wait (0: none)."""
        with self._lock:
            return dict(self._stragglers)

    def _judge(
        self,
        job: str,
        findings: list,
        compile_ids: set[str] | None,
        now: float,
        final: bool,
        compiling: set[str],
    ) -> None:
        """Count new findings once (a compile id missing on some ranks only once it has been
        for COMPILE_IDS_SETTLE_S while those ranks are not compiling, unless ``final``);
        drop candidates that resolved."""
        found = set()
        with self._lock:
            for finding in findings:
                found.add(finding.key)
                if finding.key in self._findings:
                    continue
                first_seen = self._candidates.setdefault(finding.key, now)
                missing = dict(finding.groups).get("missing", ())
                if missing and _within(missing, compiling):  # still compiling: maybe that frame
                    self._candidates[finding.key] = first_seen = now
                settled = now - first_seen >= COMPILE_IDS_SETTLE_S
                if finding.kind != "compile_ids" or settled or final:
                    self._findings[finding.key] = finding
                    del self._candidates[finding.key]
                    log.warning("aotwatch: rank divergence: %s", printable(finding.describe()))
            for key in [
                k
                for k in self._candidates
                if k[0] == job and k not in found and (compile_ids is None or k[2] in compile_ids)
            ]:
                del self._candidates[key]  # the slow rank caught up

    def _forget_jobs_but(self, jobs: set[str]) -> None:
        """Drop the findings of jobs no collector holds any more (finished, past retention)."""
        with self._lock:
            for table in (self._findings, self._candidates):
                for key in [key for key in table if key[0] not in jobs]:
                    del table[key]
            self._waited = {job: s for job, s in self._waited.items() if job in jobs}

    def divergences(self) -> list[dict[str, Any]]:
        with self._lock:
            return [f.to_dict() for f in self._findings.values()]

    def divergence_counts(self) -> dict[tuple[str, str], int]:
        with self._lock:
            return divergence.counts(list(self._findings.values()))


def _with_cause(finding: divergence.Finding, ranks: dict[str, Any]) -> divergence.Finding:
    """A straggler finding with why its rank compiles while its peers wait, where known."""
    rank = finding.groups[0][1][0]
    because = cost.cause(rank, finding.compile_id, ranks)
    if because is None:
        return finding
    return replace(finding, groups=(*finding.groups, (f"because {because}", (rank,))))


def _within(names: tuple[str, ...], ranks: set[str]) -> bool:
    """Whether every rank a finding's group names is in ``ranks`` (counted before listed: a
    group may name 10,000 ranks)."""
    if not ranks:
        return False
    return divergence.size(names) <= len(ranks) and set(divergence.expand(names)) <= ranks
