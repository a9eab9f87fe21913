"""/metrics under a connection-exhaustion attack: a collector and local mode, loopback only.

    python benchmarks/http_attack.py [--seconds 20] [--targets collector,local,control] [--stall]
    python benchmarks/http_attack.py --flood bcrypt,handshake [--servers plain,basic,tls]

For each target a child process serves /metrics on 127.0.0.1 (a NodeCollector built in
process, without Ray, holding 8 ranks x 50 compiles; or local mode, ``aotwatch.attach()``,
with a small aot_eager-compiled MLP training in the main thread). This process attacks it
with 500 silent connections (re-opened when the server cuts them, at most --reopen-per-s a
second) and 50 clients sending one byte of a request per second (re-connecting at most once
a second each), while one scraper does GET /metrics every second (10 s timeout). With
--stall each silent connection first sends one byte (so Linux's TCP_DEFER_ACCEPT cannot keep
it from the server). The control target trains as local does while the attack goes to a
collector in another process: what the attack costs training through the machine alone. The
child is observed in three phases: before (no attack), attack, after (attack sockets
closed).

Printed per target and phase: scrapes sent / answered and their latency, the child's peak
Python threads, OS threads and descriptors (sampled every 0.1 s), its open connections, and
(local mode) the training step time. Targets (issue): every scrape answered with p99 under
1 s during the attack; threads and descriptors bounded by the connection cap; local-mode step
time within 5% of no attack. Bounded in sockets and in time: 2 x seconds a target, 120 s by
default; a child that hangs is killed two minutes past its schedule.

With --flood, each server of --servers (a collector as above: plain HTTP; basic auth, bcrypt
cost 10; TLS by a trustme CA with the same basic auth) meets each flood, sent by a child
process from --attacker (127.0.0.2 by default; 127.0.0.1 is the scraper's own address):
``bcrypt``, --parallel (80) connections at once, each a request with a new wrong password;
``handshake``, --rate (1,200) connections a second that send a TLS ClientHello and stall
(at most --silent of them open; the oldest is closed past it). One scraper at 127.0.0.1, its
credentials verified and cached before the flood, scrapes every --interval (0.2 s, 10 s
timeout). Printed per server and flood: valid scrapes answered / sent, p50, p99 and max, and
what the flood got. Bounded: --seconds a flood, and at most rate x seconds connections.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import http.client
import json
import math
import os
import resource
import selectors
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, deque
from collections.abc import Callable

HOST = "127.0.0.1"
SLOW_REQUEST = b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: slow\r\n\r\n"
CONNECT_TIMEOUT_S = 10.0
SCRAPE_TIMEOUT_S = 10.0
PHASES = ("before", "attack", "after")
MARK = "@@"  # the child's lines for the parent start with this


# -- the child: the attacked server -------------------------------------------------------


def _emit(**fields: object) -> None:
    sys.stdout.write(MARK + json.dumps(fields) + "\n")
    sys.stdout.flush()


def _os_threads() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("Threads:"):
                return int(line.split()[1])
    return -1


def _collector_target(web_config: str | None = None) -> tuple[object, object]:
    from aotwatch.cluster.collector import NodeCollector
    from aotwatch.core.config import ArchiveConfig, CollectorConfig, Config
    from aotwatch.core.records import new_record

    config = Config(
        job_name="attack-bench",
        archive=ArchiveConfig(path=tempfile.mkdtemp(prefix="aotwatch-bench-archive-")),
        collector=CollectorConfig(address=HOST, port=0, web_config=web_config),
    )
    collector = NodeCollector("bench-node", config)
    for rank in range(8):  # a node of 8 ranks, 50 compiles each
        worker = {
            "job_name": "attack-bench",
            "hostname": "h",
            "pid": 1000 + rank,
            "rank": rank,
            "worker_id": f"w{rank}",
        }
        records = [
            new_record(
                job_name="attack-bench",
                rank=rank,
                hostname="h",
                pid=1000 + rank,
                compile_id=f"{i}/0",
                graph="forward",
                graph_hash=f"{i:016x}",
                nodes=100 + i,
                durations_s={"backward": 0.05},
            )
            for i in range(50)
        ]
        collector.push(worker, records, None)
    return collector.server, collector.server.close


def _local_target() -> tuple[object, object, object]:
    import torch

    import aotwatch
    import aotwatch.attachment.process
    from aotwatch.core.config import Config, ExportConfig

    torch.set_num_threads(1)  # the step measures this process, not the CPU the attacker takes
    aotwatch.attach(Config(job_name="attack-bench", export=ExportConfig(address=HOST, port=0)))
    model = torch.compile(
        torch.nn.Sequential(torch.nn.Linear(256, 256), torch.nn.ReLU(), torch.nn.Linear(256, 1)),
        backend="aot_eager",
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4)
    x = torch.randn(64, 256)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        model(x).sum().backward()
        optimizer.step()

    for _ in range(300):  # compile and warm up
        step()
    return aotwatch.attachment.process.current().server, aotwatch.detach, step


def child(kind: str, web_config: str | None = None) -> None:
    if kind == "local":
        metrics, close, step = _local_target()
    else:
        metrics, close = _collector_target(web_config)
        step = None
    server = metrics.server
    phase = ["warmup"]
    ended = threading.Event()
    peaks: dict[str, dict[str, int]] = {}
    steps: dict[str, list[float]] = {name: [] for name in PHASES}

    def sample() -> None:
        while not ended.is_set():
            now = {
                "py_threads": threading.active_count(),
                "os_threads": _os_threads(),
                "fds": len(os.listdir("/proc/self/fd")),
                "connections": server.connections,
            }
            peak = peaks.setdefault(phase[0], dict.fromkeys(now, 0))
            for key, value in now.items():
                peak[key] = max(peak[key], value)
            ended.wait(0.1)

    cpu: dict[str, float] = {}  # phase -> CPU seconds of this process per wall second

    def listen() -> None:
        mark = (time.monotonic(), sum(os.times()[:2]))
        for line in sys.stdin:
            now = (time.monotonic(), sum(os.times()[:2]))
            cpu[phase[0]] = (now[1] - mark[1]) / (now[0] - mark[0])
            mark = now
            if line.strip() == "end":
                break
            phase[0] = line.strip()
        ended.set()

    _emit(port=metrics.port, cap=server.cap)
    threading.Thread(target=sample, daemon=True).start()
    threading.Thread(target=listen, daemon=True).start()
    if step is None:
        ended.wait()
    else:
        while not ended.is_set():
            start = time.perf_counter()
            step()
            elapsed = time.perf_counter() - start
            if phase[0] in steps:
                steps[phase[0]].append(elapsed)
    close()
    _emit(
        peaks=peaks, steps=steps, cpu=cpu, cap=server.cap, peak_connections=server.peak_connections
    )


# -- the parent: scraper and attacker -----------------------------------------------------


class Scraper:
    """GET /metrics every ``interval`` seconds (one at a time, the next on the next whole
    interval); ``connect`` makes its connection (plain HTTP by default), ``headers`` go with
    each request."""

    def __init__(
        self,
        port: int,
        phase: list[str],
        connect: Callable[[int], http.client.HTTPConnection] | None = None,
        headers: dict[str, str] | None = None,
        interval: float = 1.0,
    ) -> None:
        self.port, self.phase, self.interval = port, phase, interval
        self.connect = connect or (
            lambda port: http.client.HTTPConnection(HOST, port, timeout=SCRAPE_TIMEOUT_S)
        )
        self.headers = headers or {}
        self.results: list[tuple[str, float, bool, str, float]] = []  # phase, seconds, ok,
        # what, seconds to connect
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def scrape(self, start: float) -> tuple[bool, str, float]:
        connection = self.connect(self.port)
        connected = float("nan")
        try:
            connection.connect()
            connected = time.perf_counter() - start
            connection.request("GET", "/metrics", headers=self.headers)
            response = connection.getresponse()
            body = response.read()
            ok = response.status == 200 and b"aotwatch_" in body
            return ok, f"{response.status} {len(body)} B", connected
        except OSError as err:
            return False, type(err).__name__, connected
        finally:
            connection.close()

    def run(self) -> None:
        tick = time.monotonic()
        while not self.stop.is_set():
            phase = self.phase[0]
            start = time.perf_counter()
            ok, what, connected = self.scrape(start)
            self.results.append((phase, time.perf_counter() - start, ok, what, connected))
            now = time.monotonic()
            tick += self.interval * max(1, math.ceil((now - tick) / self.interval))
            self.stop.wait(max(0.0, tick - now))


class _Slot:
    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.sock: socket.socket | None = None
        self.connected = False
        self.opened_at = 0.0
        self.sent = 0
        self.next_send = 0.0
        self.next_open = 0.0


class Attacker:
    """Silent and slow connections held open in one selector loop; bounded re-opening."""

    def __init__(
        self, port: int, silent: int, slow: int, reopen_per_s: float, stall: bool = False
    ) -> None:
        self.address = (HOST, port)
        self.stall = stall  # silent connections send one byte first (past TCP_DEFER_ACCEPT)
        self.reopen_per_s, self.silent = reopen_per_s, silent
        self.slots = [_Slot("silent") for _ in range(silent)] + [_Slot("slow") for _ in range(slow)]
        self.selector = selectors.DefaultSelector()
        self.stop = threading.Event()
        self.counts = {
            key: 0
            for key in (
                "silent_opened",
                "silent_cut",
                "slow_opened",
                "slow_cut",
                "slow_bytes",
                "slow_answered",
                "connect_failed",
                "connect_timeout",
            )
        }
        self.established: list[int] = []  # silent connections established, sampled
        self.thread = threading.Thread(target=self.run, daemon=True)

    def _open(self, slot: _Slot, now: float) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        slot.sock, slot.connected, slot.opened_at, slot.sent = sock, False, now, 0
        slot.next_open = now + 1.0  # slow clients: at most one connect a second each
        self.counts[f"{slot.kind}_opened"] += 1
        code = sock.connect_ex(self.address)
        if code not in (0, errno.EINPROGRESS):
            self.counts["connect_failed"] += 1
            self._close(slot)
            return
        self.selector.register(sock, selectors.EVENT_WRITE, slot)

    def _close(self, slot: _Slot) -> None:
        if slot.sock is not None:
            with contextlib.suppress(KeyError, ValueError):
                self.selector.unregister(slot.sock)
            slot.sock.close()
        slot.sock, slot.connected = None, False

    def _connected(self, slot: _Slot, now: float) -> None:
        if slot.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
            self.counts["connect_failed"] += 1
            self._close(slot)
            return
        slot.connected, slot.next_send = True, now
        if self.stall and slot.kind == "silent":
            with contextlib.suppress(OSError):
                slot.sock.send(SLOW_REQUEST[:1])
        self.selector.modify(slot.sock, selectors.EVENT_READ, slot)

    def _readable(self, slot: _Slot) -> None:
        try:
            data = slot.sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data:
            if slot.kind == "slow" and data.startswith(b"HTTP/"):
                self.counts["slow_answered"] += 1
            return
        self.counts[f"{slot.kind}_cut"] += 1
        self._close(slot)

    def run(self) -> None:
        tokens, last, last_sample = float(self.silent), time.monotonic(), 0.0
        while not self.stop.is_set():
            now = time.monotonic()
            tokens = min(float(self.silent), tokens + (now - last) * self.reopen_per_s)
            last = now
            for slot in self.slots:
                if slot.sock is None:
                    if slot.kind == "silent" and tokens >= 1:
                        tokens -= 1
                        self._open(slot, now)
                    elif slot.kind == "slow" and now >= slot.next_open:
                        self._open(slot, now)
                elif not slot.connected:
                    if now - slot.opened_at > CONNECT_TIMEOUT_S:
                        self.counts["connect_timeout"] += 1
                        self._close(slot)
                elif slot.kind == "slow" and now >= slot.next_send:
                    try:
                        slot.sock.send(SLOW_REQUEST[slot.sent % len(SLOW_REQUEST) :][:1])
                        slot.sent += 1
                        self.counts["slow_bytes"] += 1
                    except BlockingIOError:
                        pass
                    except OSError:
                        self.counts["slow_cut"] += 1
                        self._close(slot)
                        continue
                    slot.next_send += 1.0
            for key, mask in self.selector.select(0.02):
                slot = key.data
                if slot.sock is None:
                    continue
                if not slot.connected and mask & selectors.EVENT_WRITE:
                    self._connected(slot, now)
                elif mask & selectors.EVENT_READ:
                    self._readable(slot)
            if now - last_sample >= 0.5:
                last_sample = now
                self.established.append(sum(s.connected for s in self.slots if s.kind == "silent"))
        for slot in self.slots:
            self._close(slot)
        self.selector.close()


def _percentile(values: list[float], fraction: float) -> float:
    """Nearest rank; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


