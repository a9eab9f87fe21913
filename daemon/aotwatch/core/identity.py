"""Who is compiling: job, rank, world size, host and process."""

from __future__ import annotations

import os
import socket
import sys
from typing import Any

from aotwatch.core.records import MAX_ID

LAUNCHER_ENV = (
    ("RANK", "WORLD_SIZE", "LOCAL_RANK"),  # torchrun, Ray Train, most launchers
    ("SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID"),  # srun
    ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK"),  # Open MPI
    ("PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID"),  # MPICH, Intel MPI
)
"""The variables a launcher sets for each process: (rank, world size, local rank). The first
launcher whose rank is set wins: torchrun under srun sets RANK, which names the process."""


def _number(name: str) -> int | None:
    value = os.environ.get(name, "")
    return int(value) if value.isascii() and value.isdecimal() else None


def launcher_rank() -> tuple[int, int] | None:
    """(rank, world size) from the launcher's environment, or None. A world size the
    launcher does not say (or says wrongly) reads as rank + 1."""
    for rank_name, size_name, _ in LAUNCHER_ENV:
        rank = _number(rank_name)
        if rank is not None:
            size = _number(size_name)
            return rank, size if size is not None and size > rank else rank + 1
    return None


def rank_and_world_size() -> tuple[int, int]:
    """From torch.distributed when it is initialized, else from the launcher's environment
    (LAUNCHER_ENV), else rank 0 of a world of 1."""
    dist = sys.modules.get("torch.distributed")
    try:
        if dist is not None and dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
    except Exception:  # noqa: BLE001 - a half-torn-down process group reads as "not distributed"
        pass
    return launcher_rank() or (0, 1)


def local_rank() -> tuple[str, int]:
    """This process's rank on its machine and the variable that says it (LAUNCHER_ENV);
    ("LOCAL_RANK", 0) when no launcher says."""
    for _, _, local_name in LAUNCHER_ENV:
        value = _number(local_name)
        if value is not None:
            return local_name, value
    return "LOCAL_RANK", 0


def compare_group(variable: str | None) -> str | None:
    """The value of the environment variable ``variable`` (``capture.compare_group_env``: the
    pipeline stage, say), printable and at most MAX_ID characters; None when it is unset or
    empty. Read at each record: a script may set it once it knows its stage."""
    value = os.environ.get(variable, "") if variable else ""
    if not value.isprintable():
        value = "".join(c for c in value if c.isprintable())
    return value[:MAX_ID] or None


def identity(job_name: str, compare_group_env: str | None = None) -> dict[str, Any]:
    """The record fields that say where a record comes from (device is per graph)."""
    rank, world_size = rank_and_world_size()
    return {
        "job_name": job_name,
        "rank": rank,
        "world_size": world_size,
        "hostname": socket.gethostname(),
        "pid": os.getpid(),
        "compare_group": compare_group(compare_group_env),
    }
