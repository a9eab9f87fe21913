"""What compiling costs a fleet (pure ``cost``), and the head's families of it (no Ray)."""

from __future__ import annotations

import json
from dataclasses import replace

import msgspec
import pytest

from aotwatch.core import cost, divergence
from aotwatch.core.config import Config
from aotwatch.core.digest import summary
from aotwatch.core.records import new_record, to_record
from aotwatch.core.wire import Answer, Live, Running, Status, Target
from aotwatch.export.collector import family_exposition
from helpers import aotwatch, samples

MISS = {"fx_graph": {"miss": 1}}
HIT = {"fx_graph": {"hit": 1}}


def graph(job, rank, compile_id="0/0", graph_hash="aaaa"):
    return new_record(
        job_name=job, rank=rank, compile_id=compile_id, graph="forward", graph_hash=graph_hash
    )


def frame(job, rank, compile_id="0/0", cache=MISS, seconds=10.0):
    return new_record(
        job_name=job, rank=rank, compile_id=compile_id, cache=cache, durations_s={"total": seconds}
    )


def folded(*records, max_keys=100):
    """(fingerprints, work) of ``records``, folded as a collector and the reports do."""
    prints: divergence.Fingerprints = {}
    work: cost.Work = {}
    for record in map(to_record, records):
        divergence.observe(prints, record)
        cost.fold(work, record, prints, max_keys)
    return prints, work


def program(job, ranks, cache=MISS, seconds=10.0, graph_hash="aaaa"):
    """Each rank's graph record and frame record of one compile."""
    return [
        r
        for rank in range(ranks)
        for r in (
            graph(job, rank, graph_hash=graph_hash),
            frame(job, rank, cache=cache, seconds=seconds),
        )
    ]


def test_a_compile_served_by_the_cache_did_no_work():
    assert not cost.compiled(HIT)
    assert cost.compiled(MISS)
    assert cost.compiled({"fx_graph": {"hit": 1}, "aot_autograd": {"bypass": 1}})
    assert cost.compiled({})  # no cache looked at: compiled


def test_ranks_of_one_job_compiling_the_same_graph_count_all_but_one_share():
    _, work = folded(*program("a", 4))
    assert work == {"a": {("0/0", ("aaaa",)): [4, 40.0]}}
    assert cost.redundant("a", work["a"], cost.Seen(10)) == {"job": 30.0, "fleet": 0.0}
    assert cost.graphs_twice(work["a"]) == (4, 1)


def test_cache_hits_are_not_work_done_twice():
    _, work = folded(*program("a", 4, cache=HIT))
    assert work == {}


def test_a_later_job_compiling_the_same_graphs_counts_whole_in_the_fleet_scope():
    seen = cost.Seen(10)
    _, first = folded(*program("a", 2))
    _, second = folded(*program("b", 2))
    assert cost.redundant("a", first["a"], seen) == {"job": 10.0, "fleet": 0.0}
    assert cost.redundant("b", second["b"], seen) == {"job": 0.0, "fleet": 20.0}
    assert cost.redundant("a", first["a"], seen) == {"job": 10.0, "fleet": 0.0}  # stable
    _, other = folded(*program("c", 2, graph_hash="bbbb"))  # a graph nobody compiled
    assert cost.redundant("c", other["c"], seen) == {"job": 10.0, "fleet": 0.0}


def test_a_hostile_record_claiming_1e9_compile_seconds_counts_a_day():
    _, work = folded(*program("a", 2, seconds=1e9))
    assert work["a"][("0/0", ("aaaa",))] == [2, 2 * cost.MAX_COMPILE_S]


def test_the_tables_are_bounded():
    records = [
        r for n in range(50) for r in (graph("a", 0, f"{n}/0", f"h{n}"), frame("a", 0, f"{n}/0"))
    ]
    _, work = folded(*records, max_keys=5)
    assert len(work["a"]) == 5
    seen = cost.Seen(3)
    seen.note("a", tuple(f"h{n}" for n in range(1000)))  # a flood of distinct hashes
    assert len(seen) == 3
    assert not seen.earlier("b", ("h0",))  # forgotten: new


def test_merge_sums_the_collectors_tables():
    key = ("0/0", ("aaaa",))
    assert cost.merge([{key: [2, 20.0]}, {key: [1, 12.0]}]) == {key: [3, 32.0]}


def test_waiting_ranks_cost_the_straggler_compile_time_times_how_many_wait():
    counted: dict = {}
    assert cost.waited(counted, [("j", "1", "0/0", 1.0, 3)], after_s=20) == {}  # first seen
    assert cost.waited(counted, [("j", "1", "0/0", 10.0, 3)], after_s=20) == {}  # no straggler
    assert cost.waited(counted, [("j", "1", "0/0", 30.0, 3)], after_s=20) == {"j": 87.0}
    assert cost.waited(counted, [("j", "1", "0/0", 35.0, 3)], after_s=20) == {"j": 15.0}
    assert cost.waited(counted, [], after_s=20) == {}
    assert counted == {}  # it finished: forgotten


