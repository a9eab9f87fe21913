"""The metric table is the one source: the contract document, the reserved label names and
the labels a fold can produce all follow from it."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings

from aotwatch.core import metrics
from aotwatch.core.aggregate import Aggregate
from aotwatch.core.config import ConfigError, load_config
from aotwatch.core.metrics import (
    ALL_FAMILIES,
    BUILD_INFO,
    BY_NAME,
    SAMPLE_NAMES,
    _checked,
    contract,
)
from aotwatch.export.collector import exposition
from strategies import valid_records

CONTRACT = Path(__file__).parents[1] / "docs" / "metrics.md"


@pytest.mark.subprocess
def test_docs_metrics_md_is_generated_from_the_table():
    assert CONTRACT.read_text() == contract(), (
        "docs/metrics.md is stale: run `python -m aotwatch.core.metrics > docs/metrics.md`"
    )
    generated = subprocess.run(
        [sys.executable, "-m", "aotwatch.core.metrics"], capture_output=True, text=True, check=True
    ).stdout
    assert generated == CONTRACT.read_text()
    for family in ALL_FAMILIES:  # every family has a section that says what to do
        assert f"## `{family.samples()[0]}" in generated
        assert family.action, family.name


def test_no_metric_name_is_written_outside_the_table():
    """Code names a family by its constant: a misspelled one fails at import."""
    names = {family.name for family in ALL_FAMILIES} | SAMPLE_NAMES
    quoted = re.compile("[\"']({})[\"']".format("|".join(sorted(names, key=len, reverse=True))))
    daemon = Path(metrics.__file__).parent
    written = [
        f"{path.relative_to(daemon)}: {match.group(1)}"
        for path in sorted(daemon.rglob("*.py"))
        if path.name != "metrics.py"
        for match in quoted.finditer(path.read_text())
    ]
    assert written == []


@pytest.mark.parametrize(
    "change",
    [
        {"name": "torch_compile_frames"},  # a duplicate
        {"name": "torch-compile"},
        {"name": "torch_compile_seconds_total", "unit": "bytes"},
        {"fed_by": ""},
    ],
)
def test_the_table_refuses_what_prometheus_client_would(change):
    row = dataclasses.replace(metrics.GRAPHS, **change)
    with pytest.raises(ValueError, match="metric table"):
        _checked((metrics.FRAMES, row))


def test_label_values_are_given_and_read_by_name():
    dropped = metrics.RECORDS_DROPPED
    labels = dropped.label_set(reason="queue_full", job_name="j")
    assert labels == ("j", "queue_full")
    assert dropped.named(labels) == {"job_name": "j", "reason": "queue_full"}
    with pytest.raises(KeyError):
        dropped.label_set(job_name="j", reasn="queue_full")
    with pytest.raises(KeyError):
        dropped.label_set(job_name="j", reason="queue_full", stage="x")


@pytest.mark.parametrize("label", BUILD_INFO.labels)
def test_build_info_labels_are_reserved(tmp_path, label):
    path = tmp_path / "job.yaml"
    path.write_text(f"labels: {{{label}: x}}\n")
    with pytest.raises(ConfigError, match="a label that aotwatch sets itself"):
        load_config(path)


def test_a_config_label_never_replaces_build_info(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("labels: {team: ml}\n")
    text = exposition(Aggregate().snapshot(), load_config(path).labels).decode()
    (line,) = [ln for ln in text.splitlines() if ln.startswith("aotwatch_build_info{")]
    assert 'team="ml"' in line and 'version="' in line and 'version="x"' not in line


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(valid_records)
def test_every_folded_label_value_is_one_the_table_allows(record):
    aggregate = Aggregate()
    assert aggregate.add(record)
    snapshot = aggregate.snapshot()
    for name, table in (*snapshot.values.items(), *snapshot.histograms.items()):
        family = BY_NAME[name]
        for labels in table:
            assert len(labels) == len(family.labels)
            for label, value in zip(family.labels, labels, strict=True):
                allowed = family.values.get(label)
                if isinstance(allowed, tuple):
                    assert value in allowed, (name, label, value)


def test_every_record_field_names_the_module_that_reads_it():
    """``records.READ_BY`` covers the schema exactly, and names modules that exist: the index
    docs/metrics.md shows a newcomer (row, then reader) cannot point nowhere."""
    import importlib.util

    from aotwatch.core.records import READ_BY, Record

    assert set(READ_BY) == set(Record.__struct_fields__)
    assert all(importlib.util.find_spec(module) for module in set(READ_BY.values()))


def test_a_row_fed_by_record_fields_names_real_fields_and_their_readers():
    from aotwatch.core.metrics import FAMILIES, readers

    fed_by_records = [family for family in FAMILIES if "`Record." in family.fed_by]
    assert len(fed_by_records) >= 25
    for family in fed_by_records:
        assert readers(family), family.name  # a misspelled field is a KeyError here
