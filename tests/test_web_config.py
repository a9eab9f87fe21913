"""Access control of /metrics: web-config files, basic auth, TLS, client certificates, rotation.

Real servers on loopback port 0, real certificates from trustme, stdlib clients.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import logging
import os
import socket
import ssl
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import bcrypt
import pytest
import trustme
import yaml

import aotwatch
from aotwatch.attachment.process import current
from aotwatch.core.config import Config, ConfigError, ExportConfig, LimitsConfig, load_config
from aotwatch.core.sink import RecordSink
from aotwatch.export import auth as auth_module
from aotwatch.export.collector import AggregateCollector, registry_for
from aotwatch.export.server import MetricsServer, serve_metrics
from aotwatch.export.webconfig import load_web_config
from helpers import laughs, wait_for

PASSWORD = "correct horse"


def bcrypt_hash(password: str) -> str:
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()


def write_yaml(path: Path, data: dict) -> Path:
    """Write ``data`` through a temporary file and a rename, as a rotation tool would."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(yaml.safe_dump(data), encoding="utf-8")
    os.replace(tmp, path)
    return path


def install_cert(cert: trustme.LeafCert, directory: Path) -> None:
    """Put ``cert`` at directory/server.pem and its key at directory/server-key.pem, atomically."""
    for name, blob in (
        ("server.pem", cert.cert_chain_pems[0]),
        ("server-key.pem", cert.private_key_pem),
    ):
        blob.write_to_path(str(directory / (name + ".tmp")))
        os.replace(directory / (name + ".tmp"), directory / name)


def client_context(ca: trustme.CA, client_cert: trustme.LeafCert | None = None) -> ssl.SSLContext:
    """A client that trusts ``ca`` and nothing else, presenting ``client_cert`` if given."""
    context = ssl.create_default_context(cadata=ca.cert_pem.bytes().decode())
    if client_cert is not None:
        client_cert.configure_cert(context)
    return context


def fetch(
    url: str,
    context: ssl.SSLContext | None = None,
    user: str | None = None,
    password: str = PASSWORD,
) -> tuple[int, http.client.HTTPMessage, str]:
    """(status, headers, body) of a GET; an HTTP error status is returned, not raised."""
    headers = {}
    if user is not None:
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        headers["Authorization"] = f"Basic {token}"
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, context=context, timeout=10) as response:
            return response.status, response.headers, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.headers, err.read().decode()


@pytest.fixture
def serve():
    """Start a real /metrics server (aotwatch's own families) with a web-config file."""
    servers: list[MetricsServer] = []

    def start(web_config: Path | None, **limits) -> MetricsServer:
        registry = registry_for(AggregateCollector(RecordSink(100).snapshot, {}))
        servers.append(
            serve_metrics(
                registry, "127.0.0.1", 0, web_config=web_config, limits=LimitsConfig(**limits)
            )
        )
        return servers[-1]

    yield start
    for server in servers:
        server.close()


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def conf(tmp_path: Path, ca: trustme.CA, monkeypatch) -> Path:
    """A directory with server.pem and server-key.pem (by ``ca``); the tests run elsewhere, so
    the relative paths in web-config files must resolve against this directory."""
    directory = tmp_path / "conf"
    directory.mkdir()
    install_cert(ca.issue_cert("127.0.0.1", "localhost"), directory)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    return directory


TLS = {"cert_file": "server.pem", "key_file": "server-key.pem"}


# -- basic auth ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("user", "password"),
    [(None, PASSWORD), ("alice", "wrong"), ("mallory", PASSWORD), ("alice", ""), ("", "")],
    ids=["no credentials", "wrong password", "unknown user", "empty password", "empty user"],
)
def test_wrong_or_missing_credentials_get_401(conf, serve, user, password):
    server = serve(
        write_yaml(conf / "web.yml", {"basic_auth_users": {"alice": bcrypt_hash(PASSWORD)}})
    )
    status, headers, body = fetch(server.url, user=user, password=password)
    assert status == 401
    assert headers["WWW-Authenticate"] == 'Basic realm="aotwatch"'
    assert "aotwatch_build_info" not in body


