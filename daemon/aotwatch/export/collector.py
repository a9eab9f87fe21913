"""A prometheus_client Collector that builds fresh families from a snapshot at scrape time."""

from __future__ import annotations

import platform
from collections.abc import Callable, Iterator, Mapping
from importlib import metadata

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from aotwatch.core.aggregate import Histogram, Snapshot
from aotwatch.core.metrics import BUILD_INFO, FAMILIES, Family, Labels

_METRIC_TYPES = {
    "counter": CounterMetricFamily,
    "gauge": GaugeMetricFamily,
    "histogram": HistogramMetricFamily,
}


def _version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "unknown"


def build_info() -> dict[str, str]:
    """What is running: the labels of ``aotwatch_build_info``."""
    versions = (
        _version("aotwatch"),
        _version("torch"),
        _version("ray"),
        platform.python_version(),
    )
    return dict(zip(BUILD_INFO.labels, versions, strict=True))


def render(
    family: Family,
    series: Mapping[Labels, float | Histogram],
    const_labels: Mapping[str, str] | None = None,
    labels: Labels | None = None,
) -> Metric:
    """``family`` with its ``series`` (label values -> value, or a Histogram), as
    prometheus_client builds it (which checks the name and unit): every family aotwatch
    serves is rendered here. ``labels``: its label names when not its own (kept per node),
    followed by those of ``const_labels``."""
    const = dict(const_labels or {})
    names = (*(family.labels if labels is None else labels), *const)
    metric = _METRIC_TYPES[family.kind](family.name, family.help, labels=names, unit=family.unit)
    for values, value in sorted(series.items()):
        if isinstance(value, Histogram):
            metric.add_metric((*values, *const.values()), value.cumulative(), value.sum)
        else:
            metric.add_metric((*values, *const.values()), value)
    return metric


def build_info_family(const_labels: Mapping[str, str] | None = None) -> Metric:
    """``aotwatch_build_info``: 1, labelled with what is running."""
    return render(BUILD_INFO, {BUILD_INFO.label_set(**build_info()): 1}, const_labels)


class _Fixed:
    """A collector of families built beforehand."""

    def __init__(self, *families: Metric) -> None:
        self.families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self.families)


def family_exposition(*families: Metric) -> bytes:
    """The text exposition of these families alone."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Fixed(*families))
    return generate_latest(registry)


class AggregateCollector:
    """Exposes exactly the families of ``metrics.FAMILIES`` (what one collector owns)."""

    def __init__(
        self, snapshot: Callable[[], Snapshot], const_labels: Mapping[str, str] | None = None
    ) -> None:
        self._snapshot = snapshot
        self._const_labels = dict(const_labels or {})
        self._build_info = build_info_family(self._const_labels)

    def describe(self) -> Iterator[Metric]:
        """The families without samples: lets the registry filter by ``name[]``."""
        return self._families(Snapshot({}, {}))

    def collect(self) -> Iterator[Metric]:
        return self._families(self._snapshot())

    def _families(self, snapshot: Snapshot) -> Iterator[Metric]:
        yield self._build_info
        for family in FAMILIES:
            tables = snapshot.histograms if family.kind == "histogram" else snapshot.values
            series = tables.get(family.name, {})
            labels = family.labels_kept(snapshot.per_rank)
            yield render(family, series, self._const_labels, labels)


def registry_for(collector: AggregateCollector) -> CollectorRegistry:
    """A fresh registry holding only ``collector`` (no process or platform collectors)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return registry


def exposition(snapshot: Snapshot, const_labels: Mapping[str, str] | None = None) -> bytes:
    """The text exposition a live scrape of this snapshot returns."""
    return generate_latest(registry_for(AggregateCollector(lambda: snapshot, const_labels)))
