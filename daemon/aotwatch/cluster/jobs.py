"""YAML-configured jobs: a training entrypoint run on Ray with aotwatch attached to every worker.

A job is either ``entrypoint: module:function``, run as ``train_loop_per_worker`` of a
Ray Train ``TorchTrainer`` on ``workers`` workers, or ``command``: a driver command line
whose Ray job gets aotwatch's runtime_env (the way Ray's job submission passes one).
"""

from __future__ import annotations

import importlib
import json
import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from aotwatch.core.config import (
    Config,
    ConfigError,
    Section,
    between,
    length,
    read_yaml,
    section_from_dict,
)

_ENTRYPOINT = r"[A-Za-z_][\w.]*:[A-Za-z_]\w*"


def _check_entrypoint(value: str, key: str) -> None:
    import re

    if not re.fullmatch(_ENTRYPOINT, value):
        raise ConfigError(
            f"{value!r} is not module:function",
            key=key,
            expected="e.g. my_package.train:train_loop",
        )


@dataclass(frozen=True)
class JobConfig(Section):
    """One training job run by ``aotwatch run``."""

    name: str = field(default="job", metadata=length(1, 128))
    """The job_name label of every series of this job."""

    entrypoint: str | None = field(default=None, metadata={"check": _check_entrypoint})
    """``module:function`` run as a TorchTrainer's train_loop_per_worker (one of this or
    ``command``)."""

    command: str | None = field(default=None, metadata=length(1, 65_536))
    """A driver command line (it calls ``ray.init()`` itself); its workers get aotwatch."""

    workers: int = field(default=2, metadata=between(1, 100_000))
    """TorchTrainer workers (one per GPU, usually)."""

    cpus_per_worker: int = field(default=1, metadata=between(0, 4096))
    """CPUs each worker reserves."""

    gpus_per_worker: int = field(default=0, metadata=between(0, 64))
    """GPUs each worker reserves; 0 trains on CPU with the gloo backend."""

    train_loop_config: Mapping[str, str] = field(default_factory=dict)
    """Passed to the entrypoint as its ``config`` argument (strings)."""

    aotwatch: Config = Config()
    """aotwatch's own config for this job (the keys of config/aotwatch.yaml)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if (self.entrypoint is None) == (self.command is None):
            raise ConfigError(
                "a job needs exactly one of entrypoint and command",
                key="entrypoint",
                expected="entrypoint: module:function, or command: a command line",
            )

    @property
    def config(self) -> Config:
        """aotwatch's config, with the job's name as job_name."""
        return replace(self.aotwatch, job_name=self.name)


def load_job(path: str | os.PathLike) -> JobConfig:
    """Read and check a job file; ConfigError names the file and the key."""
    return section_from_dict(JobConfig, read_yaml(path), os.fsdecode(path))


def resolve_entrypoint(entrypoint: str) -> Callable[..., Any]:
    module, _, function = entrypoint.partition(":")
    return getattr(importlib.import_module(module), function)


def check_runnable(job: JobConfig, source: str) -> None:
    """Find what the job runs before anything starts: the entrypoint is imported (the driver
    imports it anyway) or the command's program looked up. ConfigError names ``source``."""
    if job.entrypoint is not None:
        module, _, function = job.entrypoint.partition(":")
        expected = "an importable module:function"
        try:
            found = callable(getattr(importlib.import_module(module), function, None))
        except ImportError as err:
            problem = f"cannot import {module!r}: {err}"
            raise ConfigError(problem, file=source, key="entrypoint", expected=expected) from None
        if not found:
            problem = f"{module!r} has no function {function!r}"
            raise ConfigError(problem, file=source, key="entrypoint", expected=expected)
        return
    try:
        program = (shlex.split(job.command) or [""])[0]
    except ValueError as err:  # an unclosed quote
        raise ConfigError(str(err), file=source, key="command", expected="a command line") from None
    if shutil.which(program) is None:
        raise ConfigError(
            f"no program {program!r} found",
            file=source,
            key="command",
            expected="a program on PATH or a path to one",
        )


def run_trainer(job: JobConfig) -> Any:
    """Run the entrypoint as a TorchTrainer (Ray is initialised with aotwatch's runtime_env)."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    trainer = TorchTrainer(
        resolve_entrypoint(job.entrypoint),
        train_loop_config=dict(job.train_loop_config),
        scaling_config=ScalingConfig(
            num_workers=job.workers,
            use_gpu=job.gpus_per_worker > 0,
            resources_per_worker={"CPU": job.cpus_per_worker, "GPU": job.gpus_per_worker},
        ),
        torch_config=TorchConfig(backend="nccl" if job.gpus_per_worker else "gloo"),
        run_config=RunConfig(name=job.name, storage_path=_storage_path(job)),
    )
    return trainer.fit()


def _storage_path(job: JobConfig) -> str:
    from aotwatch.cluster.paths import archive_root

    return str(archive_root(job.config) / "train")


def run_command(job: JobConfig, ray_address: str, runtime_env: dict[str, Any]) -> int:
    """Run the driver command; its ``ray.init()`` joins this cluster with aotwatch's runtime_env."""
    env = dict(os.environ, RAY_ADDRESS=ray_address)
    env["RAY_JOB_CONFIG_JSON_ENV_VAR"] = json.dumps({"runtime_env": runtime_env})
    return subprocess.call(
        shlex.split(job.command),
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=sys.stdout,
        stderr=sys.stderr,
    )
