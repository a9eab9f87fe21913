"""Cross-rank divergence on fingerprints built from records (pure)."""

from __future__ import annotations

import pickle
import random

from aotwatch.core import divergence
from aotwatch.core.digest import ChangeLog, Digest, summary
from aotwatch.core.records import new_record, to_record
from aotwatch.core.wire import Answer, Live, Running


def fingerprints(*records):
    prints: divergence.Fingerprints = {}
    for record in records:
        divergence.observe(prints, to_record(record))
    return prints


def graph(rank, compile_id="0/0", graph_hash="aaaa", kind="forward"):
    return new_record(
        job_name="j", rank=rank, compile_id=compile_id, graph=kind, graph_hash=graph_hash
    )


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


def answer(epoch: str, prints: dict, versions: dict | None = None) -> dict:
    """What a collector's ``fingerprints_since`` returns for a head that has nothing yet."""
    jobs = {job: summary(ranks) for job, ranks in prints.items()}
    return Answer(epoch, versions or dict.fromkeys(prints, 1), jobs)


def test_the_digest_merges_collectors_and_takes_only_what_changed():
    digest = Digest()
    a = fingerprints(graph(0, graph_hash="aaaa"))
    b = fingerprints(graph(1, graph_hash="bbbb"))
    digest.update("node-a", answer("e1", a))
    digest.update("node-b", answer("e2", b))
    assert digest.changes() == {"j": None}  # read whole: compare everything
    assert kinds({"j": digest.ranks("j")}) == [("graph_hash", "0/0")]
    assert divergence.find("j", a["j"]) == []  # one rank alone never diverges
    assert digest.known("node-a") == ("e1", {"j": 1})
    # Nothing new: nothing to compare again, the picture unchanged.
    digest.update("node-a", Answer("e1", {"j": 1}))
    assert digest.changes() == {}
    # A delta: one entry of rank 0; only its compile id is compared again.
    delta = {"0": {"graphs": {("1/0", "forward"): ["cccc"]}, "cache": {}}}
    digest.update("node-a", Answer("e1", {"j": 2}, deltas={"j": delta}))
    assert digest.changes() == {"j": {"1/0"}}
    assert digest.ranks("j")["0"]["graphs"] == {
        ("0/0", "forward"): ["aaaa"],
        ("1/0", "forward"): ["cccc"],
    }
    found = divergence.find("j", digest.ranks("j"), {"1/0"})
    assert [(f.kind, f.compile_id) for f in found] == [("compile_ids", "1/0")]  # rank 1 lacks it
    # The collector restarted (a new epoch) and holds nothing yet: its ranks leave.
    digest.update("node-a", Answer("e3", {}))
    assert set(digest.ranks("j")) == {"1"} and digest.changes() == {"j": None}
    # The job was forgotten by its last collector, then the node left.
    digest.update("node-b", Answer("e2", {}))
    assert digest.jobs() == set()
    digest.forget("node-b")
    assert digest.nodes() == {"node-a"}


def test_finding_at_some_compile_ids_finds_what_the_full_search_finds_there():
    prints = fingerprints(
        graph(0, graph_hash="aaaa"),
        graph(1, graph_hash="bbbb"),
        graph(0, compile_id="1/0"),
        frame(0, compile_id="2/0"),
        frame(1, compile_id="2/0"),
    )
    everything = divergence.find("j", prints["j"])
    for compile_id in ("0/0", "1/0", "2/0"):
        at = divergence.find("j", prints["j"], {compile_id})
        assert at == [f for f in everything if f.compile_id == compile_id]


def test_a_summary_sends_each_distinct_fingerprint_once_as_an_independent_copy():
    prints = fingerprints(graph(0), graph(1, graph_hash="bbbb"), graph(2), graph(3))
    classes = summary(prints["j"])
    assert [names for names, _ in classes] == [("0", "2", "3"), ("1",)]
    assert classes[0][1] == prints["j"]["0"] and classes[1][1] == prints["j"]["1"]
    divergence.observe(
        prints, to_record(graph(0, graph_hash="cccc"))
    )  # a later record, same compile id
    assert classes[0][1]["graphs"]["0/0", "forward"] == ["aaaa"]
    assert prints["j"]["0"]["graphs"]["0/0", "forward"] == ["aaaa", "cccc"]


