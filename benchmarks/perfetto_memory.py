"""Peak memory and time of ``aotwatch report --format perfetto`` on generated archives of
growing size: the records are streamed, so the peak should not grow with the archive.

    python benchmarks/perfetto_memory.py [--records 10000 100000 400000] [--ranks 64]
                                         [--directory DIR]

Each archive holds ``--ranks`` per-rank archives (as ``aotwatch trace`` writes them) of
frame records (phase times, cache misses, a graph break in one of ten, a recompile reason in
one of five) each with its forward graph's record; each rank compiles the same compile ids, a
little slower or faster, so every compile also draws straggler waits. Each export runs in a
fresh process; its peak RSS is the kernel's high-water mark (``VmHWM``).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from aotwatch.core.records import encode_record, new_record, to_record

PHASES = {"dynamo": 0.9, "aot_autograd": 0.8, "inductor": 0.6, "inductor_codegen": 0.5}


def records(rank: int, count: int) -> list[bytes]:
    """``count`` archive lines of one rank: a forward graph and its frame, alternately."""
    lines, now = [], 1_800_000_000.0
    for index in range(count // 2):
        seconds = 1.0 + (index % 7) * 0.1 + rank * 0.001
        now += seconds + 0.5
        identity = {"rank": rank, "world_size": 64, "hostname": f"node{rank // 8}", "pid": rank}
        compile_id = f"{index}/0"
        graph = new_record(**identity, time=now - 0.01, compile_id=compile_id, graph="forward")
        graph |= {"graph_hash": f"{index:040x}", "nodes": 120}
        durations = {"total": seconds, **{p: seconds * f for p, f in PHASES.items()}}
        frame = new_record(
            **identity,
            time=now,
            compile_id=compile_id,
            frame={"co_name": "forward", "filename": "/train/model.py", "line": 42},
            durations_s=durations,
            cache={"fx_graph": {"miss": 1}, "aot_autograd": {"miss": 1}},
        )
        if index % 10 == 0:
            frame["graph_breaks"] = [{"category": "builtin", "reason": "print() " * 20}]
        if index % 5 == 0:
            frame["recompile_reason"] = f"tensor 'x' size mismatch at index 0. expected {index}"
        lines += [encode_record(to_record(graph)), encode_record(to_record(frame))]
    return lines


def generate(root: Path, total: int, ranks: int) -> int:
    """The archive under ``root``; its size in bytes."""
    size = 0
    for rank in range(ranks):
        directory = root / f"rank{rank}-node{rank // 8}-{rank}"
        directory.mkdir(parents=True)
        data = b"".join(records(rank, total // ranks))
        (directory / "records.jsonl").write_bytes(data)
        size += len(data)
    return size


EXPORT = """
import sys
from pathlib import Path
from aotwatch.cli import main
code = main(["report", sys.argv[1], "--format", "perfetto", "-o", sys.argv[2]])
status = Path("/proc/self/status").read_text()
print(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM")))
sys.exit(code)
"""
"""The export in a fresh process, which prints its peak RSS in KiB: the kernel's high-water
mark of its own memory (``wait4``'s ``ru_maxrss`` would also count this process's memory at
the fork: Linux keeps the larger of the two across ``exec``)."""


def export(root: Path, out: Path) -> tuple[float, float]:
    """Seconds and peak RSS (MiB) of one export."""
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-c", EXPORT, str(root), str(out)],
        capture_output=True,
        text=True,
        check=True,
    )
    return time.perf_counter() - start, int(result.stdout) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, nargs="+", default=[10_000, 100_000, 400_000])
    parser.add_argument("--ranks", type=int, default=64)
    parser.add_argument("--directory", default=None, help="where the archives go")
    args = parser.parse_args()
    print("| records | archive MB | trace MB | export s | peak RSS MiB |")
    print("| --- | --- | --- | --- | --- |")
    for total in args.records:
        root = Path(tempfile.mkdtemp(prefix="perfetto-memory-", dir=args.directory))
        try:
            size = generate(root / "trace", total, args.ranks)
            seconds, peak = export(root / "trace", root / "trace.json")
            traced = (root / "trace.json").stat().st_size
            print(
                f"| {total:,} | {size / 1e6:.0f} | {traced / 1e6:.0f} | {seconds:.1f} | "
                f"{peak:.0f} |",
                flush=True,
            )
        finally:
            shutil.rmtree(root)


if __name__ == "__main__":
    main()
