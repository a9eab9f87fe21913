"""Shared fixtures: a private Inductor cache, a live capture serving /metrics, a Ray session
per module, scrape helpers."""

from __future__ import annotations

import os
import sys
import tempfile
import urllib.request
from pathlib import Path

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
from aotwatch.config import ArchiveConfig, Config, ExportConfig  # noqa: E402
from aotwatch.process import Attachment  # noqa: E402


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read().decode()


def test_config(tmp_path: Path, **changes) -> Config:
    """A config that serves on a free loopback port and archives into ``tmp_path``."""
    return Config(
        export=ExportConfig(address="127.0.0.1", port=0),
        archive=ArchiveConfig(path=str(tmp_path / "archive")),
        **changes,
    )


test_config.__test__ = False  # a helper, not a test


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


def wait_for(condition, timeout: float = 30, interval: float = 0.1, message: str = ""):
    """Poll ``condition`` until it returns something truthy; fail after ``timeout`` seconds."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout} s waiting for {message or condition}")
