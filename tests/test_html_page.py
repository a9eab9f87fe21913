"""The HTML report's page without a browser: any valid record makes a page, what it holds is
bounded by what it shows and it says what it left out, duplicates count once.

tests/test_html_report.py opens real traced runs' pages in Chromium."""

from __future__ import annotations

import html
import json
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aotwatch.core.archive import ARCHIVE_FILE
from aotwatch.core.divergence import Finding
from aotwatch.core.records import MAX_TIME, PHASES, encode_record, new_record, to_record
from aotwatch.report import html as html_report
from aotwatch.report import summary as report
from aotwatch.report.html import Page, render
from helpers import aotwatch
from strategies import FIELDS

BENCHMARKS = Path(__file__).parent.parent / "benchmarks"


def write_archive(directory: Path, records: list[dict], copies: int = 1) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    lines = b"".join(encode_record(record) for record in records)
    (directory / ARCHIVE_FILE).write_bytes(lines * copies)
    return directory


def page_text(path: Path) -> str:
    """The page's text as a reader sees it, roughly: tags dropped, entities decoded."""
    return html.unescape(re.sub(r"<[^>]+>", " ", path.read_text()))


def frame(rank: int = 0, when: float = 1.7e9, **fields) -> dict:
    """A frame record of one second's compile, made at ``when``."""
    return new_record(
        **{"rank": rank, "time": when, "compile_id": "0/0", "durations_s": {"total": 1.0}, **fields}
    )


# -- item 7: a valid record never crashes the page -----------------------------------------


@pytest.mark.subprocess
def test_a_time_past_the_calendar_is_refused_and_counted_not_a_crash(tmp_path):
    archive = write_archive(
        tmp_path / "archive",
        [
            frame(),
            frame(when=1e12),  # year 33658: valid before, and a ValueError in the page
            frame(durations_s={"total": 1e15}),  # a start 31 million years before 1970
        ],
    )
    page = tmp_path / "report.html"
    result = aotwatch("report", str(archive), "--format", "html", "-o", str(page))
    assert result.returncode == 0, result.stderr
    assert "1 records from 1 archive" in page_text(page)
    counts = json.loads(aotwatch("report", str(archive), "--format", "json").stdout)
    assert counts["aotwatch_records_rejected"] == [{"labels": {"reason": "too_large"}, "value": 2}]


def test_the_latest_time_and_longest_duration_allowed_make_a_page(tmp_path):
    latest = frame(when=MAX_TIME)
    longest = frame(durations_s={"total": MAX_TIME}, graph_breaks=[{"category": "x"}])
    backward = new_record(time=MAX_TIME, graph="backward", durations_s={"backward": MAX_TIME})
    page = Page()
    for record in (latest, longest, backward):
        page.add(to_record(record))
    text = render(page, [], [tmp_path])
    assert "9999-12-31T23:59:59" in text  # the latest drawn at its time
    assert "1970-01-01T00:00:00" in text  # a start before 1970, drawn at 1970


calendar_records = st.fixed_dictionaries(
    {
        **FIELDS,
        "time": st.sampled_from([0, MAX_TIME]) | st.floats(0, MAX_TIME),
        "durations_s": st.dictionaries(
            st.sampled_from(PHASES), st.sampled_from([0, MAX_TIME]) | st.floats(0, MAX_TIME)
        ),
    }
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(calendar_records, min_size=1, max_size=4))
def test_any_valid_records_make_a_page(records):
    page = Page()
    for record in records:
        page.add(to_record(record))
    assert render(page, [], [Path("archive")]).startswith("<!DOCTYPE html>")


# -- item 8: bounded, and saying so ---------------------------------------------------------


@pytest.fixture
def small_bounds(monkeypatch):
    """Bounds small enough that a few records pass them."""
    for name, value in {
        "MAX_JOBS": 1,
        "MAX_RANKS": 2,
        "MAX_TIMELINE": 3,
        "MAX_GRAPH_ROWS": 2,
        "MAX_REASONS": 2,
        "MAX_FINDINGS": 1,
    }.items():
        monkeypatch.setattr(html_report, name, value)


