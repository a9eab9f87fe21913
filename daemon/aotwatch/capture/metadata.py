"""Read a live ``ViewAndMutationMeta`` into plain counts, defensively.

Every field is private torch API: a missing one reads as zero or empty,
never as an error.
"""

from __future__ import annotations

from typing import Any

from aotwatch.core.records import (
    MAX_ID,
    MUTATION_FLAGS,
    MUTATION_KINDS,
    PLACEMENT_TYPES,
    PLACEMENTS,
    SUBCLASS_META,
)

_FORMAT_LAYOUTS = {
    "torch.contiguous_format": "contiguous",
    "torch.channels_last": "channels_last",
    "torch.channels_last_3d": "channels_last_3d",
}

_MUTATIONS = {"data", "metadata", "storage_metadata", "storage_resize"}
_PLACEMENTS = dict(PLACEMENT_TYPES)


def _input_counts(input_info: list[Any]) -> tuple[dict[str, int], dict[str, int]]:
    counts = {"total": len(input_info), "subclass": 0, **dict.fromkeys(MUTATION_KINDS, 0)}
    placement = dict.fromkeys(PLACEMENTS, 0)
    for info in input_info:
        flags = {kind for attr, kind in MUTATION_FLAGS if getattr(info, attr, False) is True}
        if not flags & _MUTATIONS:
            continue  # not mutated: the hidden/no_grad flags are vacuous here
        for kind in flags:
            counts[kind] += 1
        mutation_type = getattr(getattr(info, "mutation_type", None), "name", None)
        if mutation_type in _PLACEMENTS:
            placement[_PLACEMENTS[mutation_type]] += 1
    return counts, placement


def _output_counts(output_info: list[Any]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for info in output_info:
        name = getattr(getattr(info, "output_type", None), "name", None) or "unknown"
        counts[name] = counts.get(name, 0) + 1
    return counts


def _subclasses(meta: Any) -> dict[str, dict[str, int]]:
    """Tensor subclasses among a graph's inputs, outputs and tangents, by type name."""
    counts: dict[str, dict[str, int]] = {}
    for role, attr in SUBCLASS_META:
        for entry in getattr(meta, attr, None) or ():
            if type(entry).__name__ != "SubclassCreationMeta":
                continue  # a plain tensor (PlainTensorMeta) or an opaque object
            kind = getattr(entry, "original_subclass_type", None) or type(
                getattr(entry, "original_subclass", None)
            )
            by_type = counts.setdefault(role, {})
            name = kind.__name__[:MAX_ID]
            by_type[name] = by_type.get(name, 0) + 1
    return counts


def _layout(memory_format: Any) -> str | None:
    """The layout a ``MemoryFormatMeta`` expects: a named format (dynamic shapes,
    subclasses) or static strides, classified on a meta tensor (no memory); None if unknown."""
    named = getattr(memory_format, "memory_format", None)
    if named is not None:
        return _FORMAT_LAYOUTS.get(str(named), "strided")
    size, stride = getattr(memory_format, "size", None), getattr(memory_format, "stride", None)
    if size is None or stride is None:
        return None
    import torch

    try:
        tensor = torch.empty_strided(tuple(size), tuple(stride), device="meta")
    except (RuntimeError, TypeError, ValueError):  # sizes torch itself would not make
        return None
    if tensor.is_contiguous():
        return "contiguous"
    if tensor.dim() == 4 and tensor.is_contiguous(memory_format=torch.channels_last):
        return "channels_last"
    if tensor.dim() == 5 and tensor.is_contiguous(memory_format=torch.channels_last_3d):
        return "channels_last_3d"
    return "strided"


def _tangent_layouts(meta: Any) -> dict[str, int]:
    """A graph's tangents by the memory layout its backward expects them in."""
    counts: dict[str, int] = {}
    for entry in getattr(meta, "subclass_tangent_meta", None) or ():
        layout = _layout(getattr(entry, "memory_format", None))
        if layout is not None:
            counts[layout] = counts.get(layout, 0) + 1
    return counts


def read_metadata(meta: Any) -> dict[str, Any]:
    """Record fields from a ViewAndMutationMeta (see records.empty_record)."""
    inputs, placement = _input_counts(list(getattr(meta, "input_info", None) or ()))
    inputs["subclass"] = sum(
        1
        for inp in getattr(meta, "subclass_inp_meta", None) or ()
        if type(inp).__name__ == "SubclassCreationMeta"
    )
    return {
        "inputs": inputs,
        "mutation_placement": placement,
        "outputs": _output_counts(list(getattr(meta, "output_info", None) or ())),
        "intermediate_bases": int(getattr(meta, "num_intermediate_bases", 0) or 0),
        "tokens": {
            "forward": len(getattr(meta, "tokens", None) or ()),
            "backward": int(getattr(meta, "num_backward_tokens", 0) or 0),
        },
        "symints_saved_for_backward": int(getattr(meta, "num_symints_saved_for_bw", 0) or 0),
        "static_inputs": len(getattr(meta, "static_input_indices", None) or ()),
        "donated_buffers": len(getattr(meta, "bw_donated_idxs", None) or ()),
        "subclasses": _subclasses(meta),
        "tangent_layouts": _tangent_layouts(meta),
        "rng_functionalized": getattr(meta, "is_rng_op_functionalized", False) is True,
    }


def saved_for_backward(
    meta: Any, output_bytes: tuple[int | None, ...] | None
) -> tuple[int | None, int | None]:
    """Tensors a forward graph saves for its backward, and their bytes: the forward's outputs
    past what it returns (and its RNG offsets), before the symints and opaque objects it also
    saves. (None, None) when unknown; bytes None when a saved size is symbolic."""
    returned = getattr(meta, "num_forward_returns", None)
    if output_bytes is None or not isinstance(returned, int):
        return None, None
    first = returned + int(getattr(meta, "num_outputs_rng_offset", 0) or 0)
    trailing = sum(
        int(getattr(meta, name, 0) or 0)
        for name in ("num_symints_saved_for_bw", "num_opaque_objects_saved_for_bw")
    )
    saved = output_bytes[first : max(len(output_bytes) - trailing, first)]
    sizes = None if None in saved else sum(saved)
    return len(saved), sizes
