"""Serve a registry's /metrics (and /healthz, /readyz) over HTTP with prometheus_client's app.

prometheus_client renders the exposition; its HTTP server (a thread per connection, a timeout
per read, a busy loop when ``accept`` fails) cannot be bounded, so the HTTP layer here is
wsgiref's, driven by ``BoundedServer``: at most ``limits.max_connections`` connections (and
never more than a quarter of the process's open-file limit, so the training process keeps its
descriptors), each with a deadline of ``limits.request_timeout_s`` to send its whole request
and as long again to take the answer. A new connection past the cap closes the one that has
waited longest for its request; ``accept`` failures back off instead of spinning.

With a web-config file (``export.webconfig``) the port speaks TLS and /metrics asks for basic
auth. /healthz and /readyz stay open to whoever can connect (over TLS when TLS is on): they
answer only "ok" or "not ready", and container health checks seldom carry credentials.
exporter-toolkit guards every path; aotwatch leaves these two open on purpose.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import resource
import selectors
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

from prometheus_client import CollectorRegistry, make_wsgi_app

from aotwatch.config import LimitsConfig
from aotwatch.export.auth import with_basic_auth
from aotwatch.export.webconfig import LiveWebConfig

log = logging.getLogger(__name__)

OPEN_PATHS = ("/healthz", "/readyz")
"""Paths served without basic auth."""

FD_SHARE = 4
"""A server holds at most 1/FD_SHARE of the process's open-file limit in connections."""
POLL_S = 0.25
"""How often deadlines are enforced."""
MAX_ACCEPT_BACKOFF_S = 1.0
ADMIT_WAIT_S = 1.0
"""Longest the accept loop waits for a cut connection to close before refusing a new one."""
_ACCEPT_LIMITS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


class ExportError(OSError):
    """/metrics could not be served (the address or port cannot be bound)."""


def connection_cap(max_connections: int) -> int:
    """``max_connections``, lowered to a share of this process's open-file limit."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return max_connections
    return max(1, min(max_connections, soft // FD_SHARE))


class _Connection:
    """One accepted socket, tracked from accept to close."""

    def __init__(self, sock: socket.socket, address: tuple, deadline: float) -> None:
        self.sock, self.address, self.deadline = sock, address, deadline
        self.fd = sock.fileno()
        self.answering = False  # the request has arrived: no longer evicted for a newcomer
        self.cut_off = False  # shut down by the server: its thread is closing it

    def cut(self) -> None:
        """Shut the socket down under its handler's feet (its blocked read or write returns).
        Only called while the connection is tracked, so ``fd`` is still this socket's."""
        self.cut_off = True
        with socket.socket(fileno=self.fd) as alias:
            try:
                alias.shutdown(socket.SHUT_RDWR)
            except OSError:  # the peer is gone already
                pass
            finally:
                alias.detach()  # the handler's socket still owns (and closes) the descriptor


class _Handler(WSGIRequestHandler):
    """One request per connection; tells the server when the request has arrived."""

    def parse_request(self) -> bool:
        parsed = super().parse_request()
        self.server.request_arrived(self.request.fileno())
        return parsed

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base's name
        """Scrapes are not worth a log line each."""


