"""Peak memory and time of ``aotwatch report`` over a large archive: the table and the page.

    python benchmarks/report_memory.py [--records 300000] [--ranks 8]

Writes one archive of ``--records`` records to a temporary directory (removed at the end):
per rank, compiles of a long job, each a frame record (phase times, cache lookups, a
recompile reason naming the size it saw, a graph break every fifth) and its forward and
backward graph records (a graph hash, a collective schedule). Then runs ``aotwatch report``
on it once per format, each in a fresh process of this tree's code, and prints the peak
resident memory of that process (``ru_maxrss``), its wall time and the output's size.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DAEMON = Path(__file__).resolve().parent.parent / "daemon"
sys.path.insert(0, str(DAEMON))

from aotwatch.core.archive import ARCHIVE_FILE  # noqa: E402
from aotwatch.core.records import empty_record, encode_record, new_record  # noqa: E402

FORMATS = ("table", "html")


def compile_records(rank: int, index: int) -> list[dict]:
    """One compile of a rank: its frame record and its forward and backward graphs."""
    common = {
        "job_name": "bench",
        "rank": rank,
        "world_size": 8,
        "hostname": f"node{rank // 8}",
        "pid": 1000 + rank,
        "compile_id": f"{index % 2000}/{index // 2000}",
        "frame": {"co_name": "forward", "filename": "/srv/train/model.py", "line": 40 + index},
    }
    frame = new_record(
        **common,
        durations_s={"total": 1.5, "dynamo": 1.4, "aot_autograd": 1.0, "inductor": 0.7},
        cache={"fx_graph": {"miss": 2}, "aot_autograd": {"miss": 1}},
        recompile_reason=f"{index % 2000}/0: tensor 'x' size mismatch at index 0. "
        f"expected 32, actual {index}"
        if index
        else None,
        recompile_category="size_mismatch" if index else None,
        graph_breaks=[
            {"reason": "Data-dependent branching", "category": "gb0170", "user_frame": None}
        ]
        if index % 5 == 0
        else [],
    )
    graphs = [
        new_record(
            **common,
            graph=graph,
            graph_hash=f"{rank == 1 and index % 1000 == 7}{index:015x}",  # a few divergences
            nodes=120 + index % 50,
            inputs={**empty_record()["inputs"], "total": 8, "data": 1},
            outputs={"non_alias": 2, "alias_of_input": 1},
            mutation_placement={"in_graph": 1, "out_of_graph": 0},
            collectives=["all_reduce(sum, 0) f32[4096]", "all_gather_into_tensor(0) bf16[8, 512]"],
            collective_hash=f"{index:016x}",
            durations_s={"backward": 0.05} if graph == "backward" else {},
        )
        for graph in ("forward", "backward")
    ]
    return [frame, *graphs]


def write_archive(directory: Path, records: int, ranks: int) -> int:
    """An archive of about ``records`` records; its size in bytes."""
    path = directory / ARCHIVE_FILE
    written = 0
    with path.open("wb") as out:
        index = 0
        while written < records:
            for rank in range(ranks):
                batch = compile_records(rank, index)[: records - written]
                out.write(b"".join(encode_record(record) for record in batch))
                written += len(batch)
            index += 1
    return path.stat().st_size


def run_report(
    code: Path, archive: Path, output_format: str, output: Path
) -> tuple[float, float, int]:
    """Peak RSS (MiB) and wall seconds of one ``aotwatch report`` (of the package in
    ``code``), and its output's bytes."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(code), os.environ.get("PYTHONPATH", "")]),
    }
    command = [sys.executable, "-m", "aotwatch.cli", "report", str(archive)]
    command += ["--format", output_format, "-o", str(output)]
    started = time.monotonic()
    with subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True) as process:
        errors = process.stderr.read()
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.monotonic() - started
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(command)}: exit {process.returncode}: {errors}")
    return usage.ru_maxrss / 1024, seconds, output.stat().st_size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=300_000)
    parser.add_argument("--ranks", type=int, default=8)
    parser.add_argument(
        "--code",
        type=Path,
        default=DAEMON,
        help="the directory that holds the aotwatch package to measure (default: this tree's)",
    )
    args = parser.parse_args()
    directory = Path(tempfile.mkdtemp(prefix="aotwatch-report-memory-"))
    try:
        size = write_archive(directory, args.records, args.ranks)
        print(f"{args.records} records, {args.ranks} ranks, archive {size / 2**20:.0f} MiB\n")
        print("| format | peak RSS (MiB) | wall (s) | output (KiB) |")
        print("| --- | --- | --- | --- |")
        for output_format in FORMATS:
            output = directory / f"report.{output_format}"
            rss, seconds, written = run_report(args.code, directory, output_format, output)
            print(f"| {output_format} | {rss:.0f} | {seconds:.1f} | {written / 1024:.0f} |")
    finally:
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
