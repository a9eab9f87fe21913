"""The CompileRecord schema, declared once as ``Record``: every field with its type and bounds.

One record per AOT graph (``graph`` = forward, backward or inference) or per compiled frame
(``graph`` is None). Capture builds ``Record`` structs (``make_record``); they cross
processes as JSON lines, the archive's own format, and are validated by msgspec from this
one declaration wherever they arrive (``decode_line``, ``record_line``). ``record_id`` makes
re-delivery idempotent. docs/metrics.md lists the fields the metrics are folded from.
"""

from __future__ import annotations

import functools
import json
import re
import time
import uuid
from typing import Annotated, Any, Literal, NamedTuple

import msgspec
from msgspec import Meta

SCHEMA_VERSION = 1

GRAPH_KINDS = ("forward", "backward", "inference")
MUTATION_FLAGS = (
    ("mutates_data", "data"),
    ("mutates_metadata", "metadata"),
    ("mutates_storage_metadata", "storage_metadata"),
    ("mutation_inductor_storage_resize", "storage_resize"),
    # These two are vacuously True on inputs that are not mutated at all:
    # they only count for inputs that carry one of the flags above.
    ("mutations_hidden_from_autograd", "hidden_from_autograd"),
    ("mutations_under_no_grad_or_inference_mode", "under_no_grad"),
)
"""torch's ``InputAliasInfo`` flag -> the kind a record's ``inputs`` counts it under."""
MUTATION_KINDS = tuple(kind for _, kind in MUTATION_FLAGS)
PLACEMENT_TYPES = (("MUTATED_IN_GRAPH", "in_graph"), ("MUTATED_OUT_GRAPH", "out_of_graph"))
"""torch's ``MutationType`` -> where a mutation of an input is applied."""
PLACEMENTS = tuple(placement for _, placement in PLACEMENT_TYPES)
SUBCLASS_META = (
    ("input", "subclass_inp_meta"),
    ("output", "subclass_fw_graph_out_meta"),
    ("tangent", "subclass_tangent_meta"),
)
"""Where a graph's tensor subclasses show in ``ViewAndMutationMeta`` -> their role."""
SUBCLASS_ROLES = tuple(role for role, _ in SUBCLASS_META)
TANGENT_LAYOUTS = ("contiguous", "channels_last", "channels_last_3d", "strided")
"""The memory layout a backward expects of a tangent (``MemoryFormatMeta``)."""
PHASE_FIELDS_US = (
    ("dynamo_cumulative_compile_time_us", "dynamo"),
    ("aot_autograd_cumulative_compile_time_us", "aot_autograd"),
    ("inductor_cumulative_compile_time_us", "inductor"),
    ("inductor_code_gen_cumulative_compile_time_us", "inductor_codegen"),
    ("backward_cumulative_compile_time_us", "backward"),
    ("pre_grad_pass_time_us", "pre_grad_passes"),
    ("joint_graph_pass_time_us", "joint_graph_passes"),
    ("post_grad_pass_time_us", "post_grad_passes"),
    ("triton_compile_time_us", "triton_compile"),
)
"""torch's ``CompilationMetrics`` field (microseconds) -> the phase of ``durations_s``."""
PHASES = ("total", *(phase for _, phase in PHASE_FIELDS_US))
"""``durations_s`` keys: ``total`` is the whole frame (``entire_frame_compile_time_s``)."""
TOKEN_DIRECTIONS = ("forward", "backward")
CACHES = ("fx_graph", "aot_autograd")
RECOMPILE_LIMITS = (
    ("recompile_limit", "per_frame"),
    ("accumulated_recompile_limit", "accumulated"),
)
"""torch._dynamo.config's limit -> the name a record's ``recompile_limits`` keeps it under."""
CACHE_RESULTS = ("hit", "miss", "bypass")

MAX_TEXT = 16_384
"""Longest string a record may carry (reasons and stack text are truncated to it)."""

MAX_LABEL = 256
"""Longest value of a field that becomes a label (job_name, device)."""

MAX_ID = 256
"""Longest identifier (record_id, compile_id, graph_hash, hostname, a name in a mapping):
collectors remember many of them."""