@pytest.mark.parametrize(
    "header",
    [
        "Basic !!!not-base64",
        "Basic " + base64.b64encode(b"alice").decode(),  # no colon
        "Basic " + base64.b64encode(b"\xff:x").decode(),  # a user name that is not UTF-8
        "Bearer abc",
    ],
)
def test_malformed_authorization_headers_get_401(conf, serve, header):
    server = serve(write_yaml(conf / "web.yml", {"basic_auth_users": {"alice": bcrypt_hash("x")}}))
    request = urllib.request.Request(server.url, headers={"Authorization": header})
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(request, timeout=10)
    assert info.value.code == 401


def test_right_credentials_get_the_metrics(conf, serve):
    users = {"alice": bcrypt_hash(PASSWORD), "bob": bcrypt_hash("other")}
    server = serve(write_yaml(conf / "web.yml", {"basic_auth_users": users}))
    assert server.url.startswith("http://")
    status, headers, body = fetch(server.url, user="alice")
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain")
    assert "# TYPE aotwatch_build_info gauge" in body
    assert fetch(server.url, user="bob", password="other")[0] == 200
    assert fetch(server.url, user="bob", password=PASSWORD)[0] == 401


def test_health_endpoints_need_no_credentials(conf, serve):
    server = serve(write_yaml(conf / "web.yml", {"basic_auth_users": {"alice": bcrypt_hash("x")}}))
    base = server.url.removesuffix("/metrics")
    for path in ("/healthz", "/readyz"):
        status, _, body = fetch(base + path)
        assert (status, body) == (200, "ok\n")
    assert fetch(f"{base}/anything-else")[0] == 401


def test_no_users_means_no_basic_auth(conf, serve):
    server = serve(write_yaml(conf / "web.yml", {"basic_auth_users": {}}))
    assert fetch(server.url)[0] == 200


def test_passes_and_failures_are_cached_and_a_new_hash_invalidates_them(conf, serve, monkeypatch):
    checks = []
    checkpw = bcrypt.checkpw
    monkeypatch.setattr(auth_module.bcrypt, "checkpw", lambda *a: checks.append(1) or checkpw(*a))
    path = write_yaml(conf / "web.yml", {"basic_auth_users": {"alice": bcrypt_hash(PASSWORD)}})
    server = serve(path)
    assert [fetch(server.url, user="alice")[0] for _ in range(3)] == [200, 200, 200]
    assert len(checks) == 1  # one bcrypt check, then the cache
    assert [fetch(server.url, user="alice", password="no")[0] for _ in range(2)] == [401, 401]
    assert len(checks) == 2  # a failure is checked once, then refused from the cache
    assert fetch(server.url, user="mallory")[0] == 401
    assert len(checks) == 3  # an unknown user costs a bcrypt check like a known one
    write_yaml(path, {"basic_auth_users": {"alice": bcrypt_hash("new password")}})
    assert fetch(server.url, user="alice")[0] == 401  # the cached success was for the old hash
    assert fetch(server.url, user="alice", password="new password")[0] == 200


def test_users_reload_without_restart(conf, serve):
    path = write_yaml(conf / "web.yml", {"basic_auth_users": {"alice": bcrypt_hash(PASSWORD)}})
    server = serve(path)
    assert fetch(server.url, user="carol")[0] == 401
    write_yaml(path, {"basic_auth_users": {"carol": bcrypt_hash(PASSWORD)}})
    assert fetch(server.url, user="carol")[0] == 200
    assert fetch(server.url, user="alice")[0] == 401


def test_a_removed_user_sharing_a_hash_is_refused_despite_the_cache(conf, serve):
    shared = bcrypt_hash(PASSWORD)
    path = write_yaml(conf / "web.yml", {"basic_auth_users": {"alice": shared, "bob": shared}})
    server = serve(path)
    assert fetch(server.url, user="bob")[0] == 200  # now cached
    write_yaml(path, {"basic_auth_users": {"alice": shared}})
    assert fetch(server.url, user="bob")[0] == 401
    assert fetch(server.url, user="alice")[0] == 200


def test_emptying_the_file_does_not_turn_basic_auth_off(conf, serve, caplog):
    """A truncated file reads as no users: refused like turning TLS off, and a broken edit after
    it keeps the users too; a later valid change of users is loaded."""
    path = write_yaml(conf / "web.yml", {"basic_auth_users": {"alice": bcrypt_hash(PASSWORD)}})
    server = serve(path)
    with caplog.at_level(logging.WARNING, logger="aotwatch"):
        for text in ("", "basic_auth_users: [\n"):  # sizes differ: each edit is a change
            path.write_text(text, encoding="utf-8")
            assert fetch(server.url)[0] == 401
            assert fetch(server.url, user="alice")[0] == 200
    assert "turning basic auth off needs a restart" in caplog.text
    write_yaml(path, {"basic_auth_users": {"carol": bcrypt_hash(PASSWORD)}})
    assert fetch(server.url, user="carol")[0] == 200
    assert fetch(server.url, user="alice")[0] == 401


