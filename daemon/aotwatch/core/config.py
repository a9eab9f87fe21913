"""Daemon configuration: YAML -> frozen dataclasses, with errors that name the file and the key.

The dataclasses below are the single source of truth: every key, its type, its default and its
allowed values. Types are checked generically from the annotations, ranges from field metadata,
in ``__post_init__``, so a config built in Python is checked exactly like one read from YAML.
"""

import dataclasses
import difflib
import json
import os
import re
import reprlib
import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar, get_args, get_origin, get_type_hints

import yaml

from aotwatch.core.metrics import RESERVED_LABEL_NAMES
from aotwatch.core.records import MAX_LABEL, label_value_problem

_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")


S = TypeVar("S")


class ConfigError(ValueError):
    """An invalid config; ``str(err)`` is one line: ``<file>: <key>: <problem>; expected <what>``.

    ``file`` and ``key`` are None where there is none (a config built in Python, a YAML error).
    """

    def __init__(
        self,
        problem: str,
        *,
        file: str | None = None,
        key: str | None = None,
        expected: str | None = None,
    ) -> None:
        self.problem, self.file, self.key, self.expected = problem, file, key, expected
        message = ": ".join(part for part in (file, key, problem) if part)
        if expected:
            message += f"; expected {expected}"
        super().__init__(" ".join(message.splitlines()))


_TYPE_NAMES = {bool: "bool", int: "int", float: "float", str: "str", list: "list", dict: "mapping"}
_EXPECTED = {bool: "true or false", int: "an integer", str: "a string", type(None): "null"}


def _plain(value: Any) -> Any:
    if isinstance(value, Section):
        return value.to_dict()
    return dict(value) if isinstance(value, Mapping) else value


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother = 3, 40, 40
_REPR.maxlist = _REPR.maxtuple = _REPR.maxset = _REPR.maxfrozenset = _REPR.maxdict = 8


def _short(value: Any) -> str:
    """``repr(value)`` in at most 40 characters, at a cost bounded whatever the value's size
    (YAML aliases can make a small file hold a list of billions of items)."""
    text = _REPR.repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    return f"{_TYPE_NAMES.get(type(value), type(value).__name__)} {_short(value)}"


def _matches(value: Any, hint: Any) -> bool:
    origin = get_origin(hint)
    if origin is types.UnionType:
        return any(_matches(value, arg) for arg in get_args(hint))
    if origin is not None:
        return isinstance(value, origin)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)


def _expected(hint: Any) -> str:
    if dataclasses.is_dataclass(hint):
        return "a mapping with keys " + ", ".join(sorted(f.name for f in dataclasses.fields(hint)))
    if get_origin(hint) is types.UnionType:
        return " or ".join(_expected(arg) for arg in get_args(hint))
    if get_origin(hint) is Mapping:
        return "a mapping"
    return _EXPECTED[hint]


def _check_type(value: Any, hint: Any, key: str) -> None:
    if not _matches(value, hint):
        raise ConfigError(f"got {_describe(value)}", key=key, expected=_expected(hint))
    if get_origin(hint) is Mapping:
        name_hint, item_hint = get_args(hint)
        for name, item in value.items():
            if not _matches(name, name_hint):
                raise ConfigError(
                    f"the name is {_describe(name)}",
                    key=f"{key}.{name}",
                    expected=_expected(name_hint),
                )
            _check_type(item, item_hint, f"{key}.{name}")


def between(low: int, high: int) -> dict[str, Callable[[Any, str], None]]:
    """Field metadata: an integer in ``low..high``."""

    def check(value: int, key: str) -> None:
        if not low <= value <= high:
            raise ConfigError(f"{value} is out of range", key=key, expected=f"{low}..{high}")

    return {"check": check}


def length(low: int, high: int) -> dict[str, Callable[[Any, str], None]]:
    """Field metadata: a string of ``low..high`` characters."""

    def check(value: str, key: str) -> None:
        if not low <= len(value) <= high:
            raise ConfigError(
                f"{_short(value)} has {len(value)} characters",
                key=key,
                expected=f"{low}..{high} characters",
            )

    return {"check": check}


