"""A pipeline-parallel job in small, for the compare-group tests: 4 ranks, gloo on the CPU,
2 pipeline stages x 2 data-parallel ranks.

    torchrun --standalone --nproc-per-node 4 staged_train.py [--extra-frame-on-rank R]

Rank r is stage r // 2, and says so in PP_STAGE once it knows its rank (as a pipeline
framework would). Stage 0 compiles its layers and sends its activations to its peer of stage
1, which compiles other layers and sends the gradients back; each stage averages its
gradients over its two data-parallel ranks. Both stages compile under the same compile ids.
It never imports aotwatch: capture comes from ``aotwatch trace``. Every collective and wait
is bounded by the process groups' timeout.
"""

from __future__ import annotations

import datetime
import os
import sys

import torch
import torch.distributed as dist
from torch import nn

TIMEOUT = datetime.timedelta(seconds=60)
BATCH, WIDTH = 4, 16


def train(extra_frame_on: int | None) -> None:
    dist.init_process_group("gloo", timeout=TIMEOUT)
    try:
        rank = dist.get_rank()
        stage = rank // 2
        os.environ["PP_STAGE"] = str(stage)
        replicas = [
            dist.new_group([0, 1], timeout=TIMEOUT),
            dist.new_group([2, 3], timeout=TIMEOUT),
        ]
        torch.manual_seed(stage)
        if stage == 0:
            layers = nn.Sequential(nn.Linear(8, WIDTH), nn.ReLU())
        else:
            layers = nn.Sequential(nn.Linear(WIDTH, 4), nn.Tanh())
        model = torch.compile(layers, backend="aot_eager")
        for _ in range(2):
            if stage == 0:
                out = model(torch.randn(BATCH, 8))
                dist.send(out.detach(), dst=rank + 2)
                grad = torch.empty(BATCH, WIDTH)
                dist.recv(grad, src=rank + 2)
                out.backward(grad)
            else:
                activations = torch.empty(BATCH, WIDTH)
                dist.recv(activations, src=rank - 2)
                activations.requires_grad_()
                model(activations).sum().backward()
                dist.send(activations.grad, dst=rank - 2)
            for parameter in layers.parameters():
                dist.all_reduce(parameter.grad, group=replicas[stage])
        if rank == extra_frame_on:  # a frame its stage's peer does not compile
            torch.compile(lambda x: x.cos() + 1, backend="aot_eager")(torch.randn(3))
        dist.barrier()
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    flag = "--extra-frame-on-rank"
    train(int(sys.argv[sys.argv.index(flag) + 1]) if flag in sys.argv else None)
