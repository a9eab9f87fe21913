"""The exposition: a golden file for fixed records, and promtool on golden and live output.

Regenerate the golden file after an intended change with
``UPDATE_GOLDEN=1 python -m pytest tests/test_exposition.py`` and review its diff.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from aotwatch.core.aggregate import Snapshot
from aotwatch.core.liveness import Liveness
from aotwatch.core.metrics import FAMILIES
from aotwatch.core.wire import Compiling, Worker
from aotwatch.export.collector import exposition
from golden_records import golden_aggregate
from helpers import scrape
from programs import PROGRAMS

GOLDEN = Path(__file__).parent / "golden" / "exposition.prom"


def golden_snapshot() -> Snapshot:
    """The golden aggregate as a collector shows it, with two workers of the job attached."""
    liveness = Liveness(timeout_s=60, max_per_job=8, max_jobs=8)
    for rank in (0, 1):
        liveness.seen(Worker(f"w{rank}", "golden", rank))
    liveness.compiling("w1", Compiling("3/0", "cuda:1", since=1_700_000_100.0, began=0.0), 1)
    return liveness.apply(golden_aggregate().snapshot())


def golden_exposition() -> str:
    text = exposition(golden_snapshot(), {"team": "llm"}).decode()
    # build_info carries the installed versions: checked by promtool, not by the golden file.
    return "".join(line for line in text.splitlines(True) if "aotwatch_build_info{" not in line)


def test_exposition_matches_the_golden_file():
    text = golden_exposition()
    if os.environ.get("UPDATE_GOLDEN"):
        GOLDEN.write_text(text)
    assert text == GOLDEN.read_text()


def test_every_metrics_md_family_is_exposed():
    text = golden_exposition()
    for family in FAMILIES:
        sample = {"counter": "_total", "gauge": "", "histogram": "_count"}[family.kind]
        assert f"\n{family.name}{sample}{{" in text, family.name


def promtool_check(text: str) -> subprocess.CompletedProcess:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool not found: scripts/test.sh installs Debian's prometheus package")
    return subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60
    )


@pytest.mark.subprocess
def test_golden_exposition_passes_promtool():
    result = promtool_check(golden_exposition())
    assert result.returncode == 0 and result.stdout + result.stderr == "", result


@pytest.mark.subprocess
def test_live_exposition_passes_promtool(capture):
    for name in PROGRAMS:
        PROGRAMS[name]("aot_eager", "cpu")
        torch._dynamo.reset()
    text = scrape(capture.url)
    assert "aotwatch_build_info{" in text and "torch_compile_graphs_total{" in text
    result = promtool_check(text)
    assert result.returncode == 0 and result.stdout + result.stderr == "", result