def label_value(low: int) -> dict[str, Callable[[Any, str], None]]:
    """Field metadata: a label value of at least ``low`` characters, checked exactly as records
    check theirs (``records.label_value_problem``: at most MAX_LABEL, printable UTF-8)."""

    def check(value: str, key: str) -> None:
        _check_label_value(value, key, low)

    return {"check": check}


def _check_label_value(value: str, key: str, low: int = 0) -> None:
    problem = label_value_problem(value)
    if problem is None and len(value) < low:
        problem = f"has {len(value)} characters"
    if problem:
        expected = f"printable UTF-8 text of {low}..{MAX_LABEL} characters"
        raise ConfigError(f"{_short(value)} {problem}", key=key, expected=expected)


def _check_labels(labels: Mapping[str, str], key: str) -> None:
    """Label names by Prometheus's rules and not ones aotwatch sets; values as label_value."""
    for name, value in labels.items():
        path = f"{key}.{name}"
        if not _LABEL_NAME.fullmatch(name):
            raise ConfigError(
                f"{name!r} is not a valid label name",
                key=path,
                expected="letters, digits and underscores, not starting with a digit",
            )
        if name.startswith("__"):
            raise ConfigError(
                "names starting with '__' are reserved by Prometheus",
                key=path,
                expected="a name that does not start with '__'",
            )
        if name in RESERVED_LABEL_NAMES:
            raise ConfigError(
                f"{name!r} is a label that aotwatch sets itself",
                key=path,
                expected=f"a name other than {', '.join(sorted(RESERVED_LABEL_NAMES))}",
            )
        _check_label_value(value, path)


class Section:
    """Base of the config dataclasses: checks every field and freezes mappings."""

    def __post_init__(self) -> None:
        hints = get_type_hints(type(self))
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            _check_type(value, hints[f.name], f.name)
            if value is not None and "check" in f.metadata:
                f.metadata["check"](value, f.name)
            if isinstance(value, Mapping):
                object.__setattr__(self, f.name, types.MappingProxyType(dict(value)))

    def __reduce__(self) -> tuple[type, tuple[Any, ...]]:
        """Pickle and copy through the constructor: a mappingproxy cannot be pickled."""
        values = (getattr(self, f.name) for f in dataclasses.fields(self))
        return type(self), tuple(dict(v) if isinstance(v, Mapping) else v for v in values)

    def to_dict(self) -> dict[str, Any]:
        """The config as plain dicts and scalars (for printing, JSON or YAML)."""
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}


LOCAL_PORTS = 64
"""Ports local mode keeps for a node, from export.port up: one per local rank of a node of up
to this many processes. The collector's and the head's ports must stay outside them."""


@dataclass(frozen=True)
class ExportConfig(Section):
    """The Prometheus /metrics endpoint a process serves itself in local mode."""

    enabled: bool = True
    """Serve /metrics in local mode."""

    address: str = field(default="127.0.0.1", metadata=length(1, 255))
    """Bind address; "0.0.0.0" lets a remote Prometheus scrape."""

    port: int = field(default=9420, metadata=between(0, 65535))
    """TCP port, 0..65535; 0 picks any free port. In local mode the local rank (LOCAL_RANK,
    SLURM_LOCALID, ...) is added to it: the LOCAL_PORTS (64) from here up are local mode's."""

    web_config: str | None = field(default=None, metadata=length(1, 4096))
    """Path of a web-config file (exporter-toolkit's shape: TLS, basic auth); null: plain HTTP."""


@dataclass(frozen=True)
class CaptureConfig(Section):
    """What capture computes for every AOT graph (at compile time, never per step)."""

    graph_hashes: bool = True
    """Compute a stable hash of every AOT graph (needed for cross-rank divergence)."""

    node_counts: bool = True
    """Count the FX nodes of every AOT graph."""

    compare_group_env: str | None = field(default=None, metadata=length(1, 255))
    """The environment variable that says which ranks compile the same thing (the pipeline
    stage, the expert group): ranks are compared only with ranks of the same value. Unset
    (or the variable unset): every rank of a job with every other."""


