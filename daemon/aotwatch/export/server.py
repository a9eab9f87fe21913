"""Serve a registry's /metrics (and /healthz, /readyz) over HTTP with prometheus_client's app.

prometheus_client renders the exposition; its HTTP server (a thread per connection, a timeout
per read, a busy loop when ``accept`` fails) cannot be bounded, so the HTTP layer here is
wsgiref's request handler driven by ``BoundedServer``. One thread accepts connections and reads
their requests without blocking; only a complete request gets a thread, to be answered. So a
slow client costs one descriptor and no thread, and the accept loop does a bounded amount of
work a round (it matters in local mode, where it shares the GIL with training). On Linux a
client that connects and says nothing is not even accepted (``TCP_DEFER_ACCEPT``): the kernel
holds it, up to the listen backlog, at no cost to this process.
At most ``limits.max_connections`` connections are open (never more than a quarter of the
process's open-file limit, so the training process keeps its descriptors), at most
``limits.max_connections_per_address`` of them from one client address; each has
``limits.request_timeout_s`` to send its whole request (the TLS handshake included) and as long
again to take the answer. A new connection past a cap closes one still sending its request:
past its address's cap, that address's oldest; past the server's cap, the oldest of the address
holding the most such connections (``Unfinished``), so a flood from one address evicts its own
connections, not a valid client's in the middle of its TLS handshake. A request that has
arrived is never closed for a newcomer: if every connection in the way is being answered, the
newcomer is. Each round reads what connected clients sent before it accepts newcomers.
``accept`` failures back off instead of spinning.

With a web-config file (``export.webconfig``) the port speaks TLS and /metrics asks for basic
auth. /healthz and /readyz stay open to whoever can connect (over TLS when TLS is on): they
answer only "ok" or "not ready", and container health checks seldom carry credentials.
exporter-toolkit guards every path; aotwatch leaves these two open on purpose.
"""

from __future__ import annotations

import contextlib
import errno
import io
import logging
import math
import os
import resource
import selectors
import socket
import ssl
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

from prometheus_client import CollectorRegistry, make_wsgi_app

from aotwatch.core.config import LimitsConfig
from aotwatch.export.auth import with_basic_auth
from aotwatch.export.unfinished import Unfinished
from aotwatch.export.webconfig import LiveWebConfig

log = logging.getLogger(__name__)

OPEN_PATHS = ("/healthz", "/readyz")
"""Paths served without basic auth."""

FD_SHARE = 4
"""A server holds at most 1/FD_SHARE of the process's open-file limit in connections."""
POLL_S = 0.25
"""How often deadlines are enforced when nothing else happens."""
ROUND_S = 0.02
"""The accept loop's shortest round: under a flood it wakes at most 1/ROUND_S times a second."""
ACCEPT_BATCH = 64
"""Connections accepted a round at most; the rest wait in the listen queue."""
MAX_HEAD = 2 * 65537 + 4096
"""Bytes of request line and headers read before the handler judges them (414, 431)."""
MAX_ACCEPT_BACKOFF_S = 1.0
_ACCEPT_LIMITS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
_HEAD_ENDS = (b"\r\n\r\n", b"\n\n")


class ExportError(OSError):
    """/metrics could not be served (the address or port cannot be bound)."""


