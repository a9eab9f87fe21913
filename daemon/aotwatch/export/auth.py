"""Basic auth for /metrics: bcrypt hashes from a web-config file, checked without letting a
flood of wrong passwords starve the right ones.

bcrypt is slow by design (~75 ms at cost 10), so every check is bounded three ways: at most
``HASH_SLOTS`` run at once; a client address has at most one check running; and a credential
that failed is refused from a cache for ``FAILED_TTL_S`` without another bcrypt. No request
waits for a check: one that cannot start at once (its address's check is running, or every
slot is taken) gets 503 with ``Retry-After`` at once. So waiting for auth holds no connection
(a flood of wrong passwords holds at most ``HASH_SLOTS`` connections in bcrypt), and one
attacker cannot queue ahead of a scraper at another address. Credentials that passed are
cached too, so a scraper that keeps its password costs one bcrypt in all and never gets
503 for a flood.
"""

from __future__ import annotations

import base64
import hashlib
import threading
import time
from collections.abc import Callable, Iterable, Mapping

import bcrypt

from aotwatch.core.lru import LruCache
from aotwatch.export.webconfig import LiveWebConfig

REALM = "aotwatch"
HASH_SLOTS = 2
"""bcrypt checks running at once: a flood costs at most this many cores."""
FAILED_TTL_S = 60.0
"""How long a credential that failed is refused without another bcrypt."""
CACHE_SIZE = 1024
"""Credentials remembered, passed and failed each."""


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


class Busy(Exception):
    """No check could start at once: the client should try again later (503)."""


class BasicAuth:
    """Checks basic-auth credentials against bcrypt hashes (see module doc)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._passed = LruCache(CACHE_SIZE)  # digest -> True
        self._failed = LruCache(CACHE_SIZE)  # digest -> monotonic expiry
        self._checking: set[str] = set()  # addresses with a check running

    def allows(self, users: Mapping[str, str], header: str | None, client: str = "") -> bool:
        """Whether ``header`` carries a user and password of ``users``; Busy when its bcrypt
        check could not start at once."""
        credentials = _credentials(header)
        if credentials is None:
            return False
        user, password = credentials
        stored = users.get(user)
        # An unknown user costs a bcrypt check as well: timing does not tell which users exist.
        hashed = (stored or next(iter(users.values()))).encode()
        parts = (user.encode(), hashed, password)
        key = hashlib.sha256(b":".join(part.hex().encode() for part in parts)).digest()
        cached = self._cached(key)
        if cached is not None:
            return cached and stored is not None  # a removed user never passes
        matches = self._check_at_once(client, password, hashed)
        with self._lock:
            if matches:
                self._passed.put(key, True)
            else:
                self._failed.put(key, time.monotonic() + FAILED_TTL_S)
        return matches and stored is not None

    def _cached(self, key: bytes) -> bool | None:
        with self._lock:
            if self._passed.get(key):
                return True
            expiry = self._failed.get(key)
            if expiry is not None and expiry > time.monotonic():
                return False
        return None

    def _check_at_once(self, client: str, password: bytes, hashed: bytes) -> bool:
        """bcrypt, if this address has no check running and a slot is free; Busy if not."""
        with self._lock:
            if client in self._checking or len(self._checking) >= HASH_SLOTS:
                raise Busy(client)
            self._checking.add(client)
        try:
            return _checkpw(password, hashed)
        finally:
            with self._lock:
                self._checking.discard(client)


def _checkpw(password: bytes, hashed: bytes) -> bool:
    try:
        return bcrypt.checkpw(password, hashed)
    except ValueError:  # a password beyond bcrypt's 72 bytes
        return False


def _plain(start_response: Callable, status: str, body: bytes, *headers) -> Iterable[bytes]:
    start_response(status, [("Content-Type", "text/plain; charset=utf-8"), *headers])
    return [body]


def with_basic_auth(app: Callable, web_config: LiveWebConfig, open_paths: tuple[str, ...]):
    """``app`` behind the web config's basic_auth_users (read per request: they reload);
    ``open_paths`` need no credentials."""
    auth = BasicAuth()

    def guarded(environ: dict, start_response: Callable) -> Iterable[bytes]:
        users = web_config.current().config.basic_auth_users
        if not users or environ.get("PATH_INFO", "") in open_paths:
            return app(environ, start_response)
        header, client = environ.get("HTTP_AUTHORIZATION"), environ.get("REMOTE_ADDR", "")
        try:
            allowed = auth.allows(users, header, client)
        except Busy:
            return _plain(
                start_response, "503 Service Unavailable", b"busy\n", ("Retry-After", "1")
            )
        if allowed:
            return app(environ, start_response)
        challenge = ("WWW-Authenticate", f'Basic realm="{REALM}"')
        return _plain(start_response, "401 Unauthorized", b"401 Unauthorized\n", challenge)

    return guarded
