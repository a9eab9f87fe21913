"""The messages between processes (``wire``), the spool format and the typed compile id."""

from __future__ import annotations

import json
import pickle

import pytest

from aotwatch.cluster.file_sd import write_file_sd
from aotwatch.cluster.spool import read_spool, write_spool
from aotwatch.core.archive import private_directory
from aotwatch.core.job_archives import JOB_FILE, JobArchives, job_slug, read_job_file
from aotwatch.core.records import encode_record, new_record, parse_compile_id, to_record
from aotwatch.core.wire import (
    CollectorStatus,
    CompileNotice,
    Endpoint,
    JobFile,
    SpoolHeader,
    Status,
    Target,
    Totals,
    WireError,
    Worker,
    decode,
    to_wire,
)

WORKER = {"worker_id": "w1", "job_name": "j", "rank": 0}


@pytest.mark.parametrize(
    ("text", "frame_compiles"),
    [("0/0", 1), ("3/2", 3), ("3/2_1", 3), ("!0", None), ("!1/0/2", None), ("!1/0/2_3", None)],
)
def test_a_compile_id_is_parsed_once_and_gives_its_text_back(text, frame_compiles):
    compile_id = parse_compile_id(text)
    assert str(compile_id) == text
    assert compile_id.frame_compiles == frame_compiles
    assert parse_compile_id(text) is compile_id  # parsed once while in use


@pytest.mark.parametrize("text", [None, "", "x", "0/", "/0/1", "0/1x", "!", "!1/", "_1", "0/1_"])
def test_what_is_not_torchs_compile_id_parses_as_none(text):
    assert parse_compile_id(text) is None


@pytest.mark.parametrize(
    "worker",
    [
        {**WORKER, "rank": True},  # a bool is not a rank
        {**WORKER, "rank": -1},
        {**WORKER, "worker_id": ""},
        {**WORKER, "job_name": "a\nb"},  # not a label value
        {**WORKER, "extra": 1},
        {"worker_id": "w1", "job_name": "j"},  # no rank
        ["w1", "j", 0],
    ],
)
def test_a_malformed_worker_announcement_is_refused(worker):
    with pytest.raises(WireError):
        decode(Worker, worker)


def test_a_worker_announcement_keeps_its_compile_notice_for_a_decode_of_its_own():
    notice = {"compile_id": "3/0", "since": 0.0, "device": "cpu"}  # an older worker's
    worker = decode(Worker, {**WORKER, "compiling": notice})
    assert worker.compiling == notice
    with pytest.raises(WireError):
        decode(CompileNotice, worker.compiling)
    good = {"compile_id": "3/0", "elapsed_s": 2, "device": "cuda:0"}
    assert decode(CompileNotice, good) == CompileNotice("3/0", 2.0, "cuda:0")


@pytest.mark.parametrize(
    "totals",
    [
        {"dropped": {"queue_full": -1}},
        {"dropped": {"queue_full": 1.5}},
        {"stolen": {"x": 1}},  # a kind no worker counts
        {"capture_errors": {f"stage-{i}": 1 for i in range(65)}},
        {"dropped": {"\x1b[2J": 1}},
    ],
)
def test_malformed_totals_are_refused(totals):
    with pytest.raises(WireError):
        decode(Totals, totals)


def test_a_spool_file_reads_back_as_written_and_a_bad_header_as_none(tmp_path):
    spool = private_directory(tmp_path / "spool")
    line = encode_record(new_record(job_name="j"))
    worker = decode(Worker, WORKER)
    header = SpoolHeader(worker, to_wire(Totals(dropped={"queue_full": 2})))
    path = write_spool(spool, "w1", header, line)
    read, lines = read_spool(path)
    assert read == header and list(lines) == [line]
    # what the previous version wrote reads the same
    path = write_spool(spool, "w2", {"worker": WORKER, "counts": {}}, line)
    assert read_spool(path)[0] == SpoolHeader(worker, {})
    for bad in ({"worker": {}}, {"worker": WORKER, "extra": 1}, [WORKER]):
        read, lines = read_spool(write_spool(spool, "bad", bad, line))
        assert read is None and list(lines) == [line]


def test_a_torn_spool_header_is_none(tmp_path):
    spool = private_directory(tmp_path / "spool")
    path = spool / "torn.jsonl"
    path.write_bytes(b'{"worker": {"worker_id"\n')
    path.chmod(0o600)
    read, lines = read_spool(path)
    assert read is None and list(lines) == []


def _endpoint(node_id: str, scheme: str = "http") -> Endpoint:
    worker = decode(Worker, WORKER)
    return Endpoint("10.0.0.1", 9430, scheme, node_id, "gpu-1", True, 3, [worker])


def test_a_status_crosses_ray_as_a_pickle():
    status = Status(
        [CollectorStatus("a1", True, _endpoint("a1")), CollectorStatus("b2", False)],
        Target("10.0.0.1", 9429, "https"),
        "/tmp/file_sd.json",
        [],
    )
    assert pickle.loads(pickle.dumps(status)) == status
    assert status.head.url() == "https://10.0.0.1:9429/metrics"


def test_file_sd_lists_each_collector_and_the_head_as_before(tmp_path):
    path = tmp_path / "file_sd.json"
    head = Target("10.0.0.9", 9429, "http")
    write_file_sd(path, [_endpoint("b2", "https"), _endpoint("a1")], head)
    assert json.loads(path.read_text()) == [
        {
            "targets": ["10.0.0.1:9430"],
            "labels": {"node_id": "a1", "hostname": "gpu-1", "role": "collector"},
        },
        {
            "targets": ["10.0.0.1:9430"],
            "labels": {
                "node_id": "b2",
                "hostname": "gpu-1",
                "role": "collector",
                "__scheme__": "https",
            },
        },
        {"targets": ["10.0.0.9:9429"], "labels": {"role": "head"}},
    ]


def test_job_json_keeps_its_form_and_an_older_one_reads(tmp_path):
    archives = JobArchives(tmp_path)
    archives.write_records([to_record(new_record(job_name="j"))], [b"{}\n"])
    directory = archives.path / job_slug("j")
    assert (directory / JOB_FILE).read_text() == '{"job_name": "j", "finished": null}'
    (directory / JOB_FILE).write_text('{"job_name": "j", "finished": 1700000000, "more": 1}')
    assert read_job_file(directory) == JobFile("j", 1700000000.0)
    (directory / JOB_FILE).write_text('{"job_name": "j", "finished": "yesterday"}')
    assert read_job_file(directory) is None  # not aotwatch's: read around, as a hostile one
