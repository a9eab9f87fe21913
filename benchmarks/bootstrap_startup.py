"""What the launcher bootstrap (``aotwatch trace``, ``aotwatch env``) costs a Python process
that never compiles: interpreter start-up with and without the bootstrap's variables.

    python benchmarks/bootstrap_startup.py [--runs 200]

Runs ``python -c pass`` (no torch) and ``python -c "import torch"`` alternately plain,
with the site directory on PYTHONPATH only (tracing off), and traced (AOTWATCH_TRACE set),
in a shuffled order; prints the median and p90 of each and the median differences.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time

from aotwatch.bootstrap import environment, site_directory


def _run(code: str, env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], env=env, check=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as archive:
        plain = {k: v for k, v in os.environ.items() if not k.startswith("AOTWATCH_")}
        traced = {**plain, **environment(archive)}
        path_only = {**plain, "PYTHONPATH": str(site_directory())}
        modes = {"plain": plain, "site dir only": path_only, "traced": traced}
        for code, label in (("pass", "python -c pass"), ("import torch", "import torch")):
            runs = args.runs if code == "pass" else max(args.runs // 10, 10)
            times: dict[str, list[float]] = {mode: [] for mode in modes}
            order = [mode for mode in modes for _ in range(runs)]
            random.shuffle(order)
            for mode in order:
                times[mode].append(_run(code, modes[mode]))
            print(f"\n{label} ({runs} runs each)\n")
            print("| mode | median ms | p90 ms | median − plain ms |")
            print("| --- | --- | --- | --- |")
            base = statistics.median(times["plain"])
            for mode, values in times.items():
                values.sort()
                median, p90 = statistics.median(values), values[int(len(values) * 0.9)]
                print(
                    f"| {mode} | {median * 1e3:.1f} | {p90 * 1e3:.1f} "
                    f"| {(median - base) * 1e3:+.1f} |"
                )


if __name__ == "__main__":
    main()