def _family(address: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in address else socket.AF_INET


def _unservable(address: str, port: int, err: OSError) -> ExportError:
    reason = os.strerror(err.errno) if err.errno else err  # not create_server's longer text
    return ExportError(
        f"cannot serve /metrics on {address}:{port}: {reason}; "
        "set the port to a free one (0 picks any free port) or turn export off"
    )


def check_port(address: str, port: int) -> None:
    """ExportError, as ``serve_metrics`` would raise it, when ``address:port`` cannot be bound
    now (checked before a process that will serve there is started)."""
    try:
        socket.create_server((address, port), family=_family(address)).close()
    except OSError as err:
        raise _unservable(address, port, err) from err


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
        self.host = address[0]
        self.fd = sock.fileno()
        self.head = bytearray()
        self.handshaken = not isinstance(sock, ssl.SSLSocket)
        self.answering = False  # handed to a thread: no longer closed for a newcomer
        self.cut_off = False  # shut down by the server: its thread is closing it

    @property
    def complete(self) -> bool:
        """The request line and headers are in (or too many of them for any request)."""
        return len(self.head) > MAX_HEAD or any(end in self.head for end in _HEAD_ENDS)

    def cut(self) -> None:
        """Shut the socket down under its thread's feet (its blocked write returns). Only
        called while the connection is tracked, so ``fd`` is still this socket's."""
        self.cut_off = True
        with socket.socket(fileno=self.fd) as alias:
            try:
                alias.shutdown(socket.SHUT_RDWR)
            except OSError:  # the peer is gone already
                pass
            finally:
                alias.detach()  # the thread's socket still owns (and closes) the descriptor


class _Handler(WSGIRequestHandler):
    """Answers one request whose head the accept loop has read already."""

    def __init__(self, connection: _Connection, server: BoundedServer) -> None:
        self.head = bytes(connection.head)
        super().__init__(connection.sock, connection.address, server)

    def setup(self) -> None:
        super().setup()
        self.rfile.close()
        self.rfile = io.BytesIO(self.head)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base's name
        """Scrapes are not worth a log line each."""


class BoundedServer(WSGIServer):
    """A WSGI server with a connection cap, per-request deadlines and accept back-off (see
    module doc). ``serve_forever`` runs the accept loop; ``stop`` ends it."""

    request_queue_size = 1024
    """The listen backlog: with TCP_DEFER_ACCEPT, how many silent connections the kernel
    holds for us (past it, SYN cookies hand them to ``accept`` after all)."""

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
        self.socket.setblocking(False)
        if hasattr(socket, "TCP_DEFER_ACCEPT"):  # Linux: no accept before the first byte
            self.socket.setsockopt(
                socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT, math.ceil(limits.request_timeout_s)
            )
        self.set_app(app)
        self.cap = connection_cap(limits.max_connections)
        self.cap_per_address = min(self.cap, limits.max_connections_per_address)
        self.timeout_s = limits.request_timeout_s
        self.web_config = web_config if web_config is not None and web_config.tls else None
        self._lock = threading.Lock()
        self._connections: dict[int, _Connection] = {}  # descriptor -> its connection
        self._from: Counter[str] = Counter()  # client address -> its connections
        self._reading = Unfinished()  # the accept loop's: connections still sending
        self._selector = selectors.DefaultSelector()  # the accept loop's alone
        self._stop = threading.Event()
        self._stopped = threading.Event()
        self.peak_connections = 0

    # -- the accept loop -------------------------------------------------------------------

    def serve_forever(self, poll_interval: float = POLL_S) -> None:
        backoff = 0.0
        self._selector.register(self.socket, selectors.EVENT_READ)
        try:
            while not self._stop.wait(backoff or 0):
                round_started = time.monotonic()
                try:
                    backoff = self._round(poll_interval, backoff)
                except Exception:  # noqa: BLE001 - the endpoint outlives any one surprise
                    log.warning("aotwatch: /metrics accept loop", exc_info=True)
                self._stop.wait(ROUND_S - (time.monotonic() - round_started))
        finally:
            for connection in self._reading:
                self._drop(connection)
            self._selector.close()
            self._stopped.set()

    def _round(self, poll_interval: float, backoff: float) -> float:
        """Read, accept and enforce deadlines once; returns the next accept back-off. What
        connected clients sent is read first: a client whose request (or handshake) has
        arrived is never closed for a newcomer of the same round."""
        listening = False
        for key, _ in self._selector.select(poll_interval):
            if key.data is None:
                listening = True
            elif self._reading.holds(key.data):  # not dropped this round
                self._read(key.data)
        if listening:
            backoff = self._accept(backoff)
        self._enforce_deadlines()
        return backoff

    def _accept(self, backoff: float) -> float:
        """Accept what the listen queue holds (ACCEPT_BATCH at most); returns the next
        back-off."""
        for _ in range(ACCEPT_BATCH):
            try:
                sock, address = self.socket.accept()
            except BlockingIOError:
                return 0.0
            except OSError as err:
                if err.errno not in _ACCEPT_LIMITS:
                    return 0.0  # the client left already, or another transient refusal
                if not backoff:
                    log.warning(
                        "aotwatch: /metrics cannot accept connections: %s; backing off",
                        os.strerror(err.errno),
                    )
                return min(MAX_ACCEPT_BACKOFF_S, max(0.01, backoff * 2))
            self._admit(sock, address)
        return 0.0

    def _admit(self, sock: socket.socket, address: tuple) -> None:
        """Track a new connection and read what it sent already, after making room for it
        (see module doc); refuse it if no connection in the way is still sending."""
        host = address[0]
        with self._lock:  # only this thread adds connections
            full = len(self._connections) >= self.cap
            full_here = self._from[host] >= self.cap_per_address
        if full or full_here:
            victim = self._reading.oldest_of(host) if full_here else self._reading.victim(host)
            if victim is None:
                sock.close()
                return
            self._drop(victim)
        try:
            sock.setblocking(False)
            if self.web_config is not None:
                context = self.web_config.current().context
                sock = context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        except OSError as err:  # the client is gone already
            log.debug("aotwatch: connection from %s ended: %s", address[0], err)
            sock.close()
            return
        connection = _Connection(sock, address, time.monotonic() + self.timeout_s)
        with self._lock:
            self._connections[connection.fd] = connection
            self._from[host] += 1
            self.peak_connections = max(self.peak_connections, len(self._connections))
        self._reading.add(connection)
        self._selector.register(sock, selectors.EVENT_READ, connection)
        self._read(connection)

    def _read(self, connection: _Connection) -> None:
        """Take what the client has sent (the TLS handshake first); a complete request goes
        to a thread of its own."""
        sock = connection.sock
        try:
            if not connection.handshaken:
                sock.do_handshake()
                connection.handshaken = True
            while not connection.complete:
                data = sock.recv(65536)
                if not data:
                    self._drop(connection)  # the client left before finishing its request
                    return
                connection.head += data
        except (ssl.SSLWantReadError, BlockingIOError):
            self._selector.modify(sock, selectors.EVENT_READ, connection)
            return
        except ssl.SSLWantWriteError:
            self._selector.modify(sock, selectors.EVENT_WRITE, connection)
            return
        except OSError as err:  # a failed handshake, a reset
            log.debug("aotwatch: connection from %s ended: %s", connection.address[0], err)
            self._drop(connection)
            return
        self._answer(connection)

    def _answer(self, connection: _Connection) -> None:
        self._reading.remove(connection)
        self._selector.unregister(connection.sock)
        with self._lock:
            connection.answering = True
            connection.deadline = time.monotonic() + self.timeout_s
        connection.sock.setblocking(True)
        connection.sock.settimeout(self.timeout_s)
        thread = threading.Thread(
            target=self._serve, args=(connection,), daemon=True, name="aotwatch-http-request"
        )
        try:
            thread.start()
        except RuntimeError:  # no more threads in this process: refused, as at the cap
            self._forget(connection)
            connection.sock.close()

    def _drop(self, connection: _Connection) -> None:
        """Close a connection the accept loop holds."""
        self._reading.remove(connection)
        self._selector.unregister(connection.sock)
        self._forget(connection)
        connection.sock.close()

    def _enforce_deadlines(self) -> None:
        now = time.monotonic()
        while (oldest := self._reading.oldest()) is not None and oldest.deadline < now:
            self._drop(oldest)
        with self._lock:
            for connection in self._connections.values():
                if connection.answering and connection.deadline < now and not connection.cut_off:
                    connection.cut()

    # -- one request's thread --------------------------------------------------------------

    def _serve(self, connection: _Connection) -> None:
        try:
            self.RequestHandlerClass(connection, self)
        except OSError as err:  # a cut or vanished client, a timeout
            log.debug("aotwatch: connection from %s ended: %s", connection.address[0], err)
        except Exception:  # noqa: BLE001 - one bad request never stops the server
            log.warning("aotwatch: /metrics request failed", exc_info=True)
        finally:
            self._forget(connection)
            with contextlib.suppress(OSError):
                connection.sock.shutdown(socket.SHUT_WR)
            connection.sock.close()

    def _forget(self, connection: _Connection) -> None:
        with self._lock:
            if self._connections.pop(connection.fd, None) is connection:
                self._from[connection.host] -= 1
                if not self._from[connection.host]:
                    del self._from[connection.host]

    @property
    def connections(self) -> int:
        """Connections open right now."""
        with self._lock:
            return len(self._connections)

    def connections_from(self, host: str) -> int:
        """Connections open right now from client address ``host``."""
        with self._lock:
            return self._from[host]

    def stop(self) -> None:
        """End the accept loop; requests being answered finish (or meet their deadlines)."""
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
    try:
        server = BoundedServer(
            (address, port), app, limits or LimitsConfig(), _family(address), live
        )
    except OSError as err:
        raise _unservable(address, port, err) from err
    thread = threading.Thread(target=server.serve_forever, name="aotwatch-http", daemon=True)
    thread.start()
    return MetricsServer(server, thread, address, server.web_config is not None)
