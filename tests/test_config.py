"""Tests for aotwatch.core.config: the default file, overrides, one-line errors naming the key."""

import copy
import json
import pickle
import tracemalloc
from pathlib import Path

import pytest
import yaml

from aotwatch.core.config import (
    LOCAL_PORTS,
    RESERVED_LABEL_NAMES,
    ArchiveConfig,
    Config,
    ConfigError,
    ExportConfig,
    LimitsConfig,
    config_from_dict,
    load_config,
)
from aotwatch.core.records import MAX_LABEL, RecordError, new_record, to_record
from helpers import laughs

DEFAULT_FILE = Path(__file__).resolve().parents[1] / "config" / "aotwatch.yaml"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "aotwatch.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def load_error(path: Path) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: ")
    assert info.value.file == str(path)
    return info.value


def key_error(tmp_path: Path, text: str, key: str) -> str:
    """Load ``text`` from a file; check the error names the file and ``key``; return its message."""
    err = load_error(write(tmp_path, text))
    assert err.key == key
    assert str(err).startswith(f"{err.file}: {key}: ")
    return str(err)


def test_default_file_is_the_defaults():
    assert load_config(DEFAULT_FILE) == Config()


def test_default_file_lists_every_key_at_its_default():
    assert yaml.safe_load(DEFAULT_FILE.read_text()) == Config().to_dict()


@pytest.mark.parametrize("data", [None, {}])
def test_nothing_gives_defaults(data):
    assert load_config(None) == Config()
    assert config_from_dict(data) == Config()


@pytest.mark.parametrize("text", ["", "# only a comment\n"])
def test_empty_file_gives_defaults(tmp_path, text):
    assert load_config(write(tmp_path, text)) == Config()


def test_nested_override_keeps_other_defaults(tmp_path):
    config = load_config(write(tmp_path, "export:\n  port: 0\n"))
    assert config.export == ExportConfig(port=0)
    assert config.export.address == "127.0.0.1" and config.export.enabled is True
    assert config == Config(export=ExportConfig(port=0))


def test_empty_section_gives_its_defaults(tmp_path):
    text = "export:\n  # port: 1234\nlabels:\narchive:\n"
    assert load_config(write(tmp_path, text)) == Config()


def test_full_override(tmp_path):
    text = """
job_name: llama-70b
labels: {team: llm, generation: "2"}
export: {enabled: false, address: 0.0.0.0, port: 9500}
capture: {graph_hashes: false, node_counts: false}
archive: {path: /var/lib/aotwatch}
limits: {max_series_per_metric: 1000000}
"""
    config = load_config(write(tmp_path, text))
    assert config.job_name == "llama-70b"
    assert dict(config.labels) == {"team": "llm", "generation": "2"}
    assert config.export == ExportConfig(enabled=False, address="0.0.0.0", port=9500)
    assert not config.capture.graph_hashes and not config.capture.node_counts
    assert config.archive == ArchiveConfig(path="/var/lib/aotwatch")
    assert config.limits == LimitsConfig(max_series_per_metric=1_000_000)


def test_labels_are_read_only_and_copied():
    labels = {"team": "llm"}
    config = Config(labels=labels)
    labels["team"] = "changed"
    assert config.labels == {"team": "llm"}
    with pytest.raises(TypeError):
        config.labels["team"] = "x"  # type: ignore[index]


def test_to_dict_is_plain_and_round_trips():
    config = Config(labels={"team": "llm"}, archive=ArchiveConfig(path="/tmp/a"))
    data = config.to_dict()
    assert type(data["labels"]) is dict and type(data["export"]) is dict
    assert json.loads(json.dumps(data)) == data
    assert config_from_dict(data) == config


def test_pickle_copy_and_hash():
    config = Config(labels={"team": "llm"}, export=ExportConfig(port=0))
    assert pickle.loads(pickle.dumps(config)) == config
    assert copy.deepcopy(config) == config
    assert hash(config) == hash(copy.copy(config))