def test_the_page_keeps_what_it_shows_and_says_what_it_left_out(small_bounds, tmp_path):
    times = [1.7e9 + 10 * i for i in range(8)]
    frames = [
        frame(rank=i % 2, when=when, recompile_reason=f"guard-{i} failed")
        for i, when in enumerate(times)
    ]
    graphs = [new_record(graph="forward", compile_id=f"{i}/0", graph_hash="ab") for i in range(5)]
    records = frames + graphs
    random.Random(4).shuffle(records)
    records += [frame(rank=7), new_record(job_name="other", compile_id="0/0")]  # once full
    page = Page()
    for record in records:
        page.add(to_record(record))
    (view,) = page.views.values()
    assert [bar.start for bar in view.compiles] == [when - 1.0 for when in times[:3]]
    assert len(view.graphs) == 2 and len(view.recompiles.by_reason) == 2
    assert sorted(view.ranks) == [0, 1]
    findings = [Finding("default", "graph_hash", f"{i}/0", (("ab", ("0",)),)) for i in range(3)]
    out = tmp_path / "report.html"
    out.write_text(render(page, findings, [tmp_path]))
    text = " ".join(page_text(out).split())
    assert "1 records of jobs beyond the first 1 are not shown (other)" in text
    assert "1 records of ranks beyond the first 2 are not shown." in text
    assert "Timeline: the earliest 3 of 8 compiles are drawn." in text
    assert "Cross-rank divergences: the first 1 of 3 are listed" in text
    assert (
        "Recompile reasons: the first 2 distinct reasons are tallied; 6 of 8 had a later one"
        in text
    )
    assert "AOT graphs: the first 2 distinct graphs are listed; 3 records of later ones" in text
    assert "8 compiles" in text.replace("8 compiles are drawn", "")  # the card counts all
    assert len(re.findall(r"guard-\d failed", text)) == 2 + 3  # 2 tallied, 3 on bars


def test_a_page_of_few_records_leaves_nothing_out(tmp_path):
    page = Page()
    for record in [frame(), new_record(graph="forward", compile_id="0/0")]:
        page.add(to_record(record))
    assert page.left_out() == [] and html_report.left_out(page.views["default"]) == []
    assert 'class="left-out"' not in render(page, [], [tmp_path])


@pytest.mark.subprocess
def test_duplicate_records_count_once_as_in_the_table(tmp_path):
    records = [frame(rank=rank, recompile_reason="size mismatch") for rank in (0, 1)]
    archive = write_archive(tmp_path / "archive", records, copies=3)
    page = Page()
    snapshot, _ = report.read_archives([archive / ARCHIVE_FILE], also=page.add)
    assert page.records == 2 and page.views["default"].compile_count == 2
    assert page.views["default"].recompiles.total == 2
    assert sum(snapshot.values["torch_compile_frames"].values()) == 2
    out = tmp_path / "report.html"
    result = aotwatch("report", str(archive), "--format", "html", "-o", str(out))
    assert result.returncode == 0, result.stderr
    assert "2 records from 1 archive" in page_text(out)


@pytest.mark.subprocess
def test_the_memory_benchmark_runs(tmp_path):
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / "report_memory.py"), "--records", "300"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    rows = [line.split("|")[1].strip() for line in result.stdout.splitlines() if "| " in line]
    assert rows[-2:] == ["table", "html"]


def test_hover_text_shows_a_compile_id_and_frame_name_as_text_not_markup(tmp_path):
    tag = "<img src=x onerror=alert(1)>"
    page = Page()
    page.add(to_record(frame(compile_id=f"0/0{tag}", frame={"co_name": f"<b>{tag}</b>"})))
    text = render(page, [], [tmp_path])
    assert "&lt;img src=x onerror=alert(1)&gt;" in text
    assert "\\u003cimg" not in text and "\\u003cb\\u003e" not in text  # no tag in plotly's data
