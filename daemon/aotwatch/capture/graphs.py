"""Node count, device and a cross-process hash of one AOT graph.

A fresh compile has the FX GraphModule; an AOTAutogradCache hit has only
the readable text torch stored with the entry. Both paths hash the same
normalised text, so a graph hashes the same whether it was compiled or
loaded, in any process.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

_FORWARD = "    def forward("
_COMMENT_LINE = re.compile(r"^\s*#")
_TRAILING_COMMENT = re.compile(r"\s+#.*$")
_BODY_NODE = re.compile(r"^ {8}[A-Za-z_]\w*(: \"[^\"]*\")? = ")
_BODY_RETURN = re.compile(r"^ {8}return\b")
_PARAMETER = re.compile(r"\b([A-Za-z_]\w*)(?:: \"[^\"]*\")?")
_ANNOTATED_DEVICE = re.compile(r": \"[a-z0-9]+\[[^\]]*\]\[[^\]]*\]([a-z]+(?::\d+)?)\"")


@dataclass(frozen=True)
class GraphDigest:
    """What aotwatch keeps of a graph: plain data, no reference to the graph itself."""

    nodes: int | None
    graph_hash: str | None
    device: str | None
    collectives: tuple[str, ...] = ()
    """The collectives the graph issues, in order (``collective_schedule``)."""
    output_bytes: tuple[int | None, ...] | None = None
    """Bytes of each of the graph's outputs (a forward's include what it saves for
    backward; None for a non-tensor or a symbolic size); None when the graph is known only
    as text (a cache hit)."""


def readable(module: Any, *, fast_sympy_print: bool) -> str:
    """The text torch stores in AOTAutogradCache entries for this graph."""
    return module.print_readable(
        print_output=False,
        include_stride=True,
        include_device=True,
        fast_sympy_print=fast_sympy_print,
        expanded_def=True,
    )


def hash_readable(text: str) -> str:
    """sha256 (first 16 hex digits) of the graph text without comments or blank lines."""
    lines = []
    for line in text.splitlines():
        if _COMMENT_LINE.match(line):
            continue
        line = _TRAILING_COMMENT.sub("", line).rstrip()
        if line:
            lines.append(line)
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16]


def _forward(text: str) -> tuple[str, list[str]]:
    """The parameter list (comments removed) and the body lines of the top-level ``forward``."""
    start = text.find(_FORWARD)
    if start < 0:
        return "", []
    end = text.find("):\n", start)
    params = "\n".join(
        _TRAILING_COMMENT.sub("", line) for line in text[start + len(_FORWARD) : end].splitlines()
    )
    body = []
    for line in text[end + 3 :].splitlines():
        if line.strip() and not line.startswith(" " * 8):
            break  # dedented: the next member of the top-level class
        body.append(line)
    return params, body


_COLLECTIVE = re.compile(
    r'^ {8}\w+(?:: "(?P<value>[^"\[]*(?:\[[^\]]*\])?)[^"]*")? = '
    r"torch\.ops\._c10d_functional\.(?P<op>\w+)\.default\((?P<args>.*)\)"
)
_STRING_ARG = re.compile(r"'([^']*)'")
_FUNCTIONAL_COLLECTIVE = "_c10d_functional."
MAX_COLLECTIVES = 1024
"""Collectives kept per graph (the schedule's hash covers them all)."""


def collective_schedule(text: str) -> tuple[str, ...]:
    """The functional collectives a graph issues, in order: ``all_reduce(sum, 0) f32[4]``
    (the op, its string arguments: reduce op, group; its result's dtype and shape). Waits
    are not collectives."""
    if _FUNCTIONAL_COLLECTIVE not in text:  # most graphs: no line to match
        return ()
    schedule = []
    for line in _forward(text)[1]:
        match = _COLLECTIVE.match(_TRAILING_COMMENT.sub("", line))
        if match is None or match["op"] == "wait_tensor":
            continue
        arguments = ", ".join(_STRING_ARG.findall(match["args"]))
        schedule.append(f"{match['op']}({arguments}) {match['value'] or ''}".rstrip())
    return tuple(schedule)


def schedule_hash(schedule: tuple[str, ...]) -> str | None:
    """sha256 (first 16 hex digits) of a collective schedule; None for a graph without any."""
    return hashlib.sha256("\n".join(schedule).encode()).hexdigest()[:16] if schedule else None


def _issues_collectives(module: Any) -> bool:
    return any(_FUNCTIONAL_COLLECTIVE in str(node.target) for node in module.graph.nodes)


def count_nodes(text: str) -> int:
    """FX nodes of the top-level graph: placeholders, body assignments and the output."""
    params, body = _forward(text)
    placeholders = [name for name in _PARAMETER.findall(params) if name != "self"]
    return len(placeholders) + sum(
        1 for line in body if _BODY_NODE.match(line) or _BODY_RETURN.match(line)
    )


def _main_device(devices: Iterable[str]) -> str | None:
    """The first accelerator among a graph's input devices, else ``cpu`` (effect tokens and
    scalars live on the CPU even in a CUDA graph)."""
    devices = list(devices)
    return next((d for d in devices if d != "cpu"), devices[0] if devices else None)


def device_of(text: str) -> str | None:
    """Where the graph's tensor inputs live, from their annotations: ``cpu``, ``cuda:0``..."""
    return _main_device(_ANNOTATED_DEVICE.findall(_forward(text)[0]))


def digest_text(text: str | None, *, want_nodes: bool, want_hash: bool) -> GraphDigest:
    """Digest of a graph known only by its readable text (an AOTAutogradCache hit)."""
    if not text:
        return GraphDigest(None, None, None)
    return GraphDigest(
        count_nodes(text) if want_nodes else None,
        hash_readable(text) if want_hash else None,
        device_of(text),
        collective_schedule(text)[:MAX_COLLECTIVES],
    )


def _placeholder_device(module: Any) -> str | None:
    return _main_device(
        str(node.meta["val"].device)
        for node in module.graph.find_nodes(op="placeholder")
        if getattr(node.meta.get("val"), "device", None) is not None
    )


def digest_module(
    module: Any, text: str | None, *, fast_sympy_print: bool, want_nodes: bool, want_hash: bool
) -> GraphDigest:
    """Digest of a freshly compiled GraphModule; ``text`` is torch's rendering, if it made one."""
    if text is None and (want_hash or _issues_collectives(module)):
        text = readable(module, fast_sympy_print=fast_sympy_print)
    return GraphDigest(
        len(module.graph.nodes) if want_nodes else None,
        hash_readable(text) if want_hash and text else None,
        _placeholder_device(module),
        collective_schedule(text)[:MAX_COLLECTIVES] if text else (),
        _output_bytes(module),
    )


def _nbytes(value: Any) -> int | None:
    """Bytes of a graph value's (fake) tensor, if its size is a plain number."""
    tensor = getattr(value, "meta", {}).get("val")
    numel = getattr(tensor, "numel", None)
    if numel is None or not hasattr(tensor, "element_size"):
        return None
    numel = numel()
    return numel * tensor.element_size() if type(numel) is int else None


def _output_bytes(module: Any) -> tuple[int | None, ...] | None:
    output = next((n for n in reversed(module.graph.nodes) if n.op == "output"), None)
    values = output.args[0] if output is not None and output.args else None
    return tuple(_nbytes(value) for value in values) if isinstance(values, (tuple, list)) else None
