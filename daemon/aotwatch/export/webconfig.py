"""Access control of /metrics: a web-config file in the shape of Prometheus's exporter-toolkit.

Supported: ``tls_server_config`` (``cert_file``, ``key_file``, ``client_auth_type``,
``client_ca_file``, ``min_version``, ``max_version``) and ``basic_auth_users`` (bcrypt hashes).
The toolkit's other keys are refused with an error rather than ignored. Relative paths resolve
against the web-config file's directory, as the toolkit does. ``LiveWebConfig`` reloads the file
and the certificates it names when any of them changes, so certificates rotate without a restart.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import ssl
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from aotwatch.core.config import ConfigError, Section, length, read_yaml, section_from_dict

log = logging.getLogger(__name__)

TLS_VERSIONS = {"TLS12": ssl.TLSVersion.TLSv1_2, "TLS13": ssl.TLSVersion.TLSv1_3}

CLIENT_AUTH_MODES = {
    "NoClientCert": ssl.CERT_NONE,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}
"""The toolkit's client_auth_type values that Python's ssl can enforce."""

_UNVERIFIED_CLIENT_AUTH = ("RequestClientCert", "RequireAnyClientCert", "RequireClientCert")

_UNSUPPORTED = {
    "http_server_config": "HTTP/2 and extra response headers are not supported",
    "rate_limit": "rate limiting is not supported",
    "tls_server_config.cert": "inline PEM is not supported; use cert_file",
    "tls_server_config.key": "inline PEM is not supported; use key_file",
    "tls_server_config.client_ca": "inline PEM is not supported; use client_ca_file",
    "tls_server_config.cipher_suites": "Go cipher-suite names are not supported",
    "tls_server_config.curve_preferences": "Go curve names are not supported",
    "tls_server_config.prefer_server_cipher_suites": "cipher-suite order is not configurable",
    "tls_server_config.client_allowed_sans": "SAN allow-lists are not supported; use a client "
    "CA that signs only the allowed clients",
}
"""exporter-toolkit keys that aotwatch refuses, and why."""

_BCRYPT_HASH = re.compile(r"\$2[abxy]\$(\d\d)\$[./A-Za-z0-9]{53}")
_BCRYPT_EXPECTED = (
    "a bcrypt hash, $2y$10$ and 53 more characters (htpasswd -nBC 10 \"\" | tr -d ':\\n')"
)


def _one_of(*values: str) -> dict[str, Any]:
    def check(value: str, key: str) -> None:
        if value not in values:
            raise ConfigError(f"got {value!r}", key=key, expected=" or ".join(values))

    return {"check": check}


def _check_client_auth(value: str, key: str) -> None:
    if value in _UNVERIFIED_CLIENT_AUTH:
        raise ConfigError(
            f"{value} accepts client certificates without verifying them, which Python's ssl "
            "cannot do",
            key=key,
            expected=" or ".join(CLIENT_AUTH_MODES),
        )
    _one_of(*CLIENT_AUTH_MODES)["check"](value, key)


def _check_users(users: Mapping[str, str], key: str) -> None:
    """Every value a bcrypt hash of cost 4..31; never echoes a value (it may be a password)."""
    for name, hashed in users.items():
        if ":" in name:
            raise ConfigError(
                "basic auth cannot carry a user name with ':'",
                key=f"{key}.{name}",
                expected="a name without ':'",
            )
        match = _BCRYPT_HASH.fullmatch(hashed)
        if not match or not 4 <= int(match[1]) <= 31:
            raise ConfigError("not a bcrypt hash", key=f"{key}.{name}", expected=_BCRYPT_EXPECTED)


@dataclass(frozen=True)
class TLSServerConfig(Section):
    """``tls_server_config``: TLS is on when any file or a client_auth_type is set."""

    cert_file: str | None = field(default=None, metadata=length(1, 4096))
    """PEM certificate (chain) the server presents."""

    key_file: str | None = field(default=None, metadata=length(1, 4096))
    """Its unencrypted PEM private key."""

    client_auth_type: str = field(default="NoClientCert", metadata={"check": _check_client_auth})
    """Whether clients must present a certificate signed by ``client_ca_file``."""

    client_ca_file: str | None = field(default=None, metadata=length(1, 4096))
    """PEM CA certificates that client certificates are verified against."""

    min_version: str = field(default="TLS12", metadata=_one_of(*TLS_VERSIONS))
    """Lowest TLS version accepted."""

    max_version: str = field(default="TLS13", metadata=_one_of(*TLS_VERSIONS))
    """Highest TLS version accepted."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if TLS_VERSIONS[self.min_version] > TLS_VERSIONS[self.max_version]:
            raise ConfigError(
                f"{self.min_version} is above max_version {self.max_version}",
                key="min_version",
                expected=f"at most {self.max_version}",
            )
        if not self.enabled:
            return
        for key in ("cert_file", "key_file"):
            if getattr(self, key) is None:
                raise ConfigError(
                    "missing: TLS needs cert_file and key_file", key=key, expected="a PEM file"
                )
        verifies = self.client_auth_type != "NoClientCert"
        if verifies and self.client_ca_file is None:
            raise ConfigError(
                f"missing: {self.client_auth_type} verifies client certificates against it",
                key="client_ca_file",
                expected="a PEM file of CA certificates",
            )
        if not verifies and self.client_ca_file is not None:
            raise ConfigError(
                "client_ca_file is set but client certificates are not asked for",
                key="client_auth_type",
                expected="VerifyClientCertIfGiven or RequireAndVerifyClientCert",
            )

    @property
    def enabled(self) -> bool:
        files = (self.cert_file, self.key_file, self.client_ca_file)
        return any(files) or self.client_auth_type != "NoClientCert"

    @property
    def files(self) -> tuple[str, ...]:
        """The files this config reads; a change to any of them is a reason to reload."""
        names = (self.cert_file, self.key_file, self.client_ca_file)
        return tuple(name for name in names if name)


