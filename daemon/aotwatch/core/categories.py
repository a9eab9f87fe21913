"""Map free-text compile reasons to bounded label values.

Every label value aotwatch exports comes from a fixed set; the free text
stays in records and reports. Each function here is pure and total: any
input, even None, maps to a value of its set, with ``other`` as the bucket.
"""

from __future__ import annotations

import re

OTHER = "other"

# Graph-break messages link to the registry page of their id, e.g. ".../gb/gb0059.html".
_GRAPH_BREAK_ID = re.compile(r"\b(gb\d{4})\b")
_GRAPH_BREAK_KEYWORDS = (
    ("data-dependent", "data_dependent"),
    ("data dependent", "data_dependent"),
    ("unsupported", "unsupported"),
    ("skip", "skipped_function"),
)

RECOMPILE_CATEGORIES = (
    "shape",
    "stride",
    "dtype",
    "device",
    "requires_grad",
    "object_identity",
    "global_state",
    "value",
    "recompile_limit",
    OTHER,
)
# Checked in order: the first pattern that matches a reason names its category.
_RECOMPILE_PATTERNS = (
    ("recompile_limit", re.compile(r"recompile.?limit|cache_size_limit", re.I)),
    ("shape", re.compile(r"size mismatch|rank mismatch|dimensionality|numel", re.I)),
    ("stride", re.compile(r"stride mismatch", re.I)),
    ("dtype", re.compile(r"dtype mismatch", re.I)),
    ("device", re.compile(r"device mismatch", re.I)),
    ("requires_grad", re.compile(r"requires_grad", re.I)),
    ("global_state", re.compile(r"GLOBAL_STATE|grad_mode|autocast|torch_function_mode", re.I)),
    ("object_identity", re.compile(r"\bid\(|ID_MATCH|___check_obj_id|object identity", re.I)),
    ("value", re.compile(r"\S+ (==|!=|<=|>=|<|>) \S+")),
)

FAIL_TYPES = (
    "unsupported",
    "recompile_limit",
    "backend_compiler_failed",
    "internal_dynamo_error",
    "torch_runtime_error",
    "user_error",
    OTHER,
)
_FAIL_TYPE_NAMES = {
    "Unsupported": "unsupported",
    "BackendCompilerFailed": "backend_compiler_failed",
    "InternalTorchDynamoError": "internal_dynamo_error",
    "TorchRuntimeError": "torch_runtime_error",
    "UserError": "user_error",
    "RecompileLimitExceeded": "recompile_limit",
    "FailOnRecompileLimitHit": "recompile_limit",
}


def graph_break_category(reason: str | None) -> str:
    """The graph-break registry id named in the message (``gb0059``), else a keyword bucket."""
    if not reason:
        return OTHER
    match = _GRAPH_BREAK_ID.search(reason)
    if match:
        return match.group(1)
    lowered = reason.lower()
    for keyword, category in _GRAPH_BREAK_KEYWORDS:
        if keyword in lowered:
            return category
    return OTHER


def is_graph_break_category(value: str) -> bool:
    """Whether ``value`` is a label value that graph_break_category can produce."""
    return bool(_GRAPH_BREAK_ID.fullmatch(value)) or value in {
        category for _, category in _GRAPH_BREAK_KEYWORDS
    } | {OTHER}


def recompile_category(reason: str | None) -> str:
    """Category of a recompile reason such as ``"0/0: tensor 'x' size mismatch at index 0"``."""
    if not reason:
        return OTHER
    for category, pattern in _RECOMPILE_PATTERNS:
        if pattern.search(reason):
            return category
    return OTHER


def fail_type_category(fail_type: str | None, fail_reason: str | None = None) -> str:
    """Bounded label for a failed frame: the exception class mapped to FAIL_TYPES."""
    if fail_reason and recompile_category(fail_reason.splitlines()[0]) == "recompile_limit":
        return "recompile_limit"
    if not fail_type:
        return OTHER
    return _FAIL_TYPE_NAMES.get(fail_type.rsplit(".", 1)[-1], OTHER)


CACHE_BYPASS_CATEGORIES = (
    "unsupported_op",
    "freezing",
    "fx_graph_cache_disabled",
    "fakify_first_call",
    "custom_hook",
    "triton_version",
    "unpicklable",
    "inductor_uncacheable",
    "error",
    OTHER,
)
# Checked in order against the text of torch's BypassAOTAutogradCache (autograd_cache.py).
_CACHE_BYPASS_PATTERNS = (
    ("unsupported_op", re.compile(r"Unsupported (call_function|call_method|node op)")),
    ("freezing", re.compile(r"freezing", re.I)),
    ("fx_graph_cache_disabled", re.compile(r"FX graph cache is not enabled", re.I)),
    ("fakify_first_call", re.compile(r"fakify_first_call")),
    ("custom_hook", re.compile(r"uuid\(\)|context_fn|Custom\w+(Estimator|Solver)")),
    ("triton_version", re.compile(r"triton", re.I)),
    ("unpicklable", re.compile(r"pickl|serializ", re.I)),
)


def cache_bypass_category(reason: str | None, exception: str = "", cause: str = "") -> str:
    """Category of an AOTAutogradCache bypass: its message, else the exception that made it
    (``BypassFxGraphCache``: Inductor cannot cache the graph; anything not a bypass: error)."""
    for category, pattern in _CACHE_BYPASS_PATTERNS:
        if reason and pattern.search(reason):
            return category
    if "BypassFxGraphCache" in (exception, cause):
        return "inductor_uncacheable"
    if exception and not exception.startswith("Bypass"):
        return "error"
    return OTHER
