"""What a training process reads (its environment, its files) stays out of /metrics and records;
aotwatch never parses YAML or pickles unsafely."""

from __future__ import annotations

import hashlib
import json
import os
import re
import uuid
from pathlib import Path

import pytest
import torch

from helpers import scrape

TOKEN_VARIABLE = "AOTWATCH_TEST_API_TOKEN"
DAEMON = Path(__file__).resolve().parents[1] / "daemon"


@pytest.fixture
def secrets(tmp_path: Path, monkeypatch) -> tuple[str, Path]:
    """A distinctive environment variable and a file of distinctive content: (both secrets,
    the file)."""
    env_secret, file_secret = f"env-{uuid.uuid4().hex}", f"file-{uuid.uuid4().hex}"
    monkeypatch.setenv(TOKEN_VARIABLE, env_secret)
    credentials = tmp_path / "credentials.txt"
    credentials.write_text(file_secret, encoding="utf-8")
    return (env_secret, file_secret), credentials


def train(credentials: Path) -> None:
    """A training script that reads a token from its environment and a password from a file
    (for its data loader, say), then compiles a step with a graph break and a recompile."""
    token = os.environ[TOKEN_VARIABLE]
    password = credentials.read_text(encoding="utf-8")
    seed = int(hashlib.sha256((token + password).encode()).hexdigest()[:8], 16)

    @torch.compile(backend="aot_eager")
    def step(x: torch.Tensor) -> torch.Tensor:
        y = torch.sin(x) * 2
        print("logging from the step")  # a graph break
        return (y + 1).sum()

    generator = torch.Generator().manual_seed(seed)
    for size in (4, 8):  # the second size recompiles
        step(torch.randn(size, requires_grad=True, generator=generator)).backward()


def guard_on_secrets(credentials: Path) -> None:
    """Compiled code that takes the secrets themselves as arguments: Dynamo guards on their
    values, and each new value fails the guard of the compile before it (a recompile)."""

    @torch.compile(backend="aot_eager")
    def step(x: torch.Tensor, mode: str) -> torch.Tensor:
        return x * 2 if mode == "train" else x + 1

    x = torch.randn(4, requires_grad=True)
    for mode in (os.environ[TOKEN_VARIABLE], credentials.read_text(encoding="utf-8"), "train"):
        step(x, mode).sum().backward()


def _records(capture) -> tuple[str, list[dict]]:
    text = Path(capture.sink.archive.path).read_text(encoding="utf-8")
    return text, [json.loads(line) for line in text.splitlines()]


def test_no_secret_reaches_metrics_or_records(capture, secrets):
    (env_secret, file_secret), credentials = secrets
    train(credentials)
    text, (archive, records) = scrape(capture.url), _records(capture)
    assert any(record.get("graph_breaks") for record in records)
    assert any(record.get("recompile_reason") for record in records)
    for secret in (env_secret, file_secret):
        assert secret not in text
        assert secret not in archive


def test_secrets_in_guards_stay_out_of_metrics(capture, secrets):
    (env_secret, file_secret), credentials = secrets
    guard_on_secrets(credentials)
    text = scrape(capture.url)
    assert re.search(r"^torch_compile_recompiles_total\{.*\} 2\.0$", text, re.MULTILINE)
    assert env_secret not in text and file_secret not in text


def test_secrets_in_guards_stay_out_of_records(capture, secrets):
    (env_secret, file_secret), credentials = secrets
    guard_on_secrets(credentials)
    archive, records = _records(capture)
    assert sum(1 for record in records if record.get("recompile_reason")) == 2
    assert env_secret not in archive
    assert file_secret not in archive


UNSAFE_LOADERS = re.compile(
    r"yaml\.(load|unsafe_load|full_load|load_all|unsafe_load_all|full_load_all)\s*\("
    r"|yaml\.(Unsafe|Full)?Loader\b|pickle\.loads?\s*\(|marshal\.loads?\s*\("
)


def test_yaml_is_only_safe_loaded():
    sources = sorted(DAEMON.rglob("*.py"))
    assert len(sources) > 10
    unsafe = [
        f"{path.relative_to(DAEMON)}:{number}: {line.strip()}"
        for path in sources
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if UNSAFE_LOADERS.search(line)
    ]
    assert unsafe == []
    assert any("yaml.safe_load(" in path.read_text(encoding="utf-8") for path in sources)