@dataclass(frozen=True)
class ArchiveConfig(Section):
    """Raw records kept on disk besides the aggregated metrics."""

    path: str | None = field(default=None, metadata=length(1, 4096))
    """Directory; when set, every record is appended to ``<path>/records.jsonl``."""

    retention_days: int = field(default=30, metadata=between(0, 36_500))
    """Collectors remove a finished job's archive this many days after it finished; 0 keeps
    them by age."""

    max_bytes: int = field(default=10 * 2**30, metadata=between(0, 2**62))
    """Collectors remove finished jobs' archives, oldest first, while together they hold
    more than this many bytes; 0: no bound."""


@dataclass(frozen=True)
class LimitsConfig(Section):
    """Bounds that protect Prometheus, the training process and aotwatch's own servers."""

    max_series_per_metric: int = field(default=1000, metadata=between(1, 1_000_000))
    """Label sets per metric family, 1..1_000_000; new label sets beyond it are dropped."""

    max_workers_per_job: int = field(default=1024, metadata=between(1, 1_000_000))
    """Worker processes of one job that a collector (or a local-mode process) keeps track of,
    1..1_000_000; workers beyond it still have their records counted, not themselves."""

    max_workers_per_collector: int = field(default=1024, metadata=between(1, 1_000_000))
    """Worker processes of all jobs together that a collector keeps track of, 1..1_000_000;
    a worker past it is refused (its records are still counted, not itself) and counted in
    aotwatch_workers_refused_total."""

    per_rank_detail: bool = False
    """Collectors keep every family per rank, breakdowns and histograms too (what a small
    job can afford); false: those the metric table keeps per job on a node sum the node's
    ranks of each job (docs/metrics.md says which)."""

    max_connections: int = field(default=64, metadata=between(1, 65_536))
    """Connections each /metrics server (local mode, collectors, the head) holds at once,
    1..65_536, and never more than a quarter of the process's open-file limit. Past it, a new
    connection closes the oldest one still sending its request from the client address that
    holds the most of those."""

    max_connections_per_address: int = field(default=16, metadata=between(1, 65_536))
    """Connections each /metrics server holds at once from one client address, 1..65_536 (at
    most max_connections). Past it, a new connection from that address closes the address's
    oldest one still sending its request, so one address cannot take the others' room."""

    request_timeout_s: int = field(default=10, metadata=between(1, 3600))
    """Seconds a client has to send its whole request (TLS handshake, request line and
    headers), 1..3600; a client still sending then is disconnected."""


@dataclass(frozen=True)
class ClusterConfig(Section):
    """The Ray cluster that aotwatch's collectors run on."""

    address: str | None = field(default=None, metadata=length(1, 1024))
    """Ray address ("auto", "host:6379", "ray://host:10001"); null: the cluster this process is
    in, or a new local one for ``aotwatch run``. When set, ``attach()`` outside Ray joins it
    (call your own ``ray.init()`` first, if any); if it cannot be reached, capture stays local
    after one warning."""

    namespace: str = field(default="aotwatch", metadata=length(1, 128))
    """Ray namespace of aotwatch's named actors (one collector per node, one head)."""


@dataclass(frozen=True)
class CollectorConfig(Section):
    """The per-node collectors and the head that watches them."""

    address: str = field(default="0.0.0.0", metadata=length(1, 255))
    """Bind address of each collector's /metrics, /healthz and /readyz (and of the head's)."""

    port: int = field(default=9419, metadata=between(0, 65535))
    """Collector port on every node, 0..65535; 0 picks any free port (file_sd lists it). Below
    local mode's ports (export.port and up), so a node may run both."""

    head_port: int = field(default=9417, metadata=between(0, 65535))
    """Port of the head's /metrics (cross-rank divergences), 0..65535; 0 picks any free port
    (file_sd lists it). Not 9418: that is git's."""

    worker_timeout_s: int = field(default=30, metadata=between(1, 86_400))
    """A worker silent for this long is gone: its gauges expire (its counters stay)."""

    job_retention_s: int = field(default=900, metadata=between(0, 31_536_000))
    """A finished job's series leave /metrics this long after its last worker left (plus
    worker_timeout_s); 0 keeps them for the collector's life."""

    straggler_after_s: int = field(default=120, metadata=between(1, 86_400))
    """A rank compiling this long while other ranks of its job are not is a compile
    straggler (the head's finding and torch_compile_straggler_seconds). NCCL's watchdog
    kills a collective after 10 minutes by default (Ray Train: 30)."""

    max_cost_graphs: int = field(default=10_000, metadata=between(1, 1_000_000))
    """Graphs (compile id and graph hashes) whose compile seconds a collector counts per job,
    and graph hashes the head remembers to tell a graph an earlier job compiled: bounds
    torch_compile_redundant_seconds's memory (later graphs of a job are not counted; a hash
    forgotten counts as new)."""

    file_sd_path: str | None = field(default=None, metadata=length(1, 4096))
    """Where the head writes the Prometheus file_sd JSON; null: <archive dir>/file_sd.json."""

    web_config: str | None = field(default=None, metadata=length(1, 4096))
    """Web-config file of the collectors' and the head's ports, read on every node; null: HTTP."""