def test_a_wait_counts_from_when_the_rank_was_first_seen_compiling_alone():
    counted: dict = {}  # all ranks compiled 0/0 for 100 s; rank 1 still compiles after
    assert cost.waited(counted, [("j", "1", "0/0", 100.0, 3)], after_s=20) == {}
    assert cost.waited(counted, [("j", "1", "0/0", 102.0, 3)], after_s=20) == {"j": 6.0}


def ledger(*records) -> cost.Ledger:
    folded = cost.Ledger(100)
    for record in map(to_record, records):
        folded.add(record)
    return folded


def test_archived_waits_are_the_slowest_rank_less_each_rank():
    seconds = {0: 1.0, 1: 21.0, 2: 1.0}
    assert ledger(*(frame("j", r, seconds=s) for r, s in seconds.items())).waits() == {"j": 40.0}


def test_an_archived_recompile_only_one_rank_made_is_named_with_its_reason():
    recompile = frame("j", 1, "0/1", seconds=30.0)
    recompile["recompile_reason"] = "tensor 'x' size mismatch at index 0. expected 3, actual 4"
    found = ledger(frame("j", 0, cache=HIT), frame("j", 1, cache=HIT), recompile).causes()
    ((rank, _, said),) = found["j"]
    assert rank == "1"
    assert said == (
        "rank 1 compiled 0/1 for 30.0 s: a recompile (0/1) its peers did not make: "
        "tensor 'x' size mismatch at index 0. expected 3, actual 4"
    )


def test_the_cause_of_a_straggler():
    prints, _ = folded(graph("j", 0), frame("j", 0, cache=HIT), graph("j", 1, graph_hash="bbbb"))
    ranks = prints["j"]
    assert cost.cause("1", "0/0", ranks) == "a different forward graph (bbbb; peers: aaaa)"
    prints, _ = folded(graph("j", 0), frame("j", 0, cache=HIT))
    ranks = {**prints["j"], "1": divergence.empty_parts()}
    assert cost.cause("1", "0/0", ranks) == "a cache miss where its peers hit (fx_graph:hit)"
    assert cost.cause("1", "3/0", ranks) == "a compile id (3/0) only it has"
    assert cost.cause("1", "0/2", ranks) == "a recompile (0/2) its peers did not make"
    prints, _ = folded(graph("j", 0), frame("j", 0, cache=MISS))
    assert cost.cause("1", "0/0", {**prints["j"], "1": divergence.empty_parts()}) is None
    prints, _ = folded(
        graph("j", 0), frame("j", 0, cache=HIT), graph("j", 1), frame("j", 1, cache=HIT)
    )
    assert cost.cause("1", "0/0", prints["j"]) is None  # it hit too: slow for another reason


def answer(prints, work, live, epoch="e1"):
    jobs = {job: summary(ranks) for job, ranks in prints.items()}
    return Answer(epoch, dict.fromkeys(prints, 1), jobs, work=work, live=live)


def served(watch) -> dict:
    from aotwatch.cluster.head import HeadCollector

    text = family_exposition(*HeadCollector(watch, {}).collect()).decode()
    return samples(text)


def test_the_head_serves_waits_redundant_seconds_and_a_straggler_cause():
    from aotwatch.core.judging import DivergenceWatch

    config = Config()
    config = replace(config, collector=replace(config.collector, straggler_after_s=5))
    watch = DivergenceWatch(config)
    # job a: rank 0 hit the cache at 0/0, ranks 2 and 3 missed; rank 1 compiles it for 30 s
    # while the three others wait
    prints, work = folded(graph("a", 0), frame("a", 0, cache=HIT), *program("a", 4)[4:])

    def live(for_s):
        return Live({"a": ["0", "1", "2", "3"]}, {"a": {"1": Running("0/0", for_s)}})

    watch.take({"n1": answer(prints, work, live(0.5))}, {"n1"}, final=False)
    later = msgspec.structs.replace(answer(prints, work, live(30.5)), jobs={})
    watch.take({"n1": later}, {"n1"}, final=False)
    metrics = served(watch)
    assert metrics[("torch_compile_wait_rank_seconds_total", (("job_name", "a"),))] == 90.0
    key = ("torch_compile_redundant_seconds_total", (("job_name", "a"), ("scope", "job")))
    assert metrics[key] == 10.0  # ranks 2 and 3 compiled 0/0 (a miss each): 20 s, 10 s twice
    (straggler,) = [f for f in watch.divergences() if f["kind"] == "compile_straggler"]
    assert straggler["groups"]["because a cache miss where its peers hit (fx_graph:hit)"] == ["1"]
    # job b, the same program after job a: its compiles count in the fleet scope
    prints_b, work_b = folded(*program("b", 2))
    both = answer({**prints, **prints_b}, {**work, **work_b}, Live(), epoch="e2")
    watch.take({"n1": both}, {"n1"}, final=False)
    metrics = served(watch)
    key = ("torch_compile_redundant_seconds_total", (("job_name", "b"), ("scope", "fleet")))
    assert metrics[key] == 20.0
    assert metrics[("torch_compile_wait_rank_seconds_total", (("job_name", "a"),))] == 90.0
    quiet = msgspec.structs.replace(both, jobs={}, work={})  # nothing new: judged before
    watch.take({"n1": quiet}, {"n1"}, final=False)
    assert served(watch) == metrics


