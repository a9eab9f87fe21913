"""What does aotwatch capture cost? Compile time of the first call, and steady-state step time.

Each measurement runs in a fresh process with a fresh, empty TORCHINDUCTOR_CACHE_DIR, so every
compile is cold. Three modes are compared side by side, in a random order within each repetition:

- ``baseline``: plain torch.compile;
- ``aotwatch``: ``aotwatch.attach()`` (with the /metrics endpoint off) before compiling;
- ``torch_trace``: torch's structured trace logging (``TORCH_TRACE=<a temp dir>``).

The compile time is the wall time of the first ``compiled(x).sum().backward()``: dynamo, the
forward compile and the lazy backward compile. Every mode imports the same torch compile modules
before it (see ``import_compile_modules``); the time ``aotwatch.attach()`` itself takes is
reported apart. The step phase runs baseline and aotwatch only and times each training step
(forward, backward, SGD step) after a warm-up.

    python benchmarks/capture_overhead.py --reps 3 --json results.json

With ``--child MODEL BACKEND MODE`` the script makes one measurement and prints one JSON line.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

MODELS = ("mlp", "transformer")
BACKENDS = ("aot_eager", "inductor")
COMPILE_MODES = ("baseline", "aotwatch", "torch_trace")
STEP_MODES = ("baseline", "aotwatch")  # baseline: the same process with aotwatch detached
STEP_BLOCKS = 10
STEP_MODEL = "mlp"
WARMUP_STEPS = 20


# -- child: one measurement in a fresh process --------------------------------------------------


def build_model(name: str) -> tuple[Any, Any]:
    """The model and an input batch: a small MLP, or one pre-norm transformer block."""
    import torch
    from torch import nn

    if name == "mlp":
        model = nn.Sequential(
            nn.Linear(64, 256), nn.GELU(), nn.Linear(256, 256), nn.GELU(), nn.Linear(256, 64)
        )
        return model, torch.randn(32, 64)

    class Block(nn.Module):
        def __init__(self, d: int = 64, heads: int = 4) -> None:
            super().__init__()
            self.ln1 = nn.LayerNorm(d)
            self.attn = nn.MultiheadAttention(d, heads, batch_first=True)
            self.ln2 = nn.LayerNorm(d)
            self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.ln1(x)
            x = x + self.attn(h, h, h, need_weights=False)[0]
            return x + self.mlp(self.ln2(x))

    return Block(), torch.randn(4, 32, 64)


def import_compile_modules() -> None:
    """Import the torch modules that ``aotwatch.attach()`` imports, in every mode.

    torch imports them lazily during the first compile; without this, attach would move their
    import time out of the timed first call in the aotwatch mode only.
    """
    import importlib

    import torch._dynamo  # noqa: F401 - before runtime_wrappers (circular import)

    for name in ("graph_capture", "graph_compile", "runtime_wrappers", "aot_autograd_result"):
        importlib.import_module(f"torch._functorch._aot_autograd.{name}")


def attach_aotwatch() -> Any:
    """Attach aotwatch with the /metrics endpoint off; returns the attachment."""
    import aotwatch
    from aotwatch.core.config import Config, ExportConfig

    return aotwatch.attach(Config(export=ExportConfig(enabled=False)))


def time_capture_work() -> dict[str, float]:
    """Accumulate the wall time spent inside aotwatch's own capture work (the session methods
    the hooks call), so its cost can be read apart from the noise of whole compiles."""
    from aotwatch.capture.session import CaptureSession

    spent = {"own_s": 0.0}

    def timed(method: Any) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                spent["own_s"] += time.perf_counter() - start

        return wrapper

    for name in (
        "tokens_unlifted",
        "graph_logged",
        "cache_hit",
        "graph_compiled",
        "backward_compiled",
        "backward_compiling",
        "compilation_metrics",
    ):
        setattr(CaptureSession, name, timed(getattr(CaptureSession, name)))
    return spent


def captured_counts(attachment: Any) -> dict[str, int]:
    """How many records aotwatch received, and how many capture errors it counted."""
    values = attachment.sink.snapshot().values
    return {
        "records": int(sum(values.get("aotwatch_records_received", {}).values())),
        "capture_errors": int(sum(values.get("aotwatch_capture_errors", {}).values())),
    }


def median_step_seconds(compiled: Any, model: Any, x: Any, steps: int) -> float:
    """Median wall time of one training step (forward, backward, SGD step), after a warm-up."""
    import torch

    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)

    def step() -> None:
        compiled(x).sum().backward()
        optimizer.step()
        optimizer.zero_grad()

    for _ in range(WARMUP_STEPS):
        step()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def interleaved_step_seconds(compiled: Any, model: Any, x: Any, steps: int) -> dict[str, float]:
    """Step time with aotwatch attached and detached, in alternating blocks of one process.

    The compiled code is the same either way; what could differ is a hook that runs per step.
    Comparing within one process removes the process-to-process spread (after a compile, a
    process's step time settles at one of two levels, 0.57 or 0.95 ms here, in either mode).
    """
    import aotwatch

    blocks: dict[str, list[float]] = {"aotwatch_step_s": [], "detached_step_s": []}
    for block in range(STEP_BLOCKS):
        if block % 2:
            aotwatch.detach()
        else:
            attach_aotwatch()
        key = "detached_step_s" if block % 2 else "aotwatch_step_s"
        blocks[key].append(median_step_seconds(compiled, model, x, steps))
    aotwatch.detach()
    return {key: statistics.median(times) for key, times in blocks.items()}


def run_child(model_name: str, backend: str, mode: str, steps: int) -> dict[str, Any]:
    """Compile one model cold and time its first call (and, if ``steps``, its steady state)."""
    import torch

    result: dict[str, Any] = {"torch": torch.__version__}
    import_compile_modules()
    attachment, spent = None, {}
    if mode == "aotwatch":
        spent = time_capture_work()
        start = time.perf_counter()
        attachment = attach_aotwatch()
        result["attach_s"] = time.perf_counter() - start
    torch.manual_seed(0)
    model, x = build_model(model_name)
    compiled = torch.compile(model, backend=backend)
    start = time.perf_counter()
    compiled(x).sum().backward()
    result["compile_s"] = time.perf_counter() - start
    if steps:
        result.update(interleaved_step_seconds(compiled, model, x, steps))
    if attachment is not None:
        result.update(captured_counts(attachment), own_s=spent["own_s"])
    result["load1"] = os.getloadavg()[0]  # to tell runs on a busy machine apart
    return result


# -- parent: orchestration ---------------------------------------------------------------------


def child_env(mode: str, cache_dir: str, trace_dir: str) -> dict[str, str]:
    """The environment of one child: a cold inductor cache, and TORCH_TRACE only when asked."""
    env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=cache_dir, PYTHONWARNINGS="ignore")
    env.pop("TORCH_TRACE", None)
    if mode == "torch_trace":
        env["TORCH_TRACE"] = trace_dir
    return env


def dir_bytes(path: str) -> int:
    """Total size of the files under ``path``."""
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def run_measurement(model: str, backend: str, mode: str, steps: int) -> dict[str, Any]:
    """Run one child process (a cold Inductor cache) and return its result; exit if it fails."""
    with tempfile.TemporaryDirectory(prefix="aotwatch-bench-") as tmp:
        cache_dir, trace_dir = os.path.join(tmp, "inductor"), os.path.join(tmp, "trace")
        cmd = [sys.executable, __file__, "--child", model, backend, mode, "--steps", str(steps)]
        proc = subprocess.run(
            cmd, env=child_env(mode, cache_dir, trace_dir), capture_output=True, text=True
        )
        if proc.returncode != 0:
            sys.exit(f"{' '.join(cmd[1:])} failed:\n{proc.stderr[-4000:]}")
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        if mode == "torch_trace":
            result["trace_bytes"] = dir_bytes(trace_dir)
    return result


def plan(reps: int, pairs: list[tuple[str, str]], modes: tuple[str, ...]) -> list[tuple]:
    """(rep, model, backend, mode) in run order: the modes shuffled within each rep and pair."""
    runs = []
    for rep in range(reps):
        for model, backend in pairs:
            order = random.sample(modes, len(modes))
            runs.extend((rep, model, backend, mode) for mode in order)
    return runs


def execute(phase: str, runs: list[tuple], steps: int, started: float) -> list[dict[str, Any]]:
    """Run every planned measurement, reporting progress on stderr."""
    results = []
    for i, (rep, model, backend, mode) in enumerate(runs, 1):
        result = run_measurement(model, backend, mode, steps)
        results.append(
            {"phase": phase, "rep": rep, "model": model, "backend": backend, "mode": mode, **result}
        )
        elapsed = time.monotonic() - started
        shown = f"compile {result['compile_s']:.2f} s"
        if steps:
            shown += (
                f", step {result['aotwatch_step_s'] * 1e3:.3f} ms attached,"
                f" {result['detached_step_s'] * 1e3:.3f} ms detached"
            )
        print(
            f"[{phase} {i}/{len(runs)}, {elapsed / 60:.1f} min] {model} {backend} {mode}: {shown}",
            file=sys.stderr,
            flush=True,
        )
    return results


def summarize(
    results: list[dict[str, Any]], key: str, modes: tuple[str, ...]
) -> list[dict[str, Any]]:
    """Per (model, backend): the median of ``key`` per mode, and each mode's ratio to baseline.

    ``ratio`` is the ratio of medians; ``paired`` is the median of the per-rep ratios.
    """
    rows = []
    pairs = dict.fromkeys((r["model"], r["backend"]) for r in results)
    for model, backend in pairs:
        by_rep: dict[int, dict[str, float]] = {}
        for r in results:
            if (r["model"], r["backend"]) == (model, backend):
                by_rep.setdefault(r["rep"], {})[r["mode"]] = r[key]
        medians = {m: statistics.median(v[m] for v in by_rep.values()) for m in modes}
        row = {"model": model, "backend": backend, "n": len(by_rep), "median": medians}
        row["ratio"] = {m: medians[m] / medians["baseline"] for m in modes[1:]}
        row["paired"] = {
            m: statistics.median(v[m] / v["baseline"] for v in by_rep.values()) for m in modes[1:]
        }
        rows.append(row)
    return rows


def format_table(
    rows: list[dict[str, Any]], modes: tuple[str, ...], unit: str, scale: float
) -> str:
    """A Markdown table of ``summarize`` rows, values in ``unit`` (seconds times ``scale``)."""
    others = modes[1:]
    header = (
        ["model", "backend", "n"]
        + [f"{m} ({unit})" for m in modes]
        + [f"{m}/baseline" for m in others]
        + [f"{m}/baseline paired" for m in others]
    )
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [row["model"], row["backend"], str(row["n"])]
        cells += [f"{row['median'][m] * scale:.3f}" for m in modes]
        cells += [f"{row['ratio'][m]:.3f}" for m in others]
        cells += [f"{row['paired'][m]:.3f}" for m in others]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_own_time(results: list[dict[str, Any]]) -> str:
    """Per (model, backend): aotwatch's own time in ms and as a share of the compile."""
    lines = ["| model | backend | own (ms) | share of compile |", "|---|---|---|---|"]
    pairs = dict.fromkeys((r["model"], r["backend"]) for r in results if r["mode"] == "aotwatch")
    for model, backend in pairs:
        runs = [
            r
            for r in results
            if (r["model"], r["backend"], r["mode"]) == (model, backend, "aotwatch")
        ]
        own = statistics.median(r["own_s"] for r in runs)
        share = statistics.median(r["own_s"] / r["compile_s"] for r in runs)
        lines.append(f"| {model} | {backend} | {own * 1e3:.2f} | {share:.4%} |")
    return "\n".join(lines)


def aotwatch_source() -> str:
    """The git commit and a digest of aotwatch's source files, to tell which code was measured."""
    import aotwatch

    root = Path(aotwatch.__file__).parent
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(path.read_bytes())
    git = ["git", "-C", str(root), "rev-parse", "--short", "HEAD"]
    commit = subprocess.run(git, capture_output=True, text=True).stdout.strip() or "no git"
    return f"{commit} (source {digest.hexdigest()[:12]})"


def machine() -> dict[str, Any]:
    """Where and with what the benchmark ran."""
    import torch

    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "host": platform.node(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }


def run_parent(args: argparse.Namespace) -> None:
    """Run both phases, print the tables, optionally write the raw results."""
    started = time.monotonic()
    source = aotwatch_source()
    pairs = [(m, b) for m in args.models for b in args.backends]
    compile_runs = plan(args.reps, pairs, COMPILE_MODES)
    results = execute("compile", compile_runs, 0, started)
    step_results = []
    if args.steps:
        step_runs = [
            (rep, STEP_MODEL, b, "aotwatch") for rep in range(args.reps) for b in args.backends
        ]
        for run in execute("steps", step_runs, args.steps, started):
            for mode in STEP_MODES:  # one process gives both sides of the comparison
                key = "aotwatch_step_s" if mode == "aotwatch" else "detached_step_s"
                step_results.append({**run, "mode": mode, "step_s": run[key]})
    info = machine()
    info["aotwatch"], info["aotwatch_at_end"] = source, aotwatch_source()
    if info["aotwatch_at_end"] != source:
        print(f"warning: aotwatch's source changed during the run (was {source})", file=sys.stderr)
    print(f"{info['date']}  torch {info['torch']}  {info['cpus']} CPUs  reps {args.reps}")
    print(f"aotwatch {source}")
    print("\nCompile time of the first call, forward + backward (median seconds):\n")
    print(format_table(summarize(results, "compile_s", COMPILE_MODES), COMPILE_MODES, "s", 1))
    attach = statistics.median(r["attach_s"] for r in results if r["mode"] == "aotwatch")
    print(f"\naotwatch.attach() itself, not in the times above: median {attach:.3f} s")
    print("\nTime inside aotwatch's capture work during the first call (median per process):\n")
    print(format_own_time(results))
    if step_results:
        print(
            f"\nSteady-state step time, attached vs detached in {STEP_BLOCKS} alternating blocks"
            f" of {args.steps} steps in each process (median ms; baseline = detached):\n"
        )
        summary = summarize(step_results, "step_s", STEP_MODES)
        print(format_table(summary, STEP_MODES, "ms", 1e3))
    if args.json:
        raw = {"machine": info, "args": vars(args), "results": results + step_results}
        Path(args.json).write_text(json.dumps(raw, indent=1) + "\n")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=5, help="processes per mode and case")
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument("--backends", nargs="+", choices=BACKENDS, default=list(BACKENDS))
    parser.add_argument(
        "--steps", type=int, default=300, help="timed steps per process in the step phase (0: skip)"
    )
    parser.add_argument("--json", metavar="PATH", help="also write the raw results here")
    parser.add_argument(
        "--child", nargs=3, metavar=("MODEL", "BACKEND", "MODE"), help=argparse.SUPPRESS
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.child:
        print(json.dumps(run_child(*args.child, steps=args.steps)))
    else:
        run_parent(args)


if __name__ == "__main__":
    main()
