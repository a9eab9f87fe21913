"""Compiles that fail: recorded as failures, and the user gets exactly what torch raises
without aotwatch (the same exception type, message and cause)."""

from __future__ import annotations

import pytest
import torch

import aotwatch
from helpers import test_config


def failing_backend(gm, example_inputs):
    raise ValueError("the backend says no")


def backend_error() -> None:
    torch.compile(lambda x: x + 1, backend=failing_backend)(torch.ones(2))


def recompile_limit_hit() -> None:
    patch = torch._dynamo.config.patch(
        recompile_limit=1, fail_on_recompile_limit_hit=True, automatic_dynamic_shapes=False
    )
    with patch:
        compiled = torch.compile(lambda x: x * 3, backend="aot_eager")
        for size in (2, 3):
            compiled(torch.ones(size))


def raised(program) -> tuple:
    """What ``program`` raises from fresh Dynamo caches: type, message, cause."""
    torch._dynamo.reset()
    with pytest.raises(Exception) as info:
        program()
    torch._dynamo.reset()
    error = info.value
    return type(error), str(error), type(error.__cause__), str(error.__cause__)


@pytest.mark.parametrize(
    ("program", "fail_type"),
    [(backend_error, "backend_compiler_failed"), (recompile_limit_hit, "recompile_limit")],
)
def test_a_failed_compile_is_recorded_and_its_exception_is_unchanged(tmp_path, program, fail_type):
    without_aotwatch = raised(program)
    attachment = aotwatch.attach(test_config(tmp_path))
    try:
        with_aotwatch = raised(program)
        failures = attachment.sink.snapshot().values["torch_compile_frame_failures"]
    finally:
        aotwatch.detach()
    assert with_aotwatch == without_aotwatch
    assert failures == {("default", "0", "cpu", fail_type): 1}


def test_past_the_recompile_limit_training_runs_eagerly_and_the_failure_is_counted(tmp_path):
    attachment = aotwatch.attach(test_config(tmp_path))
    torch._dynamo.reset()
    try:
        with torch._dynamo.config.patch(recompile_limit=1, automatic_dynamic_shapes=False):
            compiled = torch.compile(lambda x: x * 3, backend="aot_eager")
            outputs = [compiled(torch.ones(size)) for size in (2, 3, 4)]
        values = attachment.sink.snapshot().values
    finally:
        aotwatch.detach()
        torch._dynamo.reset()
    assert [out.tolist() for out in outputs] == [[3.0] * size for size in (2, 3, 4)]
    assert values["torch_compile_frame_failures"] == {("default", "0", "cpu", "recompile_limit"): 1}
    assert values["torch_compile_recompiles"] == {("default", "0", "cpu", "shape"): 1}
