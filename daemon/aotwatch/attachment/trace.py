"""``aotwatch trace -- COMMAND``: run any command with every Python process it starts traced.

The command runs as a child with ``bootstrap.environment``: each Python process below it
(torchrun's workers, srun's tasks, multiprocessing's children) attaches at its first
compile and writes its own archive under the trace's directory. At the end, the archives
this run wrote are read back into one report: the per-rank table and the divergences
between ranks. The exit status is the command's.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from aotwatch.attachment import bootstrap
from aotwatch.core.archive import archive_files
from aotwatch.core.config import Config
from aotwatch.report import summary as report

PYTHON_NAMES = ("python", "python3")
"""A command starting with one of these runs on the Python aotwatch runs on."""


class TraceError(ValueError):
    """The command cannot be traced as given (one line, exit 2)."""


def resolve(command: list[str]) -> list[str]:
    """``command`` with its program found; TraceError when it does not exist."""
    if command[0] in PYTHON_NAMES:
        command = [sys.executable, *command[1:]]
        script = command[1] if len(command) > 1 else "-"
        if not script.startswith("-") and not Path(script).is_file():
            raise TraceError(f"{script}: no such script")
    program = shutil.which(command[0])
    if program is None:
        raise TraceError(f"{command[0]}: command not found")
    return [program, *command[1:]]


def check_port(config: Config) -> None:
    """ExportError now, before anything runs, when the first rank's port is taken."""
    if config.export.enabled and config.export.port:
        from aotwatch.attachment.local import export_port
        from aotwatch.export.server import check_port as check

        check(config.export.address, export_port(config))


def _run(command: list[str], env: dict[str, str]) -> int:
    """Run the child to its end; Ctrl-C reaches it from the terminal, SIGTERM is passed on."""
    child = subprocess.Popen(command, env=env)
    previous = {
        signal.SIGINT: signal.signal(signal.SIGINT, signal.SIG_IGN),
        signal.SIGTERM: signal.signal(signal.SIGTERM, lambda *_: child.terminate()),
    }
    try:
        code = child.wait()
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
    return 128 - code if code < 0 else code


def trace(command: list[str], config: Config, root: Path) -> int:
    """Run ``command`` traced, archiving under ``root``; print the report; its status."""
    before = set(archive_files(root))
    bootstrap.forget_untraced(root)
    env = {**os.environ, **bootstrap.environment(root, json.dumps(config.to_dict()))}
    print(f"aotwatch: records -> {root}/ (one archive per process)", file=sys.stderr)
    code = _run(command, env)
    written = [path for path in archive_files(root) if path not in before]
    limit = config.limits.max_series_per_metric
    snapshot, findings = report.read_archives(written, limit)
    print(f"\naotwatch summary (records in {root}):", file=sys.stderr)
    print(report.table(snapshot), file=sys.stderr)
    if len({path.parent for path in written}) > 1:
        print("\n".join(report.divergence_lines(findings)), file=sys.stderr)
    if written:
        print(f"\n{report.html_command(root)}", file=sys.stderr)
    return code