class BoundedServer(WSGIServer):
    """A WSGI server with a connection cap, per-request deadlines and accept back-off (see
    module doc). ``serve_forever`` runs the accept loop; ``stop`` ends it."""

    request_queue_size = 128

    def __init__(
        self,
        address: tuple,
        app: Callable,
        limits: LimitsConfig,
        family: int,
        web_config: LiveWebConfig | None,
    ) -> None:
        self.address_family = family
        super().__init__(address, _Handler)
        self.set_app(app)
        self.cap = connection_cap(limits.max_connections)
        self.timeout_s = limits.request_timeout_s
        self.web_config = web_config if web_config is not None and web_config.tls else None
        self._lock = threading.Lock()
        self._room = threading.Condition(self._lock)  # notified when a connection closes
        self._connections: dict[int, _Connection] = {}  # descriptor -> its connection
        self._stop = threading.Event()
        self._stopped = threading.Event()
        self.peak_connections = 0

    # -- the accept loop -------------------------------------------------------------------

    def serve_forever(self, poll_interval: float = POLL_S) -> None:
        backoff = 0.0
        try:
            with selectors.DefaultSelector() as selector:
                selector.register(self.socket, selectors.EVENT_READ)
                while not self._stop.is_set():
                    if backoff:
                        self._stop.wait(backoff)
                    if selector.select(poll_interval) and not self._stop.is_set():
                        backoff = self._accept(backoff)
                    self._enforce_deadlines()
        finally:
            self._stopped.set()

    def _accept(self, backoff: float) -> float:
        """Accept one connection and start its thread; returns the next back-off."""
        try:
            sock, address = self.socket.accept()
        except OSError as err:
            if err.errno not in _ACCEPT_LIMITS:
                return 0.0  # the client left already, or another transient refusal
            if not backoff:
                log.warning("aotwatch: /metrics cannot accept connections: %s; backing off",
                            os.strerror(err.errno))  # fmt: skip
            return min(MAX_ACCEPT_BACKOFF_S, max(0.01, backoff * 2))
        connection = _Connection(sock, address, time.monotonic() + self.timeout_s)
        if not self._admit(connection):
            sock.close()  # every tracked connection is being answered: refused
            return 0.0
        sock.settimeout(self.timeout_s)
        thread = threading.Thread(target=self._serve, args=(connection,), daemon=True,
                                  name="aotwatch-http-conn")  # fmt: skip
        try:
            thread.start()
        except RuntimeError:  # no more threads in this process: refuse, as at the cap
            self._forget(connection)
            sock.close()
        return 0.0

    def _admit(self, connection: _Connection) -> bool:
        """Track ``connection`` once there is room: at the cap, cut the one waiting longest
        for its request and wait (at most ADMIT_WAIT_S) for its thread to close it. Refuses
        ``connection`` when every tracked one is being answered."""
        deadline = time.monotonic() + ADMIT_WAIT_S
        with self._room:
            while len(self._connections) >= self.cap:
                if not any(c.cut_off for c in self._connections.values()):
                    waiting = [c for c in self._connections.values() if not c.answering]
                    if not waiting:
                        return False
                    min(waiting, key=lambda c: c.deadline).cut()
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._room.wait(left)
            self._connections[connection.fd] = connection
            self.peak_connections = max(self.peak_connections, len(self._connections))
            return True

    def _enforce_deadlines(self) -> None:
        now = time.monotonic()
        with self._lock:
            for connection in self._connections.values():
                if connection.deadline < now and not connection.cut_off:
                    connection.cut()

    # -- one connection's thread -----------------------------------------------------------

    def _serve(self, connection: _Connection) -> None:
        sock = connection.sock
        try:
            if self.web_config is not None:
                context = self.web_config.current().context
                sock = context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
                sock.do_handshake()
            self.RequestHandlerClass(sock, connection.address, self)
        except OSError as err:  # a failed handshake, a cut or vanished client, a timeout
            log.debug("aotwatch: connection from %s ended: %s", connection.address[0], err)
        except Exception:  # noqa: BLE001 - one bad connection never stops the server
            log.warning("aotwatch: /metrics request failed", exc_info=True)
        finally:
            self._forget(connection)
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_WR)
            sock.close()

    def request_arrived(self, fd: int) -> None:
        """The request line and headers are in: the answer gets a deadline of its own."""
        with self._lock:
            connection = self._connections.get(fd)
            if connection is not None and not connection.answering:
                connection.answering = True
                connection.deadline = time.monotonic() + self.timeout_s

    def _forget(self, connection: _Connection) -> None:
        with self._room:
            self._connections.pop(connection.fd, None)
            self._room.notify()

    @property
    def connections(self) -> int:
        """Connections open right now."""
        with self._lock:
            return len(self._connections)

    def stop(self) -> None:
        """End the accept loop; open connections finish (or meet their deadlines)."""
        self._stop.set()
        self._stopped.wait(5)
        self.server_close()


def _app(registry: CollectorRegistry, ready: Callable[[], bool]) -> Callable:
    metrics = make_wsgi_app(registry)

    def app(environ: dict, start_response: Callable) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path in OPEN_PATHS:
            ok = path == "/healthz" or ready()
            status = "200 OK" if ok else "503 Service Unavailable"
            start_response(status, [("Content-Type", "text/plain; charset=utf-8")])
            return [b"ok\n" if ok else b"not ready\n"]
        return metrics(environ, start_response)

    return app


@dataclass
class MetricsServer:
    """A running endpoint; ``port`` is the bound one (useful with port 0)."""

    server: BoundedServer
    thread: threading.Thread
    address: str
    tls: bool = False

    @property
    def port(self) -> int:
        return self.server.server_port

    @property
    def url(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}/metrics"

    def close(self) -> None:
        self.server.stop()
        self.thread.join(timeout=5)


def serve_metrics(
    registry: CollectorRegistry,
    address: str,
    port: int,
    ready: Callable[[], bool] = lambda: True,
    web_config: str | os.PathLike[str] | None = None,
    limits: LimitsConfig | None = None,
) -> MetricsServer:
    """Serve ``registry`` at /metrics, 200 at /healthz, and 200 or 503 at /readyz by ``ready``.

    ``web_config`` is the path of a web-config file (TLS, basic auth; reloaded when it or a
    certificate changes), or None for plain HTTP open to anyone who can connect. ``limits``
    bounds connections and request time (the defaults when None). Raises ConfigError for a
    bad web-config file, and ExportError, naming the address, when it cannot bind.
    """
    live = LiveWebConfig(web_config) if web_config is not None else None
    app = _app(registry, ready)
    if live is not None:
        app = with_basic_auth(app, live, OPEN_PATHS)
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    try:
        server = BoundedServer((address, port), app, limits or LimitsConfig(), family, live)
    except OSError as err:
        raise ExportError(
            f"cannot serve /metrics on {address}:{port}: {err.strerror or err}; "
            "set the port to a free one (0 picks any free port) or turn export off"
        ) from err
    thread = threading.Thread(target=server.serve_forever, name="aotwatch-http", daemon=True)
    thread.start()
    return MetricsServer(server, thread, address, server.web_config is not None)