def test_missing_file(tmp_path):
    err = load_error(tmp_path / "nope.yaml")
    assert "cannot read: No such file or directory" in str(err)


def test_directory_is_unreadable(tmp_path):
    assert "cannot read:" in str(load_error(tmp_path))


def test_yaml_syntax_error_names_the_line(tmp_path):
    err = load_error(write(tmp_path, "job_name: a\nexport:\n  port: 1\n bad: [\n"))
    assert f"{err.file}: line 4: YAML syntax error: " in str(err)


def test_python_tags_are_refused(tmp_path):
    err = load_error(write(tmp_path, "job_name: !!python/object/apply:os.getcwd []\n"))
    assert "YAML syntax error" in str(err)


def test_top_level_must_be_a_mapping(tmp_path):
    err = load_error(write(tmp_path, "- job_name\n- export\n"))
    assert str(err) == f"{err.file}: the top level must be a mapping of keys; got list"


def test_unknown_key_suggests_the_closest(tmp_path):
    message = key_error(tmp_path, "export:\n  prot: 1\n", "export.prot")
    assert message.endswith(
        "export.prot: unknown key; expected one of address, enabled, port, web_config; "
        "did you mean 'port'?"
    )


def test_unknown_top_level_key_without_a_close_match(tmp_path):
    message = key_error(tmp_path, "zzz: 1\n", "zzz")
    assert (
        "unknown key; expected one of archive, capture, cluster, collector, export, job_name, "
        "labels, limits, push" in message
    )
    assert "did you mean" not in message


def test_wrong_type(tmp_path):
    message = key_error(tmp_path, "export:\n  port: abc\n", "export.port")
    assert message.endswith("export.port: got str 'abc'; expected an integer")


@pytest.mark.parametrize(
    ("text", "key", "expected"),
    [
        ("export: {port: true}", "export.port", "got bool True; expected an integer"),
        (
            "limits: {max_series_per_metric: false}",
            "limits.max_series_per_metric",
            "integer",
        ),
        ("export: {enabled: 1}", "export.enabled", "got int 1; expected true or false"),
        ("capture: {node_counts: 0}", "capture.node_counts", "expected true or false"),
        (
            "export: {port: 9420.0}",
            "export.port",
            "got float 9420.0; expected an integer",
        ),
        ("job_name: 7", "job_name", "got int 7; expected a string"),
        ("job_name:", "job_name", "got null; expected a string"),
        ("archive: {path: 3}", "archive.path", "expected a string or null"),
        (
            "export: 5",
            "export",
            "got int 5; expected a mapping with keys address, enabled, port",
        ),
        ("labels: [a, b]", "labels", "got list ['a', 'b']; expected a mapping"),
        ("labels: {team: 1}", "labels.team", "got int 1; expected a string"),
        ("labels: {team: true}", "labels.team", "got bool True; expected a string"),
        ("labels: {team: 1.5}", "labels.team", "got float 1.5; expected a string"),
        ("labels: {1: a}", "labels.1", "the name is int 1; expected a string"),
    ],
)
def test_wrong_types_are_refused(tmp_path, text, key, expected):
    assert expected in key_error(tmp_path, text + "\n", key)


@pytest.mark.parametrize(
    ("text", "key", "expected"),
    [
        (
            "export: {port: 70000}",
            "export.port",
            "70000 is out of range; expected 0..65535",
        ),
        ("export: {port: -1}", "export.port", "-1 is out of range; expected 0..65535"),
        (
            "limits: {max_series_per_metric: 0}",
            "limits.max_series_per_metric",
            "1..1000000",
        ),
        (
            "limits: {max_series_per_metric: 1000001}",
            "limits.max_series_per_metric",
            "range",
        ),
        ("job_name: ''", "job_name", "'' has 0 characters; expected printable UTF-8 text of"),
        (f"job_name: {'j' * 257}", "job_name", "has 257 characters; at most 256; expected "),
        ("export: {address: ''}", "export.address", "has 0 characters"),
        ("archive: {path: ''}", "archive.path", "has 0 characters"),
    ],
)
def test_out_of_range(tmp_path, text, key, expected):
    assert expected in key_error(tmp_path, text + "\n", key)


