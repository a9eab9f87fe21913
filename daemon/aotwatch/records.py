"""The CompileRecord schema: plain, versioned, JSON-serialisable dicts.

One record per AOT graph (``graph`` = forward, backward or inference) or per
compiled frame (``graph`` is None). Records are the boundary between
processes, so they hold only plain data, and ``record_id`` makes
re-delivery idempotent. METRICS.md lists the keys others rely on.
"""

from __future__ import annotations

import json
import math
import time
import uuid
from typing import Any

SCHEMA_VERSION = 1

GRAPH_KINDS = ("forward", "backward", "inference")
MUTATION_KINDS = (
    "data",
    "metadata",
    "storage_metadata",
    "storage_resize",
    "hidden_from_autograd",
    "under_no_grad",
)
PLACEMENTS = ("in_graph", "out_of_graph")
TOKEN_DIRECTIONS = ("forward", "backward")
CACHES = ("fx_graph", "aot_autograd")
CACHE_RESULTS = ("hit", "miss", "bypass")

MAX_TEXT = 16_384
"""Longest string a record may carry (reasons and stack text are truncated to it)."""

MAX_LABEL = 256
"""Longest value of a field that becomes a label (job_name, device)."""
_LABEL_FIELDS = ("job_name", "device")

MAX_ID = 256
"""Longest identifier (record_id, compile_id, graph_hash, hostname): collectors remember many
of them."""
_ID_FIELDS = ("record_id", "compile_id", "graph_hash", "hostname")

MAX_NUMBER = 2**53
"""Largest number a record may carry: metric values are floats, exact up to 2**53."""

MAX_ITEMS = 4096
"""Most entries of a record's list or mapping (graph breaks, counts, a frame's fields)."""

MAX_RECORD_BYTES = 1 << 20
"""Longest record as one JSON line: every record accepted fits an archive line."""


def empty_record() -> dict[str, Any]:
    """A record with every field present and empty: capture fills in what it knows."""
    return {
        "schema": SCHEMA_VERSION,
        "record_id": "",
        "job_name": "default",
        "rank": 0,
        "world_size": 1,
        "device": "cpu",
        "hostname": "",
        "pid": 0,
        "time": 0.0,
        "compile_id": None,
        "frame": None,
        "graph": None,
        "aot_id": None,
        "cache_hit": False,
        "graph_hash": None,
        "nodes": None,
        "inputs": {"total": 0, "subclass": 0, **dict.fromkeys(MUTATION_KINDS, 0)},
        "mutation_placement": dict.fromkeys(PLACEMENTS, 0),
        "outputs": {},
        "intermediate_bases": 0,
        "tokens": dict.fromkeys(TOKEN_DIRECTIONS, 0),
        "symints_saved_for_backward": 0,
        "durations_s": {},
        "cache": {},
        "graph_breaks": [],
        "recompile_reason": None,
        "recompile_category": None,
        "fail_type": None,
        "fail_category": None,
        "fail_reason": None,
    }


RECORD_FIELDS = frozenset(empty_record())
"""Every field a record may carry: another key is refused, so what is accepted is archived."""


def new_record(**fields: Any) -> dict[str, Any]:
    """A fresh record with a new id and the current time, updated with ``fields``."""
    record = empty_record()
    record["record_id"] = uuid.uuid4().hex
    record["time"] = time.time()
    record.update(fields)
    return record


def clip_text(text: Any) -> str | None:
    """``text`` as a string no longer than MAX_TEXT, or None."""
    if text is None:
        return None
    text = str(text)
    return text if len(text) <= MAX_TEXT else text[: MAX_TEXT - 3] + "..."


