"""Imported first by the benchmarks that start Ray: it binds loopback, asks for no token,
reports no usage, and keeps its session files in a temporary directory of its own."""

import os
import tempfile

os.environ.update(
    RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0"
)
os.environ.setdefault("RAY_TMPDIR", tempfile.mkdtemp(prefix="aotwatch-bench-ray-"))
