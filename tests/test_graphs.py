"""Graph digests: the text of a cache hit gives the node count of the live graph."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from aotwatch.capture import graphs
from programs import PROGRAMS


@pytest.mark.parametrize("name", PROGRAMS)
@pytest.mark.parametrize("fast_sympy_print", [False, True])
def test_count_nodes_of_readable_text_equals_the_fx_graph(name, fast_sympy_print):
    seen = []

    def backend(gm, example_inputs):
        from functorch.compile import make_boxed_func
        from torch._dynamo.backends.common import aot_autograd

        def compiler(module, inputs):
            seen.append(module)
            return make_boxed_func(module.forward)

        return aot_autograd(fw_compiler=compiler, bw_compiler=compiler)(gm, example_inputs)

    torch._dynamo.reset()
    PROGRAMS[name](backend, "cpu")
    torch._dynamo.reset()
    assert seen
    for module in seen:
        text = graphs.readable(module, fast_sympy_print=fast_sympy_print)
        assert graphs.count_nodes(text) == len(module.graph.nodes), text
        assert graphs.device_of(text) == "cpu"
        digest = graphs.digest_module(
            module, None, fast_sympy_print=fast_sympy_print, want_nodes=True, want_hash=True
        )
        output = next(node for node in module.graph.nodes if node.op == "output")
        assert len(digest.output_bytes) == len(output.args[0])  # a graph's own; not in text
        from_text = graphs.digest_text(text, want_nodes=True, want_hash=True)
        assert dataclasses.replace(digest, output_bytes=None) == from_text


def test_hash_ignores_comments_and_blank_lines_only():
    text = 'class G:\n    def forward(self, x: "f32[2][1]cpu"):  # in\n        # File: a.py\n'
    same = text.replace("# File: a.py", "# File: /other/path/b.py") + "\n\n"
    other = text.replace("f32[2]", "f32[3]")
    assert graphs.hash_readable(text) == graphs.hash_readable(same)
    assert graphs.hash_readable(text) != graphs.hash_readable(other)


def test_device_is_the_accelerator_even_behind_a_cpu_effect_token():
    text = (
        "class GraphModule(torch.nn.Module):\n"
        "    def forward(\n"
        "        self,\n"
        '        arg0_1: "f32[0][1]cpu",  # token\n'
        '        arg1_1: "f32[3][1]cuda:0",\n'
        "    ):\n"
        '        sin: "f32[3][1]cuda:0" = torch.ops.aten.sin.default(arg1_1)\n'
        "        return (arg0_1, sin)\n"
    )
    assert graphs.device_of(text) == "cuda:0"
    assert graphs.count_nodes(text) == 4
    assert graphs.device_of(text.replace("cuda:0", "cpu")) == "cpu"
