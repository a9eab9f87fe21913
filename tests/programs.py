"""Programs with known compile metadata, and a backend that reports what torch itself says.

``truth_backend`` is a custom ``aot_autograd`` backend whose compilers read
the live ``ViewAndMutationMeta`` from the TracingContext and the FX graph
they are handed: the reference that aotwatch's exported counts must equal.
Shared by the tests and by ``benchmarks/gpu_check.py`` (which runs them on CUDA).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any

import torch
from torch import nn

MUTATION_FLAGS = {
    "data": "mutates_data",
    "metadata": "mutates_metadata",
    "storage_metadata": "mutates_storage_metadata",
    "storage_resize": "mutation_inductor_storage_resize",
    "hidden_from_autograd": "mutations_hidden_from_autograd",
    "under_no_grad": "mutations_under_no_grad_or_inference_mode",
}


@dataclass
class Truth:
    """What torch's own compilers saw, summed over every AOT graph of a run."""

    graphs: Counter = field(default_factory=Counter)  # kind -> graphs
    nodes: Counter = field(default_factory=Counter)  # kind -> FX nodes summed
    inputs: int = 0
    mutations: Counter = field(default_factory=Counter)  # kind -> mutated inputs with that flag
    placement: Counter = field(default_factory=Counter)  # in_graph / out_of_graph
    outputs: Counter = field(default_factory=Counter)  # OutputType name -> outputs
    intermediate_bases: int = 0
    tokens: Counter = field(default_factory=Counter)  # forward / backward
    saved: Counter = field(default_factory=Counter)  # tensors / symints a backward takes in
    saved_bytes: int = 0  # bytes of those tensors, for graphs whose saved sizes are static
    static_inputs: int = 0
    donated_buffers: int = 0
    tangent_layouts: Counter = field(default_factory=Counter)  # layout -> traced tangents
    rng_functionalized: int = 0  # graphs that save an RNG state for their recomputation

    def add_graph(self, kind: str, gm: torch.fx.GraphModule) -> None:
        self.graphs[kind] += 1
        self.nodes[kind] += len(gm.graph.nodes)
        self.rng_functionalized += any("rng_state" in str(n.target) for n in gm.graph.nodes)
        if kind == "backward":
            self.add_backward_inputs(gm)
            return
        meta = torch._guards.TracingContext.try_get().fw_metadata
        if kind == "forward":
            self.tangent_layouts.update(
                layout_of(t) for t in meta.traced_tangents if isinstance(t, torch.Tensor)
            )
        self.static_inputs += len(meta.static_input_indices)
        self.donated_buffers += len(meta.bw_donated_idxs or ())
        self.inputs += len(meta.input_info)
        for info in meta.input_info:
            if info.mutation_type.name == "NOT_MUTATED":
                continue
            for kind_name, flag in MUTATION_FLAGS.items():
                self.mutations[kind_name] += bool(getattr(info, flag))
            in_graph = info.mutation_type.name == "MUTATED_IN_GRAPH"
            self.placement["in_graph" if in_graph else "out_of_graph"] += 1
        self.outputs.update(info.output_type.name for info in meta.output_info)
        self.intermediate_bases += meta.num_intermediate_bases
        self.tokens["forward"] += len(meta.tokens)
        self.tokens["backward"] += meta.num_backward_tokens

    def add_backward_inputs(self, gm: torch.fx.GraphModule) -> None:
        """What the forward saved, read from the other side: the backward's placeholders
        that are neither tangents nor effect tokens."""
        sizes = []
        for node in gm.graph.nodes:
            if node.op != "placeholder" or node.name.startswith("tangents"):
                continue
            if "token" in node.name:
                continue
            value = node.meta.get("val")
            self.saved["tensors" if isinstance(value, torch.Tensor) else "symints"] += 1
            if isinstance(value, torch.Tensor):
                sizes.append(value.untyped_storage().nbytes())  # the memory it keeps alive
        if all(type(size) is int for size in sizes):
            self.saved_bytes += sum(sizes)


def layout_of(tensor: torch.Tensor) -> str:
    """The memory layout of a tensor's strides, by asking the tensor."""
    if tensor.is_contiguous():
        return "contiguous"
    if tensor.dim() == 4 and tensor.is_contiguous(memory_format=torch.channels_last):
        return "channels_last"
    return "strided"


def truth_backend(truth: Truth) -> Callable:
    """A custom aot_autograd backend that fills ``truth`` as it compiles.

    Configured like ``aot_eager``, so its graphs are aot_eager's, node for node.
    """
    from functorch.compile import make_boxed_func, min_cut_rematerialization_partition
    from torch._dynamo.backends.common import aot_autograd

    def compiler(kind: str) -> Callable:
        def compile_graph(gm: torch.fx.GraphModule, example_inputs: Any) -> Callable:
            truth.add_graph(kind, gm)
            return make_boxed_func(gm.forward)

        return compile_graph

    return aot_autograd(
        fw_compiler=compiler("forward"),
        bw_compiler=compiler("backward"),
        inference_compiler=compiler("inference"),
        partition_fn=min_cut_rematerialization_partition,  # as aot_eager does
        keep_inference_input_mutations=True,  # as aot_eager and inductor do
    )


# -- the programs: each runs a compiled function on ``device`` ----------------


def input_mutation(backend: Any, device: str) -> None:
    def f(x, buf):
        buf.add_(1)
        return x * 2

    torch.compile(f, backend=backend)(torch.randn(4, device=device), torch.zeros(4, device=device))


class _NoGradUpdate(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(4))

    def forward(self, x):
        with torch.no_grad():
            self.weight.mul_(0.5)
        return x * 3


