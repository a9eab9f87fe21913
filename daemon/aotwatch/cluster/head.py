"""The head: one per cluster, it keeps a collector on every alive node (see ``placement``),
writes the Prometheus file_sd file that lists them (``file_sd``), and compares the ranks of
each job (``divergence``).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import replace
from typing import Any

import ray

from aotwatch import cost, divergence
from aotwatch.cluster.collector import scrape_host
from aotwatch.cluster.file_sd import file_sd_path, write_file_sd
from aotwatch.cluster.paths import HEAD_NAME
from aotwatch.cluster.placement import alive_nodes, daemon_actor_options, ensure_collector
from aotwatch.config import Config
from aotwatch.export.collector import build_info_family, registry_for, render
from aotwatch.export.server import serve_metrics
from aotwatch.metrics import (
    HEAD_FAMILIES,
    RANK_DIVERGENCES,
    REDUNDANT_SECONDS,
    STRAGGLER_SECONDS,
    WAIT_RANK_SECONDS,
    Family,
)
from aotwatch.records import printable
from aotwatch.wire import Answer, Live

log = logging.getLogger(__name__)

RECONCILE_S = 2.0
ENDPOINT_REFRESH_S = 30.0
"""Every collector's endpoint is asked for this often; in between, only those of collectors
that are new, restarted or did not answer the last round."""
CALL_TIMEOUT_S = 10.0
COMPILE_IDS_SETTLE_S = 10.0
"""A compile id missing on some ranks counts only once it is still missing after this long
(ranks compile the same frame at slightly different times)."""


class HeadCollector:
    """Exposes the head's build info and its families (``metrics.HEAD_FAMILIES``: once per
    job, no rank label), each read from the watch."""

    def __init__(self, watch: DivergenceWatch, labels: dict[str, str]) -> None:
        self.labels = labels
        self._readers = {  # family name -> its series now
            RANK_DIVERGENCES.name: watch.divergence_counts,
            STRAGGLER_SECONDS.name: lambda: _per_job(STRAGGLER_SECONDS, watch.straggler_seconds()),
            WAIT_RANK_SECONDS.name: lambda: _per_job(WAIT_RANK_SECONDS, watch.wait_seconds()),
            REDUNDANT_SECONDS.name: watch.redundant_seconds,
        }
        assert set(self._readers) == {family.name for family in HEAD_FAMILIES}

    def describe(self) -> Any:
        """The families without samples: lets the registry filter by ``name[]``."""
        return self._families(live=False)

    def collect(self) -> Any:
        return self._families(live=True)

    def _families(self, live: bool) -> Any:
        yield build_info_family(self.labels)
        for family in HEAD_FAMILIES:
            yield render(family, self._readers[family.name]() if live else {}, self.labels)


def _per_job(family: Family, seconds: dict[str, float]) -> dict[tuple[str, ...], float]:
    return {family.label_set(job_name=job): value for job, value in seconds.items()}


class Head:
    """Keeps collectors equal to alive nodes, writes file_sd, finds divergences (an actor)."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self._lock = threading.Lock()
        self._collectors: dict[str, Any] = {}
        self._endpoints: dict[str, dict[str, Any]] = {}
        self.watch = DivergenceWatch(config)
        self._stale: set[str] = set()  # nodes whose endpoint to ask again (restarted, silent)
        self._file_sd_targets: list | None = None  # what file_sd lists now
        self._check_lock = threading.Lock()  # one round at a time (the loop, status callers)
        registry = registry_for(HeadCollector(self.watch, config.labels))
        self.server = serve_metrics(
            registry,
            config.collector.address,
            config.collector.head_port,
            web_config=config.collector.web_config,
            limits=config.limits,
        )
        self.file_sd = file_sd_path(config)
        self._stop = threading.Event()
        threading.Thread(target=self._loop, name="aotwatch-head", daemon=True).start()

    def _loop(self) -> None:
        refreshed = time.monotonic()
        while not self._stop.wait(RECONCILE_S):
            try:
                everything = time.monotonic() - refreshed >= ENDPOINT_REFRESH_S
                self.reconcile(everything)
                refreshed = time.monotonic() if everything else refreshed
                self.check_divergences()
            except Exception:  # noqa: BLE001 - keep watching; the next round retries
                log.warning("aotwatch head: round failed", exc_info=True)

    def reconcile(self, everything: bool = True) -> list[dict[str, Any]]:
        """Create collectors on new nodes, forget dead ones, refresh endpoints (of every
        collector, or only of new, restarted and silent ones) and file_sd (when a target
        changed, and at every refresh of everything)."""
        alive = set(alive_nodes())
        with self._lock:
            if self._stop.is_set():  # stopping: create nothing, leave file_sd empty
                return []
            for node_id in alive - set(self._collectors):
                self._collectors[node_id] = ensure_collector(node_id, self.config)
            for node_id in set(self._collectors) - alive:
                del self._collectors[node_id]
                self._endpoints.pop(node_id, None)
            due = {
                node_id: handle
                for node_id, handle in self._collectors.items()
                if everything
                or node_id in self._stale
                or not self._endpoints.get(node_id, {}).get("healthy")
            }
            self._stale -= set(due)
            if everything:
                self._file_sd_targets = None  # written again, whatever happened to the file
        answers = _answers({node_id: handle.endpoint.remote() for node_id, handle in due.items()})
        with self._lock:
            for node_id in due:
                if node_id in answers:
                    self._endpoints[node_id] = {**answers[node_id], "healthy": True}
                else:  # restarting or unreachable: keep its last target
                    self._endpoints[node_id] = {
                        **self._endpoints.get(node_id, {}),
                        "healthy": False,
                    }
        endpoints = self.endpoints()
        with self._lock:  # shutdown() empties file_sd under this lock, after setting _stop
            targets = [e for e in endpoints if "port" in e]
            written = [
                (e["node_id"], e.get("hostname"), e.get("ip"), e["port"], e.get("scheme"))
                for e in targets
            ]
            if not self._stop.is_set() and written != self._file_sd_targets:
                write_file_sd(self.file_sd, targets, self.head_endpoint())
                self._file_sd_targets = written
        return endpoints

    def check_divergences(self, final: bool = False) -> list[dict[str, Any]]:
        """Compare the ranks of every job that changed since the last round (and of those
        with a compile-id finding still settling); count each new finding once.

        A compile id missing on some ranks must persist COMPILE_IDS_SETTLE_S, unless ``final``.
        """
        with self._check_lock:
            return self._check_divergences(final)

    def _check_divergences(self, final: bool) -> list[dict[str, Any]]:
        with self._lock:
            collectors = dict(self._collectors)
        refs = {
            node: c.fingerprints_since.remote(*self.watch.known(node))
            for node, c in collectors.items()
        }
        stale = self.watch.take(_answers(refs), set(collectors), final)
        with self._lock:
            self._stale |= stale
        return self.watch.divergences()

    def endpoints(self) -> list[dict[str, Any]]:
        with self._lock:
            return [{"node_id": n, **e} for n, e in sorted(self._endpoints.items())]

    def head_endpoint(self) -> dict[str, Any]:
        return {
            "ip": scrape_host(self.config.collector.address),
            "port": self.server.port,
            "scheme": "https" if self.server.tls else "http",
        }

    def status(self) -> dict[str, Any]:
        """Collectors (node, target, healthy, workers) as of now, divergences, file_sd path."""
        return {
            "collectors": self.reconcile(),
            "head": self.head_endpoint(),
            "file_sd": str(self.file_sd),
            "divergences": self.watch.divergences(),
            "cost": self.watch.cost(),
        }

    def shutdown(self) -> None:
        """Kill every collector, empty file_sd, stop watching (the caller kills the head)."""
        self._stop.set()
        with self._lock:
            for handle in self._collectors.values():
                ray.kill(handle, no_restart=True)
            self._collectors.clear()
            self._endpoints.clear()
            write_file_sd(self.file_sd, [], None)


