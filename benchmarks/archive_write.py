"""What an archive append costs: ``ArchiveWriter.write`` of one line and of a batch of 100,
as a collector appends a push (whole lines or nothing: see ``aotwatch.core.archive``).

    python benchmarks/archive_write.py [--directory DIR] [--writes 20000]

DIR should be a tmpfs (``mount -t tmpfs -o size=512m tmpfs DIR``) to measure the calls
rather than the disk. Run it with ``PYTHONPATH`` naming another checkout's ``daemon/`` to
compare two versions, interleaved.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

from aotwatch.core.archive import ArchiveWriter

LINE = b'{"x": "' + b"y" * 1000 + b'"}\n'


def per_write_us(directory: str, data: bytes, writes: int) -> list[float]:
    """Microseconds per write, five rounds of ``writes`` each, each to a new file."""
    rounds = []
    for _ in range(5):
        writer = ArchiveWriter(tempfile.mkdtemp(prefix="archive-write-", dir=directory))
        start = time.perf_counter()
        for _ in range(writes):
            writer.write(data)
        rounds.append((time.perf_counter() - start) / writes * 1e6)
        writer.close()
    return rounds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--directory", default=None, help="where to write (a tmpfs)")
    parser.add_argument("--writes", type=int, default=20_000)
    args = parser.parse_args()
    print("| write | µs per write, 5 rounds | median |")
    print("| --- | --- | --- |")
    for name, data, writes in (
        ("one 1 KB line", LINE, args.writes),
        ("a batch of 100 lines (100 KB)", LINE * 100, args.writes // 100),
    ):
        rounds = per_write_us(args.directory, data, writes)
        low, high, median = min(rounds), max(rounds), statistics.median(rounds)
        print(f"| {name} | {low:.1f}–{high:.1f} | {median:.1f} |")


if __name__ == "__main__":
    main()
