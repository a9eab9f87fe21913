"""A collector against a full disk, corrupt and hostile files, another user's directories, and
pushes no real worker sends: it never acknowledges what it did not archive, never crash-loops
on a bad line, and /metrics keeps answering.

The collector is the real ``NodeCollector`` class, constructed in this process (its Ray actor
wrapper adds nothing here), serving real HTTP on loopback; files are real, a full disk is a
real 64 KiB tmpfs.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import tracemalloc
import uuid
from pathlib import Path

import pytest

from aotwatch.cluster.file_sd import file_sd_path, write_file_sd
from aotwatch.cluster.paths import collector_directory
from aotwatch.cluster.worker_counts import COUNTS_FILE
from aotwatch.core.aggregate import Aggregate, Snapshot
from aotwatch.core.archive import ARCHIVE_FILE, UnsafePath
from aotwatch.core.config import LimitsConfig
from aotwatch.core.job_archives import JOB_FILE, JOBS_DIR
from aotwatch.core.liveness import Liveness
from aotwatch.core.records import new_record
from aotwatch.core.wire import Worker
from cluster_helpers import NODE, config_at
from collector_helpers import WORKER, fill, job_directory, metric, records
from helpers import aotwatch, scrape


def archived_ids(root: Path) -> list[str]:
    path = job_directory(root) / ARCHIVE_FILE
    return [json.loads(line)["record_id"] for line in path.read_text().splitlines() if line]


@pytest.fixture
def small_disk(tmp_path):
    """A real 64 KiB tmpfs (mounting needs root: CI runs as root)."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount_point)], capture_output=True
    )
    if mounted.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    yield mount_point
    subprocess.run(["umount", "-l", str(mount_point)], check=True)


@pytest.mark.subprocess
def test_a_full_disk_is_an_error_to_the_worker_never_an_acknowledgement(node_collector, small_disk):
    collector = node_collector(small_disk / "archive")
    filler = fill(small_disk)
    batch = records(3)
    with pytest.raises(OSError):
        collector.push(WORKER, batch, {"dropped": {"queue_full": 1}})
    assert metric(collector, "aotwatch_records_received") == {}
    assert metric(collector, "aotwatch_records_dropped") == {}  # nothing half-counted
    filler.unlink()
    assert collector.push(WORKER, batch, {"dropped": {"queue_full": 1}}) == 3  # the resend
    assert metric(collector, "aotwatch_records_received") == {("hostile",): 3}
    assert metric(collector, "aotwatch_records_dropped") == {("hostile", "queue_full"): 1}
    collector.close()
    restarted = node_collector(small_disk / "archive")
    assert restarted.replayed == 3
    assert metric(restarted, "aotwatch_records_dropped") == {("hostile", "queue_full"): 1}


def test_every_accepted_record_is_archived_and_unknown_keys_are_refused(node_collector, tmp_path):
    collector = node_collector()
    good = records(2)
    hostile = [
        {**records(1)[0], "extra": b"bytes"},  # a key no record has, a value JSON cannot hold
        records(1, frame={"co_name": b"bytes"})[0],
        records(1, frame={"nested": {"deep": [1, 2, 3]}})[0],
        records(1, graph_breaks=[{"category": "other", "user_frame": object()}])[0],
        records(1, cache={"fx_graph": {str(i): 1 for i in range(10_000)}})[0],
    ]
    assert collector.push(WORKER, [good[0], *hostile, good[1]], {}) == 2
    rejected = metric(collector, "aotwatch_records_rejected")
    assert rejected == {("unknown_field",): 1, ("wrong_type",): 3, ("too_large",): 1}
    assert collector.push(WORKER, [good[0], *hostile, good[1]], {}) == 0  # a resend: no-op
    assert archived_ids(tmp_path / "archive") == [r["record_id"] for r in good]
    collector.close()
    assert node_collector().replayed == 2  # every acknowledged record comes back after a restart


@pytest.mark.subprocess
def test_a_corrupt_archive_is_read_around_by_the_collector_and_by_report(node_collector, tmp_path):
    first = node_collector()
    first.push(WORKER, records(2), {"dropped": {"queue_full": 4}})
    first.close()
    directory = collector_directory(config_at(tmp_path / "archive"), NODE)
    with open(job_directory(tmp_path / "archive") / ARCHIVE_FILE, "ab") as archive:
        archive.write(b"\x80\n")  # not UTF-8
        archive.write(b"[" * 100_000 + b"\n")  # nested past the parser's recursion limit
        archive.write(b'{"a": "' + b"x" * (2 << 20) + b'"}\n')  # longer than any record
        archive.write(json.dumps(records(1)[0]).encode() + b"\n")  # a good one after them
    with open(directory / COUNTS_FILE, "ab") as counts:
        counts.write(b"\xff\xfe\n")
    restarted = node_collector()
    assert restarted.replayed == 3
    assert metric(restarted, "aotwatch_records_rejected") == {
        ("not_utf8",): 2,  # one in each file
        ("not_json",): 1,
        ("too_large",): 1,
    }
    assert metric(restarted, "aotwatch_records_dropped") == {("hostile", "queue_full"): 4}
    restarted.close()
    report = aotwatch("report", str(job_directory(tmp_path / "archive")), "--format", "json")
    assert report.returncode == 0, report.stderr
    rejected = {
        s["labels"]["reason"]: s["value"]
        for s in json.loads(report.stdout)["aotwatch_records_rejected"]
    }
    assert rejected == {"not_utf8": 1, "not_json": 1, "too_large": 1}


