"""Compare groups: a real pipeline-parallel job (torchrun, 4 ranks, gloo on the CPU, 2 stages
x 2 data-parallel ranks) under ``aotwatch trace``. The stages compile different layers under
the same compile ids: no finding, until a rank compiles what its own stage's peer does not.
``aotwatch report`` (text, JSON, HTML) compares the same way, and so does the live head of a
Ray cluster, which learns each rank's group from its records."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
import ray

from aotwatch.cluster.head import ensure_head, stop_daemon
from aotwatch.core import divergence
from aotwatch.core.archive import archive_files, read_archive
from aotwatch.core.config import CaptureConfig
from aotwatch.core.identity import compare_group
from aotwatch.core.records import MAX_ID, new_record, to_record
from cluster_helpers import WORKER_ENV, Worker, cluster_config
from helpers import TRACE_TIMEOUT_S, aotwatch, report_json

pytestmark = [pytest.mark.ray, pytest.mark.subprocess]

SCRIPT = Path(__file__).parent / "staged_train.py"


def test_a_compare_group_from_the_environment_always_fits_a_record(monkeypatch):
    assert compare_group(None) is None and compare_group("PP_STAGE") is None  # unset
    monkeypatch.setenv("PP_STAGE", "")
    assert compare_group("PP_STAGE") is None
    monkeypatch.setenv("PP_STAGE", "stage\n1\x1b" + "9" * 1000)
    group = compare_group("PP_STAGE")
    assert group == ("stage1" + "9" * 1000)[:MAX_ID]
    assert to_record(new_record(compare_group=group)).compare_group == group


def staged_job(tmp_path: Path, *options: str):
    """The job traced with ``capture.compare_group_env: PP_STAGE``: (archive, trace result)."""
    config = tmp_path / "aotwatch.yaml"
    config.write_text("capture:\n  compare_group_env: PP_STAGE\n")
    archive = tmp_path / "trace"
    command = ["torchrun", "--standalone", "--nproc-per-node", "4", str(SCRIPT), *options]
    result = aotwatch(
        "trace", "--port", "0", "--config", str(config), "--archive", str(archive), "--",
        *command, timeout=TRACE_TIMEOUT_S,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return archive, result


def test_pipeline_stages_that_compile_different_layers_are_no_divergence(tmp_path):
    archive, result = staged_job(tmp_path)
    records = [r for path in archive_files(archive) for r in read_archive(path)]
    assert {(r.rank, r.compare_group) for r in records} == {(0, "0"), (1, "0"), (2, "1"), (3, "1")}
    whole_job: divergence.Fingerprints = {}
    for record in records:
        divergence.observe(whole_job, record)
    assert divergence.find("default", whole_job["default"])  # the stages do differ

    assert "rank divergences: none" in result.stderr
    assert report_json(archive)["findings"] == []
    assert "rank divergences: none" in aotwatch("report", str(archive)).stdout


def test_a_rank_that_compiles_what_its_stage_peer_does_not_is_a_finding(tmp_path):
    archive, result = staged_job(tmp_path, "--extra-frame-on-rank", "3")
    line = "compile_ids at 1/0 in compare group 1: ranks 3: compiled; ranks 2: missing"
    assert line in result.stderr
    assert report_json(archive)["findings"] == [
        {
            "job_name": "default",
            "kind": "compile_ids",
            "compile_id": "1/0",
            "groups": {"compiled": ["3"], "missing": ["2"]},
            "compare_group": "1",
        }
    ]
    page = tmp_path / "report.html"
    html = aotwatch("report", str(archive), "--format", "html", "-o", str(page))
    assert html.returncode == 0, html.stderr
    text = page.read_text()
    assert "cross-rank divergences: 1 (compile_ids 1)" in text
    assert "ranks 3: compiled<br>ranks 2: missing" in text


def staged_worker(rank: int):
    """A Ray worker of rank ``rank`` of 4, in pipeline stage rank // 2 (PP_STAGE)."""
    env = {**WORKER_ENV["env_vars"], "RANK": str(rank), "WORLD_SIZE": "4"}
    return Worker.options(runtime_env={"env_vars": {**env, "PP_STAGE": str(rank // 2)}}).remote()


def test_the_live_head_compares_ranks_within_their_stage(ray_session, tmp_path):
    config = cluster_config(
        tmp_path,
        namespace=f"aotwatch-groups-{uuid.uuid4().hex[:8]}",
        capture=CaptureConfig(compare_group_env="PP_STAGE"),
    )
    head = ensure_head(config)
    try:
        ranks = [staged_worker(rank) for rank in range(4)]
        ray.get([w.attach.remote(config) for w in ranks], timeout=120)
        layers = ["x * 2", "x * 2", "x + 5", "x + 5"]  # 0/0: each stage its own
        ray.get(
            [w.compile_fn.remote(source) for w, source in zip(ranks, layers, strict=True)],
            timeout=120,
        )
        ray.get(ranks[3].compile_fn.remote("x - 1"), timeout=120)  # 1/0: rank 3 alone
        assert all(ray.get([w.flush.remote() for w in ranks], timeout=60))
        findings = ray.get(head.check_divergences.remote(final=True), timeout=60)
        assert findings == [
            {
                "job_name": "ray-test",
                "kind": "compile_ids",
                "compile_id": "1/0",
                "groups": {"compiled": ["3"], "missing": ["2"]},
                "compare_group": "1",
            }
        ]
    finally:
        stop_daemon(config)
