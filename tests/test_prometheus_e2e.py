"""End to end with a real Prometheus: the shipped prometheus.yml and alert rules, a real job
run by ``aotwatch run`` on a local Ray cluster, then every dashboard query and every alert
expression through Prometheus's HTTP API.

The job is config/jobs/alerting.yaml (daemon/aotwatch/examples/alerting_train.py), built to
trigger the recompile storm, recompile-limit, rank-divergence, collective-schedule and
straggler alerts. Prometheus scrapes every
second and evaluates the rules every second; an alert that is pending (waiting out its
``for:``) counts as fired here, since ``for:`` only delays the notification.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from helpers import wait_for
from prometheus_server import PrometheusServer, PromQLError

pytestmark = [pytest.mark.ray, pytest.mark.subprocess]

REPO = Path(__file__).resolve().parents[1]
PROMETHEUS_DIR = REPO / "dashboards" / "prometheus"
RULES = PROMETHEUS_DIR / "aotwatch-rules.yml"
GENERATE = REPO / "dashboards" / "generate.py"
_spec = importlib.util.spec_from_file_location("aotwatch_dashboards_generate", GENERATE)
generate = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(generate)

JOB_NAME = "alerting-e2e"
LINGER_S = 600
"""How long ``aotwatch run`` would keep serving; the fixture interrupts it when done."""
RUN_TIMEOUT_S = 600
"""For the job to reach its report (Ray start, Inductor compiles), on a busy machine."""
MIN_SAMPLES = 15
"""Scrapes (1 s apart) of the job's last series before querying: a 1 m rate needs 2."""
LABEL_VALUES = re.compile(r"label_values\((.+), (\w+)\)")
"""A Grafana variable query: the series selector and the label."""
FIRED_ALERTS = {
    "TorchCompileRecompileStorm": ("rank", {"0", "1"}),
    "TorchCompileRankDivergence": ("kind", {"graph_hash"}),
    "TorchCompileRecompileLimitNear": ("rank", {"0", "1"}),
    "TorchCompileCollectiveScheduleDivergence": ("kind", {"collective_schedule"}),
}
"""What the alerting job fires: alert -> (a label of its series, the values it must have)."""
STRAGGLE_S = 8
"""Rank 1's slow compile while rank 0 waits (the job's straggler_after_s shortened to 2 s)."""


def write_job(tmp_path: Path, file_sd: Path) -> Path:
    """config/jobs/alerting.yaml on free loopback ports, archiving into ``tmp_path``."""
    job = yaml.safe_load((REPO / "config/jobs/alerting.yaml").read_text())
    job["name"] = JOB_NAME
    job["aotwatch"]["archive"] = {"path": str(tmp_path / "archive")}
    job["aotwatch"]["collector"].update(
        address="127.0.0.1", port=0, head_port=0, file_sd_path=str(file_sd), straggler_after_s=2
    )
    job["train_loop_config"]["straggle_s"] = str(STRAGGLE_S)
    path = tmp_path / "alerting.yaml"
    path.write_text(yaml.safe_dump(job))
    return path


def write_prometheus_config(tmp_path: Path, file_sd: Path) -> Path:
    """The shipped prometheus.yml, scraping and evaluating every second, reading ``file_sd``
    and loading the shipped rules file."""
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    config["global"].update(scrape_interval="1s", evaluation_interval="1s")
    config["rule_files"] = [str(RULES)]
    (scrape,) = config["scrape_configs"]
    (discovery,) = scrape["file_sd_configs"]
    discovery.update(files=[str(file_sd)], refresh_interval="1s")
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    return path


def live_processes() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, command line) of every live process (zombies are dead already)."""
    found = {}
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit():
                state, parent = (entry / "stat").read_text().rsplit(")", 1)[1].split()[:2]
                if state != "Z":
                    cmdline = (entry / "cmdline").read_text(errors="replace")
                    found[int(entry.name)] = (int(parent), cmdline)
        except OSError:  # gone meanwhile
            continue
    return found


def run_processes(root: int, ray_dir: str, live: dict[int, tuple[int, str]]) -> set[int]:
    """The processes of ``aotwatch run`` (pid ``root``): its descendants, and those whose
    command line names its Ray temp dir ``ray_dir`` (Ray's daemons, once reparented)."""
    found, frontier = set(), {root}
    while frontier:
        frontier = {pid for pid, (parent, _) in live.items() if parent in frontier} - found
        found |= frontier
    return found | {pid for pid, (_, cmdline) in live.items() if ray_dir in cmdline}


def stop_run(process: subprocess.Popen, ray_dir: str) -> list[int]:
    """Interrupt ``aotwatch run`` (it stops its daemon and its Ray cluster), kill it if it
    hangs; the pids of its processes still alive 30 s later (killed, then returned)."""
    started = run_processes(process.pid, ray_dir, live_processes())
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=120)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=30)
    deadline = time.monotonic() + 30
    while True:
        live = live_processes()
        left = (started & live.keys()) | run_processes(process.pid, ray_dir, live)
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return sorted(left)


