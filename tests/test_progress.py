"""The live status line of ``aotwatch run``, on a real terminal (a pty) and in a file, and
the file that takes Ray's lines instead."""

from __future__ import annotations

import io
import logging
import os
import pty
import socket
import stat

import pytest

from aotwatch.cluster import driver
from aotwatch.cluster import progress as progress_module
from aotwatch.cluster.progress import RayLogFile
from aotwatch.cluster.workers import ClusterUnreachable
from aotwatch.core.config import ArchiveConfig, ClusterConfig, Config


def test_on_a_terminal_one_line_updates_in_place():
    leader, follower = pty.openpty()
    with os.fdopen(follower, "w", buffering=1) as terminal:
        shown = progress_module.Progress(terminal)
        shown.update("waiting for 2 workers", "workers attached 0")
        shown.update("compiling", "workers attached 2, graphs captured 4")
        shown.print("aotwatch: a line that stays")
        shown.close()
        os.set_blocking(leader, False)
        output = b""
        while True:
            try:
                chunk = os.read(leader, 65536)
            except BlockingIOError:
                break
            if not chunk:
                break
            output += chunk
    text = output.decode(errors="replace")
    assert "compiling: workers attached 2, graphs captured 4" in text
    assert "aotwatch: a line that stays" in text
    assert "\r" in text or "\x1b[" in text  # redrawn in place, not a new line per update
    assert text.count("\n") <= 4


def test_in_a_file_plain_lines_when_the_stage_changes(monkeypatch):
    monkeypatch.setattr(progress_module, "PLAIN_EVERY_S", 3600)
    stream = io.StringIO()
    shown = progress_module.Progress(stream)
    shown.update("waiting for 2 workers", "workers attached 0")
    shown.update(counts="workers attached 1")  # same stage: nothing new printed
    shown.update("compiling", "workers attached 2")
    shown.close()
    lines = stream.getvalue().splitlines()
    assert [line.split("] ", 1)[1] for line in lines] == [
        "waiting for 2 workers: workers attached 0",
        "compiling: workers attached 2",
    ]
    assert "\x1b" not in stream.getvalue()


def test_ray_lines_go_to_a_private_file_and_come_back_after(tmp_path):
    path = tmp_path / "logs" / "job.log"
    path.parent.mkdir(mode=0o700)
    ray_logger = logging.getLogger("ray.train")
    before = (ray_logger.handlers[:], ray_logger.propagate)
    ray_log = RayLogFile(path)
    ray_log.install()
    ray_log.hook_workers()
    assert ray_log.hooked  # this Ray still has the hook it replaces
    ray_logger.warning("Requesting resources")
    cleaner = {"pid": 42, "actor_name": "PlacementGroupCleaner", "ip": "10.0.0.1"}
    lines = ["Failed to query Ray Train Controller actor state."]
    ray_log.write_worker_lines({**cleaner, "is_err": True, "lines": lines})
    ray_log.close()
    ray_log.write_worker_lines({"pid": 1, "lines": ["after the run"]})  # ignored, no error
    text = path.read_text()
    assert "ray.train WARNING Requesting resources" in text
    assert (
        "stderr (PlacementGroupCleaner pid=42, ip=10.0.0.1) Failed to query Ray Train Controller"
        in text
    )
    assert "after the run" not in text
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert (ray_logger.handlers, ray_logger.propagate) == before


def test_ray_lines_come_back_when_the_cluster_does_not_answer(tmp_path):
    """``aotwatch run`` and ``serve`` on a mistyped address: the file is closed and Ray's
    loggers are as they were, though ``connect`` raised."""
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{closed.getsockname()[1]}"
    config = Config(
        cluster=ClusterConfig(address=address), archive=ArchiveConfig(path=str(tmp_path))
    )
    ray_logger = logging.getLogger("ray")
    before = (ray_logger.handlers[:], ray_logger.propagate)
    said = []
    quiet = driver.quiet_ray(config, "job", verbose=False, say=said.append)
    with pytest.raises(ClusterUnreachable, match="Connection refused"), quiet as ray_log:
        assert ray_logger.handlers != before[0]
        driver.connect(config, None, ray_log)
    assert (ray_logger.handlers, ray_logger.propagate) == before
    assert said == [f"aotwatch: Ray and worker logs -> {ray_log.path}"]
    ray_log.write_worker_lines({"pid": 1, "lines": ["after the run"]})  # the file is closed
    assert ray_log.path.read_text() == ""
