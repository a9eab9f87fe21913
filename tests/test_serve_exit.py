"""``aotwatch serve`` whose Ray cluster dies under it: it reports that and exits promptly.

Each test starts a Ray cluster of its own in a process in a new session, runs ``serve`` on it
as a subprocess, SIGKILLs every process of that cluster, then sends ``serve`` SIGTERM.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
import ray  # noqa: F401 - puts the psutil that Ray bundles on sys.path

# isort: split
import psutil

from aotwatch.cluster.serve import SERVE_CLEANUP_TIMEOUT_S
from helpers import wait_for

pytestmark = [pytest.mark.ray, pytest.mark.subprocess]

EXIT_WITHIN_S = 15.0
"""The cleanup deadline plus starting to stop, with room for a loaded machine."""
STATUS_INTERVAL_S = 1
"""Seconds between serve's status prints."""

_CLUSTER = (
    "import ray, time\n"
    "ray.init(num_cpus=1, include_dashboard=False)\n"
    "print(ray.get_runtime_context().gcs_address, flush=True)\n"
    "time.sleep(600)\n"
)


def _session_processes(sid: int) -> list[psutil.Process]:
    """Every live process of session ``sid`` (Ray's workers take process groups of their own,
    but stay in the session of the process that started the cluster)."""
    found = []
    for process in psutil.process_iter():
        try:
            if os.getsid(process.pid) == sid:
                found.append(process)
        except (ProcessLookupError, PermissionError):
            pass
    return found


def _kill_all(processes: list[psutil.Process]) -> None:
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()
    psutil.wait_procs(processes, timeout=10)


def _gone() -> contextlib.AbstractContextManager:
    return contextlib.suppress(psutil.NoSuchProcess, ProcessLookupError)


