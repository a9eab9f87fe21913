"""The demo job's training loop: a tiny transformer trained with torch.compile on Ray Train.

Each worker compiles a model that deliberately shows what aotwatch captures: an input
mutation (a step counter buffer), an effect token (``torch.ops.aten._print``), a graph break
(``print`` in a compiled helper) and a recompile (the sequence length changes half way).
Run it with ``aotwatch run config/jobs/demo.yaml``.
"""

from __future__ import annotations

import torch
from torch import nn


class TinyTransformer(nn.Module):
    def __init__(self, vocab: int = 64, width: int = 32, heads: int = 2) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.block = nn.TransformerEncoderLayer(
            width, heads, 2 * width, dropout=0.0, batch_first=True
        )
        self.head = nn.Linear(width, vocab)
        self.register_buffer("steps", torch.zeros(()))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        self.steps.add_(1)  # an input mutation
        return self.head(self.block(self.embed(tokens)))


def log_step(loss: torch.Tensor) -> torch.Tensor:
    torch.ops.aten._print("demo: step done")  # an effect token
    scaled = loss * 1.0
    print("demo: logging")  # a graph break
    return scaled


def train_loop(config: dict) -> None:
    """train_loop_per_worker (``config`` is required: Ray Train passes train_loop_config only
    to a required parameter): ``config`` may set ``backend`` (inductor) and ``steps`` (6)."""
    import ray.train
    import ray.train.torch

    config = config or {}
    steps = int(config.get("steps", 6))
    torch.manual_seed(0)
    model = TinyTransformer()
    compiled = torch.compile(model, backend=config.get("backend", "inductor"))
    compiled = ray.train.torch.prepare_model(compiled)  # compile first, then wrap in DDP
    log = torch.compile(log_step, backend=config.get("backend", "inductor"))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    for step in range(steps):
        seq = 8 if step < steps // 2 else 12  # the length change recompiles
        tokens = torch.randint(0, 64, (4, seq))
        logits = compiled(tokens)
        loss = nn.functional.cross_entropy(logits.reshape(-1, 64), tokens.reshape(-1))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        log(loss.detach())
        ray.train.report({"loss": loss.item(), "step": step})
