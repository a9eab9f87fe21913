"""Cross-rank divergence on fingerprints built from records (pure)."""

from __future__ import annotations

from aotwatch import divergence
from aotwatch.records import new_record


def fingerprints(*records):
    prints: divergence.Fingerprints = {}
    for record in records:
        divergence.observe(prints, record)
    return prints


def graph(rank, compile_id="0/0", graph_hash="aaaa", kind="forward"):
    return new_record(job_name="j", rank=rank, compile_id=compile_id, graph=kind,
                      graph_hash=graph_hash)  # fmt: skip


def frame(rank, compile_id="0/0", cache=None):
    return new_record(job_name="j", rank=rank, compile_id=compile_id, cache=cache or {})


def kinds(prints):
    return sorted((f.kind, f.compile_id) for f in divergence.find("j", prints["j"]))


def test_identical_ranks_do_not_diverge():
    prints = fingerprints(graph(0), graph(1), frame(0), frame(1))
    assert kinds(prints) == []


def test_a_different_graph_under_the_same_compile_id():
    prints = fingerprints(graph(0, graph_hash="aaaa"), graph(1, graph_hash="bbbb"), graph(2))
    (finding,) = divergence.find("j", prints["j"])
    assert (finding.kind, finding.compile_id) == ("graph_hash", "0/0")
    assert dict(finding.groups) == {"aaaa": ("0", "2"), "bbbb": ("1",)}


def test_a_compile_id_only_some_ranks_have():
    prints = fingerprints(graph(0), graph(1), graph(0, compile_id="0/1"))
    (finding,) = divergence.find("j", prints["j"])
    assert (finding.kind, finding.compile_id) == ("compile_ids", "0/1")
    assert dict(finding.groups) == {"compiled": ("0",), "missing": ("1",)}


def test_a_different_cache_pattern():
    hit = {"aot_autograd": {"hit": 1}}
    miss = {"aot_autograd": {"miss": 1}}
    prints = fingerprints(frame(0, cache=hit), frame(1, cache=miss))
    assert kinds(prints) == [("cache_pattern", "0/0")]


def test_merge_of_collectors_and_a_single_rank():
    a = fingerprints(graph(0, graph_hash="aaaa"))
    b = fingerprints(graph(1, graph_hash="bbbb"))
    assert kinds(divergence.merge([a, b])) == [("graph_hash", "0/0")]
    assert divergence.find("j", a["j"]) == []
