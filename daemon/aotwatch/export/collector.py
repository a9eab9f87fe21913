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

from aotwatch.aggregate import Snapshot
from aotwatch.metrics import (
    BUILD_INFO,
    FAMILIES,
    Family,
)

_FAMILY_TYPES = {"counter": CounterMetricFamily, "gauge": GaugeMetricFamily}


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


def build_info_family(const_labels: Mapping[str, str] | None = None) -> GaugeMetricFamily:
    """``aotwatch_build_info``: 1, labelled with what is running."""
    info, const = build_info(), dict(const_labels or {})
    family = GaugeMetricFamily(BUILD_INFO.name, BUILD_INFO.help, labels=(*info, *const))
    family.add_metric((*info.values(), *const.values()), 1)
    return family


def head_family(
    family: Family,
    values: Mapping[tuple[str, ...], float],
    const_labels: Mapping[str, str] | None = None,
) -> CounterMetricFamily | GaugeMetricFamily:
    """One of the head's families (``HEAD_FAMILIES``): a value per label set of its own."""
    const = dict(const_labels or {})
    metric = _FAMILY_TYPES[family.kind](family.name, family.help, labels=(*family.labels, *const))
    for labels, value in sorted(values.items()):
        metric.add_metric((*labels, *const.values()), value)
    return metric


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
        self._const_names = tuple(self._const_labels)
        self._const_values = tuple(self._const_labels.values())
        self._build_info = build_info_family(self._const_labels)

    def describe(self) -> Iterator[Metric]:
        """The families without samples: lets the registry filter by ``name[]``."""
        return self._families(Snapshot({}, {}))

    def collect(self) -> Iterator[Metric]:
        return self._families(self._snapshot())

    def _families(self, snapshot: Snapshot) -> Iterator[Metric]:
        yield self._build_info
        for family in FAMILIES:
            names = (*family.labels_kept(snapshot.per_rank), *self._const_names)
            if family.kind == "histogram":
                metric = HistogramMetricFamily(family.name, family.help, labels=names)
                for labels, histogram in sorted(snapshot.histograms.get(family.name, {}).items()):
                    metric.add_metric(
                        (*labels, *self._const_values), histogram.cumulative(), histogram.sum
                    )
            else:
                metric = _FAMILY_TYPES[family.kind](family.name, family.help, labels=names)
                for labels, value in sorted(snapshot.values.get(family.name, {}).items()):
                    metric.add_metric((*labels, *self._const_values), value)
            yield metric


def registry_for(collector: AggregateCollector) -> CollectorRegistry:
    """A fresh registry holding only ``collector`` (no process or platform collectors)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return registry


def exposition(snapshot: Snapshot, const_labels: Mapping[str, str] | None = None) -> bytes:
    """The text exposition a live scrape of this snapshot returns."""
    return generate_latest(registry_for(AggregateCollector(lambda: snapshot, const_labels)))
