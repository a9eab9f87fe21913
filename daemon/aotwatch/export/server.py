"""Serve a registry's /metrics (and /healthz, /readyz) over HTTP with prometheus_client's app.

With a web-config file (``export.webconfig``) the port speaks TLS and /metrics asks for basic
auth. /healthz and /readyz stay open to whoever can connect (over TLS when TLS is on): they
answer only "ok" or "not ready", and container health checks seldom carry credentials.
exporter-toolkit guards every path; aotwatch leaves these two open on purpose.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import socket
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import bcrypt
from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer

from aotwatch.export.webconfig import LiveWebConfig

log = logging.getLogger(__name__)

OPEN_PATHS = ("/healthz", "/readyz")
"""Paths served without basic auth."""

REALM = "aotwatch"
HANDSHAKE_TIMEOUT_S = 10
REQUEST_TIMEOUT_S = 30
AUTH_CACHE_SIZE = 256


class ExportError(OSError):
    """/metrics could not be served (the address or port cannot be bound)."""


class _QuietHandler(WSGIRequestHandler):
    timeout = REQUEST_TIMEOUT_S  # a client that connects and goes silent frees its thread

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base's name
        """Scrapes are not worth a log line each."""


class _Server4(ThreadingWSGIServer):
    address_family = socket.AF_INET


class _Server6(ThreadingWSGIServer):
    address_family = socket.AF_INET6


class _TLSHandshake:
    """Server mixin: TLS handshakes in each connection's own thread, with the certificates
    current at that moment, so a slow or plain-HTTP client holds up nobody."""

    web_config: LiveWebConfig

    def finish_request(self, request: socket.socket, client_address: tuple) -> None:
        request.settimeout(HANDSHAKE_TIMEOUT_S)
        try:
            connection = self.web_config.current().context.wrap_socket(request, server_side=True)
        except OSError as err:  # plain HTTP, a refused client certificate, a scanner, a timeout
            log.debug("aotwatch: TLS handshake with %s failed: %s", client_address[0], err)
            return
        try:
            super().finish_request(connection, client_address)  # the handler sets its timeout
        finally:
            self.shutdown_request(connection)


class _TLSServer4(_TLSHandshake, _Server4):
    pass


class _TLSServer6(_TLSHandshake, _Server6):
    pass


def _credentials(header: str | None) -> tuple[str, bytes] | None:
    """(user, password) from an ``Authorization: Basic`` header; None if it is not one."""
    scheme, _, encoded = (header or "").partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        user, colon, password = base64.b64decode(encoded.strip(), validate=True).partition(b":")
        return (user.decode(), password) if colon else None
    except ValueError:  # not base64, not ASCII, a user name that is not UTF-8
        return None


class _BasicAuth:
    """Checks basic-auth credentials against bcrypt hashes, one bcrypt at a time (it is slow
    by design); remembers the last AUTH_CACHE_SIZE that passed, keyed by a SHA-256 digest."""

    def __init__(self) -> None:
        self._passed: OrderedDict[bytes, None] = OrderedDict()
        self._cache_lock = threading.Lock()
        self._bcrypt_lock = threading.Lock()

    def allows(self, users: Mapping[str, str], header: str | None) -> bool:
        credentials = _credentials(header)
        if credentials is None:
            return False
        user, password = credentials
        stored = users.get(user)
        # An unknown user costs a bcrypt check as well: timing does not tell which users exist.
        hashed = (stored or next(iter(users.values()))).encode()
        parts = (user.encode(), hashed, password)
        key = hashlib.sha256(b":".join(part.hex().encode() for part in parts)).digest()
        with self._cache_lock:
            if stored is not None and key in self._passed:  # a removed user never passes
                self._passed.move_to_end(key)
                return True
        with self._bcrypt_lock:
            try:
                matches = bcrypt.checkpw(password, hashed)
            except ValueError:  # a password beyond bcrypt's 72 bytes
                matches = False
        if stored is None or not matches:
            return False
        with self._cache_lock:
            self._passed[key] = None
            if len(self._passed) > AUTH_CACHE_SIZE:
                self._passed.popitem(last=False)
        return True


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


def _with_basic_auth(app: Callable, web_config: LiveWebConfig) -> Callable:
    """``app`` behind the web config's basic_auth_users (read per request: they reload)."""
    auth = _BasicAuth()

    def guarded(environ: dict, start_response: Callable) -> Iterable[bytes]:
        users = web_config.current().config.basic_auth_users
        if (
            users
            and environ.get("PATH_INFO", "") not in OPEN_PATHS
            and not auth.allows(users, environ.get("HTTP_AUTHORIZATION"))
        ):
            start_response(
                "401 Unauthorized",
                [
                    ("Content-Type", "text/plain; charset=utf-8"),
                    ("WWW-Authenticate", f'Basic realm="{REALM}"'),
                ],
            )
            return [b"401 Unauthorized\n"]
        return app(environ, start_response)

    return guarded


@dataclass
class MetricsServer:
    """A running endpoint; ``port`` is the bound one (useful with port 0)."""

    server: WSGIServer
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
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def serve_metrics(
    registry: CollectorRegistry,
    address: str,
    port: int,
    ready: Callable[[], bool] = lambda: True,
    web_config: str | os.PathLike[str] | None = None,
) -> MetricsServer:
    """Serve ``registry`` at /metrics, 200 at /healthz, and 200 or 503 at /readyz by ``ready``.

    ``web_config`` is the path of a web-config file (TLS, basic auth; reloaded when it or a
    certificate changes), or None for plain HTTP open to anyone who can connect. Raises
    ConfigError for a bad web-config file, and ExportError, naming the address, when it
    cannot bind.
    """
    live = LiveWebConfig(web_config) if web_config is not None else None
    app = _with_basic_auth(_app(registry, ready), live) if live else _app(registry, ready)
    tls = live is not None and live.tls
    ipv6 = ":" in address
    server_class = {
        (False, False): _Server4,
        (False, True): _Server6,
        (True, False): _TLSServer4,
        (True, True): _TLSServer6,
    }[tls, ipv6]
    try:
        server = make_server(address, port, app, server_class, handler_class=_QuietHandler)
    except OSError as err:
        raise ExportError(
            f"cannot serve /metrics on {address}:{port}: {err.strerror or err}; "
            "set the port to a free one (0 picks any free port) or turn export off"
        ) from err
    if tls:
        server.web_config = live
    thread = threading.Thread(target=server.serve_forever, name="aotwatch-http", daemon=True)
    thread.start()
    return MetricsServer(server, thread, address, tls)
