"""Every message between aotwatch's processes but records (``records.Record``), declared once.

A worker announces itself with every push (``Worker``, with the compile it is in,
``CompileNotice``) and sends its running drop and capture-error totals (``Totals``); at exit
it may leave a spool file whose first line is a ``SpoolHeader``. A collector answers the
head's rounds with an ``Answer`` and tells where it serves with an ``Endpoint``; the head
answers ``aotwatch status`` with a ``Status``; a job's directory holds a ``JobFile``.
Messages travel as plain builtins (Ray pickles them, a spool file holds JSON: ``to_wire``)
and are validated into these Structs by msgspec where they arrive (``decode``); one refused
is counted and skipped by the receiver. ``Compiling`` is a compile in progress on the clocks
of the process that shows it.
"""

from __future__ import annotations

from typing import Annotated, Any, TypeVar

import msgspec
from msgspec import Meta

from aotwatch.core.records import MAX_ID, Count, label_value_problem

MAX_COMPILE_S = 7 * 86_400.0
"""The longest a compile may say it has run: beyond it, a broken clock or a forged value."""
MAX_LABELS = 64
"""Reasons or stages per kind that one worker may report (aotwatch's own are a handful)."""

Name = Annotated[str, Meta(min_length=1, max_length=MAX_ID)]
PerLabel = Annotated[dict[str, Count], Meta(max_length=MAX_LABELS)]

T = TypeVar("T")


class WireError(ValueError):
    """A message refused: the wrong shape, a value out of bounds, a label not printable."""


class CompileNotice(msgspec.Struct, forbid_unknown_fields=True):
    """A compile in progress as a worker tells it: how long it has run on the worker's
    monotonic clock, never since when (another machine cannot subtract this one's wall clock
    from its own)."""

    compile_id: Name
    elapsed_s: Annotated[float, Meta(ge=0, le=MAX_COMPILE_S)]
    device: str

    def problem(self) -> str | None:
        return label_value_problem(self.compile_id) or label_value_problem(self.device)


class Compiling(msgspec.Struct):
    """A compile in progress on this process's clocks: ``since`` (wall clock, the in-progress
    gauge) and ``began`` (monotonic, how long the head's straggler watch has waited)."""

    compile_id: str
    device: str
    since: float
    began: float


class Worker(msgspec.Struct, forbid_unknown_fields=True):
    """What a worker announces with every push (``cluster.push``)."""

    worker_id: Name
    job_name: Name
    rank: Count
    world_size: Count | None = None
    node_id: Name | None = None
    hostname: Name | None = None
    pid: Count | None = None
    compiling: dict[str, Any] | None = None
    """A ``CompileNotice``, decoded apart (``cluster.collector.on_this_clock``): one refused is
    dropped, not the worker's batch (an older worker's wall-clock ``since``, a broken clock)."""

    def problem(self) -> str | None:
        return label_value_problem(self.job_name)


class Totals(msgspec.Struct, forbid_unknown_fields=True):
    """A worker's running totals since it started (see ``cluster.worker_counts``): records
    dropped by reason and capture errors by stage."""

    dropped: PerLabel = msgspec.field(default_factory=dict)
    capture_errors: PerLabel = msgspec.field(default_factory=dict)

    def problem(self) -> str | None:
        for counts in (self.dropped, self.capture_errors):
            for label in counts:
                if problem := label_value_problem(label):
                    return problem
        return None


class CountsEntry(msgspec.Struct, forbid_unknown_fields=True):
    """One line of a collector's ``counts.jsonl``: a worker's totals as they grew."""

    worker_id: Name
    job_name: Name
    totals: Totals

    def problem(self) -> str | None:
        return label_value_problem(self.job_name) or self.totals.problem()


class SpoolHeader(msgspec.Struct, forbid_unknown_fields=True):
    """The first line of a spool file (``cluster.spool``): whose records follow, and its
    totals (decoded apart: totals refused lose only themselves, as with a push)."""

    worker: Worker
    counts: dict[str, Any] | None = None

    def problem(self) -> str | None:
        return self.worker.problem()


class Running(msgspec.Struct):
    """A rank's compile in progress, as its collector tells the head."""

    compile_id: str
    for_s: float
    """How long it has run, on the collector's monotonic clock (never across two machines'
    wall clocks)."""


class Live(msgspec.Struct):
    """A collector's present: the ranks (as strings) attached now per job, and per job the
    ranks compiling now."""

    attached: dict[str, list[str]] = msgspec.field(default_factory=dict)
    compiling: dict[str, dict[str, Running]] = msgspec.field(default_factory=dict)


class Answer(msgspec.Struct):
    """A collector's answer to the head's round (``NodeCollector.fingerprints_since``; the
    head's ``digest.Digest`` takes it): the collector's instance and every job's version,
    whole fingerprints (``jobs``: ``digest.summary`` form) or the entries changed since
    the head's version (``deltas``), ``cost.Work`` of those jobs, and its present. Between
    aotwatch's own actors: Ray pickles it, nobody else sends one."""

    epoch: str
    versions: dict[str, int]
    jobs: dict[str, Any] = msgspec.field(default_factory=dict)
    deltas: dict[str, Any] = msgspec.field(default_factory=dict)
    work: dict[str, Any] = msgspec.field(default_factory=dict)
    live: Live = msgspec.field(default_factory=Live)


class Target(msgspec.Struct):
    """Where Prometheus scrapes a /metrics server (a collector's, the head's)."""

    ip: str
    port: int
    scheme: str
    """``http`` or ``https``."""

    def url(self) -> str:
        return f"{self.scheme}://{self.ip}:{self.port}/metrics"


class Endpoint(Target):
    """A collector as file_sd and ``aotwatch status`` know it (``NodeCollector.endpoint``):
    its target, node, readiness, the records it replayed at its start, its workers now."""

    node_id: str
    hostname: str
    ready: bool
    replayed: int
    workers: list[Worker]


class CollectorStatus(msgspec.Struct):
    """A collector as the head knows it: whether it answered the last round, and the last
    endpoint it answered (None before its first answer)."""

    node_id: str
    healthy: bool
    endpoint: Endpoint | None = None


class Status(msgspec.Struct):
    """The head's answer to ``aotwatch status`` and ``aotwatch run`` (``Head.status``):
    collectors, the head's target, the file_sd path, divergences (``Finding.to_dict``) and
    the cost it counted (``DivergenceWatch.cost``)."""

    collectors: list[CollectorStatus]
    head: Target
    file_sd: str
    divergences: list[dict[str, Any]]
    cost: dict[str, Any] | None = None


class JobFile(msgspec.Struct):
    """A job directory's ``job.json`` (``job_archives``): the job's name, and when it
    finished (None while it runs)."""

    job_name: str
    finished: float | None = None

    def problem(self) -> str | None:
        return None


def decode(kind: type[T], message: Any) -> T:
    """``message`` (builtins) validated as ``kind``; WireError says why it is refused."""
    try:
        message = msgspec.convert(message, kind)
    except msgspec.ValidationError as err:
        raise WireError(str(err)) from None
    if (problem := message.problem()) is not None:
        raise WireError(problem)
    return message


def to_wire(message: msgspec.Struct) -> Any:
    """``message`` as builtins, how it crosses a process boundary."""
    return msgspec.to_builtins(message)
