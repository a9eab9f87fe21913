"""Turn the events the torch hooks see into CompileRecords.

A graph's facts arrive in pieces: effect tokens before Inductor unlifts
them, the graph text when AOTAutograd logs it, the final metadata in
``RuntimeWrapper.post_compile``, the backward when it compiles lazily,
and the frame's CompilationMetrics last. The session keeps the pieces
(plain data, keyed by ``aot_id``, bounded) until a record can be built.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator
from typing import Any, Protocol

from aotwatch.capture import compile_metrics, graphs
from aotwatch.capture.metadata import read_metadata, saved_for_backward
from aotwatch.core import categories
from aotwatch.core.identity import identity
from aotwatch.core.lru import LruCache
from aotwatch.core.records import CacheBypass, Record, clip_text, make_record
from aotwatch.core.wire import Compiling

log = logging.getLogger("aotwatch.capture")

_MAX_PENDING = 4096
"""Graphs whose pieces may wait at once (a forward whose backward never runs waits forever)."""
_MAX_WAITING_PER_ID = 64
"""Lazy backwards that may wait under one compile id (several AOT graphs per frame)."""
_MAX_BYPASSES = 64
"""Cache bypasses kept for the next CompilationMetrics (one per AOT graph, usually)."""


class Sink(Protocol):
    """Where records go: the local aggregate, an archive, a queue to a collector."""

    def record(self, record: Record) -> None: ...

    def capture_error(self, job_name: str, stage: str) -> None: ...

    def compiling(self, state: Compiling | None) -> None: ...


class CaptureSession:
    """State between hook calls; every public method is called by a hook in capture.hooks."""

    def __init__(
        self,
        sink: Sink,
        *,
        job_name: str,
        node_counts: bool = True,
        graph_hashes: bool = True,
        compare_group_env: str | None = None,
    ) -> None:
        self.sink = sink
        self.job_name = job_name
        self.compare_group_env = compare_group_env
        self.node_counts = node_counts
        self.graph_hashes = graph_hashes
        self._lock = threading.Lock()
        self._digests = LruCache(_MAX_PENDING)  # (aot_id, graph kind) -> GraphDigest
        self._tokens = LruCache(_MAX_PENDING)  # aot_id -> (forward, backward) before unlifting
        self._cache_hits = LruCache(_MAX_PENDING)  # aot_id -> True for graphs loaded from cache
        self._lazy_backwards = LruCache(_MAX_PENDING)  # compile_id -> [(aot_id, bw tokens)]
        self._eager_backwards = LruCache(_MAX_PENDING)  # aot_id -> True: compiled with its forward
        self._lazy_hint = threading.local()  # .aot_id: the lazy backward compiling in this thread
        self._frame_devices = LruCache(_MAX_PENDING)  # compile_id -> device of its graphs
        self._last_device = "cpu"
        self._bypasses: list[dict[str, str | None]] = []  # since the last CompilationMetrics
        self._logged_stages: set[str] = set()

    # -- failures inside capture -----------------------------------------

    def failed(self, stage: str) -> None:
        """Count a failure of aotwatch's own work in ``stage``; log it once per stage."""
        try:
            self.sink.capture_error(self.job_name, stage)
            if stage not in self._logged_stages:
                self._logged_stages.add(stage)
                log.warning("aotwatch: capture failed in %s (logged once)", stage, exc_info=True)
        except Exception:  # noqa: BLE001 - nothing may escape into training code
            pass

    @contextlib.contextmanager
    def guard(self, stage: str) -> Iterator[None]:
        """Swallow and count any failure inside the block: see ``failed``."""
        try:
            yield
        except Exception:  # noqa: BLE001 - capture never raises into training code
            self.failed(stage)

    # -- compiles in progress ----------------------------------------------

    def compile_started(self, compile_id: str) -> None:
        """Dynamo began a compile (a frame, or a lazy backward): say so now, not at its end."""
        now = time.time(), time.monotonic()
        self.sink.compiling(Compiling(compile_id, self._last_device, *now))

    def compile_ended(self) -> None:
        self.sink.compiling(None)

    # -- pieces of a graph -----------------------------------------------

    def tokens_unlifted(self, aot_id: Any, forward: int, backward: int) -> None:
        with self._lock:
            self._tokens.put(aot_id, (forward, backward))

    def graph_logged(self, aot_id: Any, kind: str, module: Any, text: str | None) -> None:
        digest = graphs.digest_module(
            module,
            text,
            fast_sympy_print=kind == "inference",
            want_nodes=self.node_counts,
            want_hash=self.graph_hashes,
        )
        with self._lock:
            self._digests.put((aot_id, kind), digest)

    def cache_hit(self, aot_id: Any, forward_text: str | None, backward_text: str | None) -> None:
        """An AOTAutogradCache entry is being loaded: its graphs are known only as text."""
        texts = (("forward", forward_text), ("backward", backward_text))
        if backward_text is None:
            texts = (("inference", forward_text),)
        with self._lock:
            self._cache_hits.put(aot_id, True)
            for kind, text in texts:
                digest = graphs.digest_text(
                    text, want_nodes=self.node_counts, want_hash=self.graph_hashes
                )
                self._digests.put((aot_id, kind), digest)

    def cache_bypassed(self, error: BaseException) -> None:
        """AOTAutogradCache will not cache a graph: why (torch's exception), categorised."""
        cause = type(error.__cause__).__name__ if error.__cause__ is not None else ""
        category = categories.cache_bypass_category(str(error), type(error).__name__, cause)
        entry = CacheBypass(category, clip_text(str(error)))
        with self._lock:
            self._bypasses = [*self._bypasses[-(_MAX_BYPASSES - 1) :], entry]

    def _take_bypasses(self) -> list[CacheBypass]:
        with self._lock:
            taken, self._bypasses = self._bypasses, []
        return taken

    # -- records ---------------------------------------------------------

    def _emit(self, compile_id: str | None, kind: str | None, **fields: Any) -> None:
        who = identity(self.job_name, self.compare_group_env)
        record = make_record(**who, compile_id=compile_id, graph=kind, **fields)
        if kind is not None:
            with self._lock:
                if compile_id is not None:
                    self._frame_devices.put(compile_id, record.device)
                self._last_device = record.device
        self.sink.record(record)

    def _digest(self, aot_id: Any, kind: str) -> graphs.GraphDigest:
        with self._lock:
            return self._digests.pop((aot_id, kind), None) or graphs.GraphDigest(None, None, None)

    def _graph_fields(self, aot_id: Any, digest: graphs.GraphDigest, cache_hit: bool) -> dict:
        return {
            "aot_id": aot_id,
            "cache_hit": cache_hit,
            "graph_hash": digest.graph_hash,
            "collectives": list(digest.collectives),
            "collective_hash": graphs.schedule_hash(digest.collectives),
            "nodes": digest.nodes,
            "device": digest.device or self._last_device,
        }

    def graph_compiled(
        self, aot_id: Any, compile_id: str | None, trace_joint: bool, metadata: Any
    ) -> None:
        """``RuntimeWrapper.post_compile``: the final metadata of a forward or inference graph."""
        fields = read_metadata(metadata)
        with self._lock:
            unlifted = self._tokens.pop(aot_id, None)
            cache_hit = self._cache_hits.pop(aot_id, False)
            eager_backward = self._eager_backwards.pop(aot_id, False)
        if unlifted is not None:
            fields["tokens"] = {"forward": unlifted[0], "backward": unlifted[1]}
        kind = "forward" if trace_joint else "inference"
        digest = self._digest(aot_id, kind)
        if trace_joint:
            saved, saved_bytes = saved_for_backward(metadata, digest.output_bytes)
            fields["tensors_saved_for_backward"] = saved
            fields["bytes_saved_for_backward"] = saved_bytes
        else:
            fields["tangent_layouts"] = {}  # no backward will take any
        self._emit(compile_id, kind, **fields, **self._graph_fields(aot_id, digest, cache_hit))
        backward_tokens = fields["tokens"]["backward"]
        if trace_joint and cache_hit:
            # A cached backward is loaded with its forward: no lazy compile will follow.
            self._emit_backward(aot_id, compile_id, backward_tokens, {}, {}, cache_hit=True)
        elif trace_joint and not eager_backward:
            with self._lock:  # the backward compiles at the first .backward(), under compile_id
                waiting = self._lazy_backwards.get(compile_id, [])[-(_MAX_WAITING_PER_ID - 1) :]
                self._lazy_backwards.put(compile_id, [*waiting, (aot_id, backward_tokens)])

    def backward_compiled(self, aot_id: Any, compile_id: str | None, metadata: Any) -> None:
        """The backward graph compiled eagerly, with its forward (symints saved for backward)."""
        with self._lock:
            self._eager_backwards.put(aot_id, True)
            unlifted = self._tokens.get(aot_id)
        tokens = unlifted[1] if unlifted else int(getattr(metadata, "num_backward_tokens", 0) or 0)
        self._emit_backward(aot_id, compile_id, tokens, {}, {})

    def backward_compiling(self, aot_id: Any) -> None:
        """Which graph's lazy backward compiles now (when torch lets a hook see it)."""
        self._lazy_hint.aot_id = aot_id

    def _lazy_backward_done(self, compile_id: str | None) -> tuple[Any, int] | None:
        """The waiting backward of ``compile_id`` that just compiled: the hinted one, else the
        newest. Several wait under one compile id when a frame has several AOT graphs (their
        backwards run in reverse order) or when a forward's backward never ran before Dynamo
        was reset and compile ids started again."""
        hint, self._lazy_hint.aot_id = getattr(self._lazy_hint, "aot_id", None), None
        with self._lock:
            waiting = self._lazy_backwards.pop(compile_id, [])
            done = next((w for w in waiting if w[0] == hint), waiting[-1] if waiting else None)
            if done is not None and len(waiting) > 1:
                self._lazy_backwards.put(compile_id, [w for w in waiting if w is not done])
        return done

    def _emit_backward(
        self,
        aot_id: Any,
        compile_id: str | None,
        tokens: int,
        durations: dict,
        cache: dict,
        cache_hit: bool = False,
        cache_bypasses: list | None = None,
    ) -> None:
        self._emit(
            compile_id,
            "backward",
            tokens={"forward": 0, "backward": tokens},
            durations_s=durations,
            cache=cache,
            cache_bypasses=cache_bypasses or [],
            **self._graph_fields(aot_id, self._digest(aot_id, "backward"), cache_hit),
        )

    def compilation_metrics(
        self, metrics: Any, graph_break_reasons: list[str], bypasses: dict[str, int]
    ) -> None:
        """torch logged a CompilationMetrics: a frame's record, or a lazy backward's times."""
        durations = compile_metrics.durations(metrics)
        cache = compile_metrics.cache_counts(metrics, bypasses)
        bypassed = self._take_bypasses()
        if getattr(metrics, "is_forward", True) is False:
            compile_id = getattr(metrics, "compile_id", None)
            if getattr(metrics, "fail_type", None) is None:  # a failed one may be retried
                done = self._lazy_backward_done(compile_id)
                if done is not None:
                    self._emit_backward(
                        done[0], compile_id, done[1], durations, cache, cache_bypasses=bypassed
                    )
            return
        fields = compile_metrics.frame_fields(metrics, graph_break_reasons)
        with self._lock:
            device = self._frame_devices.pop(fields["compile_id"], self._last_device)
        self._emit(
            fields.pop("compile_id"),
            None,
            device=device,
            durations_s=durations,
            cache=cache,
            cache_bypasses=bypassed,
            **fields,
        )
