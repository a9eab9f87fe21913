"""The head: one per cluster, it keeps a collector on every alive node (see ``placement``),
writes the Prometheus file_sd file that lists them (``file_sd``), and compares the ranks of
each job (``judging``).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import ray

from aotwatch.cluster.collector import scrape_host
from aotwatch.cluster.file_sd import file_sd_path, write_file_sd
from aotwatch.cluster.paths import HEAD_NAME
from aotwatch.cluster.placement import alive_nodes, daemon_actor_options, ensure_collector
from aotwatch.core.config import Config
from aotwatch.core.judging import DivergenceWatch
from aotwatch.core.metrics import (
    HEAD_FAMILIES,
    RANK_DIVERGENCES,
    REDUNDANT_SECONDS,
    STRAGGLER_SECONDS,
    WAIT_RANK_SECONDS,
    Family,
)
from aotwatch.core.wire import CollectorStatus, Status, Target
from aotwatch.export.collector import build_info_family, registry_for, render
from aotwatch.export.server import serve_metrics

log = logging.getLogger(__name__)

RECONCILE_S = 2.0
ENDPOINT_REFRESH_S = 30.0
"""Every collector's endpoint is asked for this often; in between, only those of collectors
that are new, restarted or did not answer the last round."""
CALL_TIMEOUT_S = 10.0


class HeadCollector:
    """Exposes the head's build info and its families (``metrics.HEAD_FAMILIES``: once per
    job, no rank label), each read from the watch."""

    def __init__(self, watch: DivergenceWatch, labels: dict[str, str]) -> None:
        self.labels = labels
        self._build_info = build_info_family(labels)  # the installed versions: read once
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
        yield self._build_info
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
        self._endpoints: dict[str, CollectorStatus] = {}
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

    def reconcile(self, everything: bool = True) -> list[CollectorStatus]:
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
                or node_id not in self._endpoints
                or not self._endpoints[node_id].healthy
            }
            self._stale -= set(due)
            if everything:
                self._file_sd_targets = None  # written again, whatever happened to the file
        answers = _answers({node_id: handle.endpoint.remote() for node_id, handle in due.items()})
        with self._lock:
            for node_id in due:
                last = self._endpoints.get(node_id)  # restarting or unreachable: its last target
                endpoint = answers.get(node_id, last.endpoint if last else None)
                self._endpoints[node_id] = CollectorStatus(node_id, node_id in answers, endpoint)
        collectors = self.endpoints()
        with self._lock:  # shutdown() empties file_sd under this lock, after setting _stop
            targets = [c.endpoint for c in collectors if c.endpoint is not None]
            written = [(e.node_id, e.hostname, e.ip, e.port, e.scheme) for e in targets]
            if not self._stop.is_set() and written != self._file_sd_targets:
                write_file_sd(self.file_sd, targets, self.head_endpoint())
                self._file_sd_targets = written
        return collectors

    def check_divergences(self, final: bool = False) -> list[dict[str, Any]]:
        """Compare the ranks of every job that changed since the last round (and of those
        with a compile-id finding still settling); count each new finding once.

        A compile id missing on some ranks must persist ``judging.COMPILE_IDS_SETTLE_S``, unless
        ``final``.
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

    def endpoints(self) -> list[CollectorStatus]:
        """Every collector as of the last round, by node."""
        with self._lock:
            return [status for _, status in sorted(self._endpoints.items())]

    def head_endpoint(self) -> Target:
        return Target(
            scrape_host(self.config.collector.address),
            self.server.port,
            "https" if self.server.tls else "http",
        )

    def status(self) -> Status:
        """Collectors (node, target, healthy, workers) as of now, divergences, file_sd path."""
        return Status(
            self.reconcile(),
            self.head_endpoint(),
            str(self.file_sd),
            self.watch.divergences(),
            self.watch.cost(),
        )

    def shutdown(self) -> None:
        """Kill every collector, empty file_sd, stop watching (the caller kills the head)."""
        self._stop.set()
        with self._lock:
            for handle in self._collectors.values():
                ray.kill(handle, no_restart=True)
            self._collectors.clear()
            self._endpoints.clear()
            write_file_sd(self.file_sd, [], None)


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