@dataclass(frozen=True)
class WebConfig(Section):
    """A web-config file: TLS for the listening port, basic auth for /metrics."""

    tls_server_config: TLSServerConfig = TLSServerConfig()
    """TLS settings; without cert_file and key_file the port speaks plain HTTP."""

    basic_auth_users: Mapping[str, str] = field(
        default_factory=dict, hash=False, metadata={"check": _check_users}
    )
    """User name -> bcrypt hash of the password; empty: no basic auth."""


def _refuse_unsupported(data: Any, source: str) -> None:
    """The toolkit keys aotwatch does not implement, and non-string hashes (never echoed)."""
    if not isinstance(data, Mapping):
        return
    tls = data.get("tls_server_config")
    keys = [*data, *(f"tls_server_config.{k}" for k in tls)] if isinstance(tls, Mapping) else data
    for key in keys:
        if key in _UNSUPPORTED:
            supported = ", ".join(f.name for f in dataclasses.fields(TLSServerConfig))
            raise ConfigError(
                f"not supported by aotwatch: {_UNSUPPORTED[key]}",
                file=source,
                key=key,
                expected=f"only tls_server_config ({supported}) and basic_auth_users",
            )
    users = data.get("basic_auth_users")
    for name, hashed in users.items() if isinstance(users, Mapping) else ():
        if not isinstance(hashed, str):
            raise ConfigError(
                f"not a bcrypt hash (got {'null' if hashed is None else type(hashed).__name__})",
                file=source,
                key=f"basic_auth_users.{name}",
                expected=_BCRYPT_EXPECTED,
            )


def _in_directory(tls: TLSServerConfig, directory: str) -> TLSServerConfig:
    changes = {
        key: os.path.join(directory, value)
        for key in ("cert_file", "key_file", "client_ca_file")
        if (value := getattr(tls, key)) is not None
    }
    return dataclasses.replace(tls, **changes)


def read_web_config(path: str | os.PathLike[str]) -> WebConfig:
    """Read and check a web-config file (``yaml.safe_load``); file paths in it become absolute.

    Raises ConfigError naming the file and the key path. Does not open the certificates.
    """
    source = os.fsdecode(path)
    data = read_yaml(source)
    _refuse_unsupported(data, source)
    config = section_from_dict(WebConfig, data, source)
    directory = os.path.dirname(os.path.abspath(source))
    tls = _in_directory(config.tls_server_config, directory)
    return dataclasses.replace(config, tls_server_config=tls)


def _encrypted_key() -> bytes:
    raise ConfigError("the key is encrypted", key="key_file", expected="an unencrypted PEM key")


def _read_pem(path: str, key: str, marker: bytes, what: str) -> None:
    try:
        with open(path, "rb") as stream:
            text = stream.read()
    except OSError as err:
        raise ConfigError(f"cannot read {path}: {err.strerror or err}", key=key) from err
    if marker not in text:
        raise ConfigError(f"{path} holds no {what}", key=key, expected=f"a PEM {what}")