@dataclass(frozen=True)
class PushConfig(Section):
    """How a worker sends its records to its node's collector."""

    queue_size: int = field(default=10_000, metadata=between(1, 10_000_000))
    """Records waiting to be sent; capture drops (and counts) what does not fit."""

    batch_size: int = field(default=100, metadata=between(1, 100_000))
    """Records per call to the collector."""

    flush_interval_ms: int = field(default=200, metadata=between(1, 60_000))
    """Longest wait before a partial batch is sent."""

    buffer_size: int = field(default=100_000, metadata=between(1, 10_000_000))
    """Records sent but not yet acknowledged (kept for retry while the collector is away)."""

    exit_timeout_s: int = field(default=10, metadata=between(0, 3600))
    """Seconds a worker waits at exit for its collector to acknowledge what is pending; what
    is still pending then is spooled to disk, where the collector picks it up."""


@dataclass(frozen=True)
class Config(Section):
    """The aotwatch daemon configuration."""

    job_name: str = field(default="default", metadata=label_value(1))
    """The job_name label of every series: non-empty printable UTF-8 of at most MAX_LABEL (256)
    characters, as records require."""

    labels: Mapping[str, str] = field(
        default_factory=dict, hash=False, metadata={"check": _check_labels}
    )
    """Extra constant labels on every series; stored read-only. Names follow Prometheus rules,
    must not start with "__" and must not be in RESERVED_LABEL_NAMES; values are strings
    checked as job_name is, except that they may be empty."""

    export: ExportConfig = ExportConfig()
    """The local-mode /metrics endpoint."""

    capture: CaptureConfig = CaptureConfig()
    """What capture computes per graph."""

    archive: ArchiveConfig = ArchiveConfig()
    """Where raw records are archived."""

    limits: LimitsConfig = LimitsConfig()
    """Cardinality bounds."""

    cluster: ClusterConfig = ClusterConfig()
    """The Ray cluster."""

    collector: CollectorConfig = CollectorConfig()
    """Per-node collectors and the head."""

    push: PushConfig = PushConfig()
    """Worker -> collector delivery."""

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_ports(self)


def _check_ports(config: Config) -> None:
    """ConfigError naming both keys when two servers of one node would share a port: the
    collector, the head, and local mode's LOCAL_PORTS from export.port up."""
    collector, export = config.collector, config.export
    if collector.port and collector.port == collector.head_port:
        raise ConfigError(
            f"{collector.head_port} is collector.port too",
            key="collector.head_port",
            expected="a port of its own, or 0 (any free port)",
        )
    if not (export.enabled and export.port):
        return
    local = f"{export.port}..{export.port + LOCAL_PORTS - 1}"
    for key in ("port", "head_port"):
        port = getattr(collector, key)
        if export.port <= port < export.port + LOCAL_PORTS:
            raise ConfigError(
                f"{port} is one of local mode's ports, export.port {export.port} plus a local "
                f"rank ({local})",
                key=f"collector.{key}",
                expected=f"a port outside {local}, or 0 (any free port)",
            )


def _join(prefix: str, key: Any) -> str:
    return f"{prefix}.{key}" if prefix else str(key)


