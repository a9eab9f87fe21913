"""A smoke run of every benchmark at a tiny size, so a change that breaks one fails here rather
than when someone re-measures. ``head_scale.py`` has its own (test_head_scale.py),
``report_memory.py`` runs in test_html_page.py; ``gpu_check.py`` on CPU is
test_capture_programs.py's run of the same programs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
RAY = pytest.mark.ray
SMOKE_RUNS = [
    ("archive_write.py", ["--writes", "200"], "| a batch of 100 lines (100 KB) |", ()),
    ("bootstrap_startup.py", ["--runs", "2"], "| traced |", ()),
    (
        "capture_overhead.py",
        ["--reps", "1", "--models", "mlp", "--backends", "aot_eager", "--steps", "3"],
        "Compile time of the first call",
        (),
    ),
    ("cost_scale.py", ["--ranks", "16", "--ids", "3"], "| 16 | 3 |", ()),
    ("footprint.py", ["--ranks", "2", "--steps", "1", "--backend", "aot_eager"], "| a node", ()),
    (
        "http_attack.py",
        ["--targets", "local", "--seconds", "1", "--quiet-seconds", "0.5", "--silent", "8"],
        "silent connections",
        (),
    ),
    ("perfetto_memory.py", ["--records", "200", "--ranks", "2"], "| 200 |", ()),
    ("compile_notice.py", ["--calls", "100"], "notices during 1,000 training steps", (RAY,)),
    ("push_and_scrape.py", ["--records", "1000", "--scrapes", "2x5"], "ceiling:", (RAY,)),
    (
        "soak.py",
        ["--jobs", "2", "--ranks", "2", "--compiles", "2", "--every", "1", "--retention-s", "1"],
        "jobs whose newest series",
        (RAY,),
    ),
    (
        "stalled_collector.py",
        ["--blocks", "1", "--steps", "5", "--compiles", "2"],
        "step time stopped/up",
        (RAY,),
    ),
]


@pytest.mark.subprocess
@pytest.mark.parametrize(
    ("script", "args", "says"),
    [pytest.param(s, a, says, marks=m, id=s.removesuffix(".py")) for s, a, says, m in SMOKE_RUNS],
)
def test_the_benchmark_runs_at_a_tiny_size(script, args, says, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT / "daemon")}
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), *args],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=240,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert says in result.stdout, result.stdout[-3000:]


def test_every_benchmark_has_a_smoke_run():
    smoked = {script for script, *_ in SMOKE_RUNS}
    elsewhere = {"head_scale.py", "report_memory.py", "gpu_check.py", "ray_env.py"}
    assert {p.name for p in (ROOT / "benchmarks").glob("*.py")} == smoked | elsewhere
