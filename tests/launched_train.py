"""A small DDP training script for the launcher tests: gloo on the CPU, compiled with the
truth backend (tests/programs.py), so each rank also writes what torch's own compilers saw.

    python launched_train.py OUT [--extra-frame-on-rank-1] [--reduce-op-differs]

It learns its rank as the launcher says: torchrun's RANK/WORLD_SIZE (env://), srun's
SLURM_PROCID/SLURM_NTASKS set by hand, or ``--spawn N`` (torch.multiprocessing.spawn, which
sets no variables: the rank is an argument). It never imports aotwatch: capture comes from
``aotwatch trace``. Every collective is bounded by the process group's timeout.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as funcol
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from programs import Truth, truth_backend  # noqa: E402

TIMEOUT = datetime.timedelta(seconds=60)


def _init(rank: int | None, world_size: int | None) -> int:
    if "RANK" in os.environ:  # torchrun
        dist.init_process_group("gloo", timeout=TIMEOUT)
    else:
        if rank is None:  # srun: its variables, set by hand here
            rank, world_size = int(os.environ["SLURM_PROCID"]), int(os.environ["SLURM_NTASKS"])
        address = f"tcp://127.0.0.1:{os.environ['MASTER_PORT']}"
        dist.init_process_group(
            "gloo", init_method=address, rank=rank, world_size=world_size, timeout=TIMEOUT
        )
    return dist.get_rank()


def train(
    out: Path,
    extra_frame: bool,
    rank: int | None = None,
    world: int | None = None,
    reduce_op_differs: bool = False,
):
    rank = _init(rank, world)
    try:
        torch.manual_seed(0)
        truth = Truth()
        module = torch.compile(
            nn.Sequential(nn.Linear(8, 8), nn.ReLU()), backend=truth_backend(truth)
        )
        model = nn.parallel.DistributedDataParallel(module)
        for _ in range(2):
            model(torch.randn(4, 8)).sum().backward()
        if extra_frame and rank == 1:  # a frame no other rank compiles
            torch.compile(lambda x: x.cos() + 1, backend=truth_backend(truth))(torch.randn(3))
        if reduce_op_differs:  # gloo completes it: both ranks get silently wrong values
            op = "sum" if rank == 0 else "max"
            reduce = lambda x: funcol.all_reduce(x * 2, op, dist.group.WORLD) + 1  # noqa: E731
            torch.compile(reduce, backend="aot_eager")(torch.ones(4) * (rank + 1))
        dist.barrier()
        fields = {f.name: getattr(truth, f.name) for f in dataclasses.fields(truth)}
        (out / f"truth{rank}.json").write_text(json.dumps(fields))
    finally:
        dist.destroy_process_group()
    if reduce_op_differs:
        # A gloo worker thread may still hold the functional all_reduce's work when Python
        # finalizes (Dynamo's graph keeps the process group alive past destroy); its tensors are
        # Python objects, and releasing them then aborts the process ("terminate called without
        # an active exception": pytorch/pytorch#190489, 3 runs in about 100 on a loaded
        # machine). Leave without finalizing: aotwatch writes its archive lines unbuffered.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


def _spawned(index: int, out: Path, extra_frame: bool, world: int) -> None:
    train(out, extra_frame, index, world)


if __name__ == "__main__":
    out, extra = Path(sys.argv[1]), "--extra-frame-on-rank-1" in sys.argv
    if "--spawn" in sys.argv:
        world = int(sys.argv[sys.argv.index("--spawn") + 1])
        torch.multiprocessing.spawn(_spawned, args=(out, extra, world), nprocs=world)
    else:
        train(out, extra, reduce_op_differs="--reduce-op-differs" in sys.argv)