@pytest.mark.parametrize("label", ["queue_full\udc80", "line\nbreak", "x" * 300])
def test_a_bad_count_label_is_refused_before_it_is_persisted(node_collector, label):
    collector = node_collector()
    collector.push(WORKER, [], {"dropped": {label: 1, "queue_full": 1}})
    assert metric(collector, "aotwatch_records_dropped") == {}  # the whole totals refused
    collector.close()
    restarted = node_collector()
    assert metric(restarted, "aotwatch_records_dropped") == {}  # and nothing was persisted


@pytest.mark.parametrize(
    "worker",
    [
        {"worker_id": "w", "job_name": "j"},  # no rank
        {"worker_id": "w", "job_name": None, "rank": 0},
        {"worker_id": "w", "job_name": "j\n", "rank": 0},
        {"worker_id": "w", "job_name": "j", "rank": -1},
        {"worker_id": "w" * 10_000, "job_name": "j", "rank": 0},
        {**WORKER, "extra": "x" * 10_000},
        "not a worker",
        None,
    ],
)
def test_a_malformed_worker_is_refused_and_metrics_keep_answering(node_collector, worker):
    collector = node_collector()
    assert collector.push(worker, records(2), {}) == 0
    collector.goodbye(worker)
    assert metric(collector, "aotwatch_records_rejected") == {("bad_worker",): 2}
    assert collector._live_workers() == []
    assert scrape(collector.server.url.replace("/metrics", "/healthz")) == "ok\n"


def test_workers_tracked_per_job_are_bounded(node_collector):
    collector = node_collector(limits=LimitsConfig(max_workers_per_job=50))
    for i in range(500):
        worker = {**WORKER, "worker_id": f"w{i}", "hostname": f"host-{i:04d}-" + "h" * 200}
        collector.push(worker, [], {})
    assert len(collector._live_workers()) == 50
    assert metric(collector, "aotwatch_workers_attached") == {("hostile",): 50}


def test_attached_workers_are_bounded_in_number_and_memory():
    liveness = Liveness(timeout_s=60, max_per_job=1024, max_jobs=4)
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for i in range(10_000):
        hostname = f"{i:05d}" + "h" * 250
        worker = Worker(f"w{i}", "j", i, hostname=hostname)
        assert liveness.seen(worker) is (i < 1024)
    for i in range(10):
        liveness.seen(Worker(f"other-{i}", f"job-{i}", 0))
    grown = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    attached = liveness.apply(Snapshot({}, {})).values["aotwatch_workers_attached"]
    assert attached == {("j",): 1024, ("job-0",): 1, ("job-1",): 1, ("job-2",): 1}
    assert grown < 16 << 20  # 10,000 hostnames of 255 characters are not kept
    assert not Aggregate().add(new_record(hostname="h" * 16_384))  # a 16 KB hostname: refused


# -- another user on the machine ---------------------------------------------------------------

NOBODY = 65534


def as_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("making a directory of another user needs root (CI runs as root)")


def test_an_archive_root_of_another_user_is_refused(node_collector, tmp_path):
    as_root()
    root = tmp_path / "archive"
    root.mkdir()
    os.chown(root, NOBODY, NOBODY)
    with pytest.raises(UnsafePath, match="belongs to uid 65534"):
        node_collector(root)


def test_a_world_writable_archive_root_is_refused(node_collector, tmp_path):
    root = tmp_path / "archive"
    root.mkdir()
    root.chmod(0o777)
    with pytest.raises(UnsafePath, match="may be written by group or others"):
        node_collector(root)


def test_a_planted_link_is_never_followed(node_collector, tmp_path):
    target = tmp_path / "precious"
    target.write_text("root's file\n")
    directory = collector_directory(config_at(tmp_path / "archive"), NODE)
    (directory / ARCHIVE_FILE).symlink_to(target)
    collector = node_collector()  # skipped, counted and moved aside (test_disk_faults.py)
    assert metric(collector, "aotwatch_records_rejected") == {("unsafe_file",): 1}
    assert target.read_text() == "root's file\n"


def test_files_are_private_and_file_sd_readable_but_not_writable_by_others(
    node_collector, tmp_path
):
    collector = node_collector()
    collector.push(WORKER, records(1), {"dropped": {"queue_full": 1}})
    root = tmp_path / "archive"
    directory = collector_directory(config_at(root), NODE)
    assert stat.S_IMODE(root.stat().st_mode) == 0o711
    job = job_directory(root)
    for private in (directory, directory / JOBS_DIR, job):
        assert stat.S_IMODE(private.stat().st_mode) == 0o700
    for path in (job / ARCHIVE_FILE, job / JOB_FILE, directory / COUNTS_FILE):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    path = file_sd_path(config_at(root))
    write_file_sd(path, [], None)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


@pytest.mark.subprocess
def test_trace_refuses_an_archive_directory_of_another_user(tmp_path):
    as_root()
    archive = tmp_path / f"theirs-{uuid.uuid4().hex[:6]}"
    archive.mkdir()
    os.chown(archive, NOBODY, NOBODY)
    result = aotwatch(
        "trace",
        "--archive",
        str(archive),
        "--port",
        "0",
        "--",
        "python",
        "-c",
        "open('ran', 'w')",
        cwd=tmp_path,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith(f"aotwatch: error: {archive}: belongs to uid 65534")
    assert not (tmp_path / "ran").exists()