class RecordError(ValueError):
    """A record refused as malformed; ``reason`` is a bounded label value."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


_NONE = type(None)
_MISSING = object()
_REQUIRED_TYPES: tuple[tuple[str, frozenset[type]], ...] = tuple(
    (key, frozenset(types))
    for key, types in {
        "schema": (int,),
        "record_id": (str,),
        "job_name": (str,),
        "rank": (int,),
        "world_size": (int,),
        "device": (str,),
        "hostname": (str,),
        "pid": (int,),
        "time": (int, float),
        "compile_id": (str, _NONE),
        "frame": (dict, _NONE),
        "graph": (str, _NONE),
        "graph_hash": (str, _NONE),
        "nodes": (int, _NONE),
        "inputs": (dict,),
        "outputs": (dict,),
        "intermediate_bases": (int,),
        "tokens": (dict,),
        "durations_s": (dict,),
        "cache": (dict,),
        "graph_breaks": (list,),
        "recompile_reason": (str, _NONE),
        "fail_type": (str, _NONE),
    }.items()
)
"""Exact types (``type(v) in ...``: a bool is not an int here) of the fields others rely on."""
_INT = frozenset({int})
_STR_OR_NONE = frozenset({str, _NONE})
_OPTIONAL_TEXT = ("fail_reason", "fail_category", "recompile_category")
"""Fields the fold reads besides the required ones: a string or null (or absent)."""
_SCALARS = frozenset({str, int, float, bool, _NONE})
_OPTIONAL_SCALARS = ("aot_id", "cache_hit", "symints_saved_for_backward")
"""Fields only archives and reports read: a JSON scalar (or absent)."""


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate (JSON escapes can make one)
        return False
    return True


def label_value_problem(text: str) -> str | None:
    """Why ``text`` cannot be a label value (longer than MAX_LABEL, not printable UTF-8), or
    None. Records, workers' count totals and the config all check label values with this."""
    if len(text) > MAX_LABEL:
        return f"has {len(text)} characters; at most {MAX_LABEL}"
    if not text.isprintable() or not _encodable(text):
        return "is not printable UTF-8 (a newline, a control character, a lone surrogate)"
    return None


_NUMBER = frozenset({int, float})


def _check_scalar(value: Any, key: str) -> None:
    if type(value) not in _SCALARS:
        raise RecordError("wrong_type", f"{key} is {type(value).__name__}")
    if type(value) is str and len(value) > MAX_TEXT:
        raise RecordError("too_large", key)
    if type(value) in _NUMBER and abs(value) > MAX_NUMBER:
        raise RecordError("too_large", key)


def _check_fields(fields: Any, key: str) -> None:
    """A small mapping of names to JSON scalars (a frame, a graph break)."""
    if type(fields) is not dict:
        raise RecordError("wrong_type", key)
    if len(fields) > MAX_ITEMS:
        raise RecordError("too_large", key)
    for name, value in fields.items():
        if type(name) is not str or len(name) > MAX_ID:
            raise RecordError("wrong_type", f"{key} field name")
        _check_scalar(value, f"{key}.{name}")


def _check_counts(counts: dict[Any, Any], key: str, number_types: frozenset[type]) -> None:
    if len(counts) > MAX_ITEMS:
        raise RecordError("too_large", key)
    for name, value in counts.items():
        if type(name) is not str or type(value) not in number_types:
            raise RecordError("wrong_type", f"{key}.{name}")
        if value < 0 or value != value or value == math.inf:
            raise RecordError("wrong_type", f"{key}.{name} must be a non-negative number")
        if value > MAX_NUMBER:
            raise RecordError("too_large", f"{key}.{name}")


