"""A training loop built to make the shipped alerts fire: see them on Prometheus's /alerts.

Each worker trains a tiny model (compiled by Inductor, so the FX-graph and AOTAutograd
caches are looked up) whose forward mutates a buffer (an input mutation), and before that
compiles a helper whose graph depends on the rank (``x * 2`` on odd ranks, ``x + 1`` on
even ones: the head reports a ``graph_hash`` divergence, TorchCompileRankDivergence fires).
After each step it compiles a statistics helper with static shapes on a batch that grows
by one row per step: every step after the first recompiles it (TorchCompileRecompileStorm,
with 3 recompiles or more within 10 minutes; with torch's recompile_limit lowered to 6, five
compiles of it leave one: TorchCompileRecompileLimitNear) and its ``print`` is a graph
break. Before training, rank 1 compiles a helper slowly while rank 0 waits at a barrier
(TorchCompileStraggler), and the ranks compile an all_reduce with different reduce ops
(TorchCompileCollectiveScheduleDivergence).
Run it with ``aotwatch run config/jobs/alerting.yaml`` next to a Prometheus that loads
dashboards/prometheus/aotwatch-rules.yml.
"""

from __future__ import annotations

import torch
from torch import nn

FAST_BACKEND = "aot_eager"
"""For the helpers: AOTAutograd runs (its metadata is captured) without Inductor's cost."""


class CountingRegressor(nn.Module):
    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.linear = nn.Linear(width, 1)
        self.register_buffer("rows_seen", torch.zeros(()))

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        self.rows_seen.add_(batch.shape[0])  # an input mutation
        return self.linear(batch).squeeze(-1)


def rank_dependent(x: torch.Tensor, rank: int) -> torch.Tensor:
    return x * 2 if rank % 2 else x + 1  # a different graph per rank, same compile id


def batch_stats(errors: torch.Tensor) -> torch.Tensor:
    mean = errors.abs().mean()
    print("alerting: stats")  # a graph break
    return mean + errors.std()


def straggle(rank: int, seconds: float) -> None:
    """Rank 1 compiles a helper with a backend that sleeps ``seconds`` while rank 0 waits
    at a barrier: a compile straggler (TorchCompileStraggler)."""
    import time

    import torch.distributed as dist

    def slow_backend(gm: torch.fx.GraphModule, example_inputs: list) -> object:
        time.sleep(seconds)
        return gm.forward

    if rank == 1:
        torch.compile(lambda x: x.cos() + 1, backend=slow_backend)(torch.ones(4))
    dist.barrier()


def reduce_by_rank(x: torch.Tensor, rank: int) -> torch.Tensor:
    """An all_reduce whose reduce op depends on the rank (sum on rank 0, max elsewhere):
    gloo completes it, with wrong values (TorchCompileCollectiveScheduleDivergence)."""
    import torch.distributed as dist
    import torch.distributed._functional_collectives as funcol

    return funcol.all_reduce(x * 2, "sum" if rank == 0 else "max", dist.group.WORLD) + 1


def train_loop(config: dict) -> None:
    """train_loop_per_worker (``config`` is required: Ray Train passes train_loop_config only
    to a required parameter): ``config`` may set ``backend`` (inductor, for the model),
    ``steps`` (5; each step after the first recompiles the statistics helper),
    ``recompile_limit`` (torch's; 6 leaves that helper one recompile short of it) and
    ``straggle_s`` (0: rank 1 does not straggle)."""
    import ray.train

    config = config or {}
    steps = int(config.get("steps", 5))
    rank = ray.train.get_context().get_world_rank()
    torch._dynamo.config.recompile_limit = int(config.get("recompile_limit", 8))
    torch.manual_seed(0)
    model = CountingRegressor()
    compiled = torch.compile(model, backend=config.get("backend", "inductor"), dynamic=False)
    stats = torch.compile(batch_stats, backend=FAST_BACKEND, dynamic=False)  # static shapes
    offset = torch.compile(rank_dependent, backend=FAST_BACKEND)(torch.ones(4), rank)
    torch.compile(reduce_by_rank, backend=FAST_BACKEND)(torch.ones(4), rank)  # one compile id
    straggle(rank, float(config.get("straggle_s", 0)))  # both ranks attached by now
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    for step in range(steps):
        batch = torch.randn(16, 8)
        loss = nn.functional.mse_loss(compiled(batch), batch.sum(-1) + offset.sum())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        spread = stats(torch.randn(4 + step))  # one row more every step: a recompile
        ray.train.report({"loss": loss.item(), "spread": spread.item(), "step": step})
