"""A collector's disk misbehaving: a disk that fills in the middle of a write, files of the
wrong kind or mode where aotwatch expects its own (after a restore or a ``cp -r``), spool files
of workers killed while writing them, and job names whose directory names collide.

The collector is the real ``NodeCollector`` class, constructed in this process; the full disk
is a real tmpfs, FIFOs, links and modes are real, the killed worker a real process killed with
SIGKILL.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from aotwatch.cluster.paths import collector_directory
from aotwatch.cluster.spool import SPOOL_SUFFIX, write_spool
from aotwatch.cluster.worker_counts import COUNTS_FILE
from aotwatch.core.archive import ARCHIVE_FILE, ArchiveWriter
from aotwatch.core.job_archives import JOB_FILE, job_slug
from cluster_helpers import NODE, config_at, lines
from collector_helpers import WORKER, fill, finish_all, job_directory, metric, records
from helpers import aotwatch

PAGE = 4096


@pytest.fixture
def tmpfs(tmp_path):
    """Mounts real tmpfs of a given size (mounting needs root: CI runs as root)."""
    mounted: list[Path] = []

    def mount(size: str) -> Path:
        mount_point = tmp_path / f"disk{len(mounted)}"
        mount_point.mkdir()
        result = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount_point)],
            capture_output=True,
        )
        if result.returncode:
            pytest.skip(f"cannot mount a tmpfs here: {result.stderr.decode().strip()}")
        mounted.append(mount_point)
        return mount_point

    yield mount
    for mount_point in mounted:
        subprocess.run(["umount", "-l", str(mount_point)], check=True)


def archived_lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


# -- a write the disk cuts short -----------------------------------------------------------


@pytest.mark.subprocess
def test_a_write_cut_short_by_a_full_disk_is_undone_and_raised(tmpfs):
    disk = tmpfs("64k")
    writer = ArchiveWriter(disk / "archive")
    writer.write(b'{"first": 1}\n')
    filler = fill(disk)
    with open(filler, "r+b") as stream:  # one page free: the next write is cut short there
        stream.truncate(os.path.getsize(filler) - PAGE)
    batch = b"".join(b'{"line": "%s"}\n' % (b"x" * 1000) for _ in range(10))
    with pytest.raises(OSError):
        writer.write(batch)
    assert writer.path.read_bytes() == b'{"first": 1}\n'  # not a byte of it kept
    filler.unlink()
    writer.write(batch)  # the resend, once there is room
    writer.close()
    assert writer.path.read_bytes() == b'{"first": 1}\n' + batch


@pytest.mark.subprocess
def test_a_disk_filling_mid_batch_loses_no_acknowledged_record_and_tears_no_line(
    node_collector, tmpfs
):
    # The case: 512 KiB under a collector, pushed until full, space freed, pushed
    # again. Before: 2 of 343 acknowledged records missing, one line torn (the next write
    # glued onto the short one).
    disk = tmpfs("512k")
    room = disk / "room"
    room.write_bytes(b"\0" * (128 << 10))  # freed once the disk is full
    collector = node_collector(disk / "archive")
    acknowledged, refused = [], 0
    batch = records(7)
    while refused < 3:  # full, and refused however often it is tried
        try:
            collector.push(WORKER, batch, {})
        except OSError:
            refused += 1
            continue
        acknowledged += [record["record_id"] for record in batch]
        batch = records(7)
    room.unlink()
    for _ in range(5):  # the refused batch again, then more
        collector.push(WORKER, batch, {})
        acknowledged += [record["record_id"] for record in batch]
        batch = records(7)
    collector.close()
    archived = [
        json.loads(line) for line in archived_lines(job_directory(disk / "archive") / ARCHIVE_FILE)
    ]
    print(f"\nfull disk: {len(acknowledged)} acknowledged, {len(archived)} lines archived")
    assert [entry["record_id"] for entry in archived] == acknowledged  # each once, none torn
    assert node_collector(disk / "archive").replayed == len(acknowledged)


# -- files that are not aotwatch's own ---------------------------------------------------------

KINDS = ["writable", "fifo", "link", "directory"]


def plant(path: Path, kind: str) -> None:
    """Put at ``path`` what a restore, a ``cp -r`` or another process may leave there."""
    if kind == "writable":  # a file of ours, as ``cp -r`` or a restore leaves its mode
        if not path.exists():
            path.write_bytes(json.dumps(records(1)[0]).encode() + b"\n")
        path.chmod(0o666)
    else:
        if path.exists():
            path.unlink()
        if kind == "fifo":
            os.mkfifo(path, 0o600)
        elif kind == "link":
            path.symlink_to(path.parent / "elsewhere")
            (path.parent / "elsewhere").write_bytes(b"")
        else:
            path.mkdir(mode=0o700)


def start_in_time(start, timeout: float = 60):
    """``start()`` in a thread; fails, leaving it stuck, if it does not return in time."""
    outcome: list = []

    def run() -> None:
        try:
            outcome.append(start())
        except Exception as err:  # noqa: BLE001 - reported below
            outcome.append(err)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout)
    assert outcome, f"did not return within {timeout} s: blocked on the planted file"
    assert not isinstance(outcome[0], Exception), f"raised {outcome[0]!r}"
    return outcome[0]


def skipped_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if "aotwatch: skipped" in r.getMessage()]


def moved_aside(path: Path) -> list[Path]:
    return sorted(path.parent.glob(f"{path.name}.unsafe-*"))


@pytest.mark.parametrize("kind", KINDS)
def test_an_unsafe_live_archive_is_skipped_and_the_other_jobs_replayed(
    node_collector, tmp_path, caplog, kind
):
    # Before: UnsafePath out of NodeCollector.__init__ (the node had no collector for any
    # job), or, for a FIFO, a start blocked forever.
    first = node_collector()
    first.push(WORKER, records(2), {})
    other = {**WORKER, "worker_id": "w2", "job_name": "fine"}
    first.push(other, [{**r, "job_name": "fine"} for r in records(3)], {})
    first.close()
    archive = job_directory(tmp_path / "archive") / ARCHIVE_FILE
    plant(archive, kind)
    collector = start_in_time(node_collector)
    assert collector.replayed == 3  # the other job's; nothing of the skipped file
    assert metric(collector, "aotwatch_records_received") == {("fine",): 3}
    assert metric(collector, "aotwatch_records_rejected") == {("unsafe_file",): 1}
    assert len(moved_aside(archive)) == 1 and len(skipped_warnings(caplog)) == 1
    assert collector.push(WORKER, records(2), {}) == 2  # the job archives again, afresh
    assert stat.S_IMODE(archive.lstat().st_mode) == 0o600 and archive.is_file()
    collector.close()
    assert node_collector().replayed == 5


@pytest.mark.parametrize("kind", KINDS)
def test_an_unsafe_counts_file_is_skipped_and_counts_persist_again(
    node_collector, tmp_path, caplog, kind
):
    first = node_collector()
    first.push(WORKER, records(1), {"dropped": {"queue_full": 1}})
    first.close()
    plant(collector_directory(config_at(tmp_path / "archive"), NODE) / COUNTS_FILE, kind)
    collector = start_in_time(node_collector)
    assert collector.replayed == 1
    assert metric(collector, "aotwatch_records_rejected") == {("unsafe_file",): 1}
    assert len(skipped_warnings(caplog)) == 1
    collector.push({**WORKER, "worker_id": "w2"}, [], {"dropped": {"queue_full": 2}})
    collector.close()
    restarted = node_collector()
    assert metric(restarted, "aotwatch_records_dropped") == {("hostile", "queue_full"): 2}


@pytest.mark.parametrize("kind", KINDS)
def test_an_unsafe_spool_file_is_skipped_once_and_the_others_taken_in(node_collector, caplog, kind):
    # Before: a FIFO blocked the start forever; a link, a 0666 file or a directory was
    # retried every 2 s, forever, each time with a traceback.
    collector = node_collector()
    bad = collector.spool / f"bad{SPOOL_SUFFIX}"
    plant(bad, kind)
    header = {"worker": WORKER, "counts": {}}
    write_spool(collector.spool, "good", header, lines(records(2)))
    collector.close()
    restarted = start_in_time(node_collector)  # drains the spool before it serves
    assert metric(restarted, "aotwatch_records_received") == {("hostile",): 2}
    for _ in range(3):  # the housekeeping rounds that follow
        restarted.drain_spool()
    assert metric(restarted, "aotwatch_records_rejected") == {("unsafe_file",): 1}
    assert len(skipped_warnings(caplog)) == 1
    assert [r for r in caplog.records if r.exc_info] == []  # no traceback
    assert list(restarted.spool.glob(f"*{SPOOL_SUFFIX}")) == [] and len(moved_aside(bad)) == 1


def test_a_fifo_for_a_job_file_neither_blocks_nor_stops_the_start(node_collector, tmp_path):
    first = node_collector()
    first.push(WORKER, records(2), {})
    other = {**WORKER, "worker_id": "w2", "job_name": "fine"}
    first.push(other, [{**r, "job_name": "fine"} for r in records(3)], {})
    first.close()
    plant(job_directory(tmp_path / "archive") / JOB_FILE, "fifo")
    collector = start_in_time(node_collector)
    assert metric(collector, "aotwatch_records_received") == {("fine",): 3}  # not a job: read
    # around, as a hostile job.json is (test_job_archives.py)


# -- spool files of workers killed while writing them ---------------------------------------

KILLED_WRITER = """
import os, sys, time
from pathlib import Path
from aotwatch.cluster import spool

