"""A collector's archive per job: a restart replays only live jobs, finished jobs' archives
are kept for ``aotwatch report --job`` until retention removes them, and a hostile job file
is read around. The real ``NodeCollector`` in this process (its Ray wrapper adds nothing
here), real files, real HTTP."""

from __future__ import annotations

import json
import os
import pickle
import time
from pathlib import Path

import pytest

from aotwatch.cluster.spool import write_spool
from aotwatch.core.archive import ARCHIVE_FILE
from aotwatch.core.config import CollectorConfig
from aotwatch.core.digest import Digest
from aotwatch.core.job_archives import JOB_FILE, JobArchives, job_slug
from aotwatch.core.records import new_record, to_record
from cluster_helpers import lines
from collector_helpers import compiles, finish_all, job_directory, metric, worker
from helpers import aotwatch


def graphs(job: str, rank: int, compile_ids: range) -> list[dict]:
    """One forward graph a compile id, as a rank compiles them."""
    return [
        new_record(
            job_name=job, rank=rank, graph="forward", compile_id=f"{i}/0", graph_hash=f"{i:016x}"
        )
        for i in compile_ids
    ]


@pytest.mark.subprocess
def test_a_restart_after_20_finished_jobs_replays_only_the_live_job(node_collector, tmp_path):
    collector = node_collector(
        collector=CollectorConfig(address="127.0.0.1", port=0, job_retention_s=0)
    )
    for index in range(20):
        job = f"done-{index}"
        assert collector.push(worker(job), compiles(job, 5), {"dropped": {"queue_full": 1}}) == 5
        collector.goodbye(worker(job))
    assert sorted(finish_all(collector)) == sorted(f"done-{i}" for i in range(20))
    assert collector.push(worker("live"), compiles("live", 3), {}) == 3
    collector.close()

    restarted = node_collector()
    assert restarted.replayed == 3  # the live job's records; not the 100 of finished jobs
    received = metric(restarted, "aotwatch_records_received")
    assert received == {("live",): 3}
    assert metric(restarted, "aotwatch_records_dropped") == {}  # finished jobs' counts stay out
    # The finished jobs' archives are still there, found by name, for a report.
    report = aotwatch("report", "--job", "done-7", str(tmp_path / "archive"), "--format", "json")
    assert report.returncode == 0, report.stderr
    (sample,) = json.loads(report.stdout)["aotwatch_records_received"]
    assert sample == {"labels": {"job_name": "done-7"}, "value": 5}
    missing = aotwatch("report", "--job", "never-ran", str(tmp_path / "archive"))
    assert missing.returncode == 2 and "no archive of job 'never-ran'" in missing.stderr


def test_a_finished_job_that_runs_again_is_replayed_again(node_collector):
    collector = node_collector()
    collector.push(worker("again"), compiles("again", 2), {})
    collector.goodbye(worker("again"))
    assert finish_all(collector) == ["again"]
    collector.push(worker("again", 1), compiles("again", 1), {})  # the same name, back
    collector.close()
    assert node_collector().replayed == 3


def test_records_of_a_finished_job_from_the_spool_end_it_again(node_collector):
    collector = node_collector()
    collector.push(worker("late"), compiles("late", 2), {})
    collector.goodbye(worker("late"))
    assert finish_all(collector) == ["late"]
    header = {"worker": worker("late"), "counts": {}}  # what an exiting worker left behind
    write_spool(collector.spool, "late-w0", header, lines(compiles("late", 1)))
    assert collector.drain_spool() == 1
    assert collector.jobs.state("late") == "ending"  # not finished for good: it ends again
    assert finish_all(collector) == ["late"]
    assert collector.archives.survey()[1] == {"late"}  # marked again: no restart replays it


def _finished_job(archives: JobArchives, job: str, size: int, finished_at: float) -> Path:
    archives.write_records([to_record(new_record(job_name=job))], [b"x" * size + b"\n"])
    archives.finish(job)
    directory = archives.path / job_slug(job)
    info = json.loads((directory / JOB_FILE).read_text())
    (directory / JOB_FILE).write_text(json.dumps({**info, "finished": finished_at}))
    return directory


def test_retention_removes_finished_jobs_by_age_then_oldest_first_by_size(tmp_path):
    archives = JobArchives(tmp_path)
    now = time.time()
    ancient = _finished_job(archives, "ancient", 10, now - 40 * 86_400)
    old = _finished_job(archives, "old", 1000, now - 3 * 86_400)
    recent = _finished_job(archives, "recent", 1000, now - 2 * 86_400)
    archives.write_records([to_record(new_record(job_name="running"))], [b"y" * 5000 + b"\n"])
    assert archives.prune(retention_days=30, max_bytes=0) == ["ancient"]
    assert not ancient.exists() and old.exists()
    assert archives.prune(retention_days=30, max_bytes=1500) == ["old"]  # oldest first
    assert recent.exists()
    assert (archives.path / job_slug("running") / ARCHIVE_FILE).exists()  # never a live job
    assert archives.prune(retention_days=0, max_bytes=1) == ["recent"]
    assert archives.survey()[1] == set()


@pytest.mark.parametrize(
    "content",
    [b"\x80\xff", b"[" * 100_000, b'{"job_name": 5}', b"x" * 100_000, b"null"],
    ids=["not_utf8", "deep", "wrong_type", "huge", "null"],
)
def test_a_hostile_job_file_is_read_around(node_collector, tmp_path, content):
    collector = node_collector()
    collector.push(worker("fine"), compiles("fine", 2), {})
    collector.close()
    planted = job_directory(tmp_path / "archive", "planted")
    planted.mkdir(mode=0o700)
    (planted / JOB_FILE).write_bytes(content)
    os.chmod(planted / JOB_FILE, 0o600)
    (planted / ARCHIVE_FILE).write_bytes(json.dumps(compiles("planted", 1)[0]).encode() + b"\n")
    restarted = node_collector()
    assert restarted.replayed == 2  # the planted job is not a job: nothing of it replayed
    assert metric(restarted, "aotwatch_records_received") == {("fine",): 2}


def test_the_head_is_sent_only_what_changed_since_it_last_asked(node_collector):
    collector = node_collector()
    digest = Digest()
    for rank in range(4):
        collector.push(worker("big", rank), graphs("big", rank, range(50)), {})
    first = collector.fingerprints_since(*digest.known("n"))
    digest.update("n", first)
    assert set(first.jobs) == {"big"} and not first.deltas
    assert digest.changes() == {"big": None}  # read whole: compare everything
    assert collector.fingerprints_since(*digest.known("n")).deltas == {}  # nothing new
    collector.push(worker("big", 2), graphs("big", 2, range(99, 100)), {})
    second = collector.fingerprints_since(*digest.known("n"))
    assert second.jobs == {}
    assert second.deltas == {
        "big": {
            "2": {
                "graphs": {("99/0", "forward"): [f"{99:016x}"]},
                "collectives": {},
                "cache": {},
                "compare_group": {},
            }
        }
    }
    # 255 bytes against 1,880 (the whole job: its 4 equal ranks sent once, see summary)
    assert len(pickle.dumps(second)) < len(pickle.dumps(first)) / 5
    digest.update("n", second)
    afresh = Digest()  # a head that reads the job whole has what the deltas made
    afresh.update("n", collector.fingerprints_since(None, {}))
    assert digest.ranks("big") == afresh.ranks("big")
    assert digest.ranks("big")["2"]["graphs"][("99/0", "forward")] == [f"{99:016x}"]
    assert digest.changes() == {"big": {"99/0"}}  # then only the new compile id
