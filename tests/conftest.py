"""Shared fixtures: a private Inductor cache, a live capture serving /metrics, scrape helpers."""

from __future__ import annotations

import os
import sys
import tempfile
import urllib.request
from pathlib import Path

# Before torch is imported anywhere: compile caches live in a directory of this run's own.
os.environ.setdefault(
    "TORCHINDUCTOR_CACHE_DIR", tempfile.mkdtemp(prefix="aotwatch-tests-inductor-")
)
sys.path.insert(0, str(Path(__file__).parent))  # tests/programs.py

import pytest  # noqa: E402
import torch  # noqa: E402

import aotwatch  # noqa: E402
from aotwatch.config import ArchiveConfig, Config, ExportConfig  # noqa: E402
from aotwatch.local import Attachment  # noqa: E402


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


@pytest.fixture
def capture(tmp_path: Path) -> Attachment:
    """aotwatch attached to this process for one test, with fresh Dynamo caches around it."""
    torch._dynamo.reset()
    attachment = aotwatch.attach(test_config(tmp_path))
    yield attachment
    aotwatch.detach()
    torch._dynamo.reset()
