"""A second process that loads every graph from a warm AOTAutogradCache records the same graphs."""

from __future__ import annotations

from pathlib import Path

import pytest

from aotwatch.core.archive import read_archive
from aotwatch.core.records import as_dict
from helpers import aotwatch, write_script

pytestmark = pytest.mark.subprocess

GRAPH_FIELDS = (
    "graph",
    "graph_hash",
    "nodes",
    "inputs",
    "mutation_placement",
    "outputs",
    "intermediate_bases",
    "tokens",
    "device",
)


def _run(tmp_path: Path, name: str, cache: Path) -> list[dict]:
    script = write_script(
        tmp_path / "program.py",
        "import programs\nprograms.training_step('inductor', 'cpu')\n"
        "programs.input_mutation('inductor', 'cpu')\n",
    )
    result = aotwatch(
        "trace",
        "--port",
        "0",
        "--archive",
        str(tmp_path / name),
        "--",
        "python",
        str(script),
        env={"TORCHINDUCTOR_CACHE_DIR": str(cache)},
    )
    assert result.returncode == 0, result.stderr
    return [as_dict(r) for r in read_archive(tmp_path / name)]


def _graphs(records: list[dict]) -> list[tuple]:
    return sorted(
        (tuple(str(r[f]) for f in GRAPH_FIELDS) for r in records if r["graph"]),
    )


def _aot_cache(records: list[dict]) -> dict[str, int]:
    totals: dict[str, int] = {}
    for record in records:
        for result, count in record["cache"].get("aot_autograd", {}).items():
            totals[result] = totals.get(result, 0) + count
    return totals


def test_warm_cache_process_records_the_same_graphs_as_cache_hits(tmp_path):
    cache = tmp_path / "inductor-cache"
    cold = _run(tmp_path, "cold", cache)
    warm = _run(tmp_path, "warm", cache)

    assert _graphs(warm) == _graphs(cold)
    assert [r["graph"] for r in cold if r["graph"]].count("backward") == 1
    assert not any(r["cache_hit"] for r in cold if r["graph"])
    assert all(r["cache_hit"] for r in warm if r["graph"])
    assert _aot_cache(cold) == {"miss": 2}
    assert _aot_cache(warm) == {"hit": 2}
    assert all(r["nodes"] and r["graph_hash"] for r in warm if r["graph"])
