"""A first run with nothing left to ask: ``aotwatch run`` shows the compiles in progress and
none of Ray's lines, ``aotwatch report`` takes the archive root ``run`` names, and the
README's commands work with a fresh Debian's own python3 (PEP 668: no pip into it)."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import shutil
import site
import subprocess
import sys
from pathlib import Path

import pytest

from aotwatch.cluster import progress as progress_module
from aotwatch.cluster.collector import NodeCollector
from aotwatch.cluster.driver import compiles_in_progress
from aotwatch.cluster.progress import RayLogFile
from aotwatch.core.aggregate import Snapshot
from aotwatch.core.metrics import IN_PROGRESS
from cluster_helpers import config_at
from collector_helpers import compiles, worker
from helpers import aotwatch


def in_progress(*compiling: tuple[str, str, float]) -> Snapshot:
    """A snapshot with ranks compiling: (rank, compile id, since)."""
    values = {(("demo", rank, "cpu", compile_id)): since for rank, compile_id, since in compiling}
    return Snapshot({IN_PROGRESS.name: values}, {})


def test_compiles_in_progress_name_the_frame_the_ranks_and_how_long():
    assert compiles_in_progress(Snapshot({}, {}), 1000.0) == ""
    both = in_progress(("0", "0/0", 968.0), ("1", "0/0", 970.5))
    assert compiles_in_progress(both, 1000.0) == "frame 0/0 on 2 ranks for 32 s"
    one = in_progress(("1", "1/0", 999.0))
    assert compiles_in_progress(one, 1000.0) == "frame 1/0 on 1 rank for 1 s"
    # The compile most ranks are in; the others counted; a clock behind is not negative.
    mixed = in_progress(("0", "2/0", 990.0), ("1", "2/0", 995.0), ("2", "3/1", 1005.0))
    assert compiles_in_progress(mixed, 1000.0) == (
        "frame 2/0 on 2 ranks for 10 s (and 1 other compile)"
    )
    assert compiles_in_progress(one, 900.0) == "frame 1/0 on 1 rank for 0 s"


def test_how_long_a_stage_lasts_prints_no_line_of_its_own(monkeypatch):
    monkeypatch.setattr(progress_module, "PLAIN_EVERY_S", 3600)
    stream = io.StringIO()
    shown = progress_module.Progress(stream)
    shown.update("compiling", "workers attached 1", "frame 0/0 on 1 rank for 2 s")
    shown.update("compiling", "workers attached 2", "frame 0/0 on 2 ranks for 4 s")
    shown.update("training", "workers attached 2")
    shown.close()
    lines = [line.split("] ", 1)[1] for line in stream.getvalue().splitlines()]
    assert lines == [
        "compiling frame 0/0 on 1 rank for 2 s: workers attached 1",
        "training: workers attached 2",
    ]


def test_ray_lines_logged_before_it_connects_go_to_the_file(tmp_path, capfd):
    """What ``ray.init`` logs of a new local cluster (its token notice) reaches the file
    when the file is installed before it, as ``aotwatch run`` and ``serve`` do."""
    from ray._private.authentication import authentication_token_setup

    path = tmp_path / "ray.log"
    ray_log = RayLogFile(path)
    ray_log.install()
    try:
        authentication_token_setup._warn_token_auth_enabled()
        logging.getLogger("ray").setLevel(logging.WARNING)  # as ray.init sets it
        ray_log.hook_workers()
    finally:
        ray_log.close()
    out, err = capfd.readouterr()
    assert "Token authentication" not in out + err
    assert "Token authentication is enabled for this Ray cluster" in path.read_text()


@pytest.mark.subprocess
def test_report_of_an_archive_root_shows_every_job_it_holds(tmp_path):
    root = tmp_path / "archive"
    for node, job in (("a" * 56, "demo"), ("b" * 56, "demo"), ("b" * 56, "other")):
        collector = NodeCollector(node, config_at(root))
        try:
            rank = 0 if node[0] == "a" else 1
            assert collector.push(worker(job, rank), compiles(job, 2, rank=rank), {}) == 2
        finally:
            collector.close()
    result = aotwatch("report", str(root), "--format", "json")
    assert result.returncode == 0, result.stderr
    received = json.loads(result.stdout)["aotwatch_records_received"]
    assert {(s["labels"]["job_name"], s["value"]) for s in received} == {
        ("demo", 4),
        ("other", 2),
    }
    table = aotwatch("report", str(root))
    assert table.returncode == 0, table.stderr
    rows = {tuple(line.split()[:2]) for line in table.stdout.splitlines()[1:4]}
    assert rows == {("demo", "0"), ("demo", "1"), ("other", "1")}, table.stdout


REPO = Path(__file__).parent.parent
DEBIAN_PYTHON = Path("/usr/bin/python3")
"""A fresh Debian's or Ubuntu's own python3: PEP 668 keeps pip out of it."""


def readme_commands(heading: str) -> list[str]:
    """The shell commands of the README's section ``heading``."""
    section = REPO.joinpath("README.md").read_text().split(f"\n## {heading}\n", 1)[1]
    return re.findall(r"```sh\n(.+?)\n```", section.split("\n## ", 1)[0], re.DOTALL)


