"""A restarted head finds what the running head found, from the collectors alone, and a
rank's first change after the restart is its own (ranks read whole share one fingerprint).
Real ``NodeCollector``s in this process (their Ray wrapper adds nothing here), their answers
pickled as Ray sends them, the head's real ``DivergenceWatch``."""

from __future__ import annotations

import pickle

from aotwatch.core.config import Config
from aotwatch.core.judging import DivergenceWatch
from aotwatch.core.records import new_record

JOB = "spmd"


def compile_id(rank: int, compile_id: str, graph_hash: str = "", pattern: str = "miss") -> list:
    """A frame as ``rank`` compiles it: forward and backward graphs and its cache record."""
    base = {"job_name": JOB, "rank": rank, "compile_id": compile_id}
    return [
        *(
            new_record(**base, graph=graph, graph_hash=f"{compile_id}{graph_hash}{graph}")
            for graph in ("forward", "backward")
        ),
        new_record(**base, cache={"fx_graph": {pattern: 1}}),
    ]


def push(collectors: dict, rank: int, records: list) -> None:
    worker = {"worker_id": f"w{rank}", "job_name": JOB, "rank": rank}
    collectors[f"node-{rank // 4}"].push(worker, records, {})


def head_round(watch: DivergenceWatch, collectors: dict, final: bool = False) -> dict:
    """One round; what the head has found: (kind, compile id) -> groups."""
    answers = {node: c.fingerprints_since(*watch.known(node)) for node, c in collectors.items()}
    watch.take(pickle.loads(pickle.dumps(answers)), set(collectors), final)
    return {(f["kind"], f["compile_id"]): f["groups"] for f in watch.divergences()}


def test_a_restarted_head_finds_what_the_running_head_found(node_collector, tmp_path):
    collectors = {f"node-{n}": node_collector(tmp_path / f"archive-{n}") for n in range(2)}
    running = DivergenceWatch(Config())
    for rank in range(8):  # ranks 0-3 on node-0, 4-7 on node-1: the same 5 frames
        push(collectors, rank, [r for i in range(5) for r in compile_id(rank, f"{i}/0")])
    assert head_round(running, collectors) == {}
    push(collectors, 5, compile_id(5, "5/0", graph_hash="other"))
    for rank in set(range(8)) - {5}:
        push(collectors, rank, compile_id(rank, "5/0"))
    push(collectors, 2, compile_id(2, "6/0"))  # a frame of its own
    for rank in range(8):
        push(collectors, rank, compile_id(rank, "7/0", pattern="hit" if rank == 6 else "miss"))
    head_round(running, collectors)
    found = head_round(running, collectors, final=True)
    assert found == {
        ("graph_hash", "5/0"): {"5/0forward": ["0-4", "6", "7"], "5/0otherforward": ["5"]},
        ("compile_ids", "6/0"): {"compiled": ["2"], "missing": ["0", "1", "3-7"]},
        ("cache_pattern", "7/0"): {"fx_graph:hit": ["6"], "fx_graph:miss": ["0-5", "7"]},
    }

    restarted = DivergenceWatch(Config())
    assert head_round(restarted, collectors, final=True) == found

    # After the restart, rank 1 shares one fingerprint with ranks 0, 2 (but for 6/0) and 3:
    # its next graph at 0/0 differs, and only rank 1 says so.
    push(collectors, 1, compile_id(1, "0/0", graph_hash="late"))
    found = head_round(running, collectors)
    assert head_round(restarted, collectors) == found
    # Each graph's distinct hashes so far: rank 1 has both.
    both = "0/0forward,0/0lateforward"
    assert found[("graph_hash", "0/0")] == {"0/0forward": ["0", "2-7"], both: ["1"]}


def test_a_restarted_head_finds_what_the_running_head_found_when_every_rank_differs(
    node_collector, tmp_path
):
    """Every rank compiled an id of its own and a graph of its own: no two fingerprints are
    equal, so collectors send what their ranks share once and each rank's rest apart."""
    collectors = {f"node-{n}": node_collector(tmp_path / f"archive-{n}") for n in range(2)}
    running = DivergenceWatch(Config())
    for rank in range(8):
        push(collectors, rank, [r for i in range(3) for r in compile_id(rank, f"{i}/0")])
    head_round(running, collectors)
    for rank in range(8):
        push(collectors, rank, compile_id(rank, f"own/{rank}"))
        push(collectors, rank, compile_id(rank, "3/0", graph_hash=str(rank % 3)))
    head_round(running, collectors)
    found = head_round(running, collectors, final=True)
    assert len(found) == 9 and found[("graph_hash", "3/0")] == {
        "3/00forward": ["0", "3", "6"],
        "3/01forward": ["1", "4", "7"],
        "3/02forward": ["2", "5"],
    }
    assert found[("compile_ids", "own/5")] == {"compiled": ["5"], "missing": ["0-4", "6", "7"]}

    restarted = DivergenceWatch(Config())
    assert head_round(restarted, collectors, final=True) == found