class Child:
    """A target process (see ``child``), spoken to over its stdin and stdout."""

    def __init__(self, kind: str, deadline_s: float, *options: str) -> None:
        self.kind = kind
        self.stderr = tempfile.TemporaryFile("w+")  # noqa: SIM115 - closed by close()
        self.proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--child", kind, *options],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            text=True,
        )
        self.watchdog = threading.Timer(deadline_s, self.proc.kill)
        self.watchdog.daemon = True
        self.watchdog.start()

    def message(self) -> dict:
        for line in self.proc.stdout:
            if line.startswith(MARK):
                return json.loads(line[len(MARK) :])
        self.stderr.seek(0)
        raise SystemExit(f"the {self.kind} child ended early:\n{self.stderr.read()[-4000:]}")

    def tell(self, text: str) -> None:
        self.proc.stdin.write(text + "\n")
        self.proc.stdin.flush()

    def end(self) -> dict:
        self.tell("end")
        result = self.message()
        self.proc.wait(30)
        return result

    def close(self) -> None:
        self.watchdog.cancel()
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.stderr.close()


def run_target(kind: str, args: argparse.Namespace) -> dict:
    """Attack ``kind``'s /metrics while scraping it; ``control`` trains in local mode as
    ``local`` does but the attack goes to a collector in another process (what the attack
    costs training through the machine alone: the kernel, the attacker's CPU)."""
    deadline_s = 2 * args.quiet_seconds + args.seconds + 120
    children = [Child("local" if kind == "control" else kind, deadline_s)]
    if kind == "control":
        children.append(Child("collector", deadline_s))
    try:
        ports = [child.message()["port"] for child in children]
        phase = ["before"]
        for child in children:
            child.tell("before")
        scraper = Scraper(ports[0], phase)
        scraper.thread.start()
        time.sleep(args.quiet_seconds)
        attacker = Attacker(ports[-1], args.silent, args.slow, args.reopen_per_s, args.stall)
        phase[0] = "attack"
        for child in children:
            child.tell("attack")
        begin = (time.monotonic(), sum(os.times()[:2]))
        attacker.thread.start()
        time.sleep(args.seconds)
        attacker.stop.set()
        attacker.thread.join()
        attacker_cpu = (sum(os.times()[:2]) - begin[1]) / (time.monotonic() - begin[0])
        phase[0] = "after"
        for child in children:
            child.tell("after")
        time.sleep(args.quiet_seconds)
        scraper.stop.set()
        scraper.thread.join(SCRAPE_TIMEOUT_S + 1)
        results = [child.end() for child in children]
    finally:
        for child in children:
            child.close()
    result = results[0]
    if kind == "control":  # the attacked server's side of the picture is the decoy's
        result.update(
            peaks=results[1]["peaks"],
            cap=results[1]["cap"],
            peak_connections=results[1]["peak_connections"],
        )
    result.update(
        kind=kind,
        scrapes=scraper.results,
        attack=attacker.counts,
        established=attacker.established,
        attacker_cpu=attacker_cpu,
    )
    return result


