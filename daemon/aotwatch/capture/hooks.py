"""The only place aotwatch touches torch internals: a table of compile-time functions to wrap.

Each wrapper calls torch's own function unchanged (its result and its
exceptions pass through) and hands what it saw to the CaptureSession
inside ``session.guard``, so a failure of aotwatch is counted and logged,
never raised. Nothing here runs per training step: every wrapped function
runs only while torch compiles. A function this torch does not have is
skipped and counted as a capture error at stage ``install``.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aotwatch.capture.session import CaptureSession

log = logging.getLogger("aotwatch.capture")

_AOT = "torch._functorch._aot_autograd"
_BYPASS_COUNTERS = (
    ("fx_graph", "inductor", "fxgraph_cache_bypass"),
    ("aot_autograd", "aot_autograd", "autograd_cache_bypass"),
)


def _current_compile_id() -> str | None:
    from torch._guards import CompileContext

    compile_id = CompileContext.current_compile_id()
    return None if compile_id is None else str(compile_id)


def _bound(original: Callable, args: tuple, kwargs: dict) -> dict[str, Any]:
    return inspect.signature(original).bind(*args, **kwargs).arguments


# -- wrappers: each takes (original, session) and returns the replacement ----


def _unlift_tokens(original: Callable, session: CaptureSession) -> Callable:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with session.guard("unlift_tokens"):
            bound = _bound(original, args, kwargs)
            meta = bound["fw_metadata"]
            session.tokens_unlifted(
                bound["aot_config"].aot_id, len(meta.tokens), int(meta.num_backward_tokens)
            )
        return original(*args, **kwargs)

    return wrapper


def _log_inference_graph(original: Callable, session: CaptureSession) -> Callable:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        text = original(*args, **kwargs)
        with session.guard("inference_graph"):
            bound = _bound(original, args, kwargs)
            session.graph_logged(bound["aot_config"].aot_id, "inference", bound["fw_module"], text)
        return text

    return wrapper


def _log_fw_bw_graphs(original: Callable, session: CaptureSession) -> Callable:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        texts = original(*args, **kwargs)
        with session.guard("autograd_graphs"):
            bound = _bound(original, args, kwargs)
            aot_id = bound["aot_config"].aot_id
            session.graph_logged(aot_id, "forward", bound["fw_module"], texts[0])
            session.graph_logged(aot_id, "backward", bound["bw_module"], texts[1])
        return texts

    return wrapper


def _runtime_wrapper_post_compile(original: Callable, session: CaptureSession) -> Callable:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        result = original(*args, **kwargs)
        with session.guard("graph_metadata"):
            bound = _bound(original, args, kwargs)
            session.graph_compiled(
                bound["aot_config"].aot_id,
                _current_compile_id(),
                bool(bound["self"].trace_joint),
                bound["runtime_metadata"],
            )
        return result

    return wrapper


def _eager_backward_compile(original: Callable, session: CaptureSession) -> Callable:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        result = original(*args, **kwargs)
        with session.guard("backward_graph"):
            if result[1] is not None:  # compiled now, not lazily (symints saved for backward)
                bound = _bound(original, args, kwargs)
                session.backward_compiled(
                    bound["aot_config"].aot_id, _current_compile_id(), bound["fw_metadata"]
                )
        return result

    return wrapper


def _lazy_backward_compile(original: Callable, session: CaptureSession) -> Callable:
    # Runs once per graph, right before its lazy backward compiles (get_or_compile itself runs
    # at every backward: it must not be wrapped). It only names the graph: the record is made
    # when the backward's CompilationMetrics arrive, which also works on torch without it.
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        result = original(self, *args, **kwargs)
        with session.guard("backward_graph"):
            session.backward_compiling(self.aot_config.aot_id)
        return result

    return wrapper


def _cache_hit(original: Callable, session: CaptureSession) -> Callable:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with session.guard("cache_hit"):
            bound = _bound(original, args, kwargs)
            entry = bound["self"]
            backward = entry.aot_backward_graph_str if entry.compiled_bw is not None else None
            if entry.compiled_bw is not None and backward is None:
                backward = ""  # an autograd entry whose backward text was not stored
            session.cache_hit(bound["aot_config"].aot_id, entry.aot_forward_graph_str, backward)
        return original(*args, **kwargs)

    return wrapper


def _cache_key(original: Callable, session: CaptureSession) -> Callable:
    # AOTAutogradCache computes a graph's key inside a try: what it raises is a bypass.
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return original(*args, **kwargs)
        except Exception as error:
            with session.guard("cache_bypass"):
                session.cache_bypassed(error)
            raise

    return wrapper


def _cache_save_error(original: Callable, session: CaptureSession) -> Callable:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with session.guard("cache_bypass"):
            bound = _bound(original, args, kwargs)
            if bound.get("is_bypass"):  # torch counts only these as bypasses
                session.cache_bypassed(bound["e"])
        return original(*args, **kwargs)

    return wrapper


def _compile_started(original: Callable, session: CaptureSession) -> Callable:
    # Dynamo runs its start callbacks when the outermost compile (a frame, a lazy backward)
    # begins: the moment a compile is known, before anything of it is.
    def wrapper(self: Any, args: Any) -> Any:
        with session.guard("compile_started"):
            session.compile_started(str(args.compile_id))
        return original(self, args)

    return wrapper


def _compile_ended(original: Callable, session: CaptureSession) -> Callable:
    def wrapper(self: Any, args: Any) -> Any:
        try:
            return original(self, args)
        finally:
            with session.guard("compile_started"):
                session.compile_ended()

    return wrapper


class _CounterDeltas:
    """What torch's process-wide counters gained since the previous compile event."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last: dict[tuple[str, str], int] = {}

    def take(self, counters: Any) -> tuple[list[str], dict[str, int]]:
        with self._lock:
            breaks = []
            for reason, count in list(counters["graph_break"].items()):
                new = count - self._last.get(("graph_break", reason), 0)
                self._last[("graph_break", reason)] = count
                breaks.extend([reason] * max(new, 0))
            bypasses = {}
            for cache, group, name in _BYPASS_COUNTERS:
                count = counters[group][name]
                bypasses[cache] = max(count - self._last.get((group, name), 0), 0)
                self._last[(group, name)] = count
            return breaks, bypasses


