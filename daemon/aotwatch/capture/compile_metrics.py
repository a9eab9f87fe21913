"""Read torch's ``CompilationMetrics`` (one per frame, one per lazy backward) into record fields."""

from __future__ import annotations

import re
from typing import Any

from aotwatch.core import categories
from aotwatch.core.records import PHASE_FIELDS_US, RECOMPILE_LIMITS, GraphBreak, clip_text

_COMPARED_VALUE = re.compile(
    r"""(==|!=)(\s*)"""
    r"""('(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*"|[-+]?\d[\w.+-]*)"""
)

# (cache, result) -> CompilationMetrics count fields, local and remote.
_CACHE_FIELDS = (
    (
        "fx_graph",
        "hit",
        ("inductor_fx_local_cache_hit_count", "inductor_fx_remote_cache_hit_count"),
    ),
    (
        "fx_graph",
        "miss",
        ("inductor_fx_local_cache_miss_count", "inductor_fx_remote_cache_miss_count"),
    ),
    (
        "aot_autograd",
        "hit",
        ("aotautograd_local_cache_hit_count", "aotautograd_remote_cache_hit_count"),
    ),
    (
        "aot_autograd",
        "miss",
        ("aotautograd_local_cache_miss_count", "aotautograd_remote_cache_miss_count"),
    ),
)


def _number(metrics: Any, name: str) -> float:
    value = getattr(metrics, name, None)
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else 0


def durations(metrics: Any) -> dict[str, float]:
    """Phase times in seconds; ``total`` is the whole frame (absent for a lazy backward)."""
    phases = {}
    total = _number(metrics, "entire_frame_compile_time_s")
    if total:
        phases["total"] = float(total)
    for name, phase in PHASE_FIELDS_US:
        if value := _number(metrics, name):
            phases[phase] = value / 1e6
    return phases


def cache_counts(metrics: Any, bypasses: dict[str, int]) -> dict[str, dict[str, int]]:
    """Hits and misses from the metrics, bypasses counted by the caller (torch's counters)."""
    caches: dict[str, dict[str, int]] = {}
    for cache, result, names in _CACHE_FIELDS:
        if count := int(sum(_number(metrics, name) for name in names)):
            caches.setdefault(cache, {})[result] = count
    for cache, count in bypasses.items():
        if count:
            caches.setdefault(cache, {})["bypass"] = count
    return caches


def redact_values(text: str | None) -> str | None:
    """``text`` with the values that guards compare against replaced by ``<value>``.

    A guard on a user's argument quotes its value (``mode == 'the value'``), which may come
    from a file or the environment; records keep the guard, never the value.
    """
    return text and _COMPARED_VALUE.sub(r"\1\2<value>", text)


def recompile_limits() -> dict[str, int]:
    """torch's recompile limits now (torch._dynamo.config), by the name records use."""
    from torch._dynamo import config

    limits = {}
    for setting, name in RECOMPILE_LIMITS:
        value = getattr(config, setting, None)
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            limits[name] = value
    return limits


def frame_fields(metrics: Any, graph_break_reasons: list[str]) -> dict[str, Any]:
    """Frame-record fields: where, what failed, why it recompiled, which breaks it took."""
    filename = clip_text(getattr(metrics, "co_filename", None))
    line = getattr(metrics, "co_firstlineno", None)
    user_frame = f"{filename}:{line}" if filename else None
    recompile_reason = getattr(metrics, "recompile_reason", None)
    fail_type = getattr(metrics, "fail_type", None)
    fail_reason = getattr(metrics, "fail_reason", None)
    return {
        "compile_id": getattr(metrics, "compile_id", None),
        "frame": {
            "co_name": clip_text(getattr(metrics, "co_name", None)),
            "filename": filename,
            "line": line,
        },
        "graph_breaks": [
            GraphBreak(
                reason=clip_text(redact_values(reason)),
                category=categories.graph_break_category(reason),
                user_frame=user_frame,
            )
            for reason in graph_break_reasons
        ],
        "recompile_limits": recompile_limits(),
        "recompile_reason": clip_text(redact_values(recompile_reason)),
        "recompile_category": recompile_reason and categories.recompile_category(recompile_reason),
        "fail_type": fail_type,
        "fail_category": fail_type and categories.fail_type_category(fail_type, fail_reason),
        "fail_reason": clip_text(redact_values(fail_reason)),
    }