def report(result: dict) -> None:
    kind = result["kind"]
    rows: dict[str, list[str]] = {}
    for name in PHASES:
        scrapes = [s for s in result["scrapes"] if s[0] == name]
        answered = [s[1] for s in scrapes if s[2]]
        connects = [s[4] for s in scrapes if not math.isnan(s[4])]
        peak = result["peaks"].get(name, {})
        steps = result["steps"][name]
        values = {
            "scrapes answered / sent": f"{len(answered)} / {len(scrapes)}",
            "scrape p50 (ms)": f"{_percentile(answered, 0.5) * 1e3:.1f}",
            "scrape p99 (ms)": f"{_percentile(answered, 0.99) * 1e3:.1f}",
            "scrape max (ms)": f"{max(answered, default=float('nan')) * 1e3:.1f}",
            "connect max (ms)": f"{max(connects, default=float('nan')) * 1e3:.1f}",
            "open connections, peak": str(peak.get("connections", "-")),
            "Python threads, peak": str(peak.get("py_threads", "-")),
            "OS threads, peak": str(peak.get("os_threads", "-")),
            "descriptors, peak": str(peak.get("fds", "-")),
            "CPU (cores)": f"{result['cpu'].get(name, float('nan')):.2f}",
        }
        if steps:
            values["steps"] = str(len(steps))
            values["step median (ms)"] = f"{statistics.median(steps) * 1e3:.3f}" if steps else "-"
            values["step mean (ms)"] = f"{statistics.fmean(steps) * 1e3:.3f}" if steps else "-"
        for key, value in values.items():
            rows.setdefault(key, []).append(value)
    print(f"\n### {kind}\n")
    print("| | " + " | ".join(PHASES) + " |")
    print("|---|" + "---|" * len(PHASES))
    for key, values in rows.items():
        print(f"| {key} | " + " | ".join(values) + " |")
    failures = [
        f"{s[0]}: {s[3]} after {s[1]:.2f} s (connected after {s[4]:.2f} s)"
        for s in result["scrapes"]
        if not s[2]
    ]
    print(
        f"\ncap {result['cap']}, server peak_connections {result['peak_connections']}; "
        f"attacker: {result['attack']}; silent connections established (attacker's view) "
        f"median {statistics.median(result['established'] or [0]):.0f}; the attacker and "
        f"scraper used {result['attacker_cpu']:.2f} cores"
    )
    if failures:
        print("failed scrapes: " + "; ".join(failures))
    if result["steps"]["attack"]:
        quiet = result["steps"]["before"] + result["steps"]["after"]
        attack = result["steps"]["attack"]
        if quiet and attack:
            print(
                f"step time attack / no attack (before + after): median "
                f"{statistics.median(attack) / statistics.median(quiet):.3f}, mean "
                f"{statistics.fmean(attack) / statistics.fmean(quiet):.3f}"
            )