class DivergenceWatch:
    """What the head knows of every job's ranks and what it found in them: takes a round of
    the collectors' answers (``NodeCollector.fingerprints_since``) and judges the compile ids
    they changed. No Ray here: ``benchmarks/head_scale.py`` drives it as the head does."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self._lock = threading.Lock()  # the findings: rounds write, scrapes and status read
        self._findings: dict[tuple[str, str, str], divergence.Finding] = {}
        self._candidates: dict[tuple[str, str, str], float] = {}  # compile_ids, first seen
        self._digest = divergence.Digest()
        self._lives: dict[str, Live] = {}  # node -> its collector's present
        self._stragglers: dict[str, float] = {}  # job -> longest wait now (0: none)
        self._work: dict[str, cost.Work] = {}  # node -> its collector's work per job
        self._waited: dict[str, float] = {}  # job -> rank-seconds spent waiting so far
        self._counted: dict[tuple[str, str, str], float] = {}  # see ``cost.waited``
        self._redundant: dict[tuple[str, str], float] = {}  # (job, scope) -> seconds
        self._seen = cost.Seen(config.collector.max_cost_graphs)
        self._twice: dict[str, tuple[int, int]] = {}  # job -> ``cost.graphs_twice``

    def known(self, node: str) -> tuple[str | None, dict[str, int]]:
        """What to ask ``node``'s collector for (see ``divergence.Digest.known``)."""
        return self._digest.known(node)

    def take(self, answers: dict[str, Answer], nodes: set[str], final: bool) -> set[str]:
        """One round: the answers of the collectors of ``nodes`` that answered; returns the
        nodes whose endpoint to ask again (restarted, maybe on a new port, or silent)."""
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
        attached = {job for live in self._lives.values() for job in live.attached}
        jobs = self._digest.jobs() | attached
        self._forget_jobs_but(jobs)
        changed = self._digest.changes()
        with self._lock:
            for job, _, compile_id, _ in self._candidates:  # still settling: look again
                if changed.get(job, set()) is not None:
                    changed.setdefault(job, set()).add(compile_id)
        late, longest, compiling, waits = divergence.stragglers(
            list(self._lives.values()), self.config.collector.straggler_after_s
        )
        now = time.monotonic()
        redundant, twice = self._judge_work(jobs, set(changed))
        with self._lock:
            self._stragglers = longest
            self._redundant = {key: s for key, s in redundant.items() if key[0] in jobs}
            self._twice = {job: n for job, n in twice.items() if job in jobs}
            after_s = self.config.collector.straggler_after_s
            for job, seconds in cost.waited(self._counted, waits, after_s).items():
                self._waited[job] = self._waited.get(job, 0.0) + seconds
            for finding in late:
                if finding.key not in self._findings:
                    finding = _with_cause(finding, self._digest.ranks(finding.job_name))
                    self._findings[finding.key] = finding
                    log.warning("aotwatch: compile straggler: %s", printable(finding.describe()))
        for job, compile_ids in changed.items():
            if job in jobs:
                self._judge(
                    job,
                    divergence.find_in_groups(job, self._digest.ranks(job), compile_ids),
                    compile_ids,
                    now,
                    final,
                    compiling.get(job, set()),
                )
        return restarted | (nodes - set(answers))

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


