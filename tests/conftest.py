"""Shared fixtures: a private Inductor cache, a live capture serving /metrics, a Ray session
per module; the test tiers and their guard. Helpers live in helpers.py."""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from pathlib import Path
from unittest import mock

# Before torch or Ray start: caches and Ray's session files live in directories of this run's
# own; Ray binds loopback, asks for no token and reports no usage.
os.environ.setdefault(
    "TORCHINDUCTOR_CACHE_DIR", tempfile.mkdtemp(prefix="aotwatch-tests-inductor-")
)
os.environ.setdefault("RAY_TMPDIR", tempfile.mkdtemp(prefix="aotwatch-tests-ray-"))
os.environ.update(
    RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0"
)
sys.path.insert(0, str(Path(__file__).parent))  # tests/programs.py

import pytest  # noqa: E402
import torch  # noqa: E402

import aotwatch  # noqa: E402
from aotwatch.attachment.process import Attachment  # noqa: E402
from helpers import test_config  # noqa: E402


@pytest.fixture(scope="module")
def ray_session():
    """A local Ray cluster for one test module; its workers import from tests/."""
    import ray

    from cluster_helpers import WORKER_ENV

    ray.init(num_cpus=2, include_dashboard=False, runtime_env=WORKER_ENV)
    yield
    ray.shutdown()


@pytest.fixture
def node_collector(tmp_path: Path):
    """Start NodeCollectors in this process (no Ray) over an archive directory, again after
    ``close`` to see a restart; closed at the end."""
    from aotwatch.cluster.collector import NodeCollector
    from cluster_helpers import NODE, config_at

    started: list[NodeCollector] = []

    def start(root: Path = tmp_path / "archive", **changes) -> NodeCollector:
        started.append(NodeCollector(NODE, config_at(root, **changes)))
        return started[-1]

    yield start
    for collector in started:
        if not collector._closed.is_set():
            collector.close()


@pytest.fixture
def capture(tmp_path: Path) -> Attachment:
    """aotwatch attached to this process for one test, with fresh Dynamo caches around it."""
    torch._dynamo.reset()
    attachment = aotwatch.attach(test_config(tmp_path))
    yield attachment
    aotwatch.detach()
    torch._dynamo.reset()


# -- tiers -------------------------------------------------------------------------------------
# A test that starts Ray, a child process or a browser says so with its marker (pyproject.toml);
# `scripts/test.sh --fast` runs the others. The guard below holds the fast tier to it.
SLOW_MARKERS = ("ray", "subprocess", "browser")
OWN_CODE = (str(Path(__file__).parent), str(Path(aotwatch.__file__).parent))
"""Where a process start counts as the test's own (torch's C++ builds and Ray's do not)."""
SPAWNERS = (f"{os.sep}subprocess.py", f"{os.sep}multiprocessing{os.sep}")
"""Frames of the standard library's (and torch's) process starters, looked through."""


def pytest_collection_modifyitems(items):
    for item in items:
        if "ray_session" in item.fixturenames:
            item.add_marker(pytest.mark.ray)


def spawned_by_own_code() -> bool:
    """Whether the code that started the process being started is the tests' or aotwatch's."""
    frame = sys._getframe(2)
    while frame is not None and any(s in frame.f_code.co_filename for s in SPAWNERS):
        frame = frame.f_back
    return frame is not None and frame.f_code.co_filename.startswith(OWN_CODE)


def refuse(what: str):
    pytest.fail(f"{what} in a test without a {'/'.join(SLOW_MARKERS)} marker", pytrace=True)


@contextlib.contextmanager
def no_process_starts():
    """Starting Ray, or a process from the tests' or aotwatch's code, fails the test."""
    import multiprocessing.process
    import subprocess

    import ray  # imported once, whether or not the test imports it

    popen_init, process_start = subprocess.Popen.__init__, multiprocessing.process.BaseProcess.start

    def guarded_popen(self, *args, **kwargs):
        if spawned_by_own_code():
            refuse(f"subprocess.Popen({args[0] if args else kwargs.get('args')!r})")
        popen_init(self, *args, **kwargs)

    def guarded_start(self):
        if spawned_by_own_code():
            refuse("multiprocessing's Process.start()")
        process_start(self)

    with contextlib.ExitStack() as patches:
        patches.enter_context(mock.patch.object(subprocess.Popen, "__init__", guarded_popen))
        patches.enter_context(
            mock.patch.object(multiprocessing.process.BaseProcess, "start", guarded_start)
        )
        patches.enter_context(mock.patch.object(ray, "init", lambda *a, **k: refuse("ray.init")))
        yield


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item, nextitem):
    """A test of the fast tier (no slow marker) runs, fixtures included, without process
    starts."""
    if any(item.get_closest_marker(name) for name in SLOW_MARKERS):
        return (yield)
    with no_process_starts():
        return (yield)