# -- floods of wrong passwords and stalled TLS handshakes ------------------------------------

PASSWORD = "right"


def _web_configs(directory: str) -> tuple[dict[str, str | None], str]:
    """Web-config files of the --servers kinds in ``directory``, and the CA's PEM file."""
    import bcrypt
    import trustme
    import yaml

    ca = trustme.CA()
    ca_file = os.path.join(directory, "ca.pem")
    ca.cert_pem.write_to_path(ca_file)
    leaf = ca.issue_cert(HOST, "localhost")
    leaf.cert_chain_pems[0].write_to_path(os.path.join(directory, "server.pem"))
    leaf.private_key_pem.write_to_path(os.path.join(directory, "server-key.pem"))
    users = {"prometheus": bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(10)).decode()}
    tls = {"cert_file": "server.pem", "key_file": "server-key.pem"}
    configs: dict[str, str | None] = {"plain": None}
    for kind, web in (
        ("basic", {"basic_auth_users": users}),
        ("tls", {"tls_server_config": tls, "basic_auth_users": users}),
    ):
        configs[kind] = os.path.join(directory, f"{kind}.yml")
        with open(configs[kind], "w") as stream:
            yaml.safe_dump(web, stream)
    return configs, ca_file


def _basic(password: str) -> dict[str, str]:
    import base64

    token = base64.b64encode(f"prometheus:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def _connector(tls_ca: str | None, source: str) -> Callable[[int], http.client.HTTPConnection]:
    """Makes connections from ``source`` to HOST: HTTPS trusting ``tls_ca`` if given."""
    import ssl

    address = (source, 0)
    if tls_ca is None:
        return lambda port: http.client.HTTPConnection(
            HOST, port, timeout=SCRAPE_TIMEOUT_S, source_address=address
        )
    context = ssl.create_default_context(cafile=tls_ca)
    return lambda port: http.client.HTTPSConnection(
        HOST, port, timeout=SCRAPE_TIMEOUT_S, source_address=address, context=context
    )


def _client_hello() -> bytes:
    """The bytes a TLS client opens with (any server's: nothing in it is checked first)."""
    import ssl

    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = ssl.create_default_context().wrap_bio(incoming, outgoing, server_hostname=HOST)
    with contextlib.suppress(ssl.SSLWantReadError):
        client.do_handshake()
    return outgoing.read()


def flood_bcrypt(args: argparse.Namespace) -> dict:
    """--parallel threads, each a connection at a time with a new wrong password."""
    connect = _connector(args.tls_ca, args.attacker)
    end = time.monotonic() + args.seconds
    counts: Counter[str] = Counter()
    lock = threading.Lock()

    def attack(worker: int) -> None:
        for attempt in range(100_000):
            if time.monotonic() >= end:
                return
            connection = connect(args.port)
            try:
                connection.request("GET", "/metrics", headers=_basic(f"guess-{worker}-{attempt}"))
                response = connection.getresponse()
                response.read()
                what = str(response.status)
            except (OSError, http.client.HTTPException) as err:
                what = type(err).__name__
            finally:
                connection.close()
            with lock:
                counts[what] += 1

    threads = [threading.Thread(target=attack, args=(i,)) for i in range(args.parallel)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return dict(counts)


def flood_handshake(args: argparse.Namespace) -> dict:
    """--rate connections a second that send a ClientHello and stall; at most --silent open."""
    hello = _client_hello()
    counts: Counter[str] = Counter()
    held: deque[socket.socket] = deque()
    started = time.monotonic()
    for n in range(int(args.rate * args.seconds)):
        ahead = started + n / args.rate - time.monotonic()
        if ahead > 0:
            time.sleep(ahead)
        elif ahead < -args.seconds:
            break
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.settimeout(1.0)
        try:
            sock.bind((args.attacker, 0))
            sock.connect((HOST, args.port))
            sock.sendall(hello)
            counts["sent"] += 1
        except OSError as err:
            counts[type(err).__name__] += 1
            sock.close()
            continue
        held.append(sock)
        while len(held) > args.silent:
            held.popleft().close()
    counts["seconds"] = round(time.monotonic() - started, 1)
    for sock in held:
        sock.close()
    return dict(counts)


def flooder(args: argparse.Namespace) -> None:
    """The --flooder child: send one flood, then print what it got."""
    run = flood_bcrypt if args.flooder == "bcrypt" else flood_handshake
    _emit(**run(args))


def run_flood(server: str, flood: str, web_config: str | None, ca: str, args) -> dict:
    """One server (a collector child) under one flood (a flooder child), scraped meanwhile."""
    deadline_s = 2 * args.quiet_seconds + args.seconds + 120
    target = Child("collector", deadline_s, *(["--web-config", web_config] if web_config else []))
    try:
        port = target.message()["port"]
        phase = ["before"]
        target.tell("before")
        tls_ca = ca if server == "tls" else None
        headers = _basic(PASSWORD) if server != "plain" else {}
        connect = _connector(tls_ca, HOST)
        scraper = Scraper(port, phase, connect, headers, args.interval)
        scraper.thread.start()
        time.sleep(args.quiet_seconds)
        options = [
            *("--flooder", flood, "--port", str(port), "--attacker", args.attacker),
            *("--seconds", str(args.seconds), "--parallel", str(args.parallel)),
            *("--rate", str(args.rate), "--silent", str(args.silent)),
            *(["--tls-ca", tls_ca] if tls_ca else []),
        ]
        attacker = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), *options],
            stdout=subprocess.PIPE,
            text=True,
        )
        phase[0] = "attack"
        target.tell("attack")
        try:
            out, _ = attacker.communicate(timeout=args.seconds + 60)
        finally:
            if attacker.poll() is None:
                attacker.kill()
                attacker.wait()
        got = [json.loads(line[len(MARK) :]) for line in out.splitlines() if line.startswith(MARK)]
        phase[0] = "after"
        target.tell("after")
        time.sleep(args.quiet_seconds)
        scraper.stop.set()
        scraper.thread.join(SCRAPE_TIMEOUT_S + 1)
        result = target.end()
    finally:
        target.close()
    result.update(server=server, flood=flood, scrapes=scraper.results, got=got[0] if got else {})
    return result


