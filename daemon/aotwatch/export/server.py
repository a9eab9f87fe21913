"""Serve a registry's /metrics over HTTP with prometheus_client's own server."""

from __future__ import annotations

from dataclasses import dataclass
from threading import Thread
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, start_http_server


class ExportError(OSError):
    """/metrics could not be served (the address or port cannot be bound)."""


@dataclass
class MetricsServer:
    """A running /metrics endpoint; ``port`` is the bound one (useful with port 0)."""

    server: WSGIServer
    thread: Thread
    address: str

    @property
    def port(self) -> int:
        return self.server.server_port

    @property
    def url(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"http://{host}:{self.port}/metrics"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def serve_metrics(registry: CollectorRegistry, address: str, port: int) -> MetricsServer:
    """Start serving ``registry``; raise ExportError with the address when binding fails."""
    try:
        server, thread = start_http_server(port, addr=address, registry=registry)
    except OSError as err:
        raise ExportError(
            f"cannot serve /metrics on {address}:{port}: {err.strerror or err}; "
            "set export.port to a free port (0 picks any free port) or export.enabled: false"
        ) from err
    return MetricsServer(server, thread, address)