def collective_graph(rank, op):
    schedule = [f"all_reduce({op}, 0) f32[4]"]
    return new_record(
        job_name="j",
        rank=rank,
        compile_id="0/0",
        graph="forward",
        graph_hash=f"hash-{op}",
        collectives=schedule,
        collective_hash=f"h{op}",
    )


def test_a_different_collective_schedule_is_its_own_finding_not_a_graph_hash():
    prints = fingerprints(
        collective_graph(0, "sum"), collective_graph(1, "max"), collective_graph(2, "sum")
    )
    (finding,) = divergence.find("j", prints["j"])
    assert (finding.kind, finding.compile_id) == ("collective_schedule", "0/0")
    assert dict(finding.groups) == {
        "forward: hmax all_reduce(max, 0) f32[4]": ("1",),
        "forward: hsum all_reduce(sum, 0) f32[4]": ("0", "2"),
    }


def test_a_collective_only_one_rank_issues():
    prints = fingerprints(collective_graph(0, "sum"), graph(1, graph_hash="other"))
    (finding,) = divergence.find("j", prints["j"])
    assert finding.kind == "collective_schedule"
    assert dict(finding.groups)["forward: none"] == ("1",)


def test_the_digest_carries_collective_schedules_to_the_head():
    prints = fingerprints(collective_graph(0, "sum"), collective_graph(1, "max"))
    digest = Digest()
    answer = Answer("e", {"j": 2}, deltas={"j": prints["j"]})
    digest.update("node", answer)
    assert kinds({"j": digest.ranks("j")}) == [("collective_schedule", "0/0")]


def test_a_rank_compiling_long_while_others_wait_is_a_straggler():
    lives = [
        Live({"j": ["0", "1"]}, {"j": {"1": Running("3/0", 30.4)}}),
        Live({"j": ["2"], "k": ["0"]}, {"k": {"0": Running("0/0", 1e9)}}),
    ]
    findings, longest, compiling, _ = divergence.stragglers(lives, after_s=20)
    assert [(f.job_name, f.kind, f.compile_id, f.groups) for f in findings] == [
        ("j", "compile_straggler", "3/0", (("compiling for 30 s", ("1",)), ("waiting", ("0", "2"))))
    ]
    assert longest == {"j": 30.4, "k": 0}  # job k's one rank waits for nobody
    assert compiling == {"j": {"1"}, "k": {"0"}}
    assert divergence.stragglers(lives, after_s=40)[0] == []  # not long enough yet


def staged(rank, compile_id="0/0", graph_hash="aaaa", stage=None):
    """A graph record of a rank of a pipeline stage (its compare group)."""
    record = graph(rank, compile_id, graph_hash)
    return {**record, "compare_group": stage}


def test_ranks_of_different_compare_groups_are_never_compared():
    """Two pipeline stages of two ranks each: each stage compiled its own layers under the
    same compile ids. Only a rank that differs from its own stage's peer is a finding."""
    prints = fingerprints(
        staged(0, stage="0"),
        staged(1, stage="0"),
        staged(2, graph_hash="bbbb", stage="1"),
        staged(3, graph_hash="bbbb", stage="1"),
        staged(2, compile_id="1/0", graph_hash="cccc", stage="1"),
    )
    assert sorted((f.kind, f.compile_id) for f in divergence.find("j", prints["j"])) == [
        ("compile_ids", "1/0"),
        ("graph_hash", "0/0"),
    ]  # the whole job compared: the stages' graphs are "divergences"
    (finding,) = divergence.find_in_groups("j", prints["j"])
    assert (finding.kind, finding.compile_id, finding.compare_group) == ("compile_ids", "1/0", "1")
    assert dict(finding.groups) == {"compiled": ("2",), "missing": ("3",)}
    assert finding.to_dict()["compare_group"] == "1"
    assert "in compare group 1" in finding.describe()