def report_flood(results: list[dict]) -> None:
    print(
        "\n| server | flood | valid scrapes answered / sent | p50 (ms) | p99 (ms) | max (ms) "
        "| open connections, peak | what the flood got |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for result in results:
        scrapes = [s for s in result["scrapes"] if s[0] == "attack"]
        answered = [s[1] for s in scrapes if s[2]]
        peak = result["peaks"].get("attack", {}).get("connections", "-")
        got = ", ".join(f"{key} {value}" for key, value in sorted(result["got"].items()))
        print(
            f"| {result['server']} | {result['flood']} | {len(answered)} / {len(scrapes)} "
            f"| {_percentile(answered, 0.5) * 1e3:.1f} | {_percentile(answered, 0.99) * 1e3:.1f} "
            f"| {max(answered, default=float('nan')) * 1e3:.1f} | {peak} | {got} |"
        )
    for result in results:
        quiet = [s for s in result["scrapes"] if s[0] != "attack" and not s[2]]
        failed = [s for s in result["scrapes"] if s[0] == "attack" and not s[2]]
        if failed or quiet:
            kinds = Counter(s[3] for s in failed + quiet)
            print(f"{result['server']} / {result['flood']}: failed scrapes {dict(kinds)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20, help="attack length per target")
    parser.add_argument(
        "--quiet-seconds", type=float, help="no-attack phases before and after (default: half)"
    )
    parser.add_argument(
        "--targets",
        default="collector,local,control",
        help="control: local-mode training, attacked through another process",
    )
    parser.add_argument("--silent", type=int, default=500)
    parser.add_argument("--slow", type=int, default=50)
    parser.add_argument(
        "--reopen-per-s",
        type=float,
        default=500,
        help="silent connections re-opened per second, at most",
    )
    parser.add_argument(
        "--stall", action="store_true", help="silent connections send one byte, then nothing"
    )
    parser.add_argument(
        "--flood", help="bcrypt,handshake: these floods instead of the connection attack"
    )
    parser.add_argument("--servers", default="plain,basic,tls", help="with --flood")
    parser.add_argument("--attacker", default="127.0.0.2", help="the flood's loopback address")
    parser.add_argument("--parallel", type=int, default=80, help="bcrypt flood connections")
    parser.add_argument("--rate", type=float, default=1200, help="stalled handshakes a second")
    parser.add_argument("--interval", type=float, default=0.2, help="with --flood: scrapes")
    parser.add_argument("--child", choices=("collector", "local"), help=argparse.SUPPRESS)
    parser.add_argument("--web-config", help=argparse.SUPPRESS)
    parser.add_argument("--flooder", choices=("bcrypt", "handshake"), help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--tls-ca", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.web_config)
        return
    if not args.attacker.startswith("127."):
        parser.error("--attacker: only loopback addresses (127.0.0.0/8)")
    if args.flooder:
        flooder(args)
        return
    if args.quiet_seconds is None:
        args.quiet_seconds = args.seconds / 2 if not args.flood else 2
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = args.silent + args.slow + 64
    if soft != resource.RLIM_INFINITY and soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    phases = (
        f"phases {args.quiet_seconds:g} s before, {args.seconds:g} s attack, "
        f"{args.quiet_seconds:g} s after"
    )
    if args.flood:
        print(
            f"{os.cpu_count()} CPUs; floods from {args.attacker}: bcrypt {args.parallel} "
            f"connections at once; handshake {args.rate:g}/s, at most {args.silent} open; "
            f"a scrape from {HOST} every {args.interval:g} s; {phases}"
        )
        results = []
        with tempfile.TemporaryDirectory(prefix="aotwatch-bench-web-") as directory:
            configs, ca = _web_configs(directory)
            for server in args.servers.split(","):
                for flood in args.flood.split(","):
                    results.append(run_flood(server, flood, configs[server], ca, args))
        report_flood(results)
        return
    print(
        f"{os.cpu_count()} CPUs; {args.silent} silent connections"
        f"{' (one byte sent first)' if args.stall else ''} (re-opened at most "
        f"{args.reopen_per_s:g}/s), {args.slow} one-byte-per-second clients, one scrape a "
        f"second; {phases}"
    )
    for kind in args.targets.split(","):
        report(run_target(kind, args))


if __name__ == "__main__":
    main()
