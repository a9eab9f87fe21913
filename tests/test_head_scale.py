"""A smoke run of ``benchmarks/head_scale.py`` at a tiny size: a change to the head or to a
collector's answer that breaks the benchmark fails here, not when someone re-measures."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.subprocess

ROOT = Path(__file__).parent.parent


def test_head_scale_runs_at_a_tiny_size():
    env = {**os.environ, "PYTHONPATH": str(ROOT / "daemon")}
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "head_scale.py"), "--ranks", "16", "--ids", "3"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    rows = [line for line in result.stdout.splitlines() if line.startswith("| 16 |")]
    assert len(rows) == 9, result.stdout
    assert "restarted head's findings equal the running head's: True" in result.stdout
    findings = [int(row.split("|")[-2]) for row in rows]
    assert findings[-3:] == [16, 17, 17]  # a compile id of its own per rank, then one hash
    names = [row.split("|")[3].strip() for row in rows]
    assert names[4] == "a compile id of its own per rank"  # every rank's compile ids differ
    assert names[7] == "a graph hash of its own per rank"  # every rank's graph hashes differ
    assert names[8] == "restarted head (first, all)"  # a restart when every rank differs
