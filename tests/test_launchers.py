"""Every launcher, no code change: ``aotwatch trace`` (and its variables set by hand) captures
each rank of torchrun, torch.multiprocessing.spawn and srun-style processes in its own archive,
and ``aotwatch report`` over the directory compares the ranks. Real processes, gloo on CPU."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from aotwatch.attachment.bootstrap import environment, site_directory
from aotwatch.cli import __file__ as CLI_FILE
from aotwatch.core.archive import archive_files
from aotwatch.report.summary import read_archives
from helpers import LAUNCHED_SCRIPT as SCRIPT
from helpers import TRACE_TIMEOUT_S as TIMEOUT_S
from helpers import aotwatch, report_json, trace
from programs import Truth, observed

pytestmark = pytest.mark.subprocess


def free_port() -> str:
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        return str(free.getsockname()[1])


def truth_of(out: Path, rank: int) -> Truth:
    """What torch's compilers saw on ``rank`` (the script wrote it)."""
    fields = json.loads((out / f"truth{rank}.json").read_text())
    return Truth(**{k: Counter(v) if isinstance(v, dict) else v for k, v in fields.items()})


def assert_each_rank_equals_torch(archive: Path, out: Path, ranks: int = 2) -> None:
    """One archive per rank, named by its rank, each equal to what torch saw there."""
    files = archive_files(archive)
    assert sorted(path.parent.name.split("-")[0] for path in files) == [
        f"rank{rank}" for rank in range(ranks)
    ]
    for rank, path in enumerate(sorted(files)):
        snapshot, _ = read_archives([path])
        truth = truth_of(out, rank)
        assert truth.graphs == {"forward": 1, "backward": 1}
        assert observed(snapshot) == truth
        assert {labels[1] for labels in snapshot.values["torch_compile_frames"]} == {str(rank)}


def report_html_line(archive: Path) -> str:
    return f"HTML report: aotwatch report {archive} --format html -o report.html"


def test_torchrun_ranks_each_write_their_own_archive(tmp_path):
    archive, out = tmp_path / "trace", tmp_path
    command = ["torchrun", "--standalone", "--nproc-per-node", "2", str(SCRIPT), str(out)]
    result = trace(archive, *command)
    assert_each_rank_equals_torch(archive, out)
    summary = result.stderr[result.stderr.index("aotwatch summary") :].splitlines()
    assert [line.split()[:2] for line in summary[2:4]] == [["default", "0"], ["default", "1"]]
    assert summary[-3:] == ["rank divergences: none", "", report_html_line(archive)]
    table = aotwatch("report", str(archive))
    assert table.returncode == 0 and "rank divergences: none" in table.stdout.splitlines()
    (cost,) = table.stdout.split("compile cost:\n")[1:]  # both ranks compiled the same graphs
    assert "2 ranks compiled the same" in cost and "compile once and share" in cost
    assert report_json(archive)["findings"] == []


def test_an_extra_frame_on_one_rank_is_a_compile_ids_divergence(tmp_path):
    archive = tmp_path / "trace"
    command = ["torchrun", "--standalone", "--nproc-per-node", "2", str(SCRIPT), str(tmp_path)]
    result = trace(archive, *command, "--extra-frame-on-rank-1")
    assert "compile_ids at 1/0: ranks 1: compiled; ranks 0: missing" in result.stderr
    data = report_json(archive)
    assert data["findings"] == [
        {
            "job_name": "default",
            "kind": "compile_ids",
            "compile_id": "1/0",
            "groups": {"compiled": ["1"], "missing": ["0"]},
        }
    ]
    assert data["torch_compile_rank_divergences"] == [
        {"labels": {"job_name": "default", "kind": "compile_ids"}, "value": 1}
    ]
    text = aotwatch("report", "--format", "prometheus", str(archive)).stdout
    assert 'torch_compile_rank_divergences_total{job_name="default",kind="compile_ids"} 1.0' in text