def _build(cls: type[Section], data: Mapping[Any, Any], prefix: str) -> Any:
    """Build ``cls`` from a mapping, naming every error by its key path below ``prefix``."""
    hints = get_type_hints(cls)
    kwargs = {}
    for key, value in data.items():
        path = _join(prefix, key)
        if key not in hints:
            names = sorted(f.name for f in dataclasses.fields(cls))
            expected = f"one of {', '.join(names)}"
            close = difflib.get_close_matches(str(key), names, n=1)
            if close:
                expected += f"; did you mean {close[0]!r}?"
            raise ConfigError("unknown key", key=path, expected=expected)
        hint = hints[key]
        is_section = dataclasses.is_dataclass(hint)
        if value is None and (is_section or get_origin(hint) is Mapping):
            value = {}  # a section whose keys are all commented out
        if is_section and isinstance(value, Mapping):
            value = _build(hint, value, path)
        kwargs[key] = value
    try:
        return cls(**kwargs)
    except ConfigError as err:
        raise ConfigError(err.problem, key=_join(prefix, err.key), expected=err.expected) from None


def section_from_dict(cls: type[S], data: Mapping[Any, Any] | None, source: str) -> S:
    """Check parsed YAML and build the dataclass ``cls`` from it; None or {} gives defaults.

    A null section (``export:`` with every key commented out) means that section's defaults.
    Raises ConfigError naming ``source`` and the key path.
    """
    if data is None:
        return cls()
    if not isinstance(data, Mapping):
        name = _TYPE_NAMES.get(type(data), type(data).__name__)
        raise ConfigError(f"the top level must be a mapping of keys; got {name}", file=source)
    try:
        return _build(cls, data, "")
    except ConfigError as err:
        raise ConfigError(err.problem, file=source, key=err.key, expected=err.expected) from None


def read_yaml(path: str | os.PathLike[str]) -> Any:
    """Parse a YAML file with ``yaml.safe_load``; ConfigError if unreadable or malformed (also
    when nested too deeply for the parser, which would otherwise raise RecursionError)."""
    source = os.fsdecode(path)
    try:
        with open(source, encoding="utf-8") as stream:
            text = stream.read()
    except (OSError, UnicodeDecodeError) as err:
        reason = getattr(err, "strerror", None) or err
        raise ConfigError(f"cannot read: {reason}", file=source) from err
    try:
        return yaml.safe_load(text)
    except RecursionError:
        raise ConfigError("YAML nested too deeply", file=source, expected="fewer levels") from None
    except ValueError as err:  # a date like 2024-13-45, an integer of over 4300 digits
        raise ConfigError(f"YAML value out of range: {err}", file=source) from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark else ""
        problem = getattr(err, "problem", None) or err
        raise ConfigError(f"{where}YAML syntax error: {problem}", file=source) from err


CONFIG_ENV = "AOTWATCH_CONFIG"
"""A process's config: the path of a YAML file, or the config as JSON (as ``aotwatch run``
and ``aotwatch trace`` hand it to the processes they start)."""


def config_from_env() -> Config:
    """The config CONFIG_ENV names or holds; the defaults when it is unset or empty.
    Raises ConfigError."""
    value = os.environ.get(CONFIG_ENV, "").strip()
    if not value:
        return Config()
    if not value.startswith("{"):
        return load_config(value)
    try:
        data = json.loads(value)
    except ValueError as err:
        raise ConfigError(f"not JSON: {err}", file=CONFIG_ENV) from None
    return config_from_dict(data, source=CONFIG_ENV)


def config_from_dict(data: Mapping[Any, Any] | None, source: str = "<dict>") -> Config:
    """Check a parsed config and build it (see ``section_from_dict``)."""
    return section_from_dict(Config, data, source)


def load_config(path: str | os.PathLike[str] | None) -> Config:
    """Read a YAML config file (``yaml.safe_load``); None gives the defaults.

    Raises ConfigError for an unreadable file, a YAML error or an invalid key.
    """
    if path is None:
        return Config()
    return config_from_dict(read_yaml(path), os.fsdecode(path))