def test_the_compare_group_reaches_the_head_in_a_delta():
    digest = Digest()
    digest.update("node", answer("e", fingerprints(staged(0, stage="0"))))
    collector_prints = fingerprints(staged(0, stage="0"))
    changes = divergence.observe(collector_prints, to_record(staged(1, graph_hash="b", stage="1")))
    assert (changes[0][0], changes[0][1]) == ("1", "compare_group")
    delta = {"1": collector_prints["j"]["1"]}
    digest.update("node", Answer("e", {"j": 2}, deltas={"j": delta}))
    assert set(divergence.JobIndex.of(digest.ranks("j")).groups()) == {"0", "1"}
    assert divergence.find_in_groups("j", digest.ranks("j")) == []


def test_a_compile_id_with_a_space_is_compared_whole():
    """Keys are (compile id, graph) tuples: a compile id with a space is never cut at it."""
    compile_id = "0/0 [compiled autograd]"
    prints = fingerprints(
        graph(0, compile_id=compile_id, graph_hash="aaaa"),
        graph(1, compile_id=compile_id, graph_hash="bbbb"),
    )
    (finding,) = divergence.find("j", prints["j"])
    assert (finding.kind, finding.compile_id) == ("graph_hash", compile_id)
    digest = Digest()
    digest.update("node", Answer("e", {"j": 1}, deltas=prints))
    assert digest.changes() == {"j": {compile_id}}


def test_ranks_that_change_alike_share_each_entry_and_one_that_changes_alone_has_its_own():
    digest = Digest()
    digest.update("node", answer("e", fingerprints(graph(0), graph(1), graph(2))))

    def change(version: int, *ranks: str, key=("1/0", "forward"), value="bbbb") -> None:
        delta = {rank: {"graphs": {key: [value]}} for rank in ranks}
        answer = Answer("e", {"j": version}, deltas={"j": delta})
        digest.update("node", answer)
        digest.changes()

    change(2, "0", "1", "2")
    ranks = digest.ranks("j")
    assert ranks["0"] == ranks["1"] == ranks["2"]
    assert ranks["0"]["graphs"][("1/0", "forward")] == ["bbbb"]
    change(3, "1", key=("2/0", "forward"))
    change(4, "1", key=("3/0", "forward"))
    ranks = digest.ranks("j")
    assert ranks["0"] == ranks["2"] != ranks["1"]
    assert kinds({"j": ranks}) == [("compile_ids", "2/0"), ("compile_ids", "3/0")]
    assert set(ranks["0"]["graphs"]) == {("0/0", "forward"), ("1/0", "forward")}
    assert digest.ranks("j", "2/0")["1"]["graphs"] == {("2/0", "forward"): ["bbbb"]}
    delta = {
        "0": {"graphs": {("4/0", "forward"): ["x"]}},
        "2": {"graphs": {("4/0", "forward"): ["y"]}},
    }
    digest.update("node", Answer("e", {"j": 5}, deltas={"j": delta}))
    expected = [
        ("graph_hash", {"x": ("0",), "y": ("2",)}),
        ("compile_ids", {"compiled": ("0", "2"), "missing": ("1",)}),
    ]
    found = divergence.find("j", digest.ranks("j"), {"4/0"})  # 0 and 2 changed unlike
    assert [(f.kind, dict(f.groups)) for f in found] == expected
    assert [(f.kind, dict(f.groups)) for f in digest.find("j", {"4/0"})] == expected
    # A later hash of rank 0 replaces its value: its old group loses it.
    delta = {"0": {"graphs": {("4/0", "forward"): ["x", "y"]}}}
    digest.update("node", Answer("e", {"j": 6}, deltas={"j": delta}))
    (found, _) = digest.find("j", {"4/0"})
    assert dict(found.groups) == {"x,y": ("0",), "y": ("2",)}


def test_an_entry_held_alike_is_one_value_whatever_the_ranks():
    index = divergence.JobIndex.of(fingerprints(*(graph(rank) for rank in range(1000)))["j"])
    (entry,) = index.at["0/0"].values()
    assert list(entry.values) == [("aaaa",)] and entry.holders.bit_count() == 1000


def test_a_summary_of_ranks_that_differ_sends_what_they_share_once():
    prints = fingerprints(
        *(graph(rank, compile_id=f"{i}/0") for rank in range(4) for i in range(3)),
        *(graph(rank, compile_id=f"own/{rank}") for rank in range(4)),
    )
    classes = summary(prints["j"])
    assert [names for names, _ in classes] == [("0", "1", "2", "3"), ("0",), ("1",), ("2",), ("3",)]
    assert len(classes[0][1]["graphs"]) == 3 and len(classes[1][1]["graphs"]) == 1
    digest = Digest()
    digest.update("node", answer("e", prints))
    assert digest.ranks("j") == prints["j"]