def test_ranks_that_reduce_differently_are_a_collective_schedule_divergence(tmp_path):
    """Rank 0 compiles all_reduce(sum), rank 1 all_reduce(max): gloo completes it without an
    error. The finding names the collective and both groups of ranks; it is not also a
    graph_hash finding."""
    archive = tmp_path / "trace"
    command = ["torchrun", "--standalone", "--nproc-per-node", "2", str(SCRIPT), str(tmp_path)]
    trace(archive, *command, "--reduce-op-differs")
    findings = report_json(archive)["findings"]
    assert [(f["kind"], f["compile_id"]) for f in findings] == [("collective_schedule", "1/0")]
    groups = findings[0]["groups"]
    assert sorted(groups.values()) == [["0"], ["1"]]
    by_rank = {ranks[0]: schedule for schedule, ranks in groups.items()}
    assert "all_reduce(sum, 0) f32[4]" in by_rank["0"] and by_rank["0"].startswith("inference")
    assert "all_reduce(max, 0) f32[4]" in by_rank["1"]


def test_multiprocessing_spawn_ranks_come_from_torch_distributed(tmp_path):
    """spawn sets no rank variables: each child learns its rank from its process group."""
    archive = tmp_path / "trace"
    env = {"MASTER_PORT": free_port()}
    trace(archive, "python", str(SCRIPT), str(tmp_path), "--spawn", "2", env=env)
    assert_each_rank_equals_torch(archive, tmp_path)


def test_srun_style_processes_with_the_variables_set_by_hand(tmp_path):
    """No SLURM here: two processes with SLURM_PROCID set by a shell script, traced by
    ``aotwatch env``'s variables alone (no ``aotwatch trace``)."""
    archive = tmp_path / "trace"
    exports = aotwatch("env", "--archive", str(archive))
    assert exports.returncode == 0, exports.stderr
    launcher = tmp_path / "srun.sh"
    launcher.write_text(
        f"{exports.stdout}export SLURM_NTASKS=2 MASTER_PORT={free_port()}\n"
        f"for rank in 0 1; do SLURM_PROCID=$rank {sys.executable} {SCRIPT} {tmp_path} & done\n"
        "wait %1 && wait %2\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    result = subprocess.run(
        ["bash", str(launcher)], capture_output=True, text=True, timeout=TIMEOUT_S, env=env
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert_each_rank_equals_torch(archive, tmp_path)


def test_children_that_do_not_compile_are_untouched(tmp_path):
    """A Python child that imports torch but never compiles, and a child that is not Python:
    no archive, no /metrics server, nothing of aotwatch but the bootstrap's import hook."""
    archive = tmp_path / "trace"
    check = (
        "import sys, threading, torch; "
        "print('loaded:', sorted(m for m in sys.modules if m.startswith('aotwatch.')), "
        "'threads:', threading.active_count())"
    )
    result = trace(archive, "sh", "-c", f'echo not python; {sys.executable} -c "{check}"')
    assert "not python" in result.stdout
    assert (
        "loaded: ['aotwatch.attachment', 'aotwatch.attachment.bootstrap', "
        "'aotwatch.attachment.first_compile'] threads: 1" in result.stdout
    )
    assert archive_files(archive) == []
    assert result.stderr.strip().endswith("no compiles recorded")


def test_a_sitecustomize_of_the_environment_still_runs(tmp_path):
    """The bootstrap shadows any other sitecustomize on the path: it must chain to it."""
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "sitecustomize.py").write_text("import builtins\nbuiltins.THEIRS = 'ran'\n")
    env = {**os.environ, **environment(tmp_path / "trace")}
    env["PYTHONPATH"] += os.pathsep + str(theirs)
    result = subprocess.run(
        [sys.executable, "-c", "print(THEIRS)"], capture_output=True, text=True, env=env, timeout=60
    )
    assert result.stdout == "ran\n", result.stderr