def _answers(refs: dict[str, Any]) -> dict[str, Any]:
    """The results of the calls answered within CALL_TIMEOUT_S, by key. A collector that is
    restarting or stalled is left out of this round: its ranks are compared in a later one."""
    pending = list(refs.values())
    ready, _ = (
        ray.wait(pending, num_returns=len(pending), timeout=CALL_TIMEOUT_S) if refs else ([], [])
    )
    ready = set(ready)
    answers = {}
    for key, ref in refs.items():
        if ref not in ready:
            continue
        try:
            answers[key] = ray.get(ref)
        except Exception:  # noqa: BLE001 - died while answering: same as not answering
            log.debug("aotwatch head: a collector did not answer", exc_info=True)
    return answers


_HeadActor = ray.remote(Head)


def ensure_head(config: Config) -> Any:
    """The head actor (created if there is none), with collectors on every alive node."""
    head = _HeadActor.options(**daemon_actor_options(HEAD_NAME, config)).remote(config)
    ray.get(head.reconcile.remote(), timeout=120)
    return head


def stop_daemon(config: Config) -> None:
    """Kill the head and every collector in aotwatch's namespace."""
    try:
        head = ray.get_actor(HEAD_NAME, namespace=config.cluster.namespace)
    except ValueError:
        return
    ray.get(head.shutdown.remote(), timeout=CALL_TIMEOUT_S)
    ray.kill(head, no_restart=True)
