"""``aotwatch report --format html`` of real traced runs, opened in headless Chromium: no
console errors, no request beyond the file itself, every rank and compile on the timeline.

``UPDATE_SCREENSHOT=1`` keeps the screenshot as docs/report.png (shown in the README)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from aotwatch.core.archive import archive_files, read_archive
from browser import Browser
from helpers import LAUNCHED_SCRIPT, aotwatch, trace, write_script

pytestmark = [pytest.mark.subprocess, pytest.mark.browser]

DOCS = Path(__file__).parent.parent / "docs"


@pytest.fixture(scope="module")
def traced_runs(tmp_path_factory) -> Path:
    """Two runs in one trace directory: a 2-rank torchrun job where rank 1 compiles an extra
    frame, and a 1-process job with a recompile and a graph break."""
    root = tmp_path_factory.mktemp("html")
    archive = root / "trace"
    torchrun = ["torchrun", "--standalone", "--nproc-per-node", "2"]
    trace(archive, *torchrun, str(LAUNCHED_SCRIPT), str(root), "--extra-frame-on-rank-1")
    script = write_script(
        root / "programs.py",
        "import programs\nprograms.shape_recompile('aot_eager', 'cpu')\n"
        "programs.graph_break('aot_eager', 'cpu')\n",
    )
    options = ["--port", "0", "--archive", str(archive), "--job-name", "single"]
    result = aotwatch("trace", *options, "--", "python", str(script))
    assert result.returncode == 0, result.stderr
    return archive


def expected_bars(archive: Path, job: str) -> dict[str, int]:
    """Compiles per rank that the timeline must draw: frames and lazy backwards."""
    bars: dict[str, int] = {}
    for path in archive_files(archive):
        for record in read_archive(path):
            timed = record.graph is None or (
                record.graph == "backward" and record.durations_s.get("backward")
            )
            if record.job_name == job and timed:
                bars[f"rank {record.rank}"] = bars.get(f"rank {record.rank}", 0) + 1
    return bars


def test_the_html_report_opens_offline_and_shows_every_rank_and_compile(traced_runs, tmp_path):
    page = tmp_path / "report.html"
    result = aotwatch("report", str(traced_runs), "--format", "html", "-o", str(page))
    assert result.returncode == 0, result.stderr
    assert result.stdout == "" and str(page) in result.stderr
    with Browser() as browser:
        visit = browser.visit(page.as_uri())
        assert visit.errors == []
        assert visit.requests == [page.as_uri()]  # plotly.js inline: nothing fetched
        assert visit.failed == []
        jobs = browser.evaluate(
            "Array.from(document.querySelectorAll('section.job')).map(s => s.dataset.job)"
        )
        assert jobs == ["default", "single"]
        for index, job in enumerate(jobs):
            expected = expected_bars(traced_runs, job)
            ticks = browser.evaluate(
                f"Array.from(document.querySelectorAll('#timeline-{index} .ytick text'))"
                ".map(t => t.textContent)"
            )
            assert sorted(ticks) == sorted(expected)
            drawn = browser.evaluate(
                f"document.getElementById('timeline-{index}').data"
                ".filter(trace => trace.type === 'bar').flatMap(trace => trace.y)"
            )
            assert {rank: drawn.count(rank) for rank in expected} == expected
            paths = browser.evaluate(
                f"document.querySelectorAll('#timeline-{index} .bars path').length"
            )
            assert paths == sum(expected.values())
        text = browser.evaluate("document.body.innerText")
        assert "compile_ids" in text and "ranks 1: compiled" in text  # the divergence
        assert "size mismatch" in text  # a recompile reason, with its text
        assert "gb0059" in text  # a graph break, by registry id
        marks = browser.evaluate("document.querySelectorAll('#timeline-1 .scatter .point').length")
        assert marks == 1  # the frame with the graph break, marked
        shot = tmp_path / "report.png"
        browser.screenshot(shot)
    assert shot.stat().st_size > 20_000
    if os.environ.get("UPDATE_SCREENSHOT"):
        shutil.copy(shot, DOCS / "report.png")


def test_html_needs_an_output_file(traced_runs):
    result = aotwatch("report", str(traced_runs), "--format", "html")
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "aotwatch: error: --format html writes a file: name it with -o FILE"
    ]
