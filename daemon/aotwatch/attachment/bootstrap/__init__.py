"""Capture in every Python process a launcher starts, like ``TORCH_TRACE``: no code change.

``AOTWATCH_TRACE=DIR`` switches it on; ``AOTWATCH_CONFIG`` (a YAML path, or JSON) configures
it. With ``site_directory()`` on ``PYTHONPATH``, every Python process started below runs the
``sitecustomize`` there, which calls ``start()``: the process attaches at its first
``torch.compile`` and writes its records to its own archive, ``DIR/rank<R>-<host>-<pid>-...``
(``process_archive``: no two processes append to one file). ``aotwatch trace -- COMMAND``
sets both variables; SLURM and MPI users can set them by hand (``environment`` says which),
and every process checks the directory as ``trace`` does (``trace_root``). A process that
never compiles pays one meta-path entry; a child that is not Python is untouched.
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False  # every Python process the bootstrap starts imports this module
if TYPE_CHECKING:
    from pathlib import Path

TRACE_ENV = "AOTWATCH_TRACE"
"""The archive directory every traced process writes its own archive in; set: tracing on."""

UNTRACED_PREFIX = ".untraced-"
"""``<TRACE_ENV>/.untraced-<python>``: a Python that cannot import aotwatch said so (the
sitecustomize, which cannot import this module, spells it too)."""


def site_directory() -> Path:
    """The directory whose ``sitecustomize`` starts capture (put it first on PYTHONPATH)."""
    from pathlib import Path

    return Path(__file__).resolve().parent / "site"


def environment(archive: str | os.PathLike, config_json: str | None = None) -> dict[str, str]:
    """The variables that trace every Python process started with them: ``PYTHONPATH``
    (this one's, with the site directory first), ``AOTWATCH_TRACE`` and, if given,
    ``AOTWATCH_CONFIG``."""
    from aotwatch.core.config import CONFIG_ENV

    paths = [str(site_directory())]
    paths += [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    env = {"PYTHONPATH": os.pathsep.join(dict.fromkeys(paths)), TRACE_ENV: os.fspath(archive)}
    if config_json is not None:
        env[CONFIG_ENV] = config_json
    return env


def trace_root(path: str | os.PathLike) -> Path:
    """The trace's archive directory, created if absent (others may enter it, not list it);
    ``archive.UnsafePath`` when another user controls it. ``aotwatch trace`` and ``env``
    check it, and so does every traced process (the variables may be set by hand)."""
    from aotwatch.core.archive import private_directory

    return private_directory(path, 0o711)


def forget_untraced(root: Path) -> None:
    """Remove the marks of Pythons that said they cannot capture, so a new trace says it again."""
    for mark in root.glob(f"{UNTRACED_PREFIX}*"):
        mark.unlink(missing_ok=True)


def process_archive(root: str | os.PathLike) -> Path:
    """This process's own archive directory under the shared ``root``: its rank, host and pid,
    the UTC time and a random suffix (two containers with one host name both run pid 2)."""
    import re
    import socket
    import time
    from pathlib import Path

    from aotwatch.core.identity import rank_and_world_size

    rank, _ = rank_and_world_size()
    host = re.sub(r"[^A-Za-z0-9_.-]+", "_", socket.gethostname())[:64] or "host"
    started = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    return Path(root) / f"rank{rank}-{host}-{os.getpid()}-{started}-{os.urandom(3).hex()}"


def _attach() -> None:
    """Attach with the environment's config, archiving under TRACE_ENV; never raises. A port
    in use costs /metrics, not the records."""
    import dataclasses
    import logging

    from aotwatch.attachment.process import attach
    from aotwatch.core.config import ArchiveConfig, config_from_env
    from aotwatch.export.server import ExportError

    log = logging.getLogger("aotwatch")
    try:
        config = config_from_env()
        archive = ArchiveConfig(path=str(process_archive(trace_root(os.environ[TRACE_ENV]))))
        config = dataclasses.replace(config, archive=archive)
        try:
            attach(config)
        except ExportError as err:
            log.warning("aotwatch: %s; records still go to %s", err, archive.path)
            export = dataclasses.replace(config.export, enabled=False)
            attach(dataclasses.replace(config, export=export))
    except Exception as err:  # noqa: BLE001 - never break the user's compile
        print(f"aotwatch: not capturing in pid {os.getpid()}: {err}", file=sys.stderr)


def start() -> None:
    """Called by the sitecustomize at interpreter start: attach at the first compile."""
    if not os.environ.get(TRACE_ENV):
        return
    from aotwatch.attachment.first_compile import attach_at_first_compile

    attach_at_first_compile(_attach)
