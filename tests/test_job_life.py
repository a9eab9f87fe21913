"""A job's life on a collector: running, ending, finished, forgotten (a fake clock)."""

from __future__ import annotations

from aotwatch.cluster.job_life import FINISHED, RUNNING, JobLife


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_job_finishes_a_grace_after_its_last_worker_and_is_forgotten_after_retention():
    clock = Clock()
    life = JobLife(grace_s=30, retention_s=900, clock=clock)
    life.running("train")
    clock.now += 3600
    assert life.due() == ([], [])  # running for an hour: nothing happens
    life.idle("train")
    clock.now += 29
    assert life.due() == ([], [])
    clock.now += 1
    assert life.due() == (["train"], [])
    assert life.state("train") == FINISHED
    clock.now += 899
    assert life.due() == ([], [])
    clock.now += 1
    assert life.due() == ([], ["train"])
    assert life.state("train") is None


def test_a_worker_coming_back_runs_the_job_again():
    clock = Clock()
    life = JobLife(grace_s=10, retention_s=60, clock=clock)
    life.running("train")
    life.idle("train")
    clock.now += 5
    assert life.running("train") is False  # still ending: it never finished
    life.idle("train")
    clock.now += 10
    assert life.due() == (["train"], [])
    assert life.running("train") is True  # finished, and back
    assert life.state("train") == RUNNING
    clock.now += 10_000
    assert life.due() == ([], [])


def test_a_job_known_only_from_records_ends_from_the_moment_it_is_seen():
    clock = Clock()
    life = JobLife(grace_s=10, retention_s=0, clock=clock)
    life.known("replayed")
    life.running("live")
    life.known("live")  # records of a running job change nothing
    clock.now += 10
    assert life.due() == (["replayed"], [])
    clock.now += 10**9
    assert life.due() == ([], [])  # retention 0: kept for the collector's life
    assert life.state("live") == RUNNING
