"""What the launcher bootstrap (``aotwatch trace``, ``aotwatch env``) costs a Python process
that never compiles: interpreter start-up with and without the bootstrap's variables.

    python benchmarks/bootstrap_startup.py [--runs 200]

Runs ``python -c pass`` (no torch) and ``python -c "import torch"`` alternately plain,
with the site directory on PYTHONPATH only (tracing off), and traced (AOTWATCH_TRACE set),
in a shuffled order; prints the median and p90 of each and the median differences, and the
median time of the sitecustomize's own import as ``python -X importtime`` reports it (all
of the bootstrap's work, measured inside the process: steady on a loaded machine, where
start-up times are not).
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

from aotwatch.attachment.bootstrap import environment, site_directory


def _run(code: str, env: dict[str, str]) -> tuple[float, float]:
    """The start-up's wall time and the sitecustomize's import time (0 without one), in s."""
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", code],
        env=env,
        check=True,
        stderr=subprocess.PIPE,
        text=True,
    )
    wall = time.perf_counter() - start
    imports = [line.split("|") for line in done.stderr.splitlines()]
    site = [int(i[1]) for i in imports if len(i) == 3 and i[2].strip() == "sitecustomize"]
    return wall, sum(site) / 1e6


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
            runs = args.runs if code == "pass" else max(args.runs // 10, 1)
            times: dict[str, list[float]] = {mode: [] for mode in modes}
            site: dict[str, list[float]] = {mode: [] for mode in modes}
            order = [mode for mode in modes for _ in range(runs)]
            random.shuffle(order)
            for mode in order:
                wall, sitecustomize = _run(code, modes[mode])
                times[mode].append(wall)
                site[mode].append(sitecustomize)
            print(f"\n{label} ({runs} runs each)\n")
            print("| mode | median ms | p90 ms | median − plain ms | sitecustomize ms |")
            print("| --- | --- | --- | --- | --- |")
            base = statistics.median(times["plain"])
            for mode, values in times.items():
                values.sort()
                median, p90 = statistics.median(values), values[int(len(values) * 0.9)]
                print(
                    f"| {mode} | {median * 1e3:.1f} | {p90 * 1e3:.1f} "
                    f"| {(median - base) * 1e3:+.1f} | {statistics.median(site[mode]) * 1e3:.2f} |"
                )


if __name__ == "__main__":
    main()
