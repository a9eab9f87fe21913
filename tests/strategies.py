"""Hypothesis strategies of valid records, field by field from the schema, shared by the
property tests."""

from __future__ import annotations

from hypothesis import strategies as st

from aotwatch.core import categories
from aotwatch.core.records import (
    CACHE_RESULTS,
    CACHES,
    GRAPH_KINDS,
    MAX_TIME,
    MUTATION_KINDS,
    PHASES,
    PLACEMENTS,
    SCHEMA_VERSION,
    TOKEN_DIRECTIONS,
)

label_text = st.text(
    st.characters(codec="utf-8", categories=("L", "N", "P", "S")), min_size=1, max_size=12
)
free_text = st.text(st.characters(codec="utf-8"), max_size=20)  # control characters too
shown_text = st.text(
    st.characters(codec="utf-8", categories=("L", "M", "N", "P", "S"), include_characters=" "),
    max_size=20,
)
"""Text of the fields reports print (``records.shown_text``): printable, spaces included."""
unprintable = st.characters(codec="utf-8", categories=("Cc", "Cf", "Zl", "Zp"))
count = st.integers(0, 1000)
seconds = st.integers(0, 10**6).map(lambda n: n / 64)  # dyadic: sums are exact in any order


def counts_of(names) -> st.SearchStrategy[dict[str, int]]:
    return st.fixed_dictionaries({name: count for name in names})


def counts_named(names: st.SearchStrategy[str]) -> st.SearchStrategy[dict[str, int]]:
    return st.dictionaries(names, count, max_size=3)


FIELDS = {
    "schema": st.just(SCHEMA_VERSION),
    "record_id": st.text(min_size=1, max_size=32),
    "job_name": label_text,
    "rank": st.integers(0, 64),
    "world_size": st.integers(1, 64),
    "device": st.sampled_from(["cpu", "cuda:0", "cuda:7"]) | label_text,
    "hostname": free_text,
    "pid": st.integers(0, 2**22),
    "time": st.floats(0, 2e9) | st.integers(0, 2**31) | st.just(MAX_TIME),
    "compare_group": st.none() | shown_text,
    "compile_id": st.none() | st.from_regex(r"\d{1,2}/\d", fullmatch=True),
    "frame": st.none()
    | st.fixed_dictionaries(
        {"co_name": free_text, "filename": free_text, "line": st.integers(0, 10**5)}
    ),
    "graph": st.sampled_from((None, *GRAPH_KINDS)),
    "aot_id": st.none() | st.integers(0, 100),
    "cache_hit": st.booleans(),
    "graph_hash": st.none() | st.text("0123456789abcdef", min_size=1, max_size=64),
    "collectives": st.lists(
        st.sampled_from(["all_reduce(sum, 0) f32[4]"]) | shown_text, max_size=2
    ),
    "collective_hash": st.none() | st.text("0123456789abcdef", min_size=1, max_size=16),
    "nodes": st.none() | st.integers(0, 10**5),
    "inputs": counts_of(("total", "subclass", *MUTATION_KINDS)),
    "mutation_placement": counts_of(PLACEMENTS),
    "outputs": counts_named(st.sampled_from(["non_alias", "alias_of_input"]) | free_text),
    "intermediate_bases": count,
    "tokens": counts_of(TOKEN_DIRECTIONS),
    "symints_saved_for_backward": count,
    "tensors_saved_for_backward": st.none() | count,
    "bytes_saved_for_backward": st.none() | count,
    "static_inputs": count,
    "donated_buffers": count,
    "subclasses": st.dictionaries(
        st.sampled_from(["input", "output", "tangent"]) | free_text,
        counts_named(st.sampled_from(["DTensor", "TwoTensor"]) | free_text),
        max_size=2,
    ),
    "tangent_layouts": counts_named(st.sampled_from(["contiguous", "strided"]) | free_text),
    "rng_functionalized": st.booleans(),
    "durations_s": st.dictionaries(st.sampled_from(PHASES) | free_text, seconds, max_size=3),
    "cache": st.dictionaries(
        st.sampled_from(CACHES) | shown_text,
        counts_named(st.sampled_from(CACHE_RESULTS) | shown_text),
        max_size=2,
    ),
    "graph_breaks": st.lists(
        st.fixed_dictionaries(
            {
                "reason": free_text,
                "category": st.sampled_from(["gb0059", "data_dependent", categories.OTHER])
                | free_text,
                "user_frame": st.none() | free_text,
            }
        ),
        max_size=2,
    ),
    "cache_bypasses": st.lists(
        st.fixed_dictionaries(
            {
                "category": st.sampled_from(categories.CACHE_BYPASS_CATEGORIES) | free_text,
                "reason": free_text,
            }
        ),
        max_size=2,
    ),
    "recompile_limits": counts_named(st.sampled_from(["per_frame", "accumulated"]) | free_text),
    "recompile_reason": st.none() | free_text,
    "recompile_category": st.none() | st.sampled_from(categories.RECOMPILE_CATEGORIES) | free_text,
    "fail_type": st.none() | st.sampled_from(["Unsupported", "BackendCompilerFailed"]) | free_text,
    "fail_category": st.none() | free_text,
    "fail_reason": st.none() | free_text,
}
valid_records = st.fixed_dictionaries(FIELDS)