@pytest.mark.subprocess
def test_the_text_report_names_the_waits_the_work_done_twice_and_the_cures(tmp_path):
    from aotwatch.core.archive import ARCHIVE_FILE
    from aotwatch.core.records import encode_record

    first = program("a", 4)
    first[-1]["durations_s"] = {"total": 30.0}  # rank 3 compiled 20 s longer: 60 rank-s waited
    later = program("b", 2)
    for record in later:
        record["time"] += 60  # job b ran after job a
    (tmp_path / ARCHIVE_FILE).write_bytes(b"".join(map(encode_record, first + later)))
    result = aotwatch("report", str(tmp_path))
    assert result.returncode == 0, result.stderr
    out = result.stdout.split("compile cost:")[1]
    assert "a: ranks waited 60 s (0.02 rank-hours) for a slower rank's compile" in out
    assert "a: 4 ranks compiled the same 1 graphs: 45 s (0.01 rank-hours) done twice" in out
    assert cost.CURES["job"] in out
    assert "b: 20 s (0.01 rank-hours) compiling graphs an earlier job had compiled" in out
    assert cost.CURES["fleet"] in out
    exposition = aotwatch("report", str(tmp_path), "--format", "prometheus").stdout
    assert 'torch_compile_redundant_seconds_total{job_name="a",scope="job"} 45.0' in exposition
    assert 'torch_compile_redundant_seconds_total{job_name="b",scope="fleet"} 20.0' in exposition
    assert 'torch_compile_wait_rank_seconds_total{job_name="a"} 60.0' in exposition
    counts = json.loads(aotwatch("report", str(tmp_path), "--format", "json").stdout)
    assert counts["torch_compile_wait_rank_seconds"] == [
        {"labels": {"job_name": "a"}, "value": 60.0}
    ]


def test_status_shows_the_cost_the_head_counted(capsys):
    from aotwatch.cluster import serve

    cost = {
        "waits": {"a": 7200.0},
        "redundant": [["a", "job", 3600.0], ["a", "fleet", 0.0]],
        "twice": {"a": [1024, 40]},
    }
    serve.print_status(Status([], Target("10.0.0.1", 9429, "http"), "f", [], cost))
    out = capsys.readouterr().out
    assert "a: ranks waited 7,200 s (2.00 rank-hours) for a slower rank's compile" in out
    assert "a: 1024 ranks compiled the same 40 graphs: 3,600 s (1.00 rank-hours)" in out
    assert "earlier job" not in out


@pytest.mark.subprocess
def test_the_html_report_names_the_cost_of_each_job(tmp_path):
    from aotwatch.core.archive import ARCHIVE_FILE
    from aotwatch.core.records import encode_record

    later = program("b", 2)
    for record in later:
        record["time"] += 60
    slow = [graph("c", 0, graph_hash="cccc"), frame("c", 0, cache=HIT, seconds=1.0)]
    slow += [graph("c", 1, graph_hash="cccc"), frame("c", 1, seconds=21.0)]  # a miss where 0 hit
    records = program("a", 4) + later + slow
    (tmp_path / ARCHIVE_FILE).write_bytes(b"".join(map(encode_record, records)))
    page = tmp_path / "report.html"
    result = aotwatch("report", str(tmp_path), "--format", "html", "-o", str(page))
    assert result.returncode == 0, result.stderr
    html = page.read_text()
    assert html.count("<h3>What compiling cost</h3>") == 3
    why = "rank 1 compiled 0/0 for 21.0 s, 20.0 rank-s waited: a cache miss where its peers hit"
    assert f"Why slow (★ on the timeline): {why} (fx_graph:hit)" in html
    assert "why a rank was slow" in html  # the timeline's marks
    assert "4 ranks compiled the same 1 graphs: 30 s (0.01 rank-hours) done twice" in html
    assert "20 s (0.01 rank-hours) compiling graphs an earlier job had compiled" in html