# -- TLS ---------------------------------------------------------------------------------------


def test_tls_with_basic_auth(conf, serve, ca):
    web = {"tls_server_config": TLS, "basic_auth_users": {"alice": bcrypt_hash(PASSWORD)}}
    server = serve(write_yaml(conf / "web.yml", web))
    assert server.url == f"https://127.0.0.1:{server.port}/metrics"
    status, _, body = fetch(server.url, client_context(ca), user="alice")
    assert status == 200 and "aotwatch_build_info" in body
    assert fetch(server.url, client_context(ca))[0] == 401
    healthz = server.url.replace("/metrics", "/healthz")
    assert fetch(healthz, client_context(ca))[0] == 200


def test_plain_http_to_the_tls_port_fails_and_the_server_keeps_serving(conf, serve, ca):
    server = serve(write_yaml(conf / "web.yml", {"tls_server_config": TLS}))
    plain = server.url.replace("https://", "http://")
    for _ in range(3):
        with pytest.raises((OSError, http.client.HTTPException)):
            fetch(plain)
    with pytest.raises(urllib.error.URLError) as info:
        fetch(server.url, client_context(trustme.CA()))  # a CA that did not sign the server
    assert isinstance(info.value.reason, ssl.SSLCertVerificationError)
    assert fetch(server.url, client_context(ca))[0] == 200


def test_a_silent_client_does_not_hold_up_others(conf, serve, ca):
    server = serve(write_yaml(conf / "web.yml", {"tls_server_config": TLS}))
    with socket.create_connection(("127.0.0.1", server.port)):  # connects, never says hello
        assert fetch(server.url, client_context(ca))[0] == 200


def test_a_handshake_sent_a_byte_at_a_time_holds_no_thread_and_meets_the_deadline(conf, serve, ca):
    server = serve(write_yaml(conf / "web.yml", {"tls_server_config": TLS}), request_timeout_s=2)
    hello = _client_hello(ca)
    threads = threading.active_count()
    started = time.monotonic()
    slow = socket.create_connection(("127.0.0.1", server.port))
    with slow, pytest.raises(OSError):  # cut at its deadline, long before the hello is sent
        for byte in hello:
            slow.sendall(bytes([byte]))
            wait_for(
                lambda: threading.active_count() == threads,
                timeout=2,
                message="no thread left for the slow handshake",
            )
            assert fetch(server.url, client_context(ca))[0] == 200  # others are served
            time.sleep(0.1)
    assert 2 <= time.monotonic() - started < 6


def test_a_client_in_its_handshake_outlives_a_stalled_handshake_flood(conf, serve, ca):
    """A valid client between its ClientHello and its Finished is still sending its request:
    a flood of stalled handshakes from another address (past max_connections: 8) evicts its
    own connections, not the valid client, which has waited longest."""
    server = serve(write_yaml(conf / "web.yml", {"tls_server_config": TLS}), max_connections=8)
    valid = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = client_context(ca).wrap_bio(incoming, outgoing, server_hostname="localhost")
    with valid:
        with pytest.raises(ssl.SSLWantReadError):
            tls.do_handshake()
        valid.sendall(outgoing.read())  # ClientHello
        while True:  # the server's flight, up to its Finished; ours is not sent yet
            incoming.write(valid.recv(65536))
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                continue
        hello = _client_hello(ca)
        flood = []
        try:
            for _ in range(30):  # stalled handshakes from another address
                sock = socket.create_connection(
                    ("127.0.0.1", server.port), source_address=("127.0.0.2", 0)
                )
                flood.append(sock)
                sock.sendall(hello)
            wait_for(
                lambda: sum(_gone(sock) for sock in flood) >= 30 - 8,
                timeout=10,
                message="the flood past the cap closed",
            )
            tls.write(b"GET /healthz HTTP/1.0\r\n\r\n")
            valid.sendall(outgoing.read())  # our Finished and the request
            answer = b""
            while b"\r\n" not in answer:
                data = valid.recv(65536)
                assert data, "the server closed the valid client's connection"
                incoming.write(data)
                with contextlib.suppress(ssl.SSLWantReadError):
                    answer += tls.read(65536)
        finally:
            for sock in flood:
                sock.close()
    assert answer.startswith(b"HTTP/1.0 200")


