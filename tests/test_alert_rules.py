"""The Prometheus alert rules, their promtool unit tests and the example prometheus.yml."""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
import yaml

from aotwatch.cluster.file_sd import file_sd_path, write_file_sd
from aotwatch.core.config import Config
from aotwatch.core.metrics import FAMILIES, HEAD_FAMILIES
from aotwatch.core.wire import Endpoint, Target

PROMETHEUS_DIR = Path(__file__).parent.parent / "dashboards" / "prometheus"
RULES = PROMETHEUS_DIR / "aotwatch-rules.yml"
RULE_TESTS = PROMETHEUS_DIR / "aotwatch-rules.test.yml"
CONFIG = PROMETHEUS_DIR / "prometheus.yml"

SERIES_SUFFIXES = {
    "counter": ("_total",),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count"),
}
HEAD_SERIES = {sample for family in HEAD_FAMILIES for sample in family.samples()}
"""Served by the head (aotwatch.cluster.head), not by the collectors."""
PROMQL_WORDS = {"and", "or", "unless", "bool", "inf", "nan"}


def promtool(*args: str | Path) -> subprocess.CompletedProcess:
    binary = shutil.which("promtool")
    if binary is None:
        pytest.fail("promtool not found: scripts/test.sh installs Debian's prometheus package")
    return subprocess.run(
        [binary, *map(str, args)], capture_output=True, text=True, timeout=120, cwd=PROMETHEUS_DIR
    )


def alerts() -> list[dict]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def exported_series_names() -> set[str]:
    return {family.name + suffix for family in FAMILIES for suffix in SERIES_SUFFIXES[family.kind]}


def metric_names(expr: str) -> set[str]:
    """The series names that a PromQL expression selects (label matchers, label lists of
    aggregations, ranges, offsets, functions and operators removed)."""
    expr = re.sub(r"\{[^}]*\}", " ", expr)
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    expr = re.sub(r"\[[^\]]*\]|\boffset\s+\w+", " ", expr)
    names = re.findall(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\b(?!\s*\()", expr)
    return {name for name in names if name.lower() not in PROMQL_WORDS}


@pytest.mark.subprocess
def test_rules_pass_promtool_check():
    result = promtool("check", "rules", RULES.name)
    assert result.returncode == 0, result.stdout + result.stderr
    groups = yaml.safe_load(RULES.read_text())["groups"]
    rule_count = sum(len(group["rules"]) for group in groups)
    assert f"SUCCESS: {rule_count} rules found" in result.stdout


@pytest.mark.subprocess
def test_rule_unit_tests_pass():
    result = promtool("test", "rules", RULE_TESTS.name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


@pytest.mark.subprocess
def test_example_config_passes_promtool():
    result = promtool("check", "config", CONFIG.name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 1 rule files found" in result.stdout


@pytest.mark.subprocess
def test_example_config_reads_a_file_sd_file_written_by_the_head(tmp_path: Path):
    """promtool validates the targets and labels of a file_sd file the head wrote."""
    sd_file = tmp_path / "file_sd.json"
    collectors = [
        Endpoint("10.0.0.1", 9430, "http", "a1", "gpu-1", True, 0, []),
        Endpoint("10.0.0.2", 9430, "http", "b2", "gpu-2", True, 0, []),
    ]
    write_file_sd(sd_file, collectors, Target("10.0.0.1", 9429, "http"))
    config = yaml.safe_load(CONFIG.read_text())
    config["scrape_configs"][0]["file_sd_configs"][0]["files"] = [str(sd_file)]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    shutil.copy(RULES, tmp_path / RULES.name)
    result = promtool("check", "config", tmp_path / "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "does not exist" not in result.stdout + result.stderr


def test_example_config_scrapes_the_default_file_sd_path_and_loads_the_rules(monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", "/tmp")  # the <tmp> the comment names
    config = yaml.safe_load(CONFIG.read_text())
    assert config["rule_files"] == [RULES.name]
    (job,) = config["scrape_configs"]
    (file_sd,) = job["file_sd_configs"]
    assert file_sd["files"] == [str(file_sd_path(Config()))]


def test_every_alert_has_a_severity_a_summary_and_a_description():
    for rule in alerts():
        assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
        for annotation in ("summary", "description"):
            assert "{{ $labels." in rule["annotations"][annotation], (rule["alert"], annotation)


def test_every_alert_is_unit_tested_firing_and_not_firing():
    firing, silent = set(), set()
    for case in yaml.safe_load(RULE_TESTS.read_text())["tests"]:
        for check in case.get("alert_rule_test", []):
            (firing if check["exp_alerts"] else silent).add(check["alertname"])
    names = {rule["alert"] for rule in alerts()}
    assert names - firing == set(), "alerts never tested firing"
    assert names - silent == set(), "alerts never tested silent"


def test_rule_expressions_select_only_exported_metrics():
    exported = exported_series_names() | HEAD_SERIES | {"up"}
    for rule in alerts():
        used = metric_names(rule["expr"])
        assert used, rule["alert"]
        assert used <= exported, (rule["alert"], used - exported)