def _ssl_context(tls: TLSServerConfig) -> ssl.SSLContext:
    """A server-side context from ``tls`` (enabled); ConfigError names the key at fault."""
    _read_pem(tls.cert_file, "cert_file", b"-----BEGIN CERTIFICATE-----", "certificate")
    _read_pem(tls.key_file, "key_file", b"PRIVATE KEY-----", "private key")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = TLS_VERSIONS[tls.min_version]
    context.maximum_version = TLS_VERSIONS[tls.max_version]
    try:
        context.load_cert_chain(tls.cert_file, tls.key_file, password=_encrypted_key)
    except ssl.SSLError as err:
        raise ConfigError(
            f"does not load with cert_file: {err.reason or err}",
            key="key_file",
            expected="the private key of the certificate in cert_file",
        ) from err
    if tls.client_ca_file:
        _read_pem(
            tls.client_ca_file, "client_ca_file", b"-----BEGIN CERTIFICATE-----", "certificate"
        )
        try:
            context.load_verify_locations(cafile=tls.client_ca_file)
        except ssl.SSLError as err:
            raise ConfigError(
                f"cannot load {tls.client_ca_file}: {err.reason or err}",
                key="client_ca_file",
                expected="PEM CA certificates",
            ) from err
    context.verify_mode = CLIENT_AUTH_MODES[tls.client_auth_type]
    return context


@dataclass(frozen=True)
class LoadedWebConfig:
    """A checked web config and, when it turns TLS on, its SSL context."""

    config: WebConfig
    context: ssl.SSLContext | None


def _with_context(config: WebConfig, source: str) -> LoadedWebConfig:
    tls = config.tls_server_config
    if not tls.enabled:
        return LoadedWebConfig(config, None)
    try:
        return LoadedWebConfig(config, _ssl_context(tls))
    except ConfigError as err:
        key = f"tls_server_config.{err.key}"
        raise ConfigError(err.problem, file=source, key=key, expected=err.expected) from None


def load_web_config(path: str | os.PathLike[str]) -> LoadedWebConfig:
    """Read a web-config file and load the certificates it names; ConfigError on any fault."""
    return _with_context(read_web_config(path), os.fsdecode(path))


def _client_auth_level(loaded: LoadedWebConfig) -> int:
    """How much a config asks of clients' certificates: ssl's CERT_NONE < CERT_OPTIONAL <
    CERT_REQUIRED, the order of CLIENT_AUTH_MODES."""
    return CLIENT_AUTH_MODES[loaded.config.tls_server_config.client_auth_type]


Signature = tuple[tuple[int, ...] | None, ...]


def _stat(path: str) -> tuple[int, ...] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


class LiveWebConfig:
    """A web-config file kept current: a change to it or to a file it names reloads it.

    ``current()`` costs a few ``stat`` calls. A reload that fails (a half-written certificate,
    a typo) is logged and the previous config stays in force until a file changes again; so
    does one that would turn TLS on or off, which needs a restart (the listening socket is
    plain or TLS for its life), one that would turn basic auth off (an emptied or truncated
    file must not open /metrics) and one that would ask less of client certificates (from
    RequireAndVerifyClientCert to VerifyClientCertIfGiven or NoClientCert, say). Raises
    ConfigError when the first load fails.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.path.abspath(os.fsdecode(path))
        self._lock = threading.Lock()
        self._seen, self._loaded = self._load()
        self.tls = self._loaded.context is not None

    def _signature(self, config: WebConfig) -> Signature:
        return tuple(_stat(path) for path in (self.path, *config.tls_server_config.files))

    def _load(self) -> tuple[Signature, LoadedWebConfig]:
        """Every file is stat'ed before it is read, so a change during a load is seen later."""
        before = _stat(self.path)
        config = read_web_config(self.path)
        files = tuple(_stat(path) for path in config.tls_server_config.files)
        return (before, *files), _with_context(config, self.path)

    def current(self) -> LoadedWebConfig:
        """The config in force, reloaded first if a file changed since the last load."""
        with self._lock:
            signature = self._signature(self._loaded.config)
            if signature != self._seen:
                self._seen = signature  # a load that fails waits for the next change
                self._reload()
            return self._loaded

    def _reload(self) -> None:
        try:
            signature, loaded = self._load()
        except ConfigError as err:
            log.warning("aotwatch: %s; keeping the web config loaded before", err)
            return
        if (loaded.context is not None) != self.tls:
            log.warning(
                "aotwatch: %s: turning TLS on or off needs a restart; keeping the web "
                "config loaded before",
                self.path,
            )
            return
        if self._loaded.config.basic_auth_users and not loaded.config.basic_auth_users:
            log.warning(
                "aotwatch: %s: turning basic auth off needs a restart; keeping the web "
                "config loaded before",
                self.path,
            )
            return
        if _client_auth_level(loaded) < _client_auth_level(self._loaded):
            log.warning(
                "aotwatch: %s: lowering client_auth_type to %s needs a restart; keeping the "
                "web config loaded before",
                self.path,
                loaded.config.tls_server_config.client_auth_type,
            )
            return
        self._seen, self._loaded = signature, loaded
        log.info("aotwatch: reloaded %s", self.path)