def debian_python_version() -> tuple[int, int] | None:
    if not DEBIAN_PYTHON.exists():
        return None
    out = subprocess.run(
        [DEBIAN_PYTHON, "-c", "import sys; print(*sys.version_info[:2])"],
        capture_output=True,
        text=True,
    ).stdout.split()
    return (int(out[0]), int(out[1])) if len(out) == 2 else None


def debian_venv(path: Path) -> None:
    """A virtualenv of Debian's python3 that sees this Python's packages (torch, Ray: the
    same minor version) through a .pth file, so pip finds them installed and runs offline."""
    subprocess.run([DEBIAN_PYTHON, "-m", "venv", str(path)], check=True)
    python = path / "bin" / "python"
    venv_site = subprocess.run(
        [python, "-c", "import site; print(site.getsitepackages()[0])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    (Path(venv_site) / "outer-site-packages.pth").write_text("\n".join(site.getsitepackages()))
    # venv's bundled setuptools (Python < 3.12) predates the build backend's requirement.
    subprocess.run([python, "-m", "pip", "uninstall", "--yes", "--quiet", "setuptools"], check=True)


@pytest.mark.subprocess
@pytest.mark.skipif(
    debian_python_version() != sys.version_info[:2],
    reason="needs /usr/bin/python3 of this Python's minor version (Debian's, Ubuntu's)",
)
def test_the_readme_commands_work_with_debians_own_python3(tmp_path):
    """The README's two commands, run with /usr/bin/python3 first on PATH in a copy of this
    checkout: the install goes into ``.venv``, and scripts/test.sh uses it; run from another
    virtualenv, scripts/test.sh installs into that one."""
    env = {
        **os.environ,
        # Debian's python3 first; then this Python's scripts (ruff), wherever it runs from.
        "PATH": f"{DEBIAN_PYTHON.parent}:{Path(sys.executable).parent}:{os.environ['PATH']}",
        "PIP_NO_INDEX": "1",  # offline: what the commands install is here already
        "PIP_NO_BUILD_ISOLATION": "0",
    }
    for name in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME"):
        env.pop(name, None)
    # What made the commands fail: Debian's python3 installs nothing outside a virtualenv
    # (PEP 668; without python3-pip it has no pip at all).
    refused = subprocess.run(
        [DEBIAN_PYTHON, "-m", "pip", "install", "--dry-run", "pyyaml"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert refused.returncode != 0
    assert re.search("externally-managed-environment|No module named pip", refused.stderr)
    repo = tmp_path / "aotwatch"
    ignore = shutil.ignore_patterns(
        ".git", ".venv", "__pycache__", "*.egg-info", ".*_cache", ".hypothesis", "aotwatch-trace"
    )
    shutil.copytree(REPO, repo, ignore=ignore)
    first, second = readme_commands("Try it")
    assert second == "bash scripts/test.sh"
    test_command = [*second.split(), "--collect-only", "-q", "tests/test_config.py"]

    # Run from a virtualenv, scripts/test.sh installs into that one and makes no other.
    own = tmp_path / "own-venv"
    debian_venv(own)
    in_own = {**env, "PATH": f"{own / 'bin'}:{env['PATH']}", "VIRTUAL_ENV": str(own)}
    tested = subprocess.run(
        test_command, cwd=repo, env=in_own, capture_output=True, text=True, timeout=600
    )
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "tests/test_config.py::" in tested.stdout
    assert not (repo / ".venv").exists()
    assert (own / "bin" / "aotwatch").exists()

    debian_venv(repo / ".venv")  # what `python3 -m venv .venv` makes, with packages seen

    install, demo = first.split(" && aotwatch run ")
    assert demo == "config/jobs/demo.yaml"
    check = "aotwatch check-config config/aotwatch.yaml && python -c 'import aotwatch, sys; "
    check += "print(aotwatch.__file__, sys.base_prefix)'"
    tried = subprocess.run(
        ["bash", "-c", f"{install} && {check}"],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert tried.returncode == 0, tried.stdout + tried.stderr
    module, base = tried.stdout.split()[-2:]
    assert (Path(module).parent.parent.parent, base) == (repo, "/usr")

    # With Debian's python3 first on PATH, scripts/test.sh uses .venv (made once).
    tested = subprocess.run(
        test_command, cwd=repo, env=env, capture_output=True, text=True, timeout=600
    )
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "tests/test_config.py::" in tested.stdout
