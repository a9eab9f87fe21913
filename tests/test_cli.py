"""The ``aotwatch`` command: trace, report, check-config, as a user runs them."""

from __future__ import annotations

import json
import socket
import subprocess
from pathlib import Path

import pytest
import torch

from aotwatch.core.archive import read_archive
from aotwatch.core.records import as_dict
from helpers import aotwatch, scrape, write_script
from programs import PROGRAMS

pytestmark = pytest.mark.subprocess

TESTS = Path(__file__).parent


def trace(archive: Path, *command: str) -> subprocess.CompletedProcess:
    """``aotwatch trace`` of ``command`` on any free port, archiving to ``archive``."""
    return aotwatch("trace", "--port", "0", "--archive", str(archive), "--", *command)


def test_trace_records_every_graph_and_prints_a_summary(tmp_path):
    script = write_script(
        tmp_path / "train.py",
        "import programs\nprograms.training_step('aot_eager', 'cpu')\n"
        "programs.input_mutation('aot_eager', 'cpu')\n",
    )
    result = aotwatch(
        "trace", "--port", "0", "--archive", str(tmp_path / "a"), "--", "python", str(script)
    )
    assert result.returncode == 0, result.stderr
    records = [as_dict(r) for r in read_archive(tmp_path / "a")]
    assert sorted(r["graph"] or "frame" for r in records) == [
        "backward",
        "forward",
        "frame",
        "frame",
        "inference",
    ]
    assert "aotwatch summary" in result.stderr
    lines = result.stderr.strip().splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("job_name"))
    assert lines[header].split()[:4] == ["job_name", "rank", "device", "frames"]
    assert lines[header + 1].split()[:5] == ["default", "0", "cpu", "2", "1/1/1"]
    assert (
        lines[-1] == f"HTML report: aotwatch report {tmp_path / 'a'} --format html -o report.html"
    )


@pytest.mark.parametrize(
    ("body", "code"),
    [("sys.exit(3)", 3), ("raise RuntimeError('boom')", 1), ("print('fine')", 0)],
)
def test_trace_exits_with_the_scripts_status(tmp_path, body, code):
    script = write_script(tmp_path / "s.py", body + "\n")
    result = trace(tmp_path / "a", "python", str(script), "extra-arg")
    assert result.returncode == code, result.stderr
    if code == 1:
        assert "RuntimeError: boom" in result.stderr


def test_trace_passes_arguments_and_main_to_the_script(tmp_path):
    script = write_script(
        tmp_path / "args.py", "if __name__ == '__main__':\n    print('ARGV', sys.argv[1:])\n"
    )
    result = trace(tmp_path / "a", "python", str(script), "--lr", "0.1")
    assert "ARGV ['--lr', '0.1']" in result.stdout


def test_trace_refuses_a_port_in_use(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = aotwatch("trace", "--port", str(port), "--", "python", "-c", "pass")
    assert result.returncode == 2
    assert f"cannot serve /metrics on 127.0.0.1:{port}" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_trace_refuses_a_bad_config_before_running(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("export:\n  port: seventy\n")
    marker = tmp_path / "ran"
    script = write_script(tmp_path / "s.py", f"open({str(marker)!r}, 'w')\n")
    result = aotwatch("trace", "--config", str(config), "--", "python", str(script))
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"aotwatch: error: {config}: export.port: got str 'seventy'; expected an integer"
    )
    assert not marker.exists()


def test_trace_refuses_ports_that_collide_before_running(tmp_path):
    """Local mode from 9410 would take 9410..9473: the collector's 9419 among them."""
    marker = tmp_path / "ran"
    script = write_script(tmp_path / "s.py", f"open({str(marker)!r}, 'w')\n")
    result = aotwatch("trace", "--port", "9410", "--", "python", str(script))
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "aotwatch: error: collector.port: 9419 is one of local mode's ports, export.port 9410 "
        "plus a local rank (9410..9473); expected a port outside 9410..9473, or 0 (any free port)"
    )
    assert not marker.exists()


def test_check_config(tmp_path):
    good = aotwatch("check-config", "config/aotwatch.yaml", cwd=TESTS.parent)
    assert good.returncode == 0 and "config/aotwatch.yaml: ok" in good.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text("limits:\n  max_series: 10\n")
    result = aotwatch("check-config", str(bad))
    assert result.returncode == 2
    assert f"{bad}: limits.max_series: unknown key" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_report_prometheus_equals_a_live_scrape(capture, tmp_path):
    for name in ("training_step", "input_mutation", "effect_token", "graph_break"):
        PROGRAMS[name]("aot_eager", "cpu")
        torch._dynamo.reset()
    live = scrape(capture.url)
    report = aotwatch("report", "--format", "prometheus", str(tmp_path / "archive"))
    assert report.returncode == 0, report.stderr
    assert report.stdout == live


def test_report_json_and_table(capture, tmp_path):
    PROGRAMS["training_step"]("aot_eager", "cpu")
    result = aotwatch("report", "--format", "json", str(tmp_path / "archive"))
    data = json.loads(result.stdout)
    graphs = {e["labels"]["graph"]: e["value"] for e in data["torch_compile_graphs"]}
    assert graphs == {"forward": 1, "backward": 1}
    (nodes,) = [e for e in data["torch_compile_graph_nodes"] if e["labels"]["graph"] == "forward"]
    assert nodes["count"] == 1 and nodes["buckets"]["+Inf"] == 1
    table = aotwatch("report", str(tmp_path / "archive")).stdout.splitlines()
    assert table[1].split()[:5] == ["default", "0", "cpu", "1", "1/1/0"]


def test_report_counts_malformed_lines_as_rejected(capture, tmp_path):
    PROGRAMS["input_mutation"]("aot_eager", "cpu")
    archive = tmp_path / "archive" / "records.jsonl"
    with archive.open("a") as lines:
        lines.write("not json\n" + json.dumps({"schema": 99}) + "\n")
    result = aotwatch("report", "--format", "json", str(archive))
    rejected = {
        e["labels"]["reason"]: e["value"]
        for e in json.loads(result.stdout)["aotwatch_records_rejected"]
    }
    assert rejected == {"not_json": 1, "schema_version": 1}


def test_report_of_a_missing_archive_is_a_clear_error(tmp_path):
    result = aotwatch("report", str(tmp_path / "nothing"))
    assert result.returncode == 2 and "no archive there" in result.stderr