MAX_NUMBER = 2**53
"""Largest number a record may carry: metric values are floats, exact up to 2**53."""

MAX_TIME = 253_402_300_799
"""Latest time a record may carry, 9999-12-31 23:59:59 UTC in Unix seconds: the last a
date can say. Durations are bounded the same (no compile outlasts the calendar)."""

MAX_ITEMS = 4096
"""Most entries of a record's list or mapping (graph breaks, counts, a frame's fields)."""

MAX_RECORD_BYTES = 1 << 20
"""Longest record as one JSON line: every record accepted fits an archive line."""

Id = Annotated[str, Meta(max_length=MAX_ID)]
Label = Annotated[str, Meta(max_length=MAX_LABEL)]
Text = Annotated[str, Meta(max_length=MAX_TEXT)]
Int = Annotated[int, Meta(ge=-MAX_NUMBER, le=MAX_NUMBER)]
Count = Annotated[int, Meta(ge=0, le=MAX_NUMBER)]
Seconds = Annotated[float, Meta(ge=0, le=MAX_TIME)]
Scalar = Text | Int | Annotated[float, Meta(ge=-MAX_NUMBER, le=MAX_NUMBER)] | bool | None
Counts = Annotated[dict[Id, Count], Meta(max_length=MAX_ITEMS)]
Fields = Annotated[dict[Id, Scalar], Meta(max_length=MAX_ITEMS)]
"""A small mapping of names to JSON scalars (a frame, a graph break)."""


