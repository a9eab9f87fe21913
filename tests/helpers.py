"""Helpers shared by test modules: scraping, a test config, waiting for a condition, running
the ``aotwatch`` command. Tests import them from here, never from conftest or from another
test module."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from aotwatch.core.config import ArchiveConfig, Config, ExportConfig

TESTS = Path(__file__).parent
LAUNCHED_SCRIPT = TESTS / "launched_train.py"
"""The training script that every launcher test runs under ``aotwatch trace``."""
TRACE_TIMEOUT_S = 240
"""Seconds a traced multi-process job may take on 2 loaded cores."""


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read().decode()


def samples(text: str, types: tuple[str, ...] | None = None) -> dict[tuple[str, tuple], float]:
    """Every sample of an exposition (of the families of ``types``, None: all), by name and
    sorted labels."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        if types is None or family.type in types
        for sample in family.samples
    }


def test_config(tmp_path: Path, **changes) -> Config:
    """A config that serves on a free loopback port and archives into ``tmp_path``."""
    return Config(
        export=ExportConfig(address="127.0.0.1", port=0),
        archive=ArchiveConfig(path=str(tmp_path / "archive")),
        **changes,
    )


test_config.__test__ = False  # a helper, not a test


def wait_for(condition, timeout: float = 30, interval: float = 0.1, message: str = ""):
    """Poll ``condition`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout} s waiting for {message or condition}")


def aotwatch(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: int = 300):
    """The ``aotwatch`` command in a child process, its output captured."""
    return subprocess.run(
        [sys.executable, "-m", "aotwatch.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, **(env or {})},
        timeout=timeout,
    )


def write_script(path: Path, body: str) -> Path:
    """A Python script at ``path`` that can import the test helpers."""
    path.write_text(f"import sys\nsys.path.insert(0, {str(TESTS)!r})\n{body}")
    return path


def trace(archive: Path, *command: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """``aotwatch trace`` of a multi-process ``command`` into ``archive``; it must succeed."""
    result = aotwatch(
        "trace",
        "--port",
        "0",
        "--archive",
        str(archive),
        "--",
        *command,
        env=env,
        timeout=TRACE_TIMEOUT_S,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def report_json(archive: Path) -> dict:
    """``aotwatch report --format json`` of ``archive``."""
    result = aotwatch("report", "--format", "json", str(archive))
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def laughs(levels: int) -> str:
    """A YAML list of 9**levels strings in a few hundred bytes: every list holds nine aliases of
    the one before (a billion laughs at 9 levels)."""
    items = ["&l0 [" + ",".join("x" * 9) + "]"]
    items += [f"&l{n} [" + ",".join([f"*l{n - 1}"] * 9) + "]" for n in range(1, levels)]
    return "[" + ", ".join(items) + "]"
