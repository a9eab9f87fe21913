"""A first run with nothing left to ask: ``aotwatch run`` shows the compiles in progress and
none of Ray's lines, ``aotwatch report`` takes the archive root ``run`` names, and the
README's commands work with a fresh Debian's own python3 (PEP 668: no pip into it)."""

from __future__ import annotations

import io
import json
import logging

from aotwatch import progress as progress_module
from aotwatch.aggregate import Snapshot
from aotwatch.cluster.collector import NodeCollector
from aotwatch.cluster.driver import compiles_in_progress
from aotwatch.metrics import IN_PROGRESS
from aotwatch.progress import RayLogFile
from cluster_helpers import config_at
from test_cli import aotwatch
from test_job_archives import compiles, worker


def in_progress(*compiling: tuple[str, str, float]) -> Snapshot:
    """A snapshot with ranks compiling: (rank, compile id, since)."""
    values = {(("demo", rank, "cpu", compile_id)): since for rank, compile_id, since in compiling}
    return Snapshot({IN_PROGRESS: values}, {})


def test_compiles_in_progress_name_the_frame_the_ranks_and_how_long():
    assert compiles_in_progress(Snapshot({}, {}), 1000.0) == ""
    both = in_progress(("0", "0/0", 968.0), ("1", "0/0", 970.5))
    assert compiles_in_progress(both, 1000.0) == "frame 0/0 on 2 ranks for 32 s"
    one = in_progress(("1", "1/0", 999.0))
    assert compiles_in_progress(one, 1000.0) == "frame 1/0 on 1 rank for 1 s"
    # The compile most ranks are in; the others counted; a clock behind is not negative.
    mixed = in_progress(("0", "2/0", 990.0), ("1", "2/0", 995.0), ("2", "3/1", 1005.0))
    assert compiles_in_progress(mixed, 1000.0) == (
        "frame 2/0 on 2 ranks for 10 s (and 1 other compile)"
    )
    assert compiles_in_progress(one, 900.0) == "frame 1/0 on 1 rank for 0 s"


def test_how_long_a_stage_lasts_prints_no_line_of_its_own(monkeypatch):
    monkeypatch.setattr(progress_module, "PLAIN_EVERY_S", 3600)
    stream = io.StringIO()
    shown = progress_module.Progress(stream)
    shown.update("compiling", "workers attached 1", "frame 0/0 on 1 rank for 2 s")
    shown.update("compiling", "workers attached 2", "frame 0/0 on 2 ranks for 4 s")
    shown.update("training", "workers attached 2")
    shown.close()
    lines = [line.split("] ", 1)[1] for line in stream.getvalue().splitlines()]
    assert lines == [
        "compiling frame 0/0 on 1 rank for 2 s: workers attached 1",
        "training: workers attached 2",
    ]


def test_ray_lines_logged_before_it_connects_go_to_the_file(tmp_path, capfd):
    """What ``ray.init`` logs of a new local cluster (its token notice) reaches the file
    when the file is installed before it, as ``aotwatch run`` and ``serve`` do."""
    from ray._private.authentication import authentication_token_setup

    path = tmp_path / "ray.log"
    ray_log = RayLogFile(path)
    ray_log.install()
    try:
        authentication_token_setup._warn_token_auth_enabled()
        logging.getLogger("ray").setLevel(logging.WARNING)  # as ray.init sets it
        ray_log.hook_workers()
    finally:
        ray_log.close()
    out, err = capfd.readouterr()
    assert "Token authentication" not in out + err
    assert "Token authentication is enabled for this Ray cluster" in path.read_text()


def test_report_of_an_archive_root_shows_every_job_it_holds(tmp_path):
    root = tmp_path / "archive"
    for node, job in (("a" * 56, "demo"), ("b" * 56, "demo"), ("b" * 56, "other")):
        collector = NodeCollector(node, config_at(root))
        try:
            rank = 0 if node[0] == "a" else 1
            assert collector.push(worker(job, rank), compiles(job, 2, rank=rank), {}) == 2
        finally:
            collector.close()
    result = aotwatch("report", str(root), "--format", "json")
    assert result.returncode == 0, result.stderr
    received = json.loads(result.stdout)["aotwatch_records_received"]
    assert {(s["labels"]["job_name"], s["value"]) for s in received} == {
        ("demo", 4),
        ("other", 2),
    }
    table = aotwatch("report", str(root))
    assert table.returncode == 0, table.stderr
    rows = {tuple(line.split()[:2]) for line in table.stdout.splitlines()[1:4]}
    assert rows == {("demo", "0"), ("demo", "1"), ("other", "1")}, table.stdout
