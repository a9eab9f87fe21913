"""/metrics under attack: silent and slow clients, a low open-file limit, a wrong-password
flood, and the ``name[]`` filter. Real servers on loopback, real sockets, a real child process
with its own ``ulimit -n``.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import os
import random
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import bcrypt
import pytest
import yaml

from aotwatch.core.config import LimitsConfig
from aotwatch.core.metrics import FRAMES, RECORDS_REJECTED
from aotwatch.core.sink import RecordSink
from aotwatch.export.auth import BasicAuth, Busy
from aotwatch.export.collector import AggregateCollector, registry_for
from aotwatch.export.server import connection_cap, serve_metrics
from aotwatch.export.unfinished import Unfinished
from helpers import scrape, wait_for

DAEMON = Path(__file__).resolve().parents[1] / "daemon"


def _registry(sink: RecordSink | None = None):
    return registry_for(AggregateCollector((sink or RecordSink(100)).snapshot, {}))


def _get(
    port: int,
    path: str = "/healthz",
    headers: dict | None = None,
    source: str | None = None,
    timeout: float = 5,
) -> int:
    """The status of one GET from ``source`` (a loopback address) to 127.0.0.1:port."""
    source_address = (source, 0) if source else None
    connection = http.client.HTTPConnection(
        "127.0.0.1", port, timeout=timeout, source_address=source_address
    )
    try:
        connection.request("GET", path, headers=headers or {})
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


@pytest.fixture
def server():
    servers = []

    def start(**limits):
        servers.append(serve_metrics(_registry(), "127.0.0.1", 0, limits=LimitsConfig(**limits)))
        return servers[-1]

    yield start
    for started in servers:
        started.close()


def test_a_client_sending_a_byte_at_a_time_is_cut_at_the_request_deadline(server):
    metrics = server(request_timeout_s=2)
    with socket.create_connection(("127.0.0.1", metrics.port)) as slow:
        started = time.monotonic()
        closed_after = None
        for byte in b"GET /metrics HTTP/1.1\r\nHost: x\r\n" * 10:  # one byte every 0.25 s
            try:
                slow.sendall(bytes([byte]))
                time.sleep(0.25)
            except OSError:
                closed_after = time.monotonic() - started
                break
        else:
            pytest.fail("a client trickling its request was never disconnected")
    # Each byte came well within any per-read timeout: only a deadline for the whole request
    # (2 s here, enforced every 0.25 s) ends it.
    assert 2 <= closed_after < 6
    assert metrics.server.connections == 0


def _stalled(port: int, source: str = "127.0.0.1") -> socket.socket:
    """A connection from ``source`` (a loopback address) that began its request and went
    quiet."""
    sock = socket.create_connection(("127.0.0.1", port), source_address=(source, 0))
    sock.sendall(b"GET /me")
    return sock


def test_past_the_cap_stalled_connections_make_room_and_are_never_more_than_the_cap(server):
    metrics = server(max_connections=8, request_timeout_s=60)
    silent = [_stalled(metrics.port) for _ in range(40)]
    try:
        for _ in range(3):  # each scrape closes the longest-waiting silent connection
            assert _get(metrics.port, "/metrics") == 200
        assert metrics.server.peak_connections <= 8
        closed = sum(1 for sock in silent if _closed_by_peer(sock))
        assert closed >= 40 - 8
    finally:
        for sock in silent:
            sock.close()


def _closed_by_peer(sock: socket.socket, wait_s: float = 2) -> bool:
    sock.settimeout(wait_s)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except (TimeoutError, BlockingIOError):
        return False


def _raw(port: int, request: bytes) -> bytes:
    """The status line the server answers ``request`` with."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(request)
        return sock.makefile("rb").readline().strip()


def test_request_limits_hold_with_heads_read_by_the_accept_loop(server):
    port = server().port
    many_headers = b"".join(b"X-%d: y\r\n" % i for i in range(101))
    assert _raw(port, b"GET /" + b"a" * 70_000 + b" HTTP/1.0\r\n\r\n").split()[1] == b"414"
    assert _raw(port, b"GET /metrics HTTP/1.0\r\n" + many_headers + b"\r\n").split()[1] == b"431"
    long_header = b"GET /metrics HTTP/1.0\r\nX: " + b"a" * 70_000 + b"\r\n\r\n"
    assert _raw(port, long_header).split()[1] == b"431"
    endless = b"GET /metrics HTTP/1.0\r\nX: " + b"a" * 300_000  # never ends its headers
    assert _raw(port, endless).split()[1] == b"431"
    assert _raw(port, b"POST /metrics HTTP/1.0\r\nContent-Length: 1\r\n\r\nx").split()[1] == b"405"
    assert _raw(port, b"GET /healthz HTTP/1.0\n\n").split()[1] == b"200"  # bare newlines


