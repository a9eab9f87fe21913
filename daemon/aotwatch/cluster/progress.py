"""What a long command shows while it works: the stage it is in and the counts so far.

On a terminal, one status line that rich updates in place; elsewhere (a file, a pipe,
CI) a plain line when the stage changes and every ``PLAIN_EVERY_S``, without colour codes.
Ray's and the workers' own log lines go to a file instead (``RayLogFile``), so what scrolls
by is aotwatch's and the job's.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any, TextIO

from aotwatch.core.archive import open_private

PLAIN_EVERY_S = 15.0
"""How often a plain (not a terminal) progress line repeats when the stage is unchanged."""

RAY_LOGGERS = ("ray", "ray.train", "ray.tune", "ray.data")
"""The driver-side loggers whose lines are Ray's, not the job's."""
LOG_FORMAT = logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s")


class Progress:
    """A stage and a line of counts, shown live."""

    def __init__(self, stream: TextIO | None = None) -> None:
        from rich.console import Console

        self._stream = stream or sys.stdout
        self._console = Console(file=self._stream, highlight=False)
        self._live = self._console.is_terminal
        self._started = time.monotonic()
        self._stage = ""
        self._detail = ""
        self._counts = ""
        self._printed_at = 0.0
        self._status = self._console.status("") if self._live else None
        if self._status is not None:
            self._status.start()

    def _line(self) -> str:
        elapsed = time.monotonic() - self._started
        stage = f"{self._stage} {self._detail}" if self._detail else self._stage
        return f"[{elapsed:5.0f} s] {stage}" + (f": {self._counts}" if self._counts else "")

    def update(self, stage: str | None = None, counts: str | None = None, detail: str = "") -> None:
        """Show ``stage`` (a plain line at once when it changed), with ``detail`` after it
        (what changes within a stage, such as how long it has lasted: no line of its own), and
        ``counts``."""
        changed = stage is not None and stage != self._stage
        if stage is not None:
            self._stage, self._detail = stage, detail
        self._counts = counts if counts is not None else self._counts
        if self._status is not None:
            self._status.update(self._line())
        elif changed or time.monotonic() - self._printed_at >= PLAIN_EVERY_S:
            self.print(self._line())
            self._printed_at = time.monotonic()

    def print(self, text: str = "") -> None:
        """A line that stays (above the live status line on a terminal)."""
        if self._status is not None:
            self._console.print(text, markup=False, highlight=False)
        else:
            print(text, file=self._stream, flush=True)

    def close(self) -> None:
        if self._status is not None:
            self._status.stop()
            self._status = None


class RayLogFile:
    """Ray's driver-side log lines and every worker's output, into one private file (0600).

    ``install`` before ``ray.init`` (which logs lines of its own, such as its token
    authentication notice), ``hook_workers`` after ``ray.init(log_to_driver=True)``: it takes
    the place of Ray's own printer of worker lines (a private hook of Ray; without it, Ray
    prints them as usual).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        fd = open_private(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        self._file = os.fdopen(fd, "a", encoding="utf-8", errors="replace")
        self._lock = threading.Lock()
        self._handler = logging.StreamHandler(self._file)
        self._handler.setFormatter(LOG_FORMAT)
        self._saved: list[tuple[logging.Logger, list[logging.Handler], bool]] = []
        self.hooked = False

    def install(self) -> None:
        """Ray's driver-side loggers into the file."""
        for name in RAY_LOGGERS:
            logger = logging.getLogger(name)
            self._saved.append((logger, logger.handlers[:], logger.propagate))
            logger.handlers = [self._handler]
            logger.propagate = False

    def hook_workers(self) -> None:
        """The workers' lines into the file, once ``ray.init`` connected."""
        self._handler.setFormatter(LOG_FORMAT)  # ray.init sets its own on the "ray" logger's
        try:
            from ray._private.ray_logging import global_worker_stdstream_dispatcher as streams
        except ImportError:
            return
        streams.remove_handler("ray_print_logs")
        streams.add_handler("ray_print_logs", self.write_worker_lines)
        self.hooked = True

    def write_worker_lines(self, data: dict[str, Any]) -> None:
        """One batch of a worker's lines, prefixed as Ray prefixes them, without colours."""
        who = data.get("actor_name") or data.get("task_name")
        where = f", ip={data['ip']}" if data.get("ip") else ""
        prefix = f"({who + ' ' if who else ''}pid={data.get('pid')}{where}) "
        stream = "stderr" if data.get("is_err") else "stdout"
        with self._lock:
            if self._file.closed:  # a batch after the run ended
                return
            for line in data.get("lines", ()):
                self._file.write(f"{stream} {prefix}{line}\n")
            self._file.flush()

    def __enter__(self) -> RayLogFile:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        """Ray's loggers back as they were; the file closed (later worker lines are dropped)."""
        for logger, handlers, propagate in self._saved:
            logger.handlers, logger.propagate = handlers, propagate
        self._saved.clear()
        with self._lock:
            self._file.close()
