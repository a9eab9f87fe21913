"""A tiny training run whose compiles show what aotwatch captures.

It trains a small MLP with ``torch.compile`` and deliberately has:
an input mutated in place (a step counter buffer), a parameter-free
running statistic updated under ``no_grad``, an effect token
(``torch.ops.aten._print``), a graph break (``print``), and a recompile
(the batch size changes). Run it with ``aotwatch trace``.
"""

from __future__ import annotations

import argparse

import torch
from torch import nn


class TinyModel(nn.Module):
    def __init__(self, width: int = 32) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(16, width), nn.GELU(), nn.Linear(width, 1))
        self.register_buffer("steps", torch.zeros(()))
        self.register_buffer("running_mean", torch.zeros(16))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.steps.add_(1)  # an input mutation
        with torch.no_grad():
            self.running_mean.mul_(0.9).add_(x.mean(0), alpha=0.1)
        return self.net(x)


def report_loss(loss: torch.Tensor) -> torch.Tensor:
    torch.ops.aten._print("tiny_train: loss computed")  # an effect token
    scaled = loss * 1.0
    print("tiny_train: step done")  # a graph break: Dynamo does not trace print
    return scaled


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="inductor", help="torch.compile backend")
    parser.add_argument("--steps", type=int, default=4)
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    model = TinyModel()
    compiled = torch.compile(model, backend=args.backend)
    log_loss = torch.compile(report_loss, backend=args.backend)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    for step in range(args.steps):
        batch = 8 if step < args.steps // 2 else 12  # the size change recompiles
        x, y = torch.randn(batch, 16), torch.randn(batch, 1)
        loss = nn.functional.mse_loss(compiled(x), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        log_loss(loss.detach())


if __name__ == "__main__":
    main()
