"""The Grafana dashboards: generated files current, well-formed panels, queries checked
against the metric families and run by a real Prometheus scraping a real aotwatch exporter."""

from __future__ import annotations

import importlib.util
import re
import time
from pathlib import Path

import pytest

from aotwatch.core.aggregate import Aggregate
from aotwatch.core.metrics import FAMILIES, HEAD_FAMILIES
from aotwatch.core.records import new_record
from aotwatch.export.collector import AggregateCollector, build_info, registry_for
from aotwatch.export.server import serve_metrics
from golden_records import fixed_records, golden_aggregate
from helpers import wait_for
from prometheus_server import PrometheusServer, PromQLError

GENERATE = Path(__file__).resolve().parents[1] / "dashboards" / "generate.py"
_spec = importlib.util.spec_from_file_location("aotwatch_dashboards_generate", GENERATE)
generate = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(generate)

BOARDS = generate.dashboards()
UIDS = [board["uid"] for board in BOARDS.values()]
PANEL_TYPES = {"timeseries", "stat", "table", "bargauge"}
TEMPLATE_LABELS = ("job_name", "instance", "rank")

TARGET_LABELS = {"instance", "job", "role", "node_id", "hostname"}
"""Labels Prometheus and the head's file_sd put on every series of a target."""
HEAD_SERVED = {sample for family in HEAD_FAMILIES for sample in family.samples()}
"""Families the head serves (another instance than the collectors)."""


def _exported_labels() -> dict[str, set[str]]:
    """Every series name the daemon exports (or Prometheus adds) -> its label names, in the
    collectors' default layout (families kept per job on a node have no rank or device)."""
    names: dict[str, set[str]] = {"up": set(), "aotwatch_build_info": set(build_info())}
    for family in (*FAMILIES, *HEAD_FAMILIES):
        labels = set(family.labels_kept(per_rank=False))
        if family.kind == "counter":
            names[f"{family.name}_total"] = labels
        elif family.kind == "gauge":
            names[family.name] = labels
        else:
            names[f"{family.name}_bucket"] = labels | {"le"}
            names[f"{family.name}_sum"] = names[f"{family.name}_count"] = labels
    return {name: labels | TARGET_LABELS for name, labels in names.items()}


EXPORTED = _exported_labels()
SELECTOR = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\{([^}]*)\}")
MATCHER = re.compile(r'(\w+)\s*(=~|!~|!=|=)\s*"([^"]*)"')
GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")
REPLACED_LABEL = re.compile(r'label_replace\([^,]+,\s*"(\w+)"')
LEGEND_LABEL = re.compile(r"\{\{\s*(\w+)\s*\}\}")


def selectors(expr: str) -> list[tuple[str, dict[str, tuple[str, str]]]]:
    """``(metric, {label: (operator, value)})`` for every series selector in ``expr``."""
    return [
        (name, {label: (op, value) for label, op, value in MATCHER.findall(body)})
        for name, body in SELECTOR.findall(expr)
    ]


def grouping(expr: str) -> set[str]:
    return {label.strip() for group in GROUPING.findall(expr) for label in group.split(",")}


def all_targets():
    """``(dashboard uid, panel, target)`` for every target of every dashboard."""
    for board in BOARDS.values():
        for panel in board["panels"]:
            for target in panel["targets"]:
                yield board["uid"], panel, target


# -- the files -------------------------------------------------------------------------------


def test_committed_dashboards_are_current():
    assert generate.stale_files() == [], "run python3 dashboards/generate.py"
    committed = {path.name for path in generate.OUT_DIR.glob("*.json")}
    assert committed == set(BOARDS)


def test_check_lists_a_stale_file_and_exits_1(tmp_path, capsys):
    assert generate.main(["--out-dir", str(tmp_path)]) == 0
    assert generate.main(["--check", "--out-dir", str(tmp_path)]) == 0
    edited = tmp_path / "aotwatch-fleet-health.json"
    edited.write_text(edited.read_text().replace('"30s"', '"5s"'))
    assert generate.main(["--check", "--out-dir", str(tmp_path)]) == 1
    assert capsys.readouterr().err.splitlines() == [
        f"stale: {edited} (run python3 dashboards/generate.py)"
    ]


