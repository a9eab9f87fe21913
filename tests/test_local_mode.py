"""Local mode: attach/detach, serving /metrics, and capture that never harms training."""

from __future__ import annotations

import gc
import logging
import socket
import threading
import weakref

import pytest
import torch

import aotwatch
from aotwatch.attachment.local import export_port
from aotwatch.capture import hooks
from aotwatch.export.server import ExportError
from helpers import scrape, test_config, wait_for
from programs import PROGRAMS


def _graphs(attachment) -> float:
    return sum(attachment.sink.snapshot().values.get("torch_compile_graphs", {}).values())


def test_attach_is_idempotent_and_detach_restores_torch(tmp_path):
    import torch._dynamo  # noqa: F401 - before runtime_wrappers (a circular import otherwise)
    from torch._functorch._aot_autograd import runtime_wrappers

    original = runtime_wrappers.RuntimeWrapper.__dict__["post_compile"]
    first = aotwatch.attach(test_config(tmp_path))
    try:
        assert aotwatch.attach(test_config(tmp_path)) is first
        assert runtime_wrappers.RuntimeWrapper.__dict__["post_compile"] is not original
        assert len(hooks._installed) == len(hooks.HOOKS)
    finally:
        aotwatch.detach()
    assert runtime_wrappers.RuntimeWrapper.__dict__["post_compile"] is original
    assert hooks._installed == []
    with pytest.raises(OSError):
        scrape(first.url)  # the server is gone
    aotwatch.detach()  # a second detach is a no-op


def test_concurrent_attach_installs_once(tmp_path):
    results = []
    threads = [
        threading.Thread(target=lambda: results.append(aotwatch.attach(test_config(tmp_path))))
        for _ in range(4)
    ]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len({id(r) for r in results}) == 1
        assert len(hooks._installed) == len(hooks.HOOKS)
    finally:
        aotwatch.detach()


def test_a_failing_capture_is_counted_and_never_raised(capture, monkeypatch):
    from aotwatch.capture import session

    def broken(meta):
        raise RuntimeError("aotwatch bug")

    monkeypatch.setattr(session, "read_metadata", broken)

    def f(x, buf):
        buf.add_(1)
        return x * 2

    buf = torch.zeros(3)
    out = torch.compile(f, backend="aot_eager")(torch.ones(3), buf)
    assert torch.equal(out, torch.full((3,), 2.0)) and torch.equal(buf, torch.ones(3))
    errors = capture.sink.snapshot().values["aotwatch_capture_errors"]
    assert errors == {("default", "graph_metadata"): 1}
    assert "aotwatch_capture_errors_total" in scrape(capture.url)


def test_user_exceptions_pass_through_unchanged(capture):
    class Boom(Exception):
        pass

    def backend(gm, example_inputs):
        raise Boom("from the backend")

    with pytest.raises(Exception, match="from the backend") as info:
        torch.compile(lambda x: x + 1, backend=backend)(torch.ones(2))
    assert isinstance(info.value.__cause__ or info.value, Boom) or "Boom" in repr(info.value)
    failures = capture.sink.snapshot().values["torch_compile_frame_failures"]
    assert failures == {("default", "0", "cpu", "backend_compiler_failed"): 1}


def test_nothing_runs_per_training_step(capture):
    model = torch.nn.Linear(4, 2)
    compiled = torch.compile(model, backend="aot_eager")
    compiled(torch.randn(3, 4)).sum().backward()
    records = capture.sink.snapshot().values["aotwatch_records_received"]
    calls = []
    for item in hooks._installed:  # count any call into a hook from now on
        wrapped = item.owner.__dict__[item.name]
        setattr(item.owner, item.name, lambda *a, _w=wrapped, **k: calls.append(1) or _w(*a, **k))
    try:
        for _ in range(50):
            compiled(torch.randn(3, 4)).sum().backward()
    finally:
        for item in hooks._installed:
            setattr(item.owner, item.name, item.wrapper)
    assert calls == []
    assert capture.sink.snapshot().values["aotwatch_records_received"] == records


def test_capture_keeps_no_tensor_or_graph_alive(capture):
    from functorch.compile import make_boxed_func
    from torch._dynamo.backends.common import aot_autograd

    graph_refs = []

    def keep_weakly(gm, example_inputs):
        graph_refs.append(weakref.ref(gm))
        return make_boxed_func(gm.forward)

    model = torch.nn.Linear(4, 2)
    example = torch.randn(3, 4)
    backend = aot_autograd(fw_compiler=keep_weakly, bw_compiler=keep_weakly)
    torch.compile(model, backend=backend)(example).sum().backward()
    refs = [weakref.ref(model), weakref.ref(example), *graph_refs]
    del model, example, backend
    torch._dynamo.reset()
    gc.collect()
    assert len(refs) == 4
    assert [r for r in refs if r() is not None] == []
    assert _graphs(capture) == 2


