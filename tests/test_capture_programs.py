"""Each program's exported counts equal what torch's own compilers report."""

from __future__ import annotations

import dataclasses
import logging
from collections import Counter

import pytest
import torch

from aotwatch.export.collector import exposition
from helpers import scrape
from programs import PROGRAMS, Truth, observed, run_with_truth, subclasses, truth_backend

# What each program exists to show: the truth must carry it, or the comparison proves nothing.
FEATURES = {
    "input_mutation": lambda t: t.mutations["data"] == 1 and t.placement["in_graph"] == 1,
    "param_update_under_no_grad": lambda t: t.mutations["under_no_grad"] == 1,
    "output_aliases_input": lambda t: t.outputs["alias_of_input"] == 1,
    "outputs_view_one_intermediate": lambda t: t.intermediate_bases == 1,
    "effect_token": lambda t: t.tokens["forward"] == 1,
    "graph_break": lambda t: t.graphs["inference"] == 2,
    "shape_recompile": lambda t: t.graphs["inference"] == 2,
    "training_step": lambda t: (
        t.graphs["forward"] == 1
        and t.saved["tensors"] >= 1
        and t.saved_bytes > 0
        and t.static_inputs == 4
        and t.donated_buffers >= 1
    ),
    "dynamic_backward": lambda t: (
        t.saved["symints"] >= 1 and t.saved["tensors"] >= 1 and t.saved_bytes == 0
    ),
    "channels_last_backward": lambda t: t.tangent_layouts == {"channels_last": 1, "strided": 1},
    "dropout_rng": lambda t: t.graphs["backward"] == 1 and t.rng_functionalized == 0,
}


def _fresh_truth(name: str) -> Truth:
    torch._dynamo.reset()
    truth = run_with_truth(name)
    torch._dynamo.reset()
    return truth


@pytest.mark.parametrize("name", PROGRAMS)
def test_custom_backend_counts_equal_torch_metadata(capture, name):
    """Captured while a custom aot_autograd backend compiles: equal to what it was handed."""
    truth = Truth()
    PROGRAMS[name](truth_backend(truth), "cpu")
    assert FEATURES[name](truth), truth
    snapshot = capture.sink.snapshot()
    assert observed(snapshot) == truth
    assert scrape(capture.url) == exposition(snapshot).decode()


@pytest.mark.parametrize("name", PROGRAMS)
def test_aot_eager_counts_equal_torch_metadata(capture, name):
    truth = _fresh_truth(name)
    capture.sink.aggregate.__init__()  # forget the truth run
    PROGRAMS[name]("aot_eager", "cpu")
    assert observed(capture.sink.snapshot()) == truth


@pytest.mark.parametrize("name", ["training_step", "input_mutation", "effect_token"])
def test_inductor_counts_equal_torch_metadata(capture, name):
    """Inductor decomposes differently (other node counts); all metadata counts must agree."""
    truth = _fresh_truth(name)
    capture.sink.aggregate.__init__()
    PROGRAMS[name]("inductor", "cpu")
    seen = observed(capture.sink.snapshot())
    assert dataclasses.replace(seen, nodes=None) == dataclasses.replace(truth, nodes=None)
    assert set(seen.nodes) == set(truth.nodes)


def _frame_metrics():
    return [m for m in torch._dynamo.utils.get_compilation_metrics() if m.is_forward]


def _counter(snapshot, metric, **labels):
    from aotwatch.core.metrics import BY_NAME

    names = BY_NAME[metric].labels
    return sum(
        value
        for key, value in snapshot.values.get(metric, {}).items()
        if all(dict(zip(names, key, strict=True))[k] == v for k, v in labels.items())
    )


def test_graph_breaks_and_frames_equal_dynamo_counters(capture):
    torch._dynamo.utils.clear_compilation_metrics()
    before = sum(torch._dynamo.utils.counters["graph_break"].values())
    PROGRAMS["graph_break"]("aot_eager", "cpu")
    breaks = sum(torch._dynamo.utils.counters["graph_break"].values()) - before
    snapshot = capture.sink.snapshot()
    assert breaks == 1
    assert _counter(snapshot, "torch_compile_graph_breaks") == breaks
    assert _counter(snapshot, "torch_compile_graph_breaks", reason="gb0059") == breaks
    assert _counter(snapshot, "torch_compile_frames") == len(_frame_metrics())