def param_update_under_no_grad(backend: Any, device: str) -> None:
    model = _NoGradUpdate().to(device)
    torch.compile(model, backend=backend)(torch.randn(4, device=device))


def output_aliases_input(backend: Any, device: str) -> None:
    def f(x):
        return x.view(-1), x + 1

    torch.compile(f, backend=backend)(torch.randn(2, 3, device=device))


def outputs_view_one_intermediate(backend: Any, device: str) -> None:
    def f(x):
        y = x * 2
        return y[0], y[1]

    torch.compile(f, backend=backend)(torch.randn(2, 3, device=device, requires_grad=True))


def effect_token(backend: Any, device: str) -> None:
    def f(x):
        torch.ops.aten._print("aotwatch test: effect token")
        return x.sin()

    torch.compile(f, backend=backend)(torch.randn(3, device=device))


def graph_break(backend: Any, device: str) -> None:
    def f(x):
        y = x.sin()
        print("aotwatch test: graph break")
        return y.cos()

    torch.compile(f, backend=backend)(torch.randn(3, device=device))


def shape_recompile(backend: Any, device: str) -> None:
    compiled = torch.compile(lambda x: x * 2 + 1, backend=backend)
    compiled(torch.randn(4, device=device))
    compiled(torch.randn(5, device=device))


def training_step(backend: Any, device: str) -> None:
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2)).to(device)
    compiled = torch.compile(model, backend=backend)
    compiled(torch.randn(4, 8, device=device)).sum().backward()


def dynamic_backward(backend: Any, device: str) -> None:
    """A backward that needs sizes: the forward saves symints as well as tensors."""

    def f(x, w):
        return (x.view(x.shape[0] // 2, -1) @ w).relu().sum() * x.shape[0]

    x = torch.randn(8, 4, device=device, requires_grad=True)
    w = torch.randn(8, 3, device=device, requires_grad=True)
    torch.compile(f, backend=backend, dynamic=True)(x, w).backward()


def channels_last_backward(backend: Any, device: str) -> None:
    """Returns a channels_last tensor and a transposed one: their gradients are expected in
    those layouts."""

    def f(x):
        y = x * 2
        return y.relu(), y.sum(dim=(2, 3)).t()

    x = torch.randn(2, 3, 4, 5, device=device).to(memory_format=torch.channels_last)
    a, b = torch.compile(f, backend=backend)(x.requires_grad_())
    (a.sum() + b.sum()).backward()


def dropout_rng(backend: Any, device: str) -> None:
    """Dropout under functionalized RNG: torch supports that on CUDA only, so on the CPU the
    same program runs with it off (and nothing is functionalized)."""
    import torch._functorch.config as functorch_config

    x = torch.randn(8, device=device, requires_grad=True)
    with functorch_config.patch(functionalize_rng_ops=device.startswith("cuda")):
        compiled = torch.compile(lambda t: torch.nn.functional.dropout(t, 0.5) * 2, backend=backend)
        compiled(x).sum().backward()


PROGRAMS: dict[str, Callable[[Any, str], None]] = {
    program.__name__: program
    for program in (
        input_mutation,
        param_update_under_no_grad,
        output_aliases_input,
        outputs_view_one_intermediate,
        effect_token,
        graph_break,
        shape_recompile,
        training_step,
        dynamic_backward,
        channels_last_backward,
        dropout_rng,
    )
}


def run_with_truth(name: str, device: str = "cpu") -> Truth:
    """Run a program under the truth backend; return what torch's compilers saw."""
    truth = Truth()
    PROGRAMS[name](truth_backend(truth), device)
    return truth


def observed(snapshot: Any) -> Truth:
    """The same sums, read from aotwatch's aggregate (a Snapshot) instead of from torch."""
    values, histograms = snapshot.values, snapshot.histograms

    def by_last_label(metric: str) -> Counter:
        counts: Counter = Counter()
        for labels, value in values.get(metric, {}).items():
            counts[labels[-1]] += int(value)
        return +counts  # drop zeros

    def total(metric: str) -> int:
        return int(sum(values.get(metric, {}).values()))

    nodes: Counter = Counter()
    for labels, histogram in histograms.get("torch_compile_graph_nodes", {}).items():
        nodes[labels[-1]] += int(histogram.sum)
    return Truth(
        graphs=by_last_label("torch_compile_graphs"),
        nodes=nodes,
        inputs=total("torch_compile_graph_inputs"),
        mutations=by_last_label("torch_compile_input_mutations"),
        placement=by_last_label("torch_compile_mutated_inputs"),
        outputs=by_last_label("torch_compile_graph_outputs"),
        intermediate_bases=total("torch_compile_intermediate_bases"),
        tokens=by_last_label("torch_compile_effect_tokens"),
        saved=by_last_label("torch_compile_saved_for_backward"),
        saved_bytes=total("torch_compile_saved_for_backward_bytes"),
        static_inputs=total("torch_compile_static_inputs"),
        donated_buffers=total("torch_compile_donated_buffers"),
        tangent_layouts=by_last_label("torch_compile_tangent_layouts"),
        rng_functionalized=total("torch_compile_rng_functionalized_graphs"),
    )


def truth_of(*names: str, device: str = "cpu") -> Truth:
    """The summed truth of several programs, each from fresh Dynamo caches."""
    truth = Truth()
    for name in names:
        torch._dynamo.reset()
        one = run_with_truth(name, device)
        truth = Truth(
            **{f.name: getattr(truth, f.name) + getattr(one, f.name) for f in fields(Truth)}
        )
    torch._dynamo.reset()
    return truth


def subclasses(tensors) -> Counter:
    """Tensor subclasses among ``tensors`` by type name (plain tensors left out)."""
    return Counter(type(t).__name__ for t in tensors if type(t) is not torch.Tensor)