class RayCluster:
    """A Ray head node started by a launcher process that leads a session of its own."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmpdir = tempfile.mkdtemp(prefix="aotwatch-serve-exit-ray-")  # short socket paths
        self.env = {**os.environ, "RAY_TMPDIR": self.tmpdir}
        self.log = open(tmp_path / "cluster.log", "w")  # noqa: SIM115 - closed in close()
        self.launcher = subprocess.Popen(
            [sys.executable, "-c", _CLUSTER],
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
            env=self.env,
            start_new_session=True,
        )
        self.address = self.launcher.stdout.readline().strip()
        assert self.address, (tmp_path / "cluster.log").read_text()

    def processes(self) -> list[psutil.Process]:
        """The launcher, its descendants (gcs_server, raylet, workers) and whatever else still
        runs in its session."""
        found = {p.pid: p for p in _session_processes(self.launcher.pid)}
        try:
            launcher = psutil.Process(self.launcher.pid)
            found.update({p.pid: p for p in [launcher, *launcher.children(recursive=True)]})
        except psutil.NoSuchProcess:
            pass
        alive = []
        for process in found.values():
            with _gone():
                if process.status() != psutil.STATUS_ZOMBIE:
                    alive.append(process)
        return alive

    def kill(self) -> list[str]:
        """SIGKILL the whole cluster; returns the names of the processes that were killed."""
        processes = self.processes()
        names = []
        for p in processes:
            with _gone():
                names.append(p.name())
        with _gone():
            os.killpg(self.launcher.pid, signal.SIGKILL)
        _kill_all(processes)  # those in process groups of their own
        self.launcher.wait(timeout=10)
        return names

    def close(self) -> None:
        self.kill()
        self.launcher.stdout.close()
        self.log.close()
        shutil.rmtree(self.tmpdir, ignore_errors=True)


@pytest.fixture
def cluster(tmp_path):
    cluster = RayCluster(tmp_path)
    try:
        yield cluster
    finally:
        cluster.close()


class Serve:
    """``aotwatch serve`` on ``cluster`` in a session of its own; stdout read by a thread."""

    def __init__(self, cluster: RayCluster, tmp_path: Path) -> None:
        config = tmp_path / "aotwatch.yaml"
        config.write_text(
            "cluster: {namespace: aotwatch-serve-exit}\n"
            "collector: {address: 127.0.0.1, port: 0, head_port: 0}\n"
            f"archive: {{path: {tmp_path / 'archive'}}}\n"
        )
        self.stderr_path = tmp_path / "serve.stderr"
        self.stderr_file = open(self.stderr_path, "w")  # noqa: SIM115 - closed in close()
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "aotwatch.cli",
                "serve",
                "--config",
                str(config),
                "--address",
                cluster.address,
                "--interval",
                str(STATUS_INTERVAL_S),
            ],
            stdout=subprocess.PIPE,
            stderr=self.stderr_file,
            text=True,
            env=cluster.env,
            start_new_session=True,
        )
        self.lines: list[str] = []
        self.last_output = time.monotonic()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.append(line)
            self.last_output = time.monotonic()

    @property
    def stdout(self) -> str:
        return "".join(self.lines)

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text()

    def wait_serving(self) -> None:
        wait_for(
            lambda: "healthy" in self.stdout or self.process.poll() is not None,
            timeout=120,
            message="serve to print a healthy collector",
        )
        assert "healthy" in self.stdout, self.stdout + self.stderr

    def terminate(self) -> float:
        """SIGTERM; the seconds until it exited (the test fails past EXIT_WITHIN_S)."""
        started = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=EXIT_WITHIN_S)
        except subprocess.TimeoutExpired:
            output = self.stdout + self.stderr
            pytest.fail(f"serve still running {EXIT_WITHIN_S:g} s after SIGTERM:\n{output}")
        elapsed = time.monotonic() - started
        self.reader.join(timeout=10)
        return elapsed

    def close(self) -> None:
        if self.process.poll() is None:
            with _gone():
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)
        self.reader.join(timeout=10)
        self.process.stdout.close()
        self.stderr_file.close()


@pytest.fixture
def serve(cluster, tmp_path):
    serve = Serve(cluster, tmp_path)
    try:
        yield serve
    finally:
        serve.close()


def _kill_cluster(cluster: RayCluster) -> None:
    names = cluster.kill()
    assert {"gcs_server", "raylet"} <= set(names), names
    assert not cluster.processes(), [p.name() for p in cluster.processes()]


def _assert_reported_and_exited(serve: Serve, cluster: RayCluster, elapsed: float) -> None:
    stderr = serve.stderr
    assert serve.process.returncode == 1, serve.stdout + stderr
    assert elapsed < EXIT_WITHIN_S
    assert "aotwatch: stopping the collectors" in serve.stdout
    expected = (
        f"aotwatch: could not stop the collectors within {SERVE_CLEANUP_TIMEOUT_S:g} s: "
        f"the Ray cluster at {cluster.address} did not answer\n"
    )
    assert expected in stderr, stderr


def test_sigterm_after_the_cluster_died_exits_promptly_and_says_what_it_left(serve, cluster):
    serve.wait_serving()
    _kill_cluster(cluster)
    wait_for(  # its status output stopped: a status call is now waiting on the dead cluster
        lambda: time.monotonic() - serve.last_output > 2 * STATUS_INTERVAL_S,
        message="serve's status output to stop",
    )
    elapsed = serve.terminate()
    _assert_reported_and_exited(serve, cluster, elapsed)


def test_status_loop_reports_a_dead_cluster_and_keeps_waiting_for_the_signal(serve, cluster):
    serve.wait_serving()
    _kill_cluster(cluster)
    unanswered = f"aotwatch: the Ray cluster at {cluster.address} did not answer ("
    wait_for(
        lambda: unanswered in serve.stderr or serve.process.poll() is not None,
        timeout=50,  # the status call's own timeout (30 s), before Ray gives up on the GCS (60 s)
        message="serve to report the cluster unreachable",
    )
    assert serve.process.poll() is None, serve.stdout + serve.stderr
    assert serve.stderr.count(unanswered) == 1, serve.stderr
    elapsed = serve.terminate()
    _assert_reported_and_exited(serve, cluster, elapsed)