def test_stalled_connections_hold_no_thread(server):
    metrics = server(max_connections=64, max_connections_per_address=64)
    threads = threading.active_count()
    stalled = [_stalled(metrics.port) for _ in range(50)]
    try:
        wait_for(lambda: metrics.server.connections == 50, timeout=5, message="50 tracked")
        assert threading.active_count() == threads
        assert _get(metrics.port, "/metrics") == 200
    finally:
        for sock in stalled:
            sock.close()


def test_one_address_holds_at_most_its_share(server):
    metrics = server(max_connections=64, max_connections_per_address=4, request_timeout_s=60)
    others = [_stalled(metrics.port, "127.0.0.3") for _ in range(3)]
    flood = [_stalled(metrics.port, "127.0.0.2") for _ in range(20)]
    try:
        wait_for(lambda: metrics.server.peak_connections >= 7, timeout=5, message="all read")
        closed = [_closed_by_peer(sock, wait_s=0.5) for sock in flood]
        assert closed == [True] * 16 + [False] * 4  # each newcomer past 4: its oldest closed
        assert metrics.server.connections_from("127.0.0.2") == 4
        assert all(not _closed_by_peer(sock, wait_s=0) for sock in others)
        assert metrics.server.connections_from("127.0.0.3") == 3
        assert _get(metrics.port, "/metrics") == 200
    finally:
        for sock in others + flood:
            sock.close()


def test_past_the_cap_the_address_holding_the_most_makes_room(server):
    """The oldest connections, from another address, outlive a flood that evicts its own."""
    metrics = server(max_connections=8, max_connections_per_address=8, request_timeout_s=60)
    oldest = [_stalled(metrics.port, "127.0.0.3") for _ in range(3)]
    wait_for(lambda: metrics.server.connections == 3, timeout=5, message="3 tracked")
    flood = [_stalled(metrics.port, "127.0.0.2") for _ in range(30)]
    try:
        closed = [_closed_by_peer(sock, wait_s=0.5) for sock in flood]
        assert closed == [True] * 25 + [False] * 5
        assert all(not _closed_by_peer(sock, wait_s=0) for sock in oldest)
        assert metrics.server.connections_from("127.0.0.3") == 3
        assert metrics.server.peak_connections <= 8
    finally:
        for sock in oldest + flood:
            sock.close()


def test_the_victim_is_the_oldest_of_the_address_holding_the_most():
    """Unfinished against a plain model (lists scanned in full), over random adds and removes."""
    rng = random.Random(20)
    unfinished, model = Unfinished(), []  # model: connections by age
    for fd in range(3000):
        if model and rng.random() < 0.45:
            gone = model.pop(rng.randrange(len(model)))
            unfinished.remove(gone)
        else:
            connection = SimpleNamespace(fd=fd, host=f"10.0.0.{rng.randrange(6)}")
            model.append(connection)
            unfinished.add(connection)
        host = f"10.0.0.{rng.randrange(7)}"
        held = Counter(c.host for c in model)
        fullest = {h for h, n in held.items() if n == max(held.values())}
        victim = unfinished.victim(host)
        if not model:
            assert victim is None
        else:  # the newcomer's own address on a tie, else one holding the most; its oldest
            assert victim.host == host if host in fullest else victim.host in fullest
            assert victim is next(c for c in model if c.host == victim.host)
        assert unfinished.oldest() is (model[0] if model else None)
        assert len(unfinished) == len(model)


@pytest.mark.skipif(not hasattr(socket, "TCP_DEFER_ACCEPT"), reason="Linux's TCP_DEFER_ACCEPT")
def test_connections_that_say_nothing_stay_in_the_kernel(server):
    metrics = server(max_connections=8)
    silent = [socket.create_connection(("127.0.0.1", metrics.port)) for _ in range(500)]
    try:
        assert _get(metrics.port, "/metrics") == 200
        # A second scrape, behind every silent connection in the listen queue: had the server
        # accepted one of them, it would have done so before answering this.
        assert _get(metrics.port, "/metrics") == 200
        # The two scrapes (the first may still be closing when the second is accepted), never
        # one of the silent connections: up to max_connections would be held then.
        assert metrics.server.peak_connections <= 2
        assert all(not _closed_by_peer(sock, wait_s=0) for sock in silent)  # all still open
    finally:
        for sock in silent:
            sock.close()