def stuck(fd):  # the worker is killed here, in the middle of spooling
    print("writing", flush=True)
    time.sleep(3600)

spool.os.fsync = stuck
spool.write_spool(Path(sys.argv[1]), "killed", {"worker": {}}, b"")
"""


@pytest.mark.subprocess
def test_a_partial_spool_file_of_a_killed_worker_is_removed_and_a_live_ones_kept(node_collector):
    # Before: ``.<worker>.partial`` files stayed in the spool forever.
    collector = node_collector()
    partial = collector.spool / ".killed.partial"
    writer = subprocess.Popen(
        [sys.executable, "-c", KILLED_WRITER, str(collector.spool)], stdout=subprocess.PIPE
    )
    try:
        assert writer.stdout.readline() == b"writing\n"
        assert partial.exists()
        collector.drain_spool()
        assert partial.exists()  # its writer lives: it holds the file's lock
    finally:
        writer.kill()
        writer.wait()
    collector.drain_spool()
    assert not partial.exists()
    assert list(collector.spool.iterdir()) == []


# -- job directories whose names collide ---------------------------------------------------------

PREFIX = "collide-" + "x" * 56  # 64 characters: the readable part of the slug is the same
COLLIDING = (PREFIX + "10120707", PREFIX + "29175454")
"""Two job names whose directory names are equal: their SHA-256 share the first 48 bits.
Found in 2 minutes on one core by hashing PREFIX + str(n) for n below 2**25 and sorting."""


@pytest.mark.subprocess
def test_jobs_whose_directory_names_collide_keep_their_archives_apart(node_collector, tmp_path):
    # Before: the second job's records went into the first job's archive, under its name
    # (``report --job`` of the second found nothing), and finishing either job renamed the
    # directory to it.
    first, second = COLLIDING
    assert job_slug(first) == job_slug(second)
    collector = node_collector()
    workers = [{**WORKER, "worker_id": job, "job_name": job} for job in COLLIDING]
    for worker, count in zip(workers, (2, 3), strict=True):
        batch = [{**record, "job_name": worker["job_name"]} for record in records(count)]
        assert collector.push(worker, batch, {}) == count
    collector.close()
    restarted = node_collector()
    assert restarted.replayed == 5
    for worker in workers:
        restarted.goodbye(worker)
    assert sorted(finish_all(restarted)) == sorted(COLLIDING)
    assert restarted.archives.survey() == ([], set(COLLIDING))  # each marked, apart
    restarted.close()
    for job, count in zip(COLLIDING, (2, 3), strict=True):
        report = aotwatch("report", "--job", job, str(tmp_path / "archive"), "--format", "json")
        assert report.returncode == 0, report.stderr
        (sample,) = json.loads(report.stdout)["aotwatch_records_received"]
        assert sample == {"labels": {"job_name": job}, "value": count}
