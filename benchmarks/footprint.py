"""What a fleet pays for aotwatch: series a rank, per node, and at 10,240 ranks.

    python benchmarks/footprint.py [--ranks 8] [--steps 6] [--backend inductor]

The records are a real job's: the demo job's training loop (``aotwatch.examples.demo_train``:
a tiny transformer whose compiled frames mutate an input, thread an effect token, break a
graph and recompile when the sequence length changes) runs in this process under local
capture, which archives every record. Those records are then pushed, as the ``--ranks``
ranks of one node (rank, device and record id set per rank, as each rank makes its own), into
a real ``NodeCollector`` with the default config, and its /metrics is scraped. Counted: the
series that carry the job's name, per rank on average and per node, the scrape's bytes, the
memory the collector holds for the job (tracemalloc over the pushes: aggregate, archive
buffers, fingerprints), all extrapolated to 1,280 nodes x 8 ranks. Run it with
``PYTHONPATH=/work/main/daemon`` (an older tree) or ``--per-rank-detail`` for the other
layouts.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import tracemalloc
import urllib.request
from pathlib import Path

import torch
from torch import nn

import aotwatch
from aotwatch.cluster.collector import NodeCollector
from aotwatch.core.archive import archive_files, read_lines
from aotwatch.core.config import ArchiveConfig, CollectorConfig, Config, ExportConfig, LimitsConfig
from aotwatch.examples.demo_train import TinyTransformer, log_step

JOB = "footprint"
FLEET_NODES = 1280
RANKS_PER_NODE = 8
BUDGET = 30
"""Series a rank, on average, that one job of 8 ranks on a node may cost (issue 19)."""


def demo_records(directory: Path, backend: str = "inductor", steps: int = 6) -> list[dict]:
    """The records of one rank of the demo job, compiled here under local capture."""
    torch._dynamo.reset()
    config = Config(
        job_name=JOB,
        export=ExportConfig(enabled=False),
        archive=ArchiveConfig(path=str(directory)),
    )
    aotwatch.attach(config)
    try:
        torch.manual_seed(0)
        model = TinyTransformer()
        compiled = torch.compile(model, backend=backend)
        log = torch.compile(log_step, backend=backend)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
        for step in range(steps):
            seq = 8 if step < steps // 2 else 12  # the length change recompiles
            tokens = torch.randint(0, 64, (4, seq))
            loss = nn.functional.cross_entropy(compiled(tokens).reshape(-1, 64), tokens.reshape(-1))
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            log(loss.detach())
    finally:
        aotwatch.detach()
        torch._dynamo.reset()
    return [json.loads(line) for file in archive_files(directory) for line in read_lines(file)]


def as_rank(records: list[dict], rank: int) -> bytes:
    """The records as rank ``rank`` of the node makes them, as the JSON lines workers push."""
    lines = []
    for number, record in enumerate(records):
        lines.append(
            json.dumps(
                {
                    **record,
                    "rank": rank,
                    "device": f"cuda:{rank}",
                    "pid": 1000 + rank,
                    "record_id": f"{rank}-{number}",
                }
            ).encode()
            + b"\n"
        )
    return b"".join(lines)


def node_footprint(records: list[dict], ranks: int, root: Path, **limits) -> dict[str, float]:
    """Push ``records`` as ``ranks`` ranks into a NodeCollector; what its /metrics costs."""
    config = Config(
        archive=ArchiveConfig(path=str(root)),
        collector=CollectorConfig(address="127.0.0.1", port=0, head_port=0),
        limits=LimitsConfig(**limits),
    )
    collector = NodeCollector("footprint-node", config)
    pushes = [as_rank(records, rank) for rank in range(ranks)]
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for rank, pushed in enumerate(pushes):
            worker = {"worker_id": f"w{rank}", "job_name": JOB, "rank": rank}
            collector.push(worker, pushed, None)
        held = tracemalloc.get_traced_memory()[0] - before
        tracemalloc.stop()
        with urllib.request.urlopen(collector.server.url, timeout=30) as response:
            text = response.read()
    finally:
        tracemalloc.stop()
        collector.close()
    lines = text.decode().splitlines()
    series = [line for line in lines if f'job_name="{JOB}"' in line and not line.startswith("#")]
    return {
        "series": len(series),
        "bytes": len(text),
        "per_rank": len(series) / ranks,
        "memory": held,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, default=RANKS_PER_NODE)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--backend", default="inductor")
    parser.add_argument(
        "--per-rank-detail", action="store_true", help="limits.per_rank_detail: true"
    )
    args = parser.parse_args(argv)
    limits = {"per_rank_detail": True} if args.per_rank_detail else {}
    with tempfile.TemporaryDirectory(prefix="aotwatch-footprint-") as tmp:
        # A cold compile, as a job's first: Inductor's cache in a directory of this run's own.
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = os.path.join(tmp, "inductor")
        records = demo_records(Path(tmp) / "job", args.backend, args.steps)
        found = node_footprint(records, args.ranks, Path(tmp) / "collector", **limits)
    nodes = FLEET_NODES * RANKS_PER_NODE / args.ranks
    print(f"aotwatch from {os.path.dirname(aotwatch.__file__)}", file=sys.stderr)
    print(f"records of one rank: {len(records)} ({args.backend}, {args.steps} steps)\n")
    rows = [
        (f"a rank (average of {args.ranks})", 1 / args.ranks),
        (f"a node ({args.ranks} ranks)", 1),
        (f"{FLEET_NODES:,} nodes x {RANKS_PER_NODE} ranks", nodes),
    ]
    print("| | series | scrape bytes | collector memory held, bytes |")
    print("| --- | ---: | ---: | ---: |")
    for name, scale in rows:
        print(
            f"| {name} | {found['series'] * scale:,.1f} | {found['bytes'] * scale:,.0f} | "
            f"{found['memory'] * scale:,.0f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
