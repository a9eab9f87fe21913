"""``aotwatch report --format perfetto``: every rank's compile timeline as a Chrome Trace Event
file, checked by a strict reader of the format written here (Perfetto's trace processor is a
binary its Python package downloads, and this machine has no network): every event's phase,
time, process and thread; slices nested per thread; every process and thread named. Real
archives of a torchrun job and of the bundled demo-like example (Inductor: phases, a graph
break, a recompile, cache misses), hand-built ones for corrupt lines, stragglers and clipping.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from aotwatch.core.archive import archive_files, read_archive
from aotwatch.core.job_archives import JobArchives
from aotwatch.core.records import Record, encode_record, new_record, to_record
from helpers import LAUNCHED_SCRIPT, aotwatch, trace

pytestmark = pytest.mark.subprocess

METADATA = {"process_name": "name", "thread_name": "name"}
SORT_INDEXES = ("process_sort_index", "thread_sort_index")
NOW = 1_800_000_000.0


@dataclass
class Trace:
    """A trace that passed the check, indexed."""

    processes: dict[int, str] = field(default_factory=dict)
    threads: dict[tuple[int, int], str] = field(default_factory=dict)
    slices: list[dict[str, Any]] = field(default_factory=list)
    instants: list[dict[str, Any]] = field(default_factory=list)
    other: dict[str, Any] = field(default_factory=dict)

    def process(self, event: dict[str, Any]) -> str:
        return self.processes[event["pid"]]

    def named(self, prefix: str) -> list[dict[str, Any]]:
        return [e for e in self.slices + self.instants if e["name"].startswith(prefix)]


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0


def check_trace(data: Any) -> Trace:
    """The Chrome Trace Event format, strictly: AssertionError on the first thing wrong.
    Slices are taken in time order and, at equal times, in file order, as Perfetto sorts
    them: a slice that holds another one beginning at the same time must come first in the
    file (google/perfetto#878)."""
    assert isinstance(data, dict) and isinstance(data.get("traceEvents"), list)
    assert data.get("displayTimeUnit", "ms") in ("ms", "ns")
    result = Trace(other=data.get("otherData", {}))
    timed: dict[tuple[int, int], list[tuple[float, float, int, dict]]] = defaultdict(list)
    begun: dict[tuple[int, int], list[dict]] = defaultdict(list)
    for index, event in enumerate(data["traceEvents"]):
        assert isinstance(event, dict), event
        assert isinstance(event.get("name"), str) and event["name"], event
        assert type(event.get("pid")) is int and type(event.get("tid")) is int, event
        where, phase = (event["pid"], event["tid"]), event.get("ph")
        if phase == "M":
            args = event["args"]
            if event["name"] in METADATA:
                assert isinstance(args["name"], str) and args["name"], event
                if event["name"] == "process_name":
                    result.processes[event["pid"]] = args["name"]
                else:
                    result.threads[where] = args["name"]
            else:
                assert event["name"] in SORT_INDEXES and type(args["sort_index"]) is int, event
            continue
        assert _number(event.get("ts")), event
        assert isinstance(event.get("args", {}), dict), event
        if phase == "X":
            assert _number(event.get("dur")), event
            timed[where].append((event["ts"], event["ts"] + event["dur"], index, event))
            result.slices.append(event)
        elif phase in ("i", "I"):
            assert event.get("s", "t") in ("g", "p", "t"), event
            timed[where].append((event["ts"], event["ts"], index, event))
            result.instants.append(event)
        elif phase == "B":
            begun[where].append(event)
        elif phase == "E":
            assert begun[where], f"an E without its B: {event}"
            assert begun[where].pop()["ts"] <= event["ts"], event
        else:
            raise AssertionError(f"unexpected phase {phase!r}: {event}")
    assert not any(begun.values()), "a B without its E"
    for where, events in timed.items():
        assert where[0] in result.processes, f"process {where[0]} has no name"
        assert where in result.threads, f"thread {where} has no name"
        stack: list[tuple[float, float, int, dict]] = []
        for item in sorted(events, key=lambda e: (e[0], e[2])):  # as Perfetto: ts, then file
            while stack and stack[-1][1] <= item[0]:
                stack.pop()
            assert not stack or item[1] <= stack[-1][1], (
                f"{item[3]} begins inside {stack[-1][3]} and ends after it"
            )
            stack.append(item)
    return result


def export(archive: Path, out: Path, *options: str) -> Trace:
    result = aotwatch("report", str(archive), "--format", "perfetto", "-o", str(out), *options)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "" and str(out) in result.stderr
    return check_trace(json.loads(out.read_text()))


def records_of(archive: Path) -> list[Record]:
    return [r for path in archive_files(archive) for r in read_archive(path)]


def us(seconds: float) -> int:
    return round(seconds * 1_000_000)


def timed_seconds(record: Record) -> float:
    return record.durations_s.get("total" if record.graph is None else "backward", 0.0)


def expected_waits(records: list[Record]) -> Counter:
    """(rank, slowest rank, wait in microseconds) of every straggler wait, from durations."""
    by_compile: dict[tuple, list[Record]] = defaultdict(list)
    for record in records:
        if timed_seconds(record) and record.graph in (None, "backward"):
            key = (record.job_name, record.compile_id, record.graph, str(record.aot_id))
            by_compile[key].append(record)
    waits = Counter()
    for compiled in by_compile.values():
        slowest = max(compiled, key=timed_seconds)
        for record in compiled:
            wait = us(timed_seconds(slowest)) - us(timed_seconds(record))
            if wait > 0 and record.rank != slowest.rank:
                waits[(record.rank, slowest.rank, wait)] += 1
    return waits


def seen_waits(found: Trace) -> Counter:
    return Counter(
        (int(found.process(e).split()[1]), e["args"]["slowest rank"], e["dur"])
        for e in found.named("waiting for rank")
    )


def assert_every_compile_drawn(found: Trace, records: list[Record]) -> None:
    """Each timed record is a compile slice on its rank's process, ending at its time; each
    graph break, recompile, failure and cache miss an instant there."""
    expected, drawn = Counter(), Counter()
    for record in records:
        if seconds := timed_seconds(record):
            process = f"rank {record.rank} (job {record.job_name})"
            expected[(process, record.compile_id, us(record.time), us(seconds))] += 1
    for event in found.slices:
        if event["cat"] == "compile":
            compile_id = event["args"]["compile_id"]
            drawn[(found.process(event), compile_id, event["ts"] + event["dur"], event["dur"])] += 1
    assert drawn == expected and expected
    kinds = {
        "graph break": sum(len(r.graph_breaks) for r in records),
        "recompile:": sum(bool(r.recompile_reason) for r in records),
        "failure:": sum(bool(r.fail_type) for r in records),
        "cache miss:": sum(bool(c.get("miss")) for r in records for c in r.cache.values()),
    }
    assert {kind: len(found.named(kind)) for kind in kinds} == kinds


# -- real runs ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def torchrun_archive(tmp_path_factory) -> Path:
    """A 2-rank torchrun job where rank 1 compiles an extra frame (gloo, CPU)."""
    root = tmp_path_factory.mktemp("torchrun")
    torchrun = ["torchrun", "--standalone", "--nproc-per-node", "2"]
    trace(root / "trace", *torchrun, str(LAUNCHED_SCRIPT), str(root), "--extra-frame-on-rank-1")
    return root / "trace"


@pytest.fixture(scope="module")
def demo_like_archive(tmp_path_factory) -> Path:
    """``aotwatch trace`` of its bundled example, the demo's program without Ray: Inductor,
    an input mutation, an effect token, a graph break and a recompile."""
    archive = tmp_path_factory.mktemp("demo") / "trace"
    result = aotwatch("trace", "--port", "0", "--archive", str(archive), timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return archive


def test_a_torchrun_job_is_one_process_per_rank_with_every_compile(torchrun_archive, tmp_path):
    found = export(torchrun_archive, tmp_path / "trace.json")
    records = records_of(torchrun_archive)
    assert sorted(found.processes.values()) == ["rank 0 (job default)", "rank 1 (job default)"]
    assert_every_compile_drawn(found, records)
    extra = [e for e in found.slices if e["args"].get("compile_id") == "1/0"]
    assert {found.process(e) for e in extra} == {"rank 1 (job default)"}
    assert seen_waits(found) == expected_waits(records) and seen_waits(found)
    assert found.other["records"] == len(records)


def test_the_demo_like_job_shows_nested_phases_reasons_and_cache_misses(
    demo_like_archive, tmp_path
):
    found = export(demo_like_archive, tmp_path / "trace.json")
    records = records_of(demo_like_archive)
    assert_every_compile_drawn(found, records)
    first = next(e for e in found.slices if e["name"] == "compile 0/0 forward")
    chain = ["dynamo", "aot_autograd", "inductor", "inductor_codegen", "triton_compile"]
    inside = [first]
    for phase in chain:  # each phase inside the one before, all inside the compile
        child = next(
            e
            for e in found.slices
            if e["name"] == phase and e["tid"] == first["tid"] and e["ts"] >= inside[-1]["ts"]
        )
        assert child["ts"] + child["dur"] <= inside[-1]["ts"] + inside[-1]["dur"]
        inside.append(child)
    (recompile,) = found.named("recompile: ")
    assert "size mismatch" in recompile["args"]["reason"]
    assert found.named("recompile 0/1 forward")
    (graph_break,) = found.named("graph break: ")
    assert graph_break["args"]["reason"]
    assert found.named("backward 0/0")  # the lazy backward's own compile


def test_a_job_of_a_cluster_is_found_by_name(tmp_path):
    """``--job`` reads the job's archive of every node, and nothing of another job."""
    root = tmp_path / "archive"
    for node, rank in (("node-a", 0), ("node-b", 1)):
        archives = JobArchives(root / "collectors" / node)
        chosen = [frame(rank, 100.0 + rank, 2.0 + rank, job_name="train")]
        other = [frame(rank, 100.0, 1.0, job_name="other")]
        for records in (chosen, other):
            parsed = [to_record(r) for r in records]
            archives.write_records(parsed, [encode_record(r) for r in parsed])
        archives.close()
    found = export(root, tmp_path / "trace.json", "--job", "train")
    assert sorted(found.processes.values()) == ["rank 0 (job train)", "rank 1 (job train)"]
    assert seen_waits(found) == Counter({(0, 1, 1_000_000): 1})


# -- hand-built records ------------------------------------------------------------------


def frame(rank: int, end: float, seconds: float, **fields: Any) -> dict[str, Any]:
    """A frame's record that ended at ``end`` after ``seconds`` of compiling."""
    identity = {"rank": rank, "hostname": f"host{rank}", "pid": 1000 + rank, "time": end}
    durations = {"total": seconds, "dynamo": seconds}
    defaults = {"compile_id": "0/0", "frame": {"co_name": "step"}, "durations_s": durations}
    return new_record(**identity, **{**defaults, **fields})


def write_archive(path: Path, records: list[dict[str, Any]], *extra_lines: bytes) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    lines = [encode_record(to_record(r)) for r in records]
    (path / "records.jsonl").write_bytes(b"".join(lines) + b"".join(extra_lines))
    return path


def test_corrupt_lines_are_read_around_and_counted_as_the_other_formats_count_them(tmp_path):
    good = [frame(0, 10.0, 1.0), frame(1, 10.5, 2.0), frame(1, 20.0, 0.5, compile_id="1/0")]
    duplicate = encode_record(to_record(good[0]))
    archive = write_archive(
        tmp_path / "a",
        good,
        b"{not json\n",
        b'{"schema": 1}\n',
        duplicate,
        b"\xff\xfe\n",
        b"x" * (1 << 21) + b"\n",
    )
    result = aotwatch("report", str(archive), "--format", "perfetto")  # to stdout
    assert result.returncode == 0, result.stderr
    found = check_trace(json.loads(result.stdout))
    assert len([e for e in found.slices if e["cat"] == "compile"]) == 3
    assert found.other["records"] == 3 and found.other["duplicates"] == 1
    rejected = {k.split()[1]: v for k, v in found.other.items() if k.startswith("rejected ")}
    as_json = json.loads(aotwatch("report", str(archive), "--format", "json").stdout)
    counted = {s["labels"]["reason"]: s["value"] for s in as_json["aotwatch_records_rejected"]}
    assert rejected == counted == {"not_json": 1, "missing_field": 1, "not_utf8": 1, "too_large": 1}


def test_straggler_waits_come_from_durations_never_from_two_clocks(tmp_path):
    """Three ranks compile 0/0 in 1, 3 and 2 s on machines whose clocks disagree by hours:
    rank 0 waits 2 s and rank 2 waits 1 s for rank 1, each after its own compile."""
    skew = {0: 0.0, 1: 7200.0, 2: -3600.0}
    seconds = {0: 1.0, 1: 3.0, 2: 2.0}
    records = [frame(rank, NOW + skew[rank], seconds[rank]) for rank in range(3)]
    found = export(write_archive(tmp_path / "a", records), tmp_path / "trace.json")
    assert seen_waits(found) == Counter({(0, 1, 2_000_000): 1, (2, 1, 1_000_000): 1})
    for wait in found.named("waiting for rank"):
        rank = int(found.process(wait).split()[1])
        assert wait["ts"] == us(NOW + skew[rank])  # from the end of its own compile
        assert found.threads[(wait["pid"], wait["tid"])].endswith("straggler waits")


def test_a_phase_longer_than_its_parent_is_clipped_inside_it(tmp_path):
    durations = {"total": 2.0, "dynamo": 2.0, "aot_autograd": 1.5, "inductor": 1.0}
    durations |= {"inductor_codegen": 0.5, "triton_compile": 4.0, "pre_grad_passes": 0.75}
    found = export(
        write_archive(tmp_path / "a", [frame(0, 50.0, 2.0, durations_s=durations)]),
        tmp_path / "trace.json",
    )  # check_trace: every phase inside its parent
    phases = {e["name"]: e for e in found.slices if e["cat"] == "phase"}
    assert phases["triton_compile"]["dur"] == phases["inductor_codegen"]["dur"] == 500_000
    assert phases["triton_compile"]["args"] == {"seconds": 4.0, "clipped to its parent": True}
    assert phases["aot_autograd"]["dur"] == 1_250_000  # after the pre-grad passes
    assert phases["aot_autograd"]["args"]["clipped to its parent"]


def test_overlapping_compiles_of_one_process_go_on_another_thread(tmp_path):
    records = [frame(0, 10.0, 4.0), frame(0, 12.0, 4.0, compile_id="1/0"), frame(0, 20.0, 1.0)]
    found = export(write_archive(tmp_path / "a", records), tmp_path / "trace.json")
    compiles = [e for e in found.slices if e["cat"] == "compile"]
    assert len({e["tid"] for e in compiles}) == 2
    assert "host0:1000 compiles (overlapping 2)" in found.threads.values()


@pytest.mark.parametrize(
    "events",
    [
        [{"ph": "X", "ts": 0, "dur": 10}, {"ph": "X", "ts": 5, "dur": 10}],  # overlap
        [{"ph": "X", "ts": 0, "dur": 5}, {"ph": "X", "ts": 0, "dur": 10}],  # child first
        [{"ph": "X", "ts": 0}],  # no dur
        [{"ph": "B", "ts": 0}],  # never ended
        [{"ph": "i", "ts": -1}],
    ],
)
def test_the_check_refuses_what_perfetto_would_misdraw(events):
    named = [
        {"ph": "M", "name": "process_name", "pid": 1, "tid": 0, "args": {"name": "p"}},
        {"ph": "M", "name": "thread_name", "pid": 1, "tid": 1, "args": {"name": "t"}},
    ]
    events = [{"name": "e", "pid": 1, "tid": 1, "args": {}, **e} for e in events]
    check_trace({"traceEvents": named})
    with pytest.raises(AssertionError):
        check_trace({"traceEvents": named + events})
    with pytest.raises(AssertionError, match="has no name"):  # no thread name
        check_trace({"traceEvents": named[:1] + [{**events[0], "ph": "i", "ts": 0}]})