# -- the dashboards --------------------------------------------------------------------------


def test_uids_are_stable_and_unique():
    assert len(set(UIDS)) == len(UIDS)
    for name, board in BOARDS.items():
        assert board["uid"] == name.removesuffix(".json")
        assert board["tags"] == ["aotwatch"] and board["editable"] is True
        assert board["schemaVersion"] >= 39 and board["id"] is None


@pytest.mark.parametrize("uid", UIDS)
def test_variables(uid):
    board = next(board for board in BOARDS.values() if board["uid"] == uid)
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for earlier, name in enumerate(TEMPLATE_LABELS):
        variable = variables[name]
        assert variable["type"] == "query" and variable["datasource"] == generate.DATASOURCE
        assert variable["multi"] and variable["includeAll"] and variable["allValue"] == ".*"
        query = variable["definition"]
        assert query == variable["query"]["query"] and query.endswith(f", {name})")
        for outer in TEMPLATE_LABELS[:earlier]:  # each narrows by the ones before it
            assert f'{outer}=~"${outer}"' in query


@pytest.mark.parametrize("uid", UIDS)
def test_panels_are_well_formed(uid):
    board = next(board for board in BOARDS.values() if board["uid"] == uid)
    panels = board["panels"]
    assert len({p["id"] for p in panels}) == len({p["title"] for p in panels}) == len(panels)
    cells: set[tuple[int, int]] = set()
    for panel in panels:
        assert panel["type"] in PANEL_TYPES, panel["title"]
        assert panel["datasource"] == generate.DATASOURCE, panel["title"]
        assert isinstance(panel["fieldConfig"]["defaults"]["unit"], str), panel["title"]
        assert panel["fieldConfig"]["defaults"]["unit"], panel["title"]
        assert panel["targets"] and panel["description"], panel["title"]
        grid = panel["gridPos"]
        assert grid["w"] > 0 and grid["h"] > 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        covered = {
            (x, y)
            for x in range(grid["x"], grid["x"] + grid["w"])
            for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not covered & cells, f"{panel['title']} overlaps another panel"
        cells |= covered
        for target in panel["targets"]:
            assert target["datasource"] == generate.DATASOURCE and target["expr"]
            assert target["instant"] == (panel["type"] == "table") != target["range"]
        assert len({t["refId"] for t in panel["targets"]}) == len(panel["targets"])


def test_range_selectors_use_the_rate_interval():
    windows = [
        (panel["title"], window)
        for _, panel, target in all_targets()
        for window in re.findall(r"\[([^\]]*)\]", target["expr"])
    ]
    assert windows, "no rate() at all"
    assert {window for _, window in windows} == {"$__rate_interval"}, windows


def test_every_series_name_is_exported():
    for _, panel, target in all_targets():
        expr = target["expr"]
        names = {name for name, _ in selectors(expr)}
        assert names, panel["title"]
        assert names <= set(EXPORTED), (panel["title"], names - set(EXPORTED))
        bare = set(re.findall(r"\b(?:torch_compile|aotwatch)_\w+\b(?!\{)", expr))
        assert not bare, f"{panel['title']}: metric without a selector: {bare}"


def test_selectors_filter_on_the_template_variables():
    for _, panel, target in all_targets():
        for name, matchers in selectors(target["expr"]):
            labels = EXPORTED[name]
            assert set(matchers) <= labels, (panel["title"], name, set(matchers) - labels)
            own = labels - TARGET_LABELS
            required = {"job_name", "rank"} & own
            if name not in HEAD_SERVED:
                required.add("instance")
            for label in required:
                assert matchers.get(label) == ("=~", f"${label}"), (panel["title"], name, label)
            if name in HEAD_SERVED:
                assert "instance" not in matchers and "rank" not in matchers


def test_grouping_and_legends_use_labels_the_series_have():
    for _, panel, target in all_targets():
        expr = target["expr"]
        available = set().union(*(EXPORTED[name] for name, _ in selectors(expr)))
        groups = grouping(expr)
        assert groups <= available, (panel["title"], groups - available)
        shown = (groups if groups else available) | set(REPLACED_LABEL.findall(expr))
        legend = set(LEGEND_LABEL.findall(target["legendFormat"]))
        assert legend <= shown, (panel["title"], legend - shown)


TOPICS = {
    "aotwatch-compile-overview": [
        ("torch_compile_phase_seconds_total", {"phase"}),
        ("torch_compile_seconds_total", {"rank", "device"}),
        ("torch_compile_duration_seconds_bucket", {"le", "job_name"}),
        ("torch_compile_frames_total", set()),
        ("torch_compile_recompiles_total", {"reason"}),
        ("torch_compile_graph_breaks_total", {"reason"}),
        ("torch_compile_cache_lookups_total", {"cache"}),
        ("torch_compile_recompile_limit", {"rank", "device"}),
        ("torch_compile_in_progress_since_timestamp_seconds", {"rank", "device", "compile_id"}),
        ("torch_compile_worst_frame_compiles", {"rank", "device"}),
        ("torch_compile_frame_failures_total", set()),
        ("torch_compile_wait_rank_seconds_total", {"job_name"}),
        ("torch_compile_redundant_seconds_total", {"job_name", "scope"}),
    ],
    "aotwatch-aot-metadata": [
        ("torch_compile_graphs_total", {"graph", "rank", "device"}),
        ("torch_compile_input_mutations_total", {"kind", "instance"}),
        ("torch_compile_mutated_inputs_total", {"placement", "instance"}),
        ("torch_compile_graph_outputs_total", {"output_type", "instance"}),
        ("torch_compile_intermediate_bases_total", {"instance"}),
        ("torch_compile_effect_tokens_total", {"direction", "instance"}),
        ("torch_compile_graph_nodes_bucket", {"le", "instance"}),
        ("torch_compile_saved_for_backward_total", {"kind", "instance"}),
        ("torch_compile_saved_for_backward_bytes_total", {"instance"}),
        ("torch_compile_subclass_tensors_total", {"role", "subclass"}),
        ("torch_compile_static_inputs_total", {"instance"}),
        ("torch_compile_donated_buffers_total", {"instance"}),
        ("torch_compile_tangent_layouts_total", {"layout"}),
        ("torch_compile_rng_functionalized_graphs_total", {"instance"}),
        ("torch_compile_aot_autograd_cache_bypasses_total", {"reason"}),
    ],
    "aotwatch-fleet-health": [
        ("up", set()),
        ("aotwatch_workers_attached", set()),
        ("aotwatch_records_received_total", set()),
        ("aotwatch_records_dropped_total", {"reason"}),
        ("aotwatch_records_rejected_total", {"reason"}),
        ("aotwatch_capture_errors_total", {"stage"}),
        ("aotwatch_series_dropped_total", {"metric"}),
        ("torch_compile_rank_divergences_total", {"kind"}),
        ("torch_compile_straggler_seconds", {"job_name"}),
    ],
}
"""What the issue asks each dashboard to show: a series, and the labels it is broken down by."""


@pytest.mark.parametrize("uid", UIDS)
def test_each_topic_has_a_panel(uid):
    exprs = [target["expr"] for board_uid, _, target in all_targets() if board_uid == uid]
    for name, labels in TOPICS[uid]:
        assert any(
            name in {n for n, _ in selectors(expr)} and labels <= grouping(expr) for expr in exprs
        ), (name, labels)


def test_compile_quantiles_and_per_minute_counts():
    board = BOARDS["aotwatch-compile-overview.json"]
    exprs = [expr for _, expr in generate.panel_queries(board)]
    for q in ("0.5", "0.95"):
        assert any(
            e.startswith(f"histogram_quantile({q}, ") and "duration_seconds_bucket" in e
            for e in exprs
        )
    per_minute = [p for p in board["panels"] if p["fieldConfig"]["defaults"]["unit"] == "cpm"]
    counted = {name for p in per_minute for t in p["targets"] for name, _ in selectors(t["expr"])}
    assert {"torch_compile_frames_total", "torch_compile_recompiles_total"} <= counted


def test_substitute_replaces_every_variable():
    for _, expr in (q for board in BOARDS.values() for q in generate.panel_queries(board)):
        assert "$" not in generate.substitute(expr)
    with pytest.raises(KeyError, match="job_name"):
        generate.substitute('up{job_name=~"$job_name"}', {})


# -- against a real Prometheus ---------------------------------------------------------------


def healthy_records() -> list[dict]:
    """A job with nothing wrong: no failures, recompiles, graph breaks, drops or rejects."""
    graphs = [record for record in fixed_records() if record["graph"] in ("forward", "backward")]
    frame = new_record(
        record_id="h0",
        compile_id="0/0",
        durations_s={"total": 1.5, "dynamo": 1.5},
        cache={"fx_graph": {"hit": 1, "miss": 1}},
        recompile_limits={"per_frame": 8, "accumulated": 256},
        **{key: graphs[0][key] for key in ("job_name", "hostname", "pid", "time")},
    )
    return [*graphs, frame]


def healthy_aggregate(per_rank: bool = False) -> Aggregate:
    aggregate = Aggregate(per_rank=per_rank)
    for record in healthy_records():
        assert aggregate.add(record)
    return aggregate


SCENARIOS = {
    "troubled": golden_aggregate,
    "healthy": healthy_aggregate,
    "per_rank_detail": lambda: healthy_aggregate(per_rank=True),
}
"""Collectors in their default layout, and one with ``limits.per_rank_detail``."""


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory):
    """Prometheus scraping, every second, one real exporter per scenario (collectors of the
    same job); yields the server and each scenario's ``instance``."""
    exporters = {
        name: serve_metrics(registry_for(AggregateCollector(build().snapshot)), "127.0.0.1", 0)
        for name, build in SCENARIOS.items()
    }
    targets = ", ".join(f"'127.0.0.1:{exporter.port}'" for exporter in exporters.values())
    directory = tmp_path_factory.mktemp("prometheus")
    config = directory / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n"
        "  - job_name: aotwatch\n"
        "    static_configs:\n"
        f"      - targets: [{targets}]\n"
        "        labels: {role: collector, node_id: n1, hostname: node-1}\n"
    )
    try:
        with PrometheusServer(config, directory / "data") as server:
            yield server, {name: f"127.0.0.1:{e.port}" for name, e in exporters.items()}
    finally:
        for exporter in exporters.values():
            exporter.close()


