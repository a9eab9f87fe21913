"""Job files: the shipped examples load; bad ones get one precise line and exit 2."""

from __future__ import annotations

from pathlib import Path

import pytest

from aotwatch.cluster.jobs import load_job
from aotwatch.core.config import ConfigError
from helpers import aotwatch

JOBS = Path(__file__).parent.parent / "config" / "jobs"


@pytest.mark.parametrize("path", sorted(JOBS.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_job_files_load(path):
    job = load_job(path)
    assert job.config.job_name == job.name
    assert (job.entrypoint is None) != (job.command is None)


def test_the_demo_job():
    job = load_job(JOBS / "demo.yaml")
    assert job.entrypoint == "aotwatch.examples.demo_train:train_loop"
    assert (job.workers, job.cpus_per_worker, job.gpus_per_worker) == (2, 1, 0)
    assert job.config.cluster.address is None  # a local cluster


@pytest.mark.subprocess
@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("name: x\n", "entrypoint: a job needs exactly one of entrypoint and command"),
        ("name: x\nentrypoint: a:b\ncommand: ls\n", "entrypoint: a job needs exactly one"),
        ("name: x\nentrypoint: not-a-function\n", "entrypoint: 'not-a-function' is not"),
        ("name: x\nentrypoint: a:b\nworkers: 0\n", "workers: 0 is out of range"),
        ("name: x\nentrypoint: a:b\nworker: 2\n", "worker: unknown key"),
        (
            "name: x\nentrypoint: a:b\naotwatch: {export: {port: x}}\n",
            "aotwatch.export.port: got str 'x'; expected an integer",
        ),
    ],
)
def test_bad_job_files_are_refused_with_the_key(tmp_path, text, message):
    path = tmp_path / "job.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_job(path)
    assert str(info.value).startswith(f"{path}: ") and message in str(info.value)
    result = aotwatch("run", str(path))
    assert result.returncode == 2
    assert result.stderr.strip() == f"aotwatch: error: {info.value}"