def test_range_edges_are_accepted():
    assert Config(export=ExportConfig(port=65535), job_name="j" * 256).export.port == 65535
    assert LimitsConfig(max_series_per_metric=1).max_series_per_metric == 1
    assert Config(labels={"team": "v" * 256, "empty": ""}).labels["team"] == "v" * 256


def test_default_ports_leave_a_node_room_for_64_local_ranks():
    """The head, the collector and local mode's ports of up to 64 processes never collide
    (before: the collector's 9430 was local rank 10's port and the head's 9429 rank 9's)."""
    config = Config()
    local = range(config.export.port, config.export.port + LOCAL_PORTS)
    assert LOCAL_PORTS == 64
    servers = {config.collector.port, config.collector.head_port}
    assert len(servers) == 2 and servers.isdisjoint(local)


@pytest.mark.parametrize(
    ("text", "key", "says"),
    [
        (
            "collector: {port: 9430}",
            "collector.port",
            "9430 is one of local mode's ports, export.port 9420 plus a local rank "
            "(9420..9483); expected a port outside 9420..9483, or 0 (any free port)",
        ),
        (
            "export: {port: 9300}\ncollector: {head_port: 9363}",
            "collector.head_port",
            "9363 is one of local mode's ports, export.port 9300 plus a local rank (9300..9363)",
        ),
        (
            "collector: {port: 9500, head_port: 9500}",
            "collector.head_port",
            "9500 is collector.port too; expected a port of its own, or 0 (any free port)",
        ),
    ],
    ids=["collector in local mode's", "head in local mode's", "head on the collector's"],
)
def test_ports_that_collide_are_one_line_naming_both(tmp_path, text, key, says):
    assert f"{key}: {says}" in key_error(tmp_path, text + "\n", key)


@pytest.mark.parametrize(
    "text",
    [
        "export: {port: 9430}\ncollector: {port: 9419}",  # local mode above the collector
        "export: {enabled: false}\ncollector: {port: 9430}",  # no local mode
        "export: {port: 0}\ncollector: {port: 9420}",  # local mode on any free port
        "collector: {port: 0, head_port: 0}",  # both on any free port
    ],
)
def test_ports_that_cannot_collide_are_accepted(tmp_path, text):
    load_config(write(tmp_path, text + "\n"))


@pytest.mark.parametrize(
    ("text", "key", "says"),
    [
        ("job_name: >\n  my-job\n", "job_name", "'my-job\\n' is not printable UTF-8"),
        ('job_name: "j\\ud800"\n', "job_name", "'j\\ud800' is not printable UTF-8"),
        ('job_name: "a\\tb"\n', "job_name", "is not printable UTF-8"),
        ("labels:\n  team: >\n    llm\n", "labels.team", "'llm\\n' is not printable UTF-8"),
        ('labels: {team: "\\ud800"}\n', "labels.team", "is not printable UTF-8"),
        (f"labels: {{team: {'v' * 257}}}\n", "labels.team", "has 257 characters; at most 256"),
    ],
    ids=[
        "folded job_name",
        "surrogate job_name",
        "tab job_name",
        "folded label",
        "surrogate label",
        "long label",
    ],
)
def test_label_values_are_checked_as_records_check_them(tmp_path, text, key, says):
    """What a record would refuse as a label (records.label_value_problem) the config refuses,
    in one line that does not itself carry the bad character."""
    message = key_error(tmp_path, text, key)
    assert says in message and message.isprintable() and message.isascii()
    assert message.endswith(
        f"; expected printable UTF-8 text of {key == 'job_name':d}..256 characters"
    )