class GraphBreak(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """One graph break of a frame."""

    reason: Text | None = None
    category: Text
    """A graph-break registry id (gbNNNN) or a category (``categories.graph_break_category``)."""
    user_frame: Text | None = None
    """``file:line`` of the user's code where the frame begins."""


class CacheBypass(msgspec.Struct, forbid_unknown_fields=True):
    """One AOTAutogradCache bypass."""

    category: Text
    """Bounded (``categories.CACHE_BYPASS_CATEGORIES``)."""
    reason: Text | None = None
    """torch's text."""


def _zeros(*names: str) -> Any:
    return msgspec.field(default_factory=lambda: dict.fromkeys(names, 0))


class Record(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=False):
    """One compile record. Fields without a default are required; another key is refused,
    so what is accepted is what gets archived."""

    schema: int
    record_id: Id
    job_name: Label
    rank: Int
    world_size: Int
    device: Label
    hostname: Id
    pid: Int
    time: Seconds
    """Unix time the record was made."""
    compare_group: Id | None = None
    """The ranks this rank is compared with: those of the same value (e.g. its pipeline stage,
    from ``capture.compare_group_env``); None: every rank of its job."""
    compile_id: Id | None = None
    frame: Fields | None = None
    graph: Literal[GRAPH_KINDS] | None = None
    aot_id: Scalar = None
    cache_hit: Scalar = False
    graph_hash: Id | None = None
    collectives: Annotated[list[Text], Meta(max_length=MAX_ITEMS)] = msgspec.field(
        default_factory=list
    )
    """The functional collectives the graph issues, in order (``all_reduce(sum, 0) f32[4]``)."""
    collective_hash: Id | None = None
    """Hash of the whole schedule (None: no collective); ranks must agree on it."""
    nodes: Count | None = None
    inputs: Counts = _zeros("total", "subclass", *MUTATION_KINDS)
    mutation_placement: Counts = _zeros(*PLACEMENTS)
    outputs: Counts = msgspec.field(default_factory=dict)
    intermediate_bases: Count = 0
    tokens: Counts = _zeros(*TOKEN_DIRECTIONS)
    symints_saved_for_backward: Count = 0
    tensors_saved_for_backward: Count | None = None
    """None where unknown: a graph loaded from the cache, a backward or inference graph."""
    bytes_saved_for_backward: Count | None = None
    """Their bytes; None where unknown, as above, or where a saved size is symbolic."""
    static_inputs: Count = 0
    donated_buffers: Count = 0
    subclasses: Annotated[dict[Id, Counts], Meta(max_length=MAX_ITEMS)] = msgspec.field(
        default_factory=dict
    )
    """Tensor subclasses by role (input, output, tangent) and type name."""
    tangent_layouts: Counts = msgspec.field(default_factory=dict)
    """A forward graph's tangents by the layout its backward expects (TANGENT_LAYOUTS)."""
    rng_functionalized: bool = False
    """Whether the graph's RNG ops were functionalized (``is_rng_op_functionalized``)."""
    durations_s: Annotated[dict[Id, Seconds], Meta(max_length=MAX_ITEMS)] = msgspec.field(
        default_factory=dict
    )
    cache: Annotated[dict[Id, Counts], Meta(max_length=MAX_ITEMS)] = msgspec.field(
        default_factory=dict
    )
    graph_breaks: Annotated[list[GraphBreak], Meta(max_length=MAX_ITEMS)] = msgspec.field(
        default_factory=list
    )
    cache_bypasses: Annotated[list[CacheBypass], Meta(max_length=MAX_ITEMS)] = msgspec.field(
        default_factory=list
    )
    recompile_limits: Counts = msgspec.field(default_factory=dict)
    """A frame's: torch's ``recompile_limit`` (``per_frame``) and ``accumulated_recompile_limit``
    (``accumulated``) when it compiled."""
    recompile_reason: Text | None = None
    recompile_category: Text | None = None
    fail_type: Text | None = None
    fail_category: Text | None = None
    fail_reason: Text | None = None


class CompileId(NamedTuple):
    """torch's ``CompileId`` as a record's ``compile_id`` says it: "F/A" is frame F's compile
    A, "F/A_R" its attempt R (dynamo restarted the analysis), "!C" or "!C/F/A" compiled
    autograd's graph C. ``str`` gives the text back; records keep the text."""

    frame: int | None
    compile: int | None
    attempt: int | None = None
    autograd: int | None = None

    def __str__(self) -> str:
        frame = "" if self.frame is None else f"{self.frame}/{self.compile}"
        attempt = "" if self.attempt is None else f"_{self.attempt}"
        if self.autograd is None:
            return frame + attempt
        return f"!{self.autograd}{'/' if frame else ''}{frame}{attempt}"

    @property
    def frame_compiles(self) -> int | None:
        """How many times the frame had compiled once this was made (the attempts of one
        compile count once); None for compiled autograd."""
        return None if self.autograd is not None or self.compile is None else self.compile + 1


_COMPILE_ID = re.compile(
    r"(?:!(?P<autograd>\d+))?(?:(?(autograd)/)(?P<frame>\d+)/(?P<compile>\d+))?(?:_(?P<attempt>\d+))?"
)


@functools.lru_cache(maxsize=4096)
def parse_compile_id(text: str | None) -> CompileId | None:
    """``text`` (a record's ``compile_id``) as a CompileId, or None when it is none or not
    torch's shape. Each distinct text is parsed once while it is in use."""
    match = _COMPILE_ID.fullmatch(text or "")
    if match is None or (match["autograd"] is None and match["frame"] is None):
        return None
    parts = match.groupdict()
    return CompileId(**{name: None if v is None else int(v) for name, v in parts.items()})


REQUIRED_FIELDS = tuple(f.name for f in msgspec.structs.fields(Record) if f.required)

_NEW_IDENTITY = {
    "schema": SCHEMA_VERSION,
    "record_id": "",
    "job_name": "default",
    "rank": 0,
    "world_size": 1,
    "device": "cpu",
    "hostname": "",
    "pid": 0,
    "time": 0.0,
}
"""Where capture starts before it knows the process's identity."""


def empty_record() -> dict[str, Any]:
    """A record with every field present and empty: capture fills in what it knows."""
    return msgspec.structs.asdict(Record(**_NEW_IDENTITY))


def make_record(**fields: Any) -> Record:
    """A fresh record with a new id and the current time, and ``fields`` (not validated
    here: see ``record_line``)."""
    return Record(**{**_NEW_IDENTITY, "record_id": uuid.uuid4().hex, "time": time.time(), **fields})


def new_record(**fields: Any) -> dict[str, Any]:
    """A fresh record as a plain dict (as JSON has it), updated with ``fields``."""
    record = msgspec.structs.asdict(make_record())
    record.update(fields)
    return record


def clip_text(text: Any) -> str | None:
    """``text`` as UTF-8-safe string no longer than MAX_TEXT, or None (a lone surrogate, as
    a file name read with surrogateescape carries, becomes a backslash escape)."""
    if text is None:
        return None
    text = str(text)
    if not _encodable(text):
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text if len(text) <= MAX_TEXT else text[: MAX_TEXT - 3] + "..."


def _read_by(module: str, *fields: str) -> dict[str, str]:
    return dict.fromkeys(fields, module)


READ_BY = {
    **_read_by(
        "aotwatch.core.identity",
        "job_name",
        "rank",
        "world_size",
        "hostname",
        "pid",
        "compare_group",
    ),
    **_read_by(
        "aotwatch.capture.session",
        "schema",
        "record_id",
        "time",
        "graph",
        "aot_id",
        "cache_hit",
        "tensors_saved_for_backward",
        "durations_s",
        "cache",
        "cache_bypasses",
    ),
    **_read_by(
        "aotwatch.capture.graphs",
        "device",
        "graph_hash",
        "collectives",
        "collective_hash",
        "nodes",
        "bytes_saved_for_backward",
    ),
    **_read_by(
        "aotwatch.capture.metadata",
        "inputs",
        "mutation_placement",
        "outputs",
        "intermediate_bases",
        "tokens",
        "symints_saved_for_backward",
        "static_inputs",
        "donated_buffers",
        "subclasses",
        "tangent_layouts",
        "rng_functionalized",
    ),
    **_read_by(
        "aotwatch.capture.compile_metrics",
        "compile_id",
        "frame",
        "graph_breaks",
        "recompile_limits",
        "recompile_reason",
        "recompile_category",
        "fail_type",
        "fail_category",
        "fail_reason",
    ),
}
"""Each ``Record`` field -> the module that reads it from torch (or the process): with a
metric row's ``fed_by``, the two places a newcomer opens to follow a metric from torch."""


class RecordError(ValueError):
    """A record refused as malformed; ``reason`` is a bounded label value."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


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


def shown_text(record: Record) -> list[str]:
    """The names a record gives that reports, ``aotwatch status`` and the head's log print
    (divergences name compile ids, compare groups, graph hashes, collective schedules and
    cache results): validation refuses a record where one is not printable, as it refuses
    such a label."""
    texts = [record.compile_id or "", record.graph_hash or "", record.collective_hash or ""]
    texts.append(record.compare_group or "")
    texts += record.collectives
    for cache, results in record.cache.items():
        texts += (cache, *results)
    return texts


def printable(text: Any) -> str:
    """``text`` (or ``str(text)``) with every character that is not printable written as its
    escape (ESC as ``\\x1b``, a newline as ``\\n``): how text from records reaches a terminal or
    a log, where a control character could erase lines, hide text or write the clipboard."""
    text = str(text)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)


# -- validation: msgspec checks the declaration, ``_check`` what it cannot express ---------

_LINE_DECODER = msgspec.json.Decoder(Record)
_ENCODER = msgspec.json.Encoder()
_GOOD_LABELS: set[str] = set()  # label values already found printable
_GOOD_LABELS_MAX = 10_000


def _refusal(obj: Any, err: msgspec.ValidationError) -> RecordError:
    """The bounded reason for what msgspec refused."""
    message = str(err)
    if type(obj) is not dict:
        return RecordError("not_an_object", type(obj).__name__)
    if obj.get("schema") != SCHEMA_VERSION or type(obj.get("schema")) is not int:
        return RecordError("schema_version", f"schema {obj.get('schema')!r:.40}")
    if "missing required field" in message:
        return RecordError("missing_field", message)
    if "unknown field" in message:
        return RecordError("unknown_field", message[:MAX_ID])
    if "<=" in message or ">= -" in message or "out of range" in message:
        return RecordError("too_large", message)
    return RecordError("wrong_type", message)


def _check(record: Record) -> Record:
    """What the declaration cannot say: the schema version, a record id, printable labels and
    ``shown_text``."""
    if record.schema != SCHEMA_VERSION:
        raise RecordError("schema_version", f"schema {record.schema}")
    if not record.record_id:
        raise RecordError("missing_field", "record_id")
    for value in (record.job_name, record.device):
        if value not in _GOOD_LABELS:
            if label_value_problem(value):
                raise RecordError("wrong_type", "a label is not printable UTF-8")
            if len(_GOOD_LABELS) >= _GOOD_LABELS_MAX:
                _GOOD_LABELS.clear()
            _GOOD_LABELS.add(value)
    if not "".join(shown_text(record)).isprintable():
        raise RecordError(
            "wrong_type", "a compile id, hash, collective or cache name is not printable"
        )
    return record


def to_record(obj: Any) -> Record:
    """``obj`` (a record dict, or a Record) validated; RecordError when it is malformed or
    cannot be archived (``record_line``)."""
    return obj if type(obj) is Record else record_line(obj)[0]


def record_line(obj: Any) -> tuple[Record, bytes]:
    """A record (a dict, or a Record made in this process) validated, and its archive line."""
    if type(obj) is Record:  # made by capture: msgspec validates what it decodes, not structs
        line = encode_record(obj)
        return decode_line(line), line
    try:
        record = _check(msgspec.convert(obj, Record))
    except msgspec.ValidationError as err:
        raise _refusal(obj, err) from None
    return record, encode_record(record)


def decode_line(line: bytes) -> Record:
    """One JSON line validated into a Record; RecordError ``not_utf8``, ``not_json``,
    ``too_large`` or what the record breaks."""
    if len(line) > MAX_RECORD_BYTES:
        raise RecordError("too_large", f"a line of {len(line)} bytes")
    try:
        return _check(_LINE_DECODER.decode(line))
    except msgspec.ValidationError as err:
        raise _refusal(parse_json(line), err) from None
    except msgspec.DecodeError:
        parse_json(line)  # raises the reason: not UTF-8, not JSON
        raise RecordError("not_json", "not a record") from None


def decode_lines(data: bytes) -> list[tuple[Record, bytes] | RecordError]:
    """Each non-blank line of ``data`` as a (Record, its line) pair, or the RecordError that
    refuses it. One call into msgspec for the whole batch when every line is well formed."""
    lines = [line for line in data.split(b"\n") if line.strip()]
    if len(data) <= MAX_RECORD_BYTES:
        try:
            records = _LINE_DECODER.decode_lines(data)
        except (msgspec.ValidationError, msgspec.DecodeError):
            records = None
        if records is not None and len(records) == len(lines):
            return [_checked(record, line) for record, line in zip(records, lines, strict=True)]
    return [_decoded(line) for line in lines]


def _checked(record: Record, line: bytes) -> tuple[Record, bytes] | RecordError:
    try:
        return _check(record), line.rstrip(b"\n") + b"\n"
    except RecordError as err:
        return err


def _decoded(line: bytes) -> tuple[Record, bytes] | RecordError:
    try:
        return _checked(decode_line(line), line)
    except RecordError as err:
        return err


def as_dict(record: Record) -> dict[str, Any]:
    """A record as the plain dict capture made (a copy)."""
    return msgspec.to_builtins(record)


def encode_record(record: Record | dict[str, Any]) -> bytes:
    """A record as one archive line (newline included); RecordError when it is beyond
    MAX_RECORD_BYTES or its text is not UTF-8."""
    try:
        line = _ENCODER.encode(record) + b"\n"
    except (TypeError, ValueError, UnicodeEncodeError, RecursionError) as err:
        raise RecordError("wrong_type", f"cannot be encoded as JSON: {err}") from None
    if len(line) > MAX_RECORD_BYTES:
        raise RecordError("too_large", f"{len(line)} bytes as JSON")
    return line


def to_json(entry: Any) -> str:
    """One line of JSON (any value; a record, or an entry of an aotwatch file)."""
    return json.dumps(entry, separators=(",", ":"), check_circular=False)


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