class CountedParts(dict):
    """A rank's fingerprint that counts how often ``find`` reads it."""

    reads = 0

    def __getitem__(self, part):
        CountedParts.reads += 1
        return super().__getitem__(part)

    def get(self, part, default=None):
        CountedParts.reads += 1
        return super().get(part, default)


def test_ranks_that_each_compile_an_id_of_their_own_are_not_read_once_per_id():
    """Each compile id is judged on the ranks that hold it: 400 ranks with an id of their own
    cost reads in proportion to ranks, not ranks x ids (640,800 reads before)."""
    prints = fingerprints(*(graph(rank, compile_id=f"own/{rank}") for rank in range(400)))
    ranks = {rank: CountedParts(parts) for rank, parts in prints["j"].items()}
    CountedParts.reads = 0
    found = divergence.find("j", ranks, {f"own/{rank}" for rank in range(400)})
    assert len(found) == 400 and dict(found[0].groups) == {
        "compiled": ("0",),
        "missing": ("1-399",),
    }
    assert CountedParts.reads < 10 * 400


def test_groups_name_runs_of_ranks_as_ranges_and_are_read_back():
    names = divergence.ranges([-3, -2, -1, 0, 2, 3, 5, 6, 7])
    assert names == ("-3-0", "2", "3", "5-7")
    assert divergence.expand(names) == ["-3", "-2", "-1", "0", "2", "3", "5", "6", "7"]
    assert divergence.size(names) == 9


def random_record(rng: random.Random, node: int, ids: list[str]):
    """A record of one of a node's ranks (node 0: even ranks, node 1: odd)."""
    rank, compile_id = rng.randrange(4) * 2 + node, rng.choice(ids)
    if rng.random() < 0.6:
        record = graph(rank, compile_id, rng.choice(["a", "b", ""]))
        record["graph"] = rng.choice(["forward", "backward"])
        if rng.random() < 0.3:
            op = rng.choice(["sum", "max"])
            record.update(collectives=[f"all_reduce({op})"], collective_hash=f"h{op}")
    else:
        record = frame(rank, compile_id, {"fx_graph": {rng.choice(["hit", "miss"]): 1}})
    if rng.random() < 0.05:
        record["compare_group"] = rng.choice(["0", "1"])
    return to_record(record)


def head_round(digest: Digest, logs: list[ChangeLog], answering=(0, 1)) -> None:
    """The collectors of ``answering`` answer the head, pickled as Ray sends them."""
    for node in answering:
        jobs, deltas = logs[node].since(*digest.known(str(node)))
        versions = dict(logs[node].versions)
        answer = Answer(logs[node].epoch, versions, jobs, deltas)
        digest.update(str(node), pickle.loads(pickle.dumps(answer)))
    digest.changes()


def test_a_digest_kept_from_changes_judges_as_the_collectors_fingerprints_read_whole():
    """Random rounds of two collectors (one sometimes silent, one sometimes restarted): the
    head's index, kept up to date from deltas, finds what its fingerprints read whole find."""
    rng = random.Random(7)
    for _ in range(200):
        ids = [f"{i}/0" for i in range(rng.randint(1, 4))]
        logs, digest = [ChangeLog(), ChangeLog()], Digest()
        for _ in range(rng.randint(1, 6)):
            for node in (0, 1):
                if rng.random() < 0.1:  # restarted: a new epoch, its fingerprints replayed
                    restarted = ChangeLog()
                    restarted.fingerprints = logs[node].fingerprints
                    restarted.versions = dict(logs[node].versions)
                    logs[node] = restarted
                for _ in range(rng.randint(0, 8)):
                    logs[node].observe(random_record(rng, node, ids))
            head_round(digest, logs, [node for node in (0, 1) if rng.random() > 0.15])
        head_round(digest, logs)
        ranks = {**logs[0].fingerprints.get("j", {}), **logs[1].fingerprints.get("j", {})}
        assert digest.find("j") == divergence.find_in_groups("j", ranks)
        assert digest.ranks("j") == ranks
