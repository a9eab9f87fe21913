"""Serve a registry's /metrics (and /healthz, /readyz) over HTTP with prometheus_client's app."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer


class ExportError(OSError):
    """/metrics could not be served (the address or port cannot be bound)."""


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base's name
        """Scrapes are not worth a log line each."""


class _Server4(ThreadingWSGIServer):
    address_family = socket.AF_INET


class _Server6(ThreadingWSGIServer):
    address_family = socket.AF_INET6


def _app(registry: CollectorRegistry, ready: Callable[[], bool]) -> Callable:
    metrics = make_wsgi_app(registry)

    def app(environ: dict, start_response: Callable) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path in ("/healthz", "/readyz"):
            ok = path == "/healthz" or ready()
            status = "200 OK" if ok else "503 Service Unavailable"
            start_response(status, [("Content-Type", "text/plain; charset=utf-8")])
            return [b"ok\n" if ok else b"not ready\n"]
        return metrics(environ, start_response)

    return app


@dataclass
class MetricsServer:
    """A running endpoint; ``port`` is the bound one (useful with port 0)."""

    server: WSGIServer
    thread: threading.Thread
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


def serve_metrics(
    registry: CollectorRegistry,
    address: str,
    port: int,
    ready: Callable[[], bool] = lambda: True,
) -> MetricsServer:
    """Serve ``registry`` at /metrics, 200 at /healthz, and 200 or 503 at /readyz by ``ready``.

    Raises ExportError, naming the address, when it cannot bind.
    """
    server_class = _Server6 if ":" in address else _Server4
    try:
        server = make_server(
            address, port, _app(registry, ready), server_class, handler_class=_QuietHandler
        )
    except OSError as err:
        raise ExportError(
            f"cannot serve /metrics on {address}:{port}: {err.strerror or err}; "
            "set the port to a free one (0 picks any free port) or turn export off"
        ) from err
    thread = threading.Thread(target=server.serve_forever, name="aotwatch-http", daemon=True)
    thread.start()
    return MetricsServer(server, thread, address)
