"""A real Prometheus on a free loopback port, for tests: start, wait until ready, query, stop.

with PrometheusServer(config_file, data_dir) as prometheus:
    prometheus.query("up")  # the result list of /api/v1/query
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

START_ATTEMPTS = 3
"""Fresh ports to try: another process may take a free port before Prometheus binds it."""


class PromQLError(Exception):
    """Prometheus refused a query (``bad_data`` for one that does not parse)."""

    def __init__(self, error_type: str, message: str) -> None:
        super().__init__(f"{error_type}: {message}")
        self.error_type = error_type


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PrometheusServer:
    """The ``prometheus`` binary run on ``config_file`` and ``data_dir``, loopback only; its
    output goes to ``log_file``, next to ``data_dir``."""

    def __init__(self, config_file: Path, data_dir: Path, *extra_args: str) -> None:
        self.config_file = Path(config_file)
        self.data_dir = Path(data_dir)
        self.extra_args = extra_args
        self.url = ""
        self.log_file = self.data_dir.with_name(f"{self.data_dir.name}.log")
        self._process: subprocess.Popen | None = None

    def start(self, timeout: float = 30) -> PrometheusServer:
        """Start and wait for /-/ready; RuntimeError with Prometheus's log if it never is."""
        binary = shutil.which("prometheus")
        if binary is None:
            raise RuntimeError("prometheus not found: scripts/test.sh installs it")
        for _ in range(START_ATTEMPTS):
            port = free_port()
            self.url = f"http://127.0.0.1:{port}"
            with self.log_file.open("wb") as log:  # the child keeps its own descriptor
                self._process = subprocess.Popen(
                    [
                        binary,
                        f"--config.file={self.config_file}",
                        f"--storage.tsdb.path={self.data_dir}",
                        f"--web.listen-address=127.0.0.1:{port}",
                        *self.extra_args,
                    ],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            if self._wait_ready(timeout):
                return self
            if "address already in use" not in self.log():
                break
        self.stop()
        raise RuntimeError(f"prometheus did not become ready:\n{self.log()}")

    def _wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self._process.poll() is None:
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as response:
                    if response.status == 200:
                        return True
            except OSError:  # not listening yet, or 503 while it starts
                pass
            time.sleep(0.1)
        return False

    def log(self) -> str:
        """What Prometheus has written to stdout and stderr so far (``log_file``)."""
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""

    def _get(self, path: str, **params: Any) -> Any:
        query = urllib.parse.urlencode(params, doseq=True)
        try:
            with urllib.request.urlopen(f"{self.url}{path}?{query}", timeout=30) as response:
                body = json.load(response)
        except urllib.error.HTTPError as err:
            body = json.load(err)
            raise PromQLError(body.get("errorType", str(err.code)), body.get("error", "")) from err
        return body["data"]

    def query(self, expr: str, at: float | None = None) -> list:
        """The result of an instant query: a list of series (``metric``, ``value``)."""
        params = {"query": expr} if at is None else {"query": expr, "time": at}
        return self._get("/api/v1/query", **params)["result"]

    def query_range(self, expr: str, start: float, end: float, step: float) -> list:
        """The result of a range query: a list of series (``metric``, ``values``)."""
        return self._get("/api/v1/query_range", query=expr, start=start, end=end, step=step)[
            "result"
        ]

    def label_values(self, label: str, match: str) -> list[str]:
        """Values of ``label`` on the series that ``match`` selects."""
        return self._get(f"/api/v1/label/{label}/values", **{"match[]": match})

    def stop(self) -> None:
        """Stop Prometheus (SIGTERM, then SIGKILL after 10 s); safe to call twice."""
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(timeout=10)

    def __enter__(self) -> PrometheusServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
