"""Bad config and job files through the CLI: one line naming the file and key, exit 2, and
nothing started (no script run, no Ray session, nothing written).

test_config.py checks load_config's messages in-process; test_cli.py and test_jobs.py run a few
of them through the command line. This file runs the other kinds of bad file through every
command that reads one (check-config, trace --config, run).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from pathlib import Path

import pytest

from helpers import aotwatch, laughs

pytestmark = pytest.mark.subprocess

Writer = Callable[[Path], None]


def text(content: str) -> Writer:
    return lambda path: path.write_text(content)


def directory(path: Path) -> None:
    path.mkdir()


def dangling_link(path: Path) -> None:
    path.symlink_to(path.parent / "nowhere" / "gone.yaml")


def no_permission(path: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root reads a mode-000 file; the directory and dangling-link cases stand in")
    path.write_text("job_name: x\n")
    path.chmod(0)


def not_utf8(path: Path) -> None:
    path.write_bytes(b"job_name: \xff\xfe\n")


UNREADABLE: dict[str, tuple[Writer, str]] = {
    "directory": (directory, "cannot read: Is a directory"),
    "dangling_link": (dangling_link, "cannot read: No such file or directory"),
    "no_permission": (no_permission, "cannot read: Permission denied"),
    "not_utf8": (not_utf8, "cannot read: 'utf-8' codec can't decode byte 0xff"),
}
"""Files that cannot be read: the writer, and what the error says after ``<file>: ``."""

CONFIGS: dict[str, tuple[Writer, str]] = {
    "yaml_syntax": (text("export:\n  port: 1\n bad: [\n"), "line 3: YAML syntax error: "),
    "unknown_key": (text("export:\n  prot: 1\n"), "export.prot: unknown key; expected one of "),
    "wrong_type": (text("export:\n  port: seventy\n"), "export.port: got str 'seventy'; "),
    "out_of_range": (
        text("limits: {max_series_per_metric: 0}\n"),
        "limits.max_series_per_metric: 0 is out of range; expected 1..1000000",
    ),
    **UNREADABLE,
}
COVERED_IN_TEST_CLI = {("check-config", "unknown_key"), ("trace", "wrong_type")}
"""(command, case) pairs that tests/test_cli.py runs already."""


def assert_one_line_error(result, path: Path, message: str) -> None:
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert result.stderr.startswith(f"aotwatch: error: {path}: {message}"), result.stderr


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """An empty working directory: whatever a command starts would leave something here."""
    path = tmp_path / "work"
    path.mkdir()
    return path


def script_with_side_effect(tmp_path: Path) -> Path:
    """A script that creates ``ran`` in its working directory."""
    script = tmp_path / "script.py"
    script.write_text("open('ran', 'w').close()\n")
    return script


@pytest.mark.parametrize(
    ("command", "case"),
    [
        (command, case)
        for command in ("check-config", "trace")
        for case in sorted(CONFIGS)
        if (command, case) not in COVERED_IN_TEST_CLI
    ],
)
def test_bad_config_file(tmp_path, workdir, command, case):
    write, message = CONFIGS[case]
    config = tmp_path / "aotwatch.yaml"
    write(config)
    if command == "check-config":
        result = aotwatch("check-config", str(config), cwd=workdir)
    else:
        script = script_with_side_effect(tmp_path)
        result = aotwatch(
            "trace", "--config", str(config), "--", "python", str(script), cwd=workdir
        )
    assert_one_line_error(result, config, message)
    assert result.stdout == ""
    assert list(workdir.iterdir()) == []  # no script ran, no archive was made


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("job_name: " + "[" * 3000 + "]" * 3000, "YAML nested too deeply; expected fewer levels"),
        ("labels: " + "{a: " * 3000 + "}" * 3000, "YAML nested too deeply; expected fewer levels"),
        (f"job_name: {laughs(9)}", "job_name: got list [['x', 'x', "),
    ],
    ids=["deep lists", "deep mappings", "billion laughs"],
)
def test_check_config_on_hostile_yaml(tmp_path, text, message):
    """Exit 2 with one line, not a RecursionError traceback nor gigabytes of repr."""
    config = tmp_path / "aotwatch.yaml"
    config.write_text(text + "\n")
    result = aotwatch("check-config", str(config), cwd=tmp_path)
    assert_one_line_error(result, config, message)
    assert result.stdout == ""


@pytest.fixture
def busy_port():
    """A loopback port held bound and listening for the test's duration."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        yield busy.getsockname()[1]


@pytest.mark.parametrize("source", ["flag", "config"])
def test_trace_on_a_port_in_use_fails_before_the_script_runs(tmp_path, workdir, busy_port, source):
    script = script_with_side_effect(tmp_path)
    config = tmp_path / "aotwatch.yaml"
    config.write_text(f"export: {{address: 127.0.0.1, port: {busy_port}}}\n")
    port_args = ["--port", str(busy_port)] if source == "flag" else ["--config", str(config)]
    result = aotwatch("trace", *port_args, "--", "python", str(script), cwd=workdir)
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == [
        f"aotwatch: error: cannot serve /metrics on 127.0.0.1:{busy_port}: Address already in "
        "use; set the port to a free one (0 picks any free port) or turn export off"
    ]
    assert not (workdir / "ran").exists()


