"""Run the test programs on CUDA with inductor; print aotwatch's counts next to torch's own.

Not part of CI: run it whenever a GPU is at hand, with whatever torch is installed there
(Ray is not needed)::

    PYTHONPATH=daemon python3 benchmarks/gpu_check.py [--device cuda]

aotwatch validates records with msgspec: on a machine without it and without an index,
carry its wheel (``pip download msgspec --only-binary=:all: --python-version X.Y -d wheels``
here, ``pip install wheels/msgspec-*.whl`` there) before the check.

For each program in ``tests/programs.py`` it runs the program under the truth backend
(what torch's compilers see) and under ``inductor``, with aotwatch attached to both, and
compares aotwatch's aggregate to the truth: every count must match (the node counts too
for the truth backend; inductor's graphs are not the truth backend's, so not for it).
Exit status: 0 all OK, 1 a mismatch or failure, 2 the device is not available.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))


def compact(truth: Any) -> str:
    """The counts of a Truth on one short line."""

    def counts(counter: Counter) -> str:
        return ",".join(f"{key}:{value}" for key, value in sorted(counter.items()) if value) or "-"

    return (
        f"graphs={counts(truth.graphs)} in={truth.inputs} mut={counts(truth.placement)} "
        f"out={counts(truth.outputs)} bases={truth.intermediate_bases} "
        f"tokens={counts(truth.tokens)} tangents={counts(truth.tangent_layouts)} "
        f"rng={truth.rng_functionalized}"
    )


def differences(seen: Any, truth: Any, with_nodes: bool) -> list[str]:
    """The Truth fields where aotwatch's sums differ from torch's."""
    return [
        f"{f.name}: aotwatch {getattr(seen, f.name)} torch {getattr(truth, f.name)}"
        for f in dataclasses.fields(truth)
        if (with_nodes or f.name != "nodes") and getattr(seen, f.name) != getattr(truth, f.name)
    ]


def missing_hooks(hooks: Any) -> list[str]:
    """The capture hooks that this torch could not take (each also counts a capture error)."""
    installed = {(id(item.owner), item.name) for item in hooks._installed}
    missing = []
    for hook in hooks.HOOKS:
        try:
            owner, name = hooks._resolve(hook)
        except Exception:  # noqa: BLE001 - this torch lacks it
            owner, name = None, None
        if (id(owner), name) not in installed:
            missing.append(f"{hook.module}.{hook.attr}")
    return missing


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="torch device type (default: cuda)")
    device = parser.parse_args().device
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="aotwatch-gpu-check-")

    import torch

    import aotwatch
    import programs
    from aotwatch.capture import hooks
    from aotwatch.core.aggregate import Aggregate
    from aotwatch.core.config import Config, ExportConfig

    if device.startswith("cuda") and not torch.cuda.is_available():
        print(f"CUDA is not available (torch {torch.__version__}); nothing checked.")
        return 2

    attachment = aotwatch.attach(Config(export=ExportConfig(port=0)))
    sink = attachment.sink

    def reset() -> None:
        sink.aggregate = Aggregate(attachment.config.limits.max_series_per_metric)

    def capture_errors() -> Counter:
        errors = sink.snapshot().values.get("aotwatch_capture_errors", {})
        return +Counter({labels[-1]: int(value) for labels, value in errors.items()})

    print(f"torch {torch.__version__}  aotwatch {aotwatch.__version__}  device {device}")
    if device.startswith("cuda"):
        print(f"CUDA {torch.version.cuda}  {torch.cuda.get_device_name()}")
    missing = missing_hooks(hooks)
    print(f"hooks installed: {len(hooks._installed)} of {len(hooks.HOOKS)}")
    for hook in missing:
        print(f"    not installed: {hook}")
    print(f"capture errors at attach: {dict(capture_errors()) or 'none'}")
    print(f"metrics: {attachment.url}\n")

    def report(name: str, backend: str, truth: Any) -> bool:
        """Print aotwatch's counts next to torch's; True when they agree."""
        snapshot = sink.snapshot()
        seen = programs.observed(snapshot)
        devices = sorted({labels[2] for labels in snapshot.values.get("torch_compile_graphs", {})})
        problems = differences(seen, truth, with_nodes=backend == "truth")
        problems += [
            f"device label {d!r}" for d in devices if d.split(":")[0] != device.split(":")[0]
        ]
        if errors := capture_errors():
            problems.append(f"capture errors {dict(errors)}")
        print(
            f"{name:<30} {backend:<8} {','.join(devices) or '-':<7} "
            f"{'MISMATCH' if problems else 'OK'}\n"
            f"    aotwatch {compact(seen)}\n    torch    {compact(truth)}"
        )
        for problem in problems:
            print(f"    !! {problem}")
        return not problems

    failures = 0
    for name, program in programs.PROGRAMS.items():
        backend = "truth"
        try:
            reset()
            truth = programs.run_with_truth(name, device)
            torch._dynamo.reset()
            failures += not report(name, backend, truth)
            backend = "inductor"
            reset()
            program(backend, device)
            torch._dynamo.reset()
            failures += not report(name, backend, truth)
        except Exception as err:  # noqa: BLE001 - report it, go on with the rest
            torch._dynamo.reset()
            failures += 1
            print(f"{name:<30} {backend:<8} FAILED {type(err).__name__}: {err}")

    print(f"\n{attachment.url}: torch_compile_graphs_total")
    with urllib.request.urlopen(attachment.url, timeout=10) as response:
        for line in response.read().decode().splitlines():
            if line.startswith("torch_compile_graphs_total"):
                print(f"    {line}")
    aotwatch.detach()
    print(f"\n{'all OK' if not failures else f'{failures} FAILED'}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