@pytest.mark.parametrize(
    ("value", "valid"),
    [
        ("j" * MAX_LABEL, True),
        ("llm-ü 東京", True),
        ("a b", True),
        ("j" * (MAX_LABEL + 1), False),
        ("my-job\n", False),
        ("j\ud800", False),
        ("a\tb", False),
        ("\x7f", False),
    ],
    ids=["longest", "non-ascii", "space", "too long", "newline", "surrogate", "tab", "DEL"],
)
def test_config_and_records_agree_on_label_values(value, valid):
    def accepts(make) -> bool:
        try:
            make()
        except (ConfigError, RecordError):
            return False
        return True

    assert accepts(lambda: to_record(new_record(job_name=value, device=value))) is valid
    assert accepts(lambda: Config(job_name=value)) is valid
    assert accepts(lambda: Config(labels={"team": value})) is valid


@pytest.mark.parametrize(
    ("key", "says"), [("job_name", "expected a string"), ("labels", "mapping")]
)
def test_a_billion_laughs_costs_little(tmp_path, key, says):
    """The error's repr of the value is bounded: at 6 levels the full repr peaked at 6.7 MB,
    at 9 levels it took 5 s and 667 MB; both now cost a few kB."""
    tracemalloc.start()
    try:
        message = key_error(tmp_path, f"{key}: {laughs(6)}\n", key)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert says in message and peak < 1_000_000
    assert key_error(tmp_path, f"{key}: {laughs(9)}\n", key) == message


@pytest.mark.parametrize("opening", ["[", "{a: "])
@pytest.mark.parametrize("key", ["job_name", "labels", "export"])
def test_deep_nesting_is_a_config_error(tmp_path, opening, key):
    closing = opening[0].replace("[", "]").replace("{", "}")
    err = load_error(write(tmp_path, f"{key}: {opening * 3000}{closing * 3000}\n"))
    assert str(err) == f"{err.file}: YAML nested too deeply; expected fewer levels"


@pytest.mark.parametrize(
    ("text", "says"),
    [
        (f"job_name: {'1' * 5000}\n", "Exceeds the limit (4300 digits)"),
        ("job_name: 2024-13-45\n", "month must be in 1..12"),
    ],
    ids=["5000 digits", "month 13"],
)
def test_yaml_values_python_cannot_hold_are_config_errors(tmp_path, text, says):
    err = load_error(write(tmp_path, text))
    assert str(err).startswith(f"{err.file}: YAML value out of range: ") and says in str(err)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("my-team", "'my-team' is not a valid label name"),
        ("1team", "not starting with a digit"),
        ("", "is not a valid label name"),
        ("__team", "reserved by Prometheus"),
        ("rank", "'rank' is a label that aotwatch sets itself"),
        ("job", "aotwatch sets itself"),
        ("le", "aotwatch sets itself"),
    ],
)
def test_label_name_rules(tmp_path, name, expected):
    assert expected in key_error(tmp_path, f"labels: {{'{name}': x}}\n", f"labels.{name}")


def test_reserved_label_names():
    assert {
        "job_name",
        "rank",
        "device",
        "instance",
        "job",
        "le",
    } <= RESERVED_LABEL_NAMES
    for name in RESERVED_LABEL_NAMES:
        with pytest.raises(ConfigError):
            Config(labels={name: "x"})
    assert Config(labels={"team_1": "x", "_x": "y"}).labels == {
        "team_1": "x",
        "_x": "y",
    }


def test_python_built_configs_are_checked():
    with pytest.raises(ConfigError) as info:
        ExportConfig(port=70000)
    assert (info.value.file, info.value.key) == (None, "port")
    assert str(info.value) == "port: 70000 is out of range; expected 0..65535"
    with pytest.raises(ConfigError, match="^export: got mapping"):
        Config(export={"port": 1})  # type: ignore[arg-type]


def test_config_from_dict_names_its_source():
    with pytest.raises(ConfigError) as info:
        config_from_dict({"export": {"port": "x"}}, source="job.yaml")
    assert str(info.value).startswith("job.yaml: export.port: got str 'x'")
    assert config_from_dict({"export": ExportConfig(port=1)}) == Config(export=ExportConfig(port=1))
