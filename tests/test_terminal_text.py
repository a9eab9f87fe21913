"""Terminal escapes in records: refused at validation where reports print the field, and
escaped wherever text from records reaches a terminal or a log (``records.printable``)."""

from __future__ import annotations

import json
import logging

import pytest

from aotwatch.cluster import serve
from aotwatch.core.archive import ARCHIVE_FILE
from aotwatch.core.config import Config
from aotwatch.core.divergence import Finding
from aotwatch.core.records import RecordError, encode_record, new_record, printable, to_record
from aotwatch.core.wire import CollectorStatus, Endpoint, Status, Target, Worker
from aotwatch.report import summary as report
from helpers import aotwatch

ERASE_LINE = "\x1b[2K\r"
CLIPBOARD = "\x1b]52;c;cm0gLXJmIH4K\x07"  # OSC 52: write "rm -rf ~" to the clipboard
CONCEAL = "\x1b[8m"
ESCAPES = (ERASE_LINE, CLIPBOARD, CONCEAL)
CONTROLS = ("\x1b", "\x07", "\r", "\x9b")  # ESC, BEL, CR and C1's CSI


def crafted(escape: str, rank: int = 0) -> list[dict]:
    """A frame and a graph record of one rank, an escape in every field reports print."""
    common = {"rank": rank, "compile_id": f"0/0{escape}"}
    return [
        new_record(**common, cache={f"fx{escape}": {f"miss{escape}": 1}}),
        new_record(
            **common,
            graph="forward",
            graph_hash=f"{rank}{escape}",
            collectives=[f"all_reduce(sum){escape}"],
            collective_hash=f"{rank}{escape}",
        ),
    ]


@pytest.mark.parametrize(
    "field",
    ["compile_id", "graph_hash", "collective_hash", "collectives", "cache", "cache result"],
)
@pytest.mark.parametrize("escape", [*ESCAPES, "\n", "\u202e", "\x9b"])
def test_a_control_character_in_a_printed_field_is_refused(field, escape):
    text = f"0/0{escape}"
    values = {
        "collectives": {"collectives": [text]},
        "cache": {"cache": {text: {"miss": 1}}},
        "cache result": {"cache": {"fx_graph": {text: 1}}},
    }.get(field, {field: text})
    record = new_record(graph="forward", **values)
    with pytest.raises(RecordError) as refused:
        to_record(record)
    assert refused.value.reason == "wrong_type"


def test_printable_text_in_those_fields_is_kept():
    record = new_record(
        compile_id="0/0 ü 编译",
        graph="forward",
        graph_hash="ab cd",
        collectives=["all_reduce(sum, 0) f32[4] — ok"],
        cache={"fx_graph": {"hit": 1}},
    )
    assert to_record(record).compile_id == "0/0 ü 编译"


def test_printable_escapes_every_control_character_and_keeps_the_rest():
    text = printable(f"a{ERASE_LINE}b{CLIPBOARD}c{CONCEAL}\n\u202e\ud800 ü")
    assert text == "a\\x1b[2K\\rb\\x1b]52;c;cm0gLXJmIH4K\\x07c\\x1b[8m\\n\\u202e\\ud800 ü"
    assert printable("0/1 forward ü") == "0/1 forward ü"
    assert printable(3) == "3"


@pytest.mark.subprocess
def test_report_prints_no_escape_from_a_crafted_archive(tmp_path):
    archive = tmp_path / "archive"
    archive.mkdir()
    lines = b"".join(encode_record(r) for rank in (0, 1) for r in crafted(ESCAPES[rank], rank))
    lines += encode_record(new_record(compile_id="0/0", device="cpu"))
    (archive / ARCHIVE_FILE).write_bytes(lines)
    result = aotwatch("report", str(archive))
    assert result.returncode == 0, result.stderr
    assert not any(control in result.stdout for control in CONTROLS), repr(result.stdout)
    counts = json.loads(aotwatch("report", str(archive), "--format", "json").stdout)
    assert counts["aotwatch_records_rejected"] == [{"labels": {"reason": "wrong_type"}, "value": 4}]


HOSTILE = Finding("job", "graph_hash", f"0/0{CLIPBOARD}", ((f"a{ERASE_LINE}", ("0",)),))
"""A finding as an older collector, or one of another version, may still report it."""


def test_divergence_lines_and_the_run_summary_escape(capsys):
    for line in report.divergence_lines([HOSTILE]) + report.divergence_lines([HOSTILE.to_dict()]):
        assert not any(control in line for control in CONTROLS), repr(line)
    summary = report.job_summary("job", report.read_archives([])[0], [HOSTILE.to_dict()])
    assert "0/0\\x1b]52;c;cm0gLXJmIH4K\\x07" in summary
    assert not any(control in summary for control in CONTROLS)


def test_status_escapes_what_collectors_and_the_head_report(capsys):
    worker = Worker(worker_id="w", job_name=f"job{ERASE_LINE}", rank=0)
    endpoint = Endpoint(
        ip="10.0.0.1",
        port=9430,
        scheme="http",
        node_id="n" * 20,
        hostname=f"host{CONCEAL}",
        ready=True,
        replayed=0,
        workers=[worker],
    )
    collector = CollectorStatus("n" * 20, True, endpoint)
    head = Target("10.0.0.1", 9429, "http")
    assert serve.print_status(Status([collector], head, "/tmp/file_sd.json", [HOSTILE.to_dict()]))
    out = capsys.readouterr().out
    assert "host\\x1b[8m" in out and "job\\x1b[2K\\r" in out and "0/0\\x1b]52" in out
    assert not any(control in out for control in CONTROLS), repr(out)


def test_a_head_of_another_version_is_named_not_a_traceback(capsys):
    """An older head answers ``status`` with a dict: one line says to restart the daemon."""
    assert serve.print_status({"collectors": [], "divergences": [], "file_sd": "f"}) is False
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.strip().splitlines() == [
        "aotwatch: the head on this cluster runs another version of aotwatch; restart the "
        "daemon (`aotwatch serve`) with this one"
    ]


def test_the_head_logs_a_divergence_escaped(caplog):
    from aotwatch.core.judging import DivergenceWatch

    watch = DivergenceWatch(Config())
    with caplog.at_level(logging.WARNING, logger="aotwatch.cluster.head"):
        watch._judge("job", [HOSTILE], None, 0.0, True, set())
    (line,) = [r.getMessage() for r in caplog.records if "rank divergence" in r.getMessage()]
    assert "0/0\\x1b]52;c;cm0gLXJmIH4K\\x07" in line
    assert not any(control in line for control in CONTROLS), repr(line)