GOOD_ENTRYPOINT = "entrypoint: aotwatch.examples.demo_train:train_loop\n"
JOBS: dict[str, tuple[Writer, str]] = {
    "yaml_syntax": (text("name: x\nentrypoint: [a:b\n"), "line 3: YAML syntax error: "),
    "nested_unknown_key": (
        text("name: x\nentrypoint: a:b\naotwatch: {export: {prot: 1}}\n"),
        "aotwatch.export.prot: unknown key; expected one of address, enabled, port",
    ),
    "wrong_type": (
        text("name: x\nentrypoint: a:b\nworkers: two\n"),
        "workers: got str 'two'; expected an integer",
    ),
    "nested_out_of_range": (
        text("name: x\nentrypoint: a:b\naotwatch: {limits: {max_series_per_metric: 0}}\n"),
        "aotwatch.limits.max_series_per_metric: 0 is out of range",
    ),
    "entrypoint_module_missing": (
        text("name: x\nentrypoint: aotwatch_no_such_module.train:loop\n"),
        "entrypoint: cannot import 'aotwatch_no_such_module.train': No module named "
        "'aotwatch_no_such_module'; expected an importable module:function",
    ),
    "entrypoint_function_missing": (
        text("name: x\nentrypoint: aotwatch.examples.demo_train:no_such_loop\n"),
        "entrypoint: 'aotwatch.examples.demo_train' has no function 'no_such_loop'",
    ),
    "entrypoint_not_a_function": (
        text("name: x\nentrypoint: aotwatch.core.records:SCHEMA_VERSION\n"),
        "entrypoint: 'aotwatch.core.records' has no function 'SCHEMA_VERSION'",
    ),
    "command_program_missing": (
        text("name: x\ncommand: aotwatch-no-such-program --flag\n"),
        "command: no program 'aotwatch-no-such-program' found",
    ),
    "command_unclosed_quote": (
        text('name: x\ncommand: "python -c \'print(1)"\n'),
        "command: No closing quotation; expected a command line",
    ),
    **UNREADABLE,
}
"""Bad job files that test_jobs.py does not run (it has: no entrypoint, both, a malformed
entrypoint, workers 0, an unknown top-level key, a nested wrong type)."""


def run_job(job: Path, workdir: Path):
    """``aotwatch run`` on a fresh local cluster whose session files would go to workdir/ray."""
    ray_tmp = workdir.parent / "ray"
    ray_tmp.mkdir(exist_ok=True)
    result = aotwatch(
        "run",
        str(job),
        cwd=workdir,
        env={"RAY_TMPDIR": str(ray_tmp), "RAY_ADDRESS": ""},
        timeout=120,
    )
    assert list(ray_tmp.iterdir()) == [], "Ray started"
    assert list(workdir.iterdir()) == []
    assert result.stdout == ""
    return result


@pytest.mark.parametrize("case", sorted(JOBS))
def test_bad_job_file(tmp_path, workdir, case):
    write, message = JOBS[case]
    job = tmp_path / "job.yaml"
    write(job)
    assert_one_line_error(run_job(job, workdir), job, message)


@pytest.mark.parametrize("key", ["port", "head_port"])
def test_run_on_a_port_in_use_fails_before_ray_starts(tmp_path, workdir, busy_port, key):
    job = tmp_path / "job.yaml"
    collector = f"{{address: 127.0.0.1, {key}: {busy_port}}}"
    job.write_text(f"name: x\n{GOOD_ENTRYPOINT}aotwatch: {{collector: {collector}}}\n")
    message = (
        f"aotwatch.collector.{key}: cannot serve /metrics on 127.0.0.1:{busy_port}: "
        "Address already in use; expected a free port (0 picks any free port)"
    )
    assert_one_line_error(run_job(job, workdir), job, message)


@pytest.fixture
def closed_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.parametrize("command", ["serve", "status", "run"])
def test_a_cluster_address_nothing_answers_is_one_line(tmp_path, workdir, closed_port, command):
    """A mistyped address: one line naming it, in seconds (Ray alone retries for minutes)."""
    address = f"127.0.0.1:{closed_port}"
    config = tmp_path / "aotwatch.yaml"
    config.write_text(f"archive: {{path: {tmp_path / 'archive'}}}\n")
    if command == "run":
        job = tmp_path / "job.yaml"
        cluster = f"{{cluster: {{address: '{address}'}}, archive: {{path: {tmp_path / 'a'}}}}}"
        job.write_text(f"name: x\n{GOOD_ENTRYPOINT}aotwatch: {cluster}\n")
        args = ["run", str(job)]
    else:
        args = [command, "--config", str(config), "--address", address]
    result = aotwatch(*args, cwd=workdir, env={"RAY_ADDRESS": ""}, timeout=60)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.splitlines() == [
        f"aotwatch: error: Ray cluster '{address}' unreachable: [Errno 111] Connection refused"
    ]
    assert list(workdir.iterdir()) == []