def test_port_that_cannot_be_bound_is_a_clear_error(tmp_path):
    from aotwatch.core.config import ExportConfig

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        config = test_config(tmp_path)
        config = type(config)(export=ExportConfig(port=port), archive=config.archive)
        with pytest.raises(ExportError, match=f"cannot serve /metrics on 127.0.0.1:{port}"):
            aotwatch.attach(config)
    assert hooks._installed == []  # nothing was installed


def test_port_zero_picks_a_free_port_and_logs_it(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="aotwatch"):
        attachment = aotwatch.attach(test_config(tmp_path))
    try:
        assert attachment.server.port > 0
        assert attachment.url in caplog.text
        assert "aotwatch_build_info" in scrape(attachment.url)
    finally:
        aotwatch.detach()


def test_local_rank_offsets_the_port(tmp_path, monkeypatch):
    from aotwatch.core.config import Config, ExportConfig

    monkeypatch.setenv("LOCAL_RANK", "3")
    assert export_port(Config(export=ExportConfig(port=9420))) == 9423
    assert export_port(Config(export=ExportConfig(port=0))) == 0


def test_rank_and_world_size_come_from_torch_distributed(tmp_path):
    import torch.distributed as dist

    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        attachment = aotwatch.attach(test_config(tmp_path, job_name="dist"))
        PROGRAMS["input_mutation"]("aot_eager", "cpu")
        from aotwatch.core.archive import read_archive
        from aotwatch.core.records import as_dict

        records = [as_dict(r) for r in read_archive(tmp_path / "archive")]
        assert {(r["job_name"], r["rank"], r["world_size"]) for r in records} == {("dist", 0, 1)}
        frames = attachment.sink.snapshot().values["torch_compile_frames"]
        assert frames == {("dist", "0", "cpu"): 1}
    finally:
        aotwatch.detach()
        dist.destroy_process_group()
        torch._dynamo.reset()


def test_a_hook_missing_from_this_torch_is_skipped_and_counted(tmp_path, monkeypatch):
    missing = hooks.Hook("torch._dynamo.utils", "no_such_function", lambda o, s: o)
    optional = hooks.Hook("torch._dynamo.utils", "no_such_either", lambda o, s: o, optional=True)
    monkeypatch.setattr(hooks, "HOOKS", (*hooks.HOOKS, missing, optional))
    attachment = aotwatch.attach(test_config(tmp_path))
    try:
        assert len(hooks._installed) == len(hooks.HOOKS) - 2
        errors = attachment.sink.snapshot().values["aotwatch_capture_errors"]
        assert errors == {("default", "install"): 1}
        PROGRAMS["input_mutation"]("aot_eager", "cpu")
        assert _graphs(attachment) == 1
    finally:
        aotwatch.detach()
        torch._dynamo.reset()


def test_graph_hashes_and_node_counts_can_be_switched_off(tmp_path):
    from aotwatch.core.archive import read_archive
    from aotwatch.core.config import CaptureConfig
    from aotwatch.core.records import as_dict

    config = test_config(tmp_path, capture=CaptureConfig(graph_hashes=False, node_counts=False))
    aotwatch.attach(config)
    try:
        PROGRAMS["training_step"]("aot_eager", "cpu")
    finally:
        aotwatch.detach()
        torch._dynamo.reset()
    graphs = [as_dict(r) for r in read_archive(tmp_path / "archive") if r.graph]
    assert [r["graph"] for r in graphs] == ["forward", "backward"]
    assert all(r["graph_hash"] is None and r["nodes"] is None for r in graphs)
    assert graphs[0]["inputs"]["total"] == 5  # the metadata is still read


def test_a_compile_in_progress_is_shown_while_it_lasts(tmp_path):
    """A backend that sleeps in another thread: /metrics shows this rank compiling that
    compile id since it began, and nothing once it ended."""
    import time

    attachment = aotwatch.attach(test_config(tmp_path))
    try:

        def slow_backend(gm, example_inputs):
            time.sleep(2)
            return gm.forward

        compiled = torch.compile(lambda x: x * 2, backend=slow_backend)
        started = time.time()
        thread = threading.Thread(target=compiled, args=(torch.ones(3),))
        thread.start()
        series = 'torch_compile_in_progress_since_timestamp_seconds{compile_id="0/0"'
        line = wait_for(
            lambda: next((ln for ln in scrape(attachment.url).splitlines() if series in ln), None),
            timeout=10,
        )
        assert started - 1 <= float(line.rsplit(" ", 1)[1]) <= time.time()
        assert 'rank="0"' in line and 'device="cpu"' in line
        thread.join(timeout=60)
        assert series not in scrape(attachment.url)
    finally:
        aotwatch.detach()
        torch._dynamo.reset()
