"""DTensor on a real 2-process gloo mesh: every rank counts its DTensor inputs, outputs and
tangents as the tensors themselves say, not as torch's metadata does."""

from __future__ import annotations

import json
import socket
import time
from collections import Counter
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from aotwatch.report.summary import read_archives
from programs import subclasses

pytestmark = pytest.mark.subprocess

FAMILY = "torch_compile_subclass_tensors"
TIMEOUT_S = 120


def _rank_main(rank: int, port: int, root: str) -> None:
    import datetime

    import torch.distributed as dist
    from torch.distributed.tensor import DeviceMesh, Shard, distribute_tensor

    import aotwatch
    from aotwatch.core.config import ArchiveConfig, Config, ExportConfig

    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=2,
        timeout=datetime.timedelta(seconds=TIMEOUT_S),
    )
    try:
        archive = ArchiveConfig(path=str(Path(root) / f"rank{rank}"))
        aotwatch.attach(Config(export=ExportConfig(enabled=False), archive=archive))
        mesh = DeviceMesh("cpu", [0, 1])
        weight = distribute_tensor(torch.randn(8, 4, requires_grad=True), mesh, [Shard(0)])
        out = torch.compile(lambda w: w.sin() * 2, backend="aot_eager")(weight)
        out.to_local().sum().backward()
        expected = {
            "input": subclasses([weight]),
            "output": subclasses([out]),
            "tangent": subclasses([out] if out.requires_grad else []),
        }
        (Path(root) / f"expected{rank}.json").write_text(json.dumps(expected))
    finally:
        aotwatch.detach()
        dist.destroy_process_group()


def test_dtensor_inputs_outputs_and_tangents_are_counted_on_every_rank(tmp_path):
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    context = mp.start_processes(
        _rank_main, args=(port, str(tmp_path)), nprocs=2, join=False, start_method="spawn"
    )
    deadline = time.monotonic() + TIMEOUT_S
    try:
        while not context.join(timeout=5):  # raises if a rank failed
            assert time.monotonic() < deadline, "the ranks did not finish in time"
    finally:
        for process in context.processes:
            process.kill()
    for rank in (0, 1):
        expected = json.loads((tmp_path / f"expected{rank}.json").read_text())
        assert expected["input"] == {"DTensor": 1} and expected["tangent"] == {"DTensor": 1}
        snapshot, _ = read_archives([tmp_path / f"rank{rank}" / "records.jsonl"])
        seen: dict[str, Counter] = {role: Counter() for role in expected}
        for (_, rank_label, _, role, kind), count in snapshot.values[FAMILY].items():
            assert rank_label == str(rank)
            seen[role][kind] += int(count)
        assert seen == {role: Counter(counts) for role, counts in expected.items()}