def series_samples(prometheus: PrometheusServer, selector: str) -> float:
    """Samples in the last minute of the sparsest series ``selector`` picks (0 if none)."""
    result = prometheus.query(f"min(count_over_time({selector}[1m]))")
    return float(result[0]["value"][1]) if result else 0


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """Prometheus scraping ``aotwatch run`` of the alerting job, once the job has finished,
    its report is out and every family of it has at least MIN_SAMPLES scrapes; yields
    ``(prometheus, run log)`` while the job lingers."""
    tmp_path = tmp_path_factory.mktemp("prometheus-e2e")
    file_sd = tmp_path / "file_sd.json"
    job = write_job(tmp_path, file_sd)
    config = write_prometheus_config(tmp_path, file_sd)
    ray_dir = tempfile.mkdtemp(prefix="aotwatch-e2e-ray-")  # short: Ray's socket paths
    log = tmp_path / "run.log"
    prometheus = PrometheusServer(config, tmp_path / "data").start()
    with log.open("w") as out:
        run = subprocess.Popen(
            [sys.executable, "-m", "aotwatch.cli", "run", str(job), "--linger", str(LINGER_S)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "RAY_TMPDIR": ray_dir},
        )
    try:
        wait_for(
            lambda: "serving for" in log.read_text() or run.poll() is not None,
            timeout=RUN_TIMEOUT_S,
            interval=1,
            message="the job's report",
        )
        assert run.poll() is None, f"aotwatch run exited {run.returncode}:\n{log.read_text()}"
        for selector in (
            'up{role="collector"}',
            'up{role="head"}',
            f'torch_compile_recompiles_total{{job_name="{JOB_NAME}"}}',
            f'torch_compile_rank_divergences_total{{job_name="{JOB_NAME}"}}',
        ):
            wait_for(
                lambda s=selector: series_samples(prometheus, s) >= MIN_SAMPLES,
                timeout=120,
                interval=1,
                message=f"{MIN_SAMPLES} scrapes of {selector}",
            )
        yield prometheus, log
    finally:
        prometheus.stop()
        leftovers = stop_run(run, ray_dir)
        shutil.rmtree(ray_dir, ignore_errors=True)
    assert not leftovers, f"Ray processes left by aotwatch run (killed): {leftovers}"


def test_the_job_ran_and_every_target_is_scraped(stack):
    prometheus, log = stack
    output = log.read_text()
    assert f"aotwatch report for job '{JOB_NAME}':" in output, output
    roles = {s["metric"]["role"]: s["value"][1] for s in prometheus.query("up")}
    assert roles == {"collector": "1", "head": "1"}, roles


def test_every_panel_returns_data(stack):
    prometheus, _ = stack
    end = time.time()
    empty = []
    for name, board in generate.dashboards().items():
        kinds = {panel["title"]: panel["type"] for panel in board["panels"]}
        for title, expr in generate.panel_queries(board):
            query = generate.substitute(expr)
            found = prometheus.query(query)  # PromQLError if it does not parse
            if kinds[title] == "timeseries":
                found = found and prometheus.query_range(query, end - 60, end, 5)
            if not found:
                empty.append(f"{name} / {title}: {query}")
    assert not empty, "panels that returned nothing:\n" + "\n".join(empty)


def test_every_variable_has_values(stack):
    prometheus, _ = stack
    for board in generate.dashboards().values():
        for name, definition in generate.variable_queries(board):
            query = generate.substitute(definition)
            selector, label = LABEL_VALUES.fullmatch(query).groups()
            assert prometheus.label_values(label, selector), (board["uid"], name, query)


def rule_expressions() -> dict[str, str]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return {rule["alert"]: rule["expr"] for group in groups for rule in group["rules"]}


@pytest.mark.parametrize("alert", sorted(rule_expressions()))
def test_every_alert_expression_parses(stack, alert):
    prometheus, _ = stack
    try:
        prometheus.query(rule_expressions()[alert])
    except PromQLError as err:
        pytest.fail(f"{alert}: {err}")


@pytest.mark.parametrize("alert", sorted(FIRED_ALERTS))
def test_the_alerting_job_fires(stack, alert):
    prometheus, _ = stack
    label, values = FIRED_ALERTS[alert]
    found = prometheus.query(
        f"({rule_expressions()[alert]}) and on(job_name) "
        f'torch_compile_frames_total{{job_name="{JOB_NAME}"}}'
    )
    assert {series["metric"][label] for series in found} >= values, (alert, found)
    states = wait_for(
        lambda: prometheus.query(f'ALERTS{{alertname="{alert}", job_name="{JOB_NAME}"}}'),
        timeout=30,
        interval=1,
        message=f"{alert} pending or firing",
    )
    assert {series["metric"]["alertstate"] for series in states} <= {"pending", "firing"}
    assert {series["metric"][label] for series in states} >= values, (alert, states)


def test_the_straggler_alert_fired_while_rank_1_compiled(stack):
    """Over by the time the job reports: Prometheus kept the alert's series from then."""
    prometheus, _ = stack
    fired = prometheus.query(
        f'max_over_time(ALERTS{{alertname="TorchCompileStraggler", job_name="{JOB_NAME}"}}[30m])'
    )
    assert fired, "TorchCompileStraggler never pending nor firing"
    longest = prometheus.query(
        f'max_over_time(torch_compile_straggler_seconds{{job_name="{JOB_NAME}"}}[30m])'
    )
    assert 2 <= float(longest[0]["value"][1]) <= STRAGGLE_S + 5