def test_scrapes_are_answered_while_connections_churn_past_the_cap(server):
    metrics = server(max_connections=8)
    stop = threading.Event()
    churned = [0]

    def churn() -> None:  # connect and say nothing, as fast as it goes: newcomers evict
        while not stop.is_set():
            with contextlib.suppress(OSError):
                socket.create_connection(("127.0.0.1", metrics.port), timeout=1).close()
                churned[0] += 1

    churners = [threading.Thread(target=churn) for _ in range(4)]
    for thread in churners:
        thread.start()
    try:
        statuses = [_get(metrics.port, "/metrics", timeout=5) for _ in range(20)]
    finally:
        stop.set()
        for thread in churners:
            thread.join(10)
    assert statuses == [200] * 20  # a request that has arrived is never cut for a newcomer
    assert churned[0] > 100
    assert metrics.server.peak_connections <= 8


def test_the_cap_is_a_share_of_the_open_file_limit():
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert connection_cap(10**6) == min(10**6, soft // 4)
    assert connection_cap(3) == 3


CHILD = textwrap.dedent(
    """
    import json, os, resource, sys, threading, time
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
    from aotwatch.core.config import Config, ExportConfig
    from aotwatch.attachment.local import local_sink
    sink, server = local_sink(Config(export=ExportConfig(address="127.0.0.1", port=0)))
    print(json.dumps({"port": server.port, "cap": server.server.cap}), flush=True)
    errors, hog = [], []

    def train():  # stands in for training: opens a file now and then, and must never fail
        while True:
            try:
                with open(os.devnull):
                    pass
            except OSError as err:
                errors.append(repr(err))
            time.sleep(0.01)

    threading.Thread(target=train, daemon=True).start()
    for line in sys.stdin:
        command = line.strip()
        if command == "hog":  # take every descriptor left: accept() must now fail
            try:
                while True:
                    hog.append(open(os.devnull))
            except OSError:
                pass
        elif command == "free":
            for handle in hog:
                handle.close()
            hog.clear()
        report = {"errors": errors, "peak": server.server.peak_connections}
        print(json.dumps(report), flush=True)
    """
)


def _cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _ask(child: subprocess.Popen, command: str) -> dict:
    child.stdin.write(command + "\n")
    child.stdin.flush()
    return json.loads(child.stdout.readline())


@pytest.mark.subprocess
def test_a_connection_flood_under_ulimit_64_starves_neither_training_nor_health_checks():
    env = {**os.environ, "PYTHONPATH": str(DAEMON)}
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    silent: list[socket.socket] = []
    try:
        started = json.loads(child.stdout.readline())
        port, cap = started["port"], started["cap"]
        assert cap == 64 // 4
        for _ in range(100):  # more stalled connections than the process has descriptors
            silent.append(_stalled(port))
        assert _get(port) == 200  # a health check still gets in, and /metrics too
        assert _get(port, "/metrics") == 200
        report = _ask(child, "report")
        assert report["errors"] == []  # training never got EMFILE
        assert report["peak"] <= cap

        _ask(child, "hog")  # the process is out of descriptors: accept() fails
        waiting = socket.create_connection(("127.0.0.1", port))  # sits in the listen backlog
        waiting.sendall(b"GET /healthz HTTP/1.0\r\n\r\n")
        before = _cpu_seconds(child.pid)
        time.sleep(2)
        spent = _cpu_seconds(child.pid) - before
        assert spent < 0.5, f"{spent:.2f} CPU-s in 2 s: the accept loop spins"
        report = _ask(child, "free")
        waiting.settimeout(5)
        assert waiting.recv(100).startswith(b"HTTP/1.0 200")  # served once descriptors free up
        waiting.close()
    finally:
        for sock in silent:
            sock.close()
        child.kill()
        child.wait(10)


def _basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def test_a_wrong_password_flood_does_not_keep_a_valid_scrape_waiting(tmp_path):
    hashed = bcrypt.hashpw(b"right", bcrypt.gensalt(rounds=10)).decode()  # ~75 ms a check
    web = tmp_path / "web.yml"
    web.write_text(yaml.safe_dump({"basic_auth_users": {"prometheus": hashed}}))
    metrics = serve_metrics(_registry(), "127.0.0.1", 0, web_config=web)
    stop = threading.Event()
    statuses: list[int] = []

    def attack(worker: int) -> None:
        attempt = 0
        while not stop.is_set():
            attempt += 1
            try:  # a fresh wrong password every time: no cache helps
                wrong = _basic("prometheus", f"guess-{worker}-{attempt}")
                statuses.append(_get(metrics.port, "/metrics", wrong, source="127.0.0.2"))
            except OSError:
                pass

    attackers = [threading.Thread(target=attack, args=(i,)) for i in range(16)]
    try:
        for thread in attackers:
            thread.start()
        wait_for(lambda: len(statuses) >= 32, timeout=30, message="the flood to be answered")
        # Uncached and valid, from another address, with Prometheus's default 10 s timeout
        # halved: answered while the flood runs.
        assert _get(metrics.port, "/metrics", _basic("prometheus", "right"), timeout=5) == 200
        assert _get(metrics.port, "/metrics", _basic("prometheus", "nope"), timeout=5) == 401
    finally:
        stop.set()
        for thread in attackers:
            thread.join(30)
        metrics.close()
    assert 401 in statuses
    assert set(statuses) <= {401, 503}
    # Nothing queues up behind the flood: the server's connections drain at once.
    wait_for(lambda: metrics.server.connections == 0, timeout=10, message="connections drained")


def test_a_check_that_would_wait_for_its_address_gets_busy_at_once():
    """A second check from an address whose check is running is refused at once (503), not
    queued: waiting for auth would hold a connection."""
    users = {"prometheus": bcrypt.hashpw(b"right", bcrypt.gensalt(rounds=14)).decode()}
    auth = BasicAuth()
    first = threading.Thread(target=auth.allows, args=(users, _header("wrong-1"), "127.0.0.2"))
    first.start()
    try:
        wait_for(lambda: "127.0.0.2" in auth._checking, timeout=5, message="first check runs")
        with pytest.raises(Busy):
            auth.allows(users, _header("wrong-2"), "127.0.0.2")
        assert first.is_alive()  # refused while the first check still runs, without waiting
        assert auth.allows(users, _header("right"), "127.0.0.3")  # another address: checked
    finally:
        first.join(30)
    assert not auth.allows(users, _header("wrong-2"), "127.0.0.2")  # its turn now


def _header(password: str) -> str:
    return _basic("prometheus", password)["Authorization"]


def test_a_flood_of_wrong_passwords_from_one_address_never_refuses_a_verified_scraper(tmp_path):
    """80 parallel connections from one address, each with a new wrong password (bcrypt cost
    10), against the default caps: a scraper at another address whose credentials are cached
    is answered every time."""
    hashed = bcrypt.hashpw(b"right", bcrypt.gensalt(rounds=10)).decode()
    web = tmp_path / "web.yml"
    web.write_text(yaml.safe_dump({"basic_auth_users": {"prometheus": hashed}}))
    metrics = serve_metrics(_registry(), "127.0.0.1", 0, web_config=web)
    right = _basic("prometheus", "right")
    assert _get(metrics.port, "/metrics", right) == 200  # verified and cached
    stop = threading.Event()
    statuses: list[int] = []

    def attack(worker: int) -> None:
        for attempt in range(1000):  # bounded in count and by the scrapes' end
            if stop.is_set():
                return
            with contextlib.suppress(OSError):  # refused past its address's cap
                wrong = _basic("prometheus", f"guess-{worker}-{attempt}")
                statuses.append(_get(metrics.port, "/metrics", wrong, source="127.0.0.2"))

    attackers = [threading.Thread(target=attack, args=(i,)) for i in range(80)]
    try:
        for thread in attackers:
            thread.start()
        wait_for(lambda: 503 in statuses, timeout=30, message="the flood is refused at once")
        scrapes = [_get(metrics.port, "/metrics", right, timeout=10) for _ in range(20)]
    finally:
        stop.set()
        for thread in attackers:
            thread.join(30)
        metrics.close()
    assert scrapes == [200] * 20
    assert 401 in statuses and set(statuses) <= {401, 503}


def test_metrics_can_be_filtered_by_name():
    sink = RecordSink(100)
    sink.inc(RECORDS_REJECTED, reason="not_json")
    sink.inc(FRAMES, job_name="job", rank="0", device="cpu")
    metrics = serve_metrics(_registry(sink), "127.0.0.1", 0)
    try:
        url = f"http://127.0.0.1:{metrics.port}/metrics"
        body = scrape(url + "?name[]=aotwatch_records_rejected_total")
        families = {line.split()[2] for line in body.splitlines() if line.startswith("# TYPE")}
        assert families == {"aotwatch_records_rejected_total"}
        assert 'aotwatch_records_rejected_total{reason="not_json"} 1.0' in body
        both = scrape(url + "?name[]=aotwatch_build_info&name[]=torch_compile_frames_total")
        assert {line.split()[2] for line in both.splitlines() if line.startswith("# TYPE")} == {
            "aotwatch_build_info",
            "torch_compile_frames_total",
        }
    finally:
        metrics.close()