@pytest.mark.subprocess
def test_every_query_parses(prometheus):
    server, _ = prometheus
    errors = []
    for board in BOARDS.values():
        for title, expr in generate.panel_queries(board):
            try:
                server.query(generate.substitute(expr))
            except PromQLError as err:
                errors.append((board["uid"], title, str(err)))
    assert errors == []


@pytest.mark.subprocess
def test_a_bad_query_is_refused(prometheus):
    server, _ = prometheus
    with pytest.raises(PromQLError) as raised:
        server.query("sum by (job_name (up)")
    assert raised.value.error_type == "bad_data"


@pytest.mark.subprocess
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_panel_returns_data(prometheus, scenario):
    """With Grafana's queries (range, or instant for tables) on one collector's data."""
    server, instances = prometheus
    values = {**generate.EXAMPLE_VALUES, "instance": instances[scenario]}
    wait_for(
        lambda: server.query(
            generate.substitute('count_over_time(up{instance=~"$instance"}[1m]) >= 3', values)
        ),
        message="three scrapes of the exporter",
    )
    now = time.time()
    empty = []
    for uid, panel, target in all_targets():
        expr = generate.substitute(target["expr"], values)
        if target["instant"]:
            result = server.query(expr, at=now)
        else:
            result = server.query_range(expr, start=now - 60, end=now, step=1)
        if not result:
            empty.append((uid, panel["title"], expr))
    assert empty == []


@pytest.mark.subprocess
@pytest.mark.parametrize("uid", UIDS)
def test_variables_find_values(prometheus, uid):
    server, _ = prometheus
    wait_for(lambda: server.query("aotwatch_records_received_total"), message="a scrape")
    board = next(board for board in BOARDS.values() if board["uid"] == uid)
    for name, query in generate.variable_queries(board):
        match = re.fullmatch(r"label_values\((.+), (\w+)\)", query)
        assert match and match.group(2) == name, query
        assert server.label_values(name, generate.substitute(match.group(1))), query
