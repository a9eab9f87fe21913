"""``aotwatch run`` on the demo job, end to end: progress, report, and every collector scraped."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from aotwatch.core.metrics import FAMILIES
from helpers import aotwatch, scrape

pytestmark = [pytest.mark.ray, pytest.mark.subprocess, pytest.mark.browser]

REPO = Path(__file__).parent.parent


def demo_job(tmp_path: Path) -> Path:
    """config/jobs/demo.yaml with aot_eager (Inductor's cold compiles are slow on 2 cores)."""
    job = yaml.safe_load((REPO / "config/jobs/demo.yaml").read_text())
    job["name"] = "demo-test"
    job["train_loop_config"] = {"backend": "aot_eager", "steps": "4"}
    job["aotwatch"] = {
        "archive": {"path": str(tmp_path / "archive")},
        "collector": {"address": "127.0.0.1", "port": 0, "head_port": 0},
    }
    path = tmp_path / "demo.yaml"
    path.write_text(yaml.safe_dump(job))
    return path


def read_until(process: subprocess.Popen, marker: str, timeout: float) -> list[str]:
    lines, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        lines.append(line.rstrip("\n"))
        if marker in line:
            return lines
    raise AssertionError(f"no {marker!r} in the output:\n" + "\n".join(lines[-60:]))


OWN_LINE = re.compile(
    r"\[ *\d+ s\] |aotwatch[: ]|job_name +rank|demo-test +[01] +cpu|rank divergences|metrics: "
    r"|head \(divergences\)|Prometheus file_sd|HTML report: |serving for |$"
)
"""aotwatch's own lines in ``aotwatch run``'s output (progress, report, where things are)."""


def assert_quiet(lines: list[str], tmp_path: Path) -> None:
    """Under 30 lines, every one aotwatch's own, no colour codes; Ray's and the workers'
    lines in the log file named once."""
    assert len(lines) < 30, "\n".join(lines)
    assert [line for line in lines if not OWN_LINE.match(line)] == []
    assert not any("\x1b" in line for line in lines)
    (named,) = [line for line in lines if line.startswith("aotwatch: Ray and worker logs -> ")]
    log = Path(named.split(" -> ", 1)[1])
    assert log.parent == tmp_path / "archive" / "logs"
    assert stat.S_IMODE(log.stat().st_mode) == 0o600
    text = log.read_text()
    assert "(RayTrainWorker pid=" in text or "pid=" in text, text[:2000]


def assert_html_report_shows_both_ranks(tmp_path: Path, lines: list[str]) -> None:
    """The HTML command ``aotwatch run`` printed, run; the page opened offline in Chromium."""
    from browser import Browser

    (command,) = [line for line in lines if line.startswith("HTML report: ")]
    words = command.removeprefix("HTML report: ").split()
    assert words[:2] == ["aotwatch", "report"] and words[-2:] == ["-o", "report.html"]
    result = aotwatch(*words[1:-1], str(tmp_path / "report.html"), timeout=120)
    assert result.returncode == 0, result.stderr
    with Browser() as browser:
        visit = browser.visit((tmp_path / "report.html").as_uri())
        assert (visit.errors, visit.failed, len(visit.requests)) == ([], [], 1)
        ticks = browser.evaluate(
            "Array.from(document.querySelectorAll('#timeline-0 .ytick text'))"
            ".map(t => t.textContent)"
        )
        assert sorted(ticks) == ["rank 0", "rank 1"]


def test_demo_job_end_to_end(tmp_path):
    # As a newcomer runs it: Ray's token authentication as Ray sets it (its notice goes to
    # the log file, not the output).
    env = {name: value for name, value in os.environ.items() if name != "RAY_AUTH_MODE"}
    process = subprocess.Popen(
        [sys.executable, "-m", "aotwatch.cli", "run", str(demo_job(tmp_path)), "--linger", "60"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    try:
        lines = read_until(process, "serving for", timeout=600)
        output = "\n".join(lines)
        assert re.search(r"workers attached 2, graphs captured [1-9]", output), output
        assert re.search(r"\] compiling frame \S+ on [12] ranks? for \d+ s", output), output
        assert_quiet(lines, tmp_path)
        report = lines[lines.index("aotwatch report for job 'demo-test':") + 1 :]
        rows = {tuple(line.split()[:3]) for line in report[1:3]}
        assert rows == {("demo-test", "0", "cpu"), ("demo-test", "1", "cpu")}, output
        file_sd = Path(next(line for line in lines if "file_sd:" in line).split(": ", 1)[1])
        groups = json.loads(file_sd.read_text())
        texts = [scrape(f"http://{group['targets'][0]}/metrics") for group in groups]
    finally:
        process.terminate()
        process.wait(timeout=60)

    assert_html_report_shows_both_ranks(tmp_path, lines)
    exposition = "\n".join(texts)
    for family in (f.name for f in FAMILIES):
        assert re.search(rf"# TYPE {family}(_total)? ", exposition), family
    assert "# TYPE torch_compile_rank_divergences_total counter" in exposition
    # kept per job on a node (both ranks summed), and per rank
    for family in ("input_mutations", "effect_tokens"):
        assert re.search(
            rf'torch_compile_{family}_total{{[^}}]*job_name="demo-test"[^}}]*}} [1-9]', exposition
        ), family
        assert not re.search(rf"torch_compile_{family}_total{{[^}}]*rank=", exposition), family
    for rank in ("0", "1"):
        for family in ("recompiles", "graph_breaks"):
            assert re.search(
                rf'torch_compile_{family}_total{{[^}}]*rank="{rank}"[^}}]*}} [1-9]', exposition
            ), (family, rank)


def test_a_driver_command_job_gets_capture_on_its_workers(tmp_path):
    """``command:``: the driver's own ray.init() picks up aotwatch's runtime_env."""
    driver = tmp_path / "driver.py"
    driver.write_text(
        "import ray, torch\n"
        "ray.init()\n"
        "@ray.remote(num_cpus=0)\n"
        "def step():\n"
        "    f = torch.compile(lambda x: x.sin() + 1, backend='aot_eager')\n"
        "    f(torch.ones(3))\n"
        "    import aotwatch.attachment.process\n"
        "    return aotwatch.attachment.process.current().sink.flush(timeout=30)\n"
        "assert ray.get(step.remote(), timeout=300)\n"
    )
    job = tmp_path / "job.yaml"
    job.write_text(
        yaml.safe_dump(
            {
                "name": "driver-test",
                "command": f"{sys.executable} {driver}",
                "aotwatch": {
                    "archive": {"path": str(tmp_path / "archive")},
                    "collector": {"address": "127.0.0.1", "port": 0, "head_port": 0},
                },
            }
        )
    )
    result = subprocess.run(
        [sys.executable, "-m", "aotwatch.cli", "run", str(job)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    report = result.stdout.split("aotwatch report for job 'driver-test':\n")[1].splitlines()
    assert report[1].split()[:5] == ["driver-test", "0", "cpu", "1", "0/0/1"], result.stdout