def _log_compilation_event(original: Callable, session: CaptureSession) -> Callable:
    from torch._dynamo.utils import counters

    deltas = _CounterDeltas()
    deltas.take(counters)  # what happened before attach is not ours to report

    def wrapper(metrics: Any) -> Any:
        result = original(metrics)
        with session.guard("compilation_metrics"):
            breaks, bypasses = deltas.take(counters)
            session.compilation_metrics(metrics, breaks, bypasses)
        return result

    return wrapper


@dataclass(frozen=True)
class Hook:
    """Wrap ``module.attr`` (``attr`` may be ``Class.method``) with ``make(original, session)``.

    An ``optional`` hook only sharpens what others capture: a torch without it is no error.
    """

    module: str
    attr: str
    make: Callable[[Callable, CaptureSession], Callable]
    optional: bool = False


HOOKS = (
    Hook(f"{_AOT}.graph_capture", "unlift_tokens", _unlift_tokens),
    Hook(f"{_AOT}.graph_compile", "unlift_tokens", _unlift_tokens),
    Hook(f"{_AOT}.graph_compile", "_log_inference_graph", _log_inference_graph),
    Hook(f"{_AOT}.graph_compile", "_log_fw_bw_graphs", _log_fw_bw_graphs),
    Hook(f"{_AOT}.graph_compile", "_aot_stage2b_bw_compile", _eager_backward_compile),
    Hook(f"{_AOT}.runtime_wrappers", "RuntimeWrapper.post_compile", _runtime_wrapper_post_compile),
    Hook(
        f"{_AOT}.runtime_wrappers",
        "_AutogradBackwardCompiler._prepare_lazy_backward_context",
        _lazy_backward_compile,
        optional=True,  # torch >= 2.13; older torch matches backwards by compile id alone
    ),
    Hook(f"{_AOT}.aot_autograd_result", "GenericAOTAutogradResult.wrap_post_compile", _cache_hit),
    Hook("torch._dynamo.utils", "log_compilation_event", _log_compilation_event),
    Hook(f"{_AOT}.autograd_cache", "autograd_cache_key", _cache_key, optional=True),
    Hook(
        "torch._dynamo.callback",
        "CompilationCallbackHandler.run_start_callbacks",
        _compile_started,
        optional=True,  # compiles in progress only: the records come without it
    ),
    Hook(
        "torch._dynamo.callback",
        "CompilationCallbackHandler.run_end_callbacks",
        _compile_ended,
        optional=True,
    ),
    Hook(
        f"{_AOT}.autograd_cache",
        "AOTAutogradCache._handle_save_error",
        _cache_save_error,
        optional=True,  # bypass reasons only: the bypass counts come from torch's counters
    ),
)


@dataclass
class _Installed:
    owner: Any
    name: str
    original: Callable
    wrapper: Callable


_installed: list[_Installed] = []
_install_lock = threading.Lock()


def _resolve(hook: Hook) -> tuple[Any, str]:
    owner = importlib.import_module(hook.module)
    *path, name = hook.attr.split(".")
    for part in path:
        owner = getattr(owner, part)
    getattr(owner, name)  # AttributeError if this torch lacks it
    return owner, name


def _wrap(hook: Hook, original: Any, session: CaptureSession) -> Any:
    """``hook.make``'s wrapper of ``original``, a static method again if it was one."""
    if isinstance(original, staticmethod):
        function = original.__func__
        return staticmethod(functools.wraps(function)(hook.make(function, session)))
    return functools.wraps(original)(hook.make(original, session))


def install(session: CaptureSession) -> int:
    """Wrap every hook this torch has; return how many were installed."""
    import torch._dynamo  # noqa: F401 - must precede runtime_wrappers (circular import)

    with _install_lock:
        if _installed:
            raise RuntimeError("capture hooks are already installed")
        for hook in HOOKS:
            try:
                owner, name = _resolve(hook)
                original = owner.__dict__[name]
                wrapper = _wrap(hook, original, session)
            except Exception:  # noqa: BLE001 - another torch: skip the hook, count it
                if hook.optional:
                    log.debug("aotwatch: optional hook %s.%s absent", hook.module, hook.attr)
                else:
                    session.failed("install")
                continue
            setattr(owner, name, wrapper)
            _installed.append(_Installed(owner, name, original, wrapper))
        return len(_installed)


def uninstall() -> None:
    """Put torch's own functions back."""
    with _install_lock:
        while _installed:
            item = _installed.pop()
            if item.owner.__dict__.get(item.name) is item.wrapper:
                setattr(item.owner, item.name, item.original)
