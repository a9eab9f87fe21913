"""Who is compiling: job, rank, world size, host and process."""

from __future__ import annotations

import os
import socket
import sys
from typing import Any


def rank_and_world_size() -> tuple[int, int]:
    """From torch.distributed when it is initialized, else from the RANK and WORLD_SIZE that
    torchrun and Ray Train set, else rank 0 of a world of 1."""
    dist = sys.modules.get("torch.distributed")
    try:
        if dist is not None and dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
    except Exception:  # noqa: BLE001 - a half-torn-down process group reads as "not distributed"
        pass
    rank, world_size = os.environ.get("RANK", ""), os.environ.get("WORLD_SIZE", "")
    if rank.isdigit() and world_size.isdigit():
        return int(rank), int(world_size)
    return 0, 1


def identity(job_name: str) -> dict[str, Any]:
    """The record fields that say where a record comes from (device is per graph)."""
    rank, world_size = rank_and_world_size()
    return {
        "job_name": job_name,
        "rank": rank,
        "world_size": world_size,
        "hostname": socket.gethostname(),
        "pid": os.getpid(),
    }