def test_recompile_counted_with_its_category(capture):
    torch._dynamo.utils.clear_compilation_metrics()
    PROGRAMS["shape_recompile"]("aot_eager", "cpu")
    reasons = [m.recompile_reason for m in _frame_metrics() if m.recompile_reason]
    snapshot = capture.sink.snapshot()
    assert len(reasons) == 1 and "size mismatch" in reasons[0]
    assert _counter(snapshot, "torch_compile_recompiles", reason="shape") == len(reasons)
    assert _counter(snapshot, "torch_compile_recompiles") == len(reasons)
    total_s = sum(m.entire_frame_compile_time_s for m in _frame_metrics())
    histogram = snapshot.histograms["torch_compile_duration_seconds"][("default", "0", "cpu")]
    assert histogram.count == len(_frame_metrics())
    assert histogram.sum == pytest.approx(total_s)
    phase_total = snapshot.values["torch_compile_phase_seconds"][("default", "0", "cpu", "total")]
    assert phase_total == pytest.approx(total_s)


def test_records_carry_the_metrics_md_fields(capture, tmp_path):
    from aotwatch.core.archive import read_archive
    from aotwatch.core.records import as_dict

    torch._dynamo.utils.clear_compilation_metrics()
    PROGRAMS["training_step"]("aot_eager", "cpu")
    (metrics,) = _frame_metrics()
    records = [as_dict(r) for r in read_archive(tmp_path / "archive")]
    kinds = sorted(r["graph"] or "frame" for r in records)
    assert kinds == ["backward", "forward", "frame"]
    by_kind = {r["graph"]: r for r in records}
    forward, backward, frame = by_kind["forward"], by_kind["backward"], by_kind[None]
    assert forward["compile_id"] == backward["compile_id"] == frame["compile_id"] == "0/0"
    assert len({r["record_id"] for r in records}) == 3
    assert forward["device"] == backward["device"] == frame["device"] == "cpu"
    assert (forward["rank"], forward["world_size"]) == (0, 1)
    assert len(forward["graph_hash"]) == 16 and forward["graph_hash"] != backward["graph_hash"]
    assert backward["durations_s"]["backward"] > 0
    assert frame["frame"] == {
        "co_name": metrics.co_name,
        "filename": metrics.co_filename,
        "line": metrics.co_firstlineno,
    }
    assert frame["durations_s"]["total"] == metrics.entire_frame_compile_time_s


def test_lazy_backward_is_recorded_without_the_optional_hook(tmp_path, monkeypatch):
    """Older torch (2.11) has no _AutogradBackwardCompiler: CompilationMetrics still suffice."""
    import aotwatch
    from aotwatch.capture import hooks
    from helpers import test_config

    optional = "_AutogradBackwardCompiler._prepare_lazy_backward_context"
    monkeypatch.setattr(hooks, "HOOKS", tuple(h for h in hooks.HOOKS if h.attr != optional))
    no_backward, truth = (
        _fresh_truth("outputs_view_one_intermediate"),
        _fresh_truth("training_step"),
    )
    attachment = aotwatch.attach(test_config(tmp_path))
    try:
        PROGRAMS["outputs_view_one_intermediate"]("aot_eager", "cpu")  # its backward never runs
        attachment.sink.aggregate.__init__()
        torch._dynamo.reset()  # compile ids start again at 0/0
        PROGRAMS["training_step"]("aot_eager", "cpu")
        assert no_backward.graphs["forward"] == 1 and "backward" not in no_backward.graphs
        assert observed(attachment.sink.snapshot()) == truth
    finally:
        aotwatch.detach()
        torch._dynamo.reset()


def test_subclass_tensors_by_role_and_type_equal_the_tensors_themselves(capture):
    """Read from the tensors handed in and out, not from torch's metadata: a TwoTensor and a
    jagged NestedTensor, each with a backward (their outputs come back as tangents)."""
    from torch.testing._internal.two_tensor import TwoTensor

    torch._dynamo.reset()
    capture.sink.aggregate.__init__()
    two = TwoTensor(torch.randn(4, requires_grad=True), torch.randn(4, requires_grad=True))
    jagged = torch.nested.nested_tensor(
        [torch.randn(2, 3), torch.randn(4, 3)], layout=torch.jagged, requires_grad=True
    )
    calls = [
        (torch.compile(lambda x, y: (x * 2 + y).sin(), backend="aot_eager"), (two, torch.ones(4))),
        (torch.compile(lambda x: x.sin() * 2, backend="aot_eager"), (jagged,)),
    ]
    expected = {"input": Counter(), "output": Counter(), "tangent": Counter()}
    for compiled, args in calls:
        out = compiled(*args)
        (out.values() if out.is_nested else out).sum().backward()
        expected["input"] += subclasses(args)
        expected["output"] += subclasses([out])
        expected["tangent"] += subclasses([out] if out.requires_grad else [])
    torch._dynamo.reset()
    seen = {role: Counter() for role in expected}
    table = capture.sink.snapshot().values["torch_compile_subclass_tensors"]
    for (*_, role, kind), count in table.items():
        seen[role][kind] += int(count)
    assert expected["input"] == {"TwoTensor": 1, "NestedTensor": 1}
    assert seen == expected