def validate_record(obj: Any) -> dict[str, Any]:
    """Return ``obj`` if it is a well-formed record of this schema, else raise RecordError."""
    if type(obj) is not dict:
        raise RecordError("not_an_object", type(obj).__name__)
    if obj.get("schema") != SCHEMA_VERSION:
        raise RecordError("schema_version", f"schema {obj.get('schema')!r}")
    if not RECORD_FIELDS.issuperset(obj):
        unknown = next(key for key in obj if key not in RECORD_FIELDS)
        raise RecordError("unknown_field", repr(unknown)[:MAX_ID])
    for key, types in _REQUIRED_TYPES:
        value = obj.get(key, _MISSING)
        if type(value) not in types:
            if value is _MISSING:
                raise RecordError("missing_field", key)
            raise RecordError("wrong_type", f"{key} is {type(value).__name__}")
        if type(value) is str and len(value) > (MAX_ID if key in _ID_FIELDS else MAX_TEXT):
            raise RecordError("too_large", key)
        if type(value) is int and abs(value) > MAX_NUMBER:
            raise RecordError("too_large", key)
    if not obj["record_id"]:
        raise RecordError("missing_field", "record_id")
    for key in _LABEL_FIELDS:
        if len(obj[key]) > MAX_LABEL:
            raise RecordError("too_large", key)
        if label_value_problem(obj[key]):
            raise RecordError("wrong_type", f"{key} is not printable UTF-8")
    if obj["time"] < 0 or obj["time"] != obj["time"] or obj["time"] == math.inf:
        raise RecordError("wrong_type", "time must be a finite unix time")
    for key in _OPTIONAL_TEXT:
        if type(obj.get(key)) not in _STR_OR_NONE:
            raise RecordError("wrong_type", f"{key} is {type(obj.get(key)).__name__}")
        if obj.get(key) is not None and len(obj[key]) > MAX_TEXT:
            raise RecordError("too_large", key)
    for key in _OPTIONAL_SCALARS:
        _check_scalar(obj.get(key), key)
    if type(obj.get("mutation_placement", {})) is not dict:
        raise RecordError("wrong_type", "mutation_placement")
    _check_counts(obj.get("mutation_placement", {}), "mutation_placement", _INT)
    if obj["graph"] is not None and obj["graph"] not in GRAPH_KINDS:
        raise RecordError("wrong_type", f"graph {obj['graph']!r}")
    for key in ("inputs", "outputs", "tokens"):
        _check_counts(obj[key], key, _INT)
    _check_counts(obj["durations_s"], "durations_s", _NUMBER)
    if len(obj["cache"]) > MAX_ITEMS:
        raise RecordError("too_large", "cache")
    for cache, results in obj["cache"].items():
        if type(cache) is not str or type(results) is not dict:
            raise RecordError("wrong_type", "cache entry")
        _check_counts(results, "cache entry", _INT)
    if len(obj["graph_breaks"]) > MAX_ITEMS:
        raise RecordError("too_large", "graph_breaks")
    for graph_break in obj["graph_breaks"]:
        _check_fields(graph_break, "graph_breaks entry")
        if type(graph_break.get("category")) is not str:
            raise RecordError("wrong_type", "graph_breaks entry")
    _check_fields(obj["frame"] or {}, "frame")
    return obj


_ENCODER = json.JSONEncoder(separators=(",", ":"), check_circular=False)


def to_json(record: dict[str, Any]) -> str:
    """One line of JSON for an archive."""
    return _ENCODER.encode(record)


def encode_record(record: dict[str, Any]) -> bytes:
    """A validated record as one archive line (newline included); RecordError when it is
    beyond MAX_RECORD_BYTES or cannot be encoded."""
    try:
        line = (to_json(record) + "\n").encode("utf-8")
    except (TypeError, ValueError, RecursionError) as err:
        raise RecordError("wrong_type", f"cannot be encoded as JSON: {err}") from None
    if len(line) > MAX_RECORD_BYTES:
        raise RecordError("too_large", f"{len(line)} bytes as JSON")
    return line


def parse_json(line: bytes | str) -> Any:
    """One line of JSON; RecordError ``not_utf8``, ``too_large`` or ``not_json`` when it is
    none (bad bytes, nesting too deep for the parser, a torn line)."""
    if len(line) > MAX_RECORD_BYTES:
        raise RecordError("too_large", f"a line of {len(line)} bytes")
    if isinstance(line, bytes):
        try:
            line = line.decode("utf-8")
        except UnicodeDecodeError as err:
            raise RecordError("not_utf8", str(err)) from None
    try:
        return json.loads(line)
    except RecursionError:
        raise RecordError("not_json", "nested too deeply") from None
    except ValueError as err:
        raise RecordError("not_json", str(err)) from None


def from_json(line: bytes | str) -> dict[str, Any]:
    """Parse and validate one archive line."""
    return validate_record(parse_json(line))