def _gone(sock: socket.socket) -> bool:
    """Whether the server closed ``sock`` (data it sent, such as its handshake, is skipped)."""
    sock.setblocking(False)
    try:
        while data := sock.recv(65536):
            del data
        return True
    except BlockingIOError:
        return False
    except ConnectionResetError:
        return True


def _client_hello(ca: trustme.CA) -> bytes:
    """The bytes a TLS client opens with."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = client_context(ca).wrap_bio(incoming, outgoing, server_hostname="localhost")
    with pytest.raises(ssl.SSLWantReadError):
        client.do_handshake()
    return outgoing.read()


def test_tls_version_bounds(conf, serve, ca):
    web = {"tls_server_config": {**TLS, "min_version": "TLS13"}}
    server = serve(write_yaml(conf / "web.yml", web))
    tls12 = client_context(ca)
    tls12.maximum_version = ssl.TLSVersion.TLSv1_2
    with pytest.raises(urllib.error.URLError):
        fetch(server.url, tls12)
    assert fetch(server.url, client_context(ca))[0] == 200


@pytest.fixture
def client_ca() -> trustme.CA:
    return trustme.CA()


def _client_auth_server(conf, serve, client_ca, client_auth_type: str) -> MetricsServer:
    client_ca.cert_pem.write_to_path(str(conf / "clients.pem"))
    tls = {**TLS, "client_auth_type": client_auth_type, "client_ca_file": "clients.pem"}
    return serve(write_yaml(conf / "web.yml", {"tls_server_config": tls}))


def test_required_client_certificates(conf, serve, ca, client_ca):
    server = _client_auth_server(conf, serve, client_ca, "RequireAndVerifyClientCert")
    with pytest.raises((OSError, http.client.HTTPException)):
        fetch(server.url, client_context(ca))
    stranger = trustme.CA().issue_cert("stranger@example.com")
    with pytest.raises((OSError, http.client.HTTPException)):
        fetch(server.url, client_context(ca, stranger))
    client = client_ca.issue_cert("prometheus@example.com")
    status, _, body = fetch(server.url, client_context(ca, client))
    assert status == 200 and "aotwatch_build_info" in body


def test_client_certificates_verified_if_given(conf, serve, ca, client_ca):
    server = _client_auth_server(conf, serve, client_ca, "VerifyClientCertIfGiven")
    assert fetch(server.url, client_context(ca))[0] == 200
    stranger = trustme.CA().issue_cert("stranger@example.com")
    with pytest.raises((OSError, http.client.HTTPException)):
        fetch(server.url, client_context(ca, stranger))
    assert fetch(server.url, client_context(ca, client_ca.issue_cert("p@example.com")))[0] == 200


@pytest.mark.parametrize("lowered", ["NoClientCert", "VerifyClientCertIfGiven"])
def test_lowering_client_authentication_needs_a_restart(
    conf, serve, ca, client_ca, lowered, caplog
):
    """Like turning basic auth off: a reload that asks less of clients is refused, with a
    warning; a client certificate is still required until a restart."""
    server = _client_auth_server(conf, serve, client_ca, "RequireAndVerifyClientCert")
    client = client_context(ca, client_ca.issue_cert("prometheus@example.com"))
    tls = {**TLS, "client_auth_type": lowered}
    if lowered != "NoClientCert":
        tls["client_ca_file"] = "clients.pem"
    with caplog.at_level(logging.WARNING, logger="aotwatch"):
        write_yaml(conf / "web.yml", {"tls_server_config": tls})
        with pytest.raises((OSError, http.client.HTTPException)):
            fetch(server.url, client_context(ca))  # no certificate: still refused
        assert fetch(server.url, client)[0] == 200
    assert f"lowering client_auth_type to {lowered} needs a restart" in caplog.text


def test_raising_client_authentication_reloads(conf, serve, ca, client_ca):
    client_ca.cert_pem.write_to_path(str(conf / "clients.pem"))
    path = write_yaml(conf / "web.yml", {"tls_server_config": TLS})
    server = serve(path)
    assert fetch(server.url, client_context(ca))[0] == 200
    tls = {**TLS, "client_auth_type": "RequireAndVerifyClientCert", "client_ca_file": "clients.pem"}
    write_yaml(path, {"tls_server_config": tls})
    with pytest.raises((OSError, http.client.HTTPException)):
        fetch(server.url, client_context(ca))
    assert fetch(server.url, client_context(ca, client_ca.issue_cert("p@example.com")))[0] == 200


def test_certificates_rotate_without_restart(conf, serve, ca):
    server = serve(write_yaml(conf / "web.yml", {"tls_server_config": TLS}))
    thread, port = server.thread, server.port
    assert fetch(server.url, client_context(ca))[0] == 200
    new_ca = trustme.CA()
    install_cert(new_ca.issue_cert("127.0.0.1"), conf)
    assert fetch(server.url, client_context(new_ca))[0] == 200
    with pytest.raises(urllib.error.URLError) as info:
        fetch(server.url, client_context(ca))
    assert isinstance(info.value.reason, ssl.SSLCertVerificationError)
    assert server.thread is thread and thread.is_alive() and server.port == port


def test_a_broken_rotation_keeps_the_previous_certificate(conf, serve, ca, caplog):
    server = serve(write_yaml(conf / "web.yml", {"tls_server_config": TLS}))
    new_ca = trustme.CA()
    new_ca.issue_cert("127.0.0.1").cert_chain_pems[0].write_to_path(str(conf / "server.pem"))
    with caplog.at_level(logging.WARNING, logger="aotwatch"):
        assert fetch(server.url, client_context(ca))[0] == 200  # new cert, old key: not loaded
    assert "tls_server_config.key_file" in caplog.text
    install_cert(new_ca.issue_cert("127.0.0.1"), conf)  # the key follows: now it loads
    assert fetch(server.url, client_context(new_ca))[0] == 200


def test_tls_cannot_be_turned_off_without_restart(conf, serve, ca, caplog):
    path = write_yaml(conf / "web.yml", {"tls_server_config": TLS})
    server = serve(path)
    with caplog.at_level(logging.WARNING, logger="aotwatch"):
        write_yaml(path, {"basic_auth_users": {}})
        assert fetch(server.url, client_context(ca))[0] == 200
    assert "needs a restart" in caplog.text


# -- bad web-config files ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("web", "key", "says"),
    [
        (
            {"tls_server_config": {**TLS, "cert_fle": "x"}},
            "tls_server_config.cert_fle",
            "did you mean 'cert_file'",
        ),
        ({"basic_auth_user": {}}, "basic_auth_user", "unknown key"),
        ({"http_server_config": {"http2": True}}, "http_server_config", "not supported"),
        (
            {"tls_server_config": {**TLS, "cipher_suites": ["TLS_AES_128_GCM_SHA256"]}},
            "tls_server_config.cipher_suites",
            "not supported",
        ),
        (
            {"tls_server_config": {**TLS, "cert_file": "missing.pem"}},
            "tls_server_config.cert_file",
            "No such file",
        ),
        (
            {"tls_server_config": {"cert_file": "server.pem"}},
            "tls_server_config.key_file",
            "missing",
        ),
        (
            {"tls_server_config": {**TLS, "key_file": "server.pem"}},
            "tls_server_config.key_file",
            "no private key",
        ),
        (
            {"tls_server_config": {**TLS, "client_auth_type": "RequireAndVerifyClientCert"}},
            "tls_server_config.client_ca_file",
            "missing",
        ),
        (
            {"tls_server_config": {**TLS, "client_auth_type": "RequireAnyClientCert"}},
            "tls_server_config.client_auth_type",
            "without verifying",
        ),
        (
            {"tls_server_config": {**TLS, "client_ca_file": "server.pem"}},
            "tls_server_config.client_auth_type",
            "not asked for",
        ),
        (
            {"tls_server_config": {**TLS, "min_version": "TLS10"}},
            "tls_server_config.min_version",
            "expected TLS12 or TLS13",
        ),
        (
            {"tls_server_config": {**TLS, "min_version": 12}},
            "tls_server_config.min_version",
            "expected a string",
        ),
        ({"basic_auth_users": ["alice"]}, "basic_auth_users", "expected a mapping"),
        (
            {"basic_auth_users": {"alice": "plaintext-password"}},
            "basic_auth_users.alice",
            "not a bcrypt hash",
        ),
        ({"basic_auth_users": {"alice": 123456}}, "basic_auth_users.alice", "not a bcrypt hash"),
        ({"basic_auth_users": {"al:ice": bcrypt_hash("x")}}, "basic_auth_users.al:ice", "':'"),
    ],
)
def test_bad_web_config_files_name_the_file_and_key(conf, serve, web, key, says):
    path = write_yaml(conf / "web.yml", web)
    with pytest.raises(ConfigError) as info:
        serve(path)
    err = info.value
    assert (err.file, err.key) == (str(path), key)
    assert str(err).startswith(f"{path}: {key}: ")
    assert says in str(err)
    assert "plaintext-password" not in str(err) and "123456" not in str(err)


def test_a_missing_file_is_named_by_its_resolved_path(conf, serve):
    with pytest.raises(ConfigError) as info:
        serve(write_yaml(conf / "web.yml", {"tls_server_config": {**TLS, "key_file": "k.pem"}}))
    assert str(conf / "k.pem") in str(info.value)


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("- a list\n", "must be a mapping"),
        ("a: [\n", "YAML syntax error"),
        ("!!python/object/apply:os.system [echo]\n", "YAML syntax error"),  # safe_load refuses
        pytest.param(
            "basic_auth_users: " + "[" * 3000 + "]" * 3000,
            "YAML nested too deeply",
            id="deep nesting",
        ),
        pytest.param(
            f"basic_auth_users: {laughs(9)}\n",
            "basic_auth_users: got list [['x', ",
            id="billion laughs",
        ),
    ],
)
def test_unparsable_web_config_files(conf, serve, text, says):
    path = conf / "web.yml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        serve(path)
    assert info.value.file == str(path) and says in str(info.value)


def test_a_missing_web_config_file(tmp_path, serve):
    with pytest.raises(ConfigError, match="cannot read"):
        serve(tmp_path / "absent.yml")


def test_paths_resolve_against_the_web_config_directory(conf, client_ca):
    client_ca.cert_pem.write_to_path(str(conf / "clients.pem"))
    tls = {**TLS, "client_auth_type": "RequireAndVerifyClientCert", "client_ca_file": "clients.pem"}
    loaded = load_web_config(write_yaml(conf / "web.yml", {"tls_server_config": tls}))
    assert Path.cwd() != conf
    files = loaded.config.tls_server_config.files
    assert files == tuple(
        str(conf / name) for name in ("server.pem", "server-key.pem", "clients.pem")
    )
    assert loaded.context.verify_mode == ssl.CERT_REQUIRED
    assert loaded.context.minimum_version == ssl.TLSVersion.TLSv1_2


# -- aotwatch's config -------------------------------------------------------------------------


def test_config_keys(tmp_path):
    text = "export:\n  web_config: /etc/aotwatch/web.yml\ncollector:\n  web_config: w.yml\n"
    (tmp_path / "a.yaml").write_text(text)
    config = load_config(tmp_path / "a.yaml")
    assert config.export.web_config == "/etc/aotwatch/web.yml"
    assert config.collector.web_config == "w.yml"
    assert Config().export.web_config is None and Config().collector.web_config is None
    (tmp_path / "b.yaml").write_text("export:\n  web_config: 1\n")
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "b.yaml")
    assert info.value.key == "export.web_config"


def test_attach_serves_https_with_a_web_config(conf, ca):
    path = write_yaml(conf / "web.yml", {"tls_server_config": TLS})
    attachment = aotwatch.attach(Config(export=ExportConfig(port=0, web_config=str(path))))
    try:
        assert attachment.url.startswith("https://127.0.0.1:")
        assert fetch(attachment.url, client_context(ca))[0] == 200
    finally:
        aotwatch.detach()


def test_attach_on_a_port_past_65535_after_local_rank_installs_nothing(monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "1")
    with pytest.raises(ConfigError) as info:
        aotwatch.attach(Config(export=ExportConfig(address="127.0.0.1", port=65535)))
    assert str(info.value) == (
        "export.port: 65535 plus LOCAL_RANK 1 is past 65535; expected a lower port or 0 "
        "(any free port)"
    )
    assert current() is None


def test_attach_with_a_bad_web_config_installs_nothing(conf):
    path = write_yaml(conf / "web.yml", {"tls_server_config": {"cert_file": "server.pem"}})
    with pytest.raises(ConfigError):
        aotwatch.attach(Config(export=ExportConfig(port=0, web_config=str(path))))
    assert current() is None