def _opaque_scale(x):
    return x * 3


class _Kept(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_cache_bypasses_by_category_equal_torch_log(capture):
    """Each AOTAutogradCache bypass torch logs ("Bypassing autograd cache due to: ...") is
    counted once, under the category of torch's own text."""
    import torch._functorch.config as functorch_config
    import torch._inductor.config as inductor_config
    from torch._dynamo.utils import counters

    from aotwatch.core.categories import cache_bypass_category

    opaque = torch._dynamo.allow_in_graph(_opaque_scale)
    before = counters["aot_autograd"]["autograd_cache_bypass"]
    torch_log = logging.getLogger("torch._functorch._aot_autograd.autograd_cache")
    kept, level = _Kept(), torch_log.level
    torch_log.addHandler(kept)
    torch_log.setLevel(logging.INFO)
    try:
        with functorch_config.patch(force_autograd_cache=True):
            torch.compile(lambda x: opaque(x.sin()), backend="aot_eager")(torch.randn(4))
            with inductor_config.patch(freezing=True):
                torch.compile(lambda x: x.cos() * 2, backend="aot_eager")(torch.randn(4))
    finally:
        torch_log.removeHandler(kept)
        torch_log.setLevel(level)
    logged = [
        cache_bypass_category(str(record.args[0]), type(record.args[0]).__name__)
        for record in kept.records
        if record.getMessage().startswith("Bypassing autograd cache")
    ]
    assert Counter(logged) == {"unsupported_op": 1, "freezing": 1}
    assert counters["aot_autograd"]["autograd_cache_bypass"] - before == len(logged)
    snapshot = capture.sink.snapshot()
    seen = {
        reason: _counter(snapshot, "torch_compile_aot_autograd_cache_bypasses", reason=reason)
        for reason in ("unsupported_op", "freezing")
    }
    assert seen == Counter(logged)
    assert _counter(snapshot, "torch_compile_cache_lookups", result="bypass") == len(logged)


def test_tangent_layouts_read_from_memory_format_meta():
    """Named formats and static strides, and sizes torch would not make (unknown, skipped)."""
    from types import SimpleNamespace as Meta

    from aotwatch.capture.metadata import _layout

    def strided(size, stride):
        return Meta(memory_format=None, size=size, stride=stride)

    assert _layout(Meta(memory_format=torch.channels_last_3d)) == "channels_last_3d"
    assert _layout(strided((2, 3, 4, 5), (60, 20, 5, 1))) == "contiguous"
    assert _layout(strided((2, 3, 4, 5), (60, 1, 15, 3))) == "channels_last"
    assert _layout(strided((3, 4), (1, 3))) == "strided"
    assert _layout(strided((2, -3), (1, 1))) is None
    assert _layout(Meta(memory_format=None, size=None, stride=None)) is None


def test_recompile_headroom_is_torch_limit_against_the_most_compiled_frame(capture):
    """A frame compiled twice (a shape recompile) under recompile_limit 3: one recompile left,
    as torch's own compile ids and config say."""
    torch._dynamo.utils.clear_compilation_metrics()
    with torch._dynamo.config.patch(recompile_limit=3, automatic_dynamic_shapes=False):
        compiled = torch.compile(lambda x: x * 2, backend="aot_eager")
        for size in (2, 3):
            compiled(torch.ones(size))
        accumulated = torch._dynamo.config.accumulated_recompile_limit
    compiles = max(int(m.compile_id.split("/")[1]) + 1 for m in _frame_metrics())
    values = capture.sink.snapshot().values
    rank = ("default", "0", "cpu")
    assert compiles == 2
    assert values["torch_compile_worst_frame_compiles"] == {rank: compiles}
    assert values["torch_compile_recompile_limit"] == {
        (*rank, "per_frame"): 3,
        (*rank, "accumulated"): accumulated,
    }