@pytest.mark.parametrize("traced", [False, True])
def test_two_bootstraps_on_the_path_start_once_and_chain_to_the_users(tmp_path, traced):
    """Two installs' bootstrap directories on PYTHONPATH (``aotwatch env`` from one venv,
    ``trace`` from another), then the user's own sitecustomize: one bootstrap runs, once, and
    the user's still runs (before: each chained to the other until RecursionError)."""
    other, theirs = tmp_path / "other-install", tmp_path / "theirs"
    shutil.copytree(site_directory(), other)
    theirs.mkdir()
    (theirs / "sitecustomize.py").write_text("import builtins\nbuiltins.THEIRS = 'ran'\n")
    env = {**os.environ, **environment(tmp_path / "trace")}
    env["PYTHONPATH"] = os.pathsep.join([str(other), env["PYTHONPATH"], str(theirs)])
    if not traced:
        del env["AOTWATCH_TRACE"]
    count = "sum(type(f).__name__ == '_AfterImport' for f in sys.meta_path)"
    result = subprocess.run(
        [sys.executable, "-c", f"import sys; print(THEIRS, {count})"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert (result.stdout, result.stderr) == (f"ran {int(traced)}\n", "")


@pytest.mark.parametrize("command", [["no-such-program-here"], ["python", "missing.py"]])
def test_trace_says_what_is_missing_in_one_line(tmp_path, command):
    result = aotwatch("trace", "--archive", str(tmp_path / "t"), "--", *command, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"aotwatch: error: {command[-1]}: "
        + ("command not found" if len(command) == 1 else "no such script")
    ]


COMPILE = (
    "import torch\n"
    "torch.compile(lambda x: x.sin() * 2, backend='aot_eager')(torch.randn(4))\n"
    "print('trained')\n"
)


def traced_by_hand(tmp_path: Path, archive: Path, extra: dict | None = None, python=None):
    """A compiling script run with the bootstrap's variables, set by hand (any free port)."""
    script = tmp_path / "train.py"
    script.write_text(COMPILE)
    any_port = {"AOTWATCH_CONFIG": json.dumps({"export": {"port": 0}})}
    env = {**os.environ, **environment(archive), **any_port, **(extra or {})}
    return subprocess.run(
        [python or sys.executable, str(script)],
        capture_output=True,
        text=True,
        env=env,
        timeout=TIMEOUT_S,
    )


def test_a_port_in_use_costs_metrics_not_records(tmp_path):
    """Two ranks on one port (a rank's port + local rank taken by something else)."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        config = json.dumps({"export": {"address": "127.0.0.1", "port": port}})
        result = traced_by_hand(tmp_path, tmp_path / "a", {"AOTWATCH_CONFIG": config})
    assert result.returncode == 0 and "trained" in result.stdout, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("aotwatch: ")]
    assert f"cannot serve /metrics on 127.0.0.1:{port}" in lines[0]
    assert lines[0].endswith(f"records still go to {next((tmp_path / 'a').iterdir())}")
    assert len(lines) == 2 and re.fullmatch(
        r"aotwatch: capturing compiles of job 'default' \(\d+ hooks\); metrics not served "
        r"\(export.enabled: false\)",
        lines[1],
    )
    snapshot, _ = read_archives(archive_files(tmp_path / "a"))
    assert sum(snapshot.values["torch_compile_graphs"].values()) == 1


def test_a_bad_config_by_hand_leaves_training_untraced_with_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("export:\n  port: seventy\n")
    result = traced_by_hand(tmp_path, tmp_path / "a", {"AOTWATCH_CONFIG": str(bad)})
    assert result.returncode == 0 and "trained" in result.stdout, result.stderr
    (line,) = [line for line in result.stderr.splitlines() if "aotwatch" in line]
    expected = f"{bad}: export.port: got str 'seventy'; expected an integer"
    assert re.fullmatch(r"aotwatch: not capturing in pid \d+: " + re.escape(expected), line)
    assert archive_files(tmp_path / "a") == []


def _can_unshare_pids() -> bool:
    unshare = ["unshare", "--pid", "--fork", "true"]
    return shutil.which("unshare") is not None and subprocess.run(unshare).returncode == 0


@pytest.mark.skipif(not _can_unshare_pids(), reason="needs unshare --pid (root)")
def test_a_second_trace_with_the_same_pid_gets_its_own_archive(tmp_path):
    """Two traces into one directory, each in a fresh PID namespace (two containers with one
    host name): both training processes are pid 2. Each summary reads its own run's records
    (before: the second appended to the first's archive and said "no compiles recorded")."""
    archive, script = tmp_path / "trace", tmp_path / "train.py"
    script.write_text(f"import os\nprint('pid', os.getpid())\n{COMPILE}")
    trace = [sys.executable, "-m", "aotwatch.cli", "trace", "--port", "0", "--archive"]
    for run in (1, 2):
        result = subprocess.run(
            ["unshare", "--pid", "--fork", *trace, str(archive), "--", "python", str(script)],
            capture_output=True,
            text=True,
            timeout=TIMEOUT_S,
        )
        assert result.returncode == 0 and "pid 2\n" in result.stdout, result.stderr
        summary = result.stderr[result.stderr.index("aotwatch summary") :].splitlines()
        assert "no compiles recorded" not in summary and summary[2].startswith("default   0 ")
        files = archive_files(archive)
        assert len(files) == run and all(f.parent.name.startswith("rank0-") for f in files)
        assert [len(f.read_text().splitlines()) for f in files] == [2] * run


def test_a_trace_directory_others_may_write_is_refused_by_hand_too(tmp_path):
    """``AOTWATCH_TRACE`` set by hand (the SLURM route) to a 0777 directory: refused as
    ``aotwatch env`` and ``trace`` refuse it, in one line; training untouched."""
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    result = traced_by_hand(tmp_path, shared)
    assert result.returncode == 0 and "trained" in result.stdout, result.stderr
    (line,) = [line for line in result.stderr.splitlines() if "aotwatch" in line]
    assert re.fullmatch(
        rf"aotwatch: not capturing in pid \d+: {re.escape(str(shared))}: may be written by "
        r"group or others \(mode 0777\); .*",
        line,
    )
    assert list(shared.iterdir()) == []


def forge_rank(archive: Path, rank: int, uid: int) -> Path:
    """A copy of ``archive`` claiming to be ``rank`` with 999 s of compile time, in a
    directory of its own owned by ``uid`` (another user planting it)."""
    forged = archive.parent.parent / f"rank{rank}-elsewhere-1"
    forged.mkdir()
    with (forged / "records.jsonl").open("w") as out:
        for line in archive.read_text().splitlines():
            record = json.loads(line)
            record.update(rank=rank, pid=1, record_id=record["record_id"][::-1])
            if record["frame"]:
                record["durations_s"] = {"total": 999.0}
            out.write(json.dumps(record) + "\n")
    for path in (forged, forged / "records.jsonl"):
        os.chown(path, uid, uid)
    return forged


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")
def test_report_skips_an_archive_another_user_planted_and_says_so(tmp_path):
    archive = tmp_path / "trace"
    result = traced_by_hand(tmp_path, archive)
    assert result.returncode == 0, result.stderr
    (own,) = archive_files(archive)
    forged = forge_rank(own, 7, 65534)
    report = aotwatch("report", "--format", "json", str(archive))
    assert report.returncode == 0, report.stderr
    ranks = {
        series["labels"]["rank"] for series in json.loads(report.stdout)["torch_compile_frames"]
    }
    assert ranks == {"0"}
    assert report.stderr.splitlines() == [
        f"aotwatch: skipping {forged / 'records.jsonl'}: it belongs to uid 65534, neither to "
        f"this user (uid 0) nor to root"
    ]


def traced_without_pythonpath(archive: Path, *command: str) -> subprocess.CompletedProcess:
    """``aotwatch trace`` run with aotwatch on its ``sys.path`` but not on PYTHONPATH: the
    children find the bootstrap only (whatever PYTHONPATH the tests run with)."""
    package_root = Path(CLI_FILE).resolve().parents[1]
    main = f"import sys; sys.path.insert(0, {str(package_root)!r}); import aotwatch.cli as c; "
    main += "sys.exit(c.main())"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run(
        [sys.executable, "-c", main, "trace", "--archive", str(archive), "--", *command],
        capture_output=True,
        text=True,
        env=env,
        timeout=TIMEOUT_S,
    )


def test_a_python_without_aotwatch_runs_untraced_and_says_so_once_per_trace(tmp_path):
    """A venv that cannot import aotwatch starts a pool of 3 children of itself, traced twice
    into one directory: each trace says it once (before: once per process)."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    pool = "import subprocess, sys\nfor _ in range(3): subprocess.run([sys.executable, '-c', ''])"
    for _ in range(2):
        result = traced_without_pythonpath(
            tmp_path / "a", str(python), "-c", pool + "\nprint('ran')"
        )
        assert result.returncode == 0 and result.stdout == "ran\n", result.stderr
        said = f"aotwatch: not capturing in {python}: No module named 'aotwatch'"
        assert [line for line in result.stderr.splitlines() if "not capturing" in line] == [said]


def test_a_hostile_hostname_stays_inside_the_archive_directory(tmp_path, monkeypatch):
    from aotwatch.attachment.bootstrap import process_archive

    monkeypatch.setattr(socket, "gethostname", lambda: "../../etc/passwd\n")
    path = process_archive(tmp_path)
    assert path.parent == tmp_path and "/" not in path.name and "\n" not in path.name
