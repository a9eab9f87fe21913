"""The spool: what a worker could not deliver before it exited, left for its node's collector.

A spool file is ``<worker id>.jsonl`` in the node's spool directory (``cluster.paths``): a
``wire.SpoolHeader`` line, then the records' lines. A worker writes it (``write_spool``)
under a temporary name, locked until it is renamed, so a collector never reads half a file;
a collector reads it (``read_spool``) and removes what workers killed while spooling left
(``remove_abandoned``). Neither side imports Ray.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
from collections.abc import Iterator
from pathlib import Path

from aotwatch.core.archive import open_private, read_lines
from aotwatch.core.records import RecordError, parse_json, to_json
from aotwatch.core.wire import SpoolHeader, WireError, decode, to_wire

log = logging.getLogger(__name__)

SPOOL_SUFFIX = ".jsonl"
PARTIAL_SUFFIX = ".partial"
"""A spool file being written (``.<worker id>.partial``), renamed once whole."""


def write_spool(directory: Path, worker_id: str, header: SpoolHeader, lines: bytes) -> Path:
    """``directory/<worker_id>.jsonl``: the header line, then the records' lines."""
    path = directory / f"{worker_id}{SPOOL_SUFFIX}"
    partial = directory / f".{worker_id}{PARTIAL_SUFFIX}"
    fd = _create_locked(partial)
    try:
        with os.fdopen(fd, "wb") as stream:
            stream.write((to_json(to_wire(header)) + "\n").encode() + lines)
            stream.flush()
            os.fsync(stream.fileno())
            os.replace(partial, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(partial)
        raise
    return path


def _create_locked(path: Path) -> int:
    """A new file at ``path``, locked; made again when a collector removed it before the lock
    was taken (it took it for a dead worker's)."""
    while True:
        fd = open_private(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
        fcntl.flock(fd, fcntl.LOCK_EX)
        if os.fstat(fd).st_nlink:
            return fd
        os.close(fd)


def spooled(directory: Path) -> list[Path]:
    """The whole spool files in ``directory``, oldest worker id first."""
    return sorted(directory.glob(f"*{SPOOL_SUFFIX}"))


def read_spool(path: Path) -> tuple[SpoolHeader | None, Iterator[bytes | RecordError]]:
    """A spool file's header (None: missing or refused) and its record lines (see
    ``archive.read_lines``; UnsafePath when the file is not aotwatch's own)."""
    lines = read_lines(path, private=True)
    first = next(lines, None)
    try:
        header = decode(SpoolHeader, parse_json(first)) if isinstance(first, bytes) else None
    except (RecordError, WireError):
        header = None
    return header, lines


def remove_abandoned(directory: Path) -> None:
    """Remove the partial spool files of workers that died writing them: a live writer
    holds a lock on its file (see ``write_spool``)."""
    for path in directory.glob(f".*{PARTIAL_SUFFIX}"):
        try:
            fd = open_private(path, os.O_RDONLY)
        except OSError:  # renamed into place meanwhile, or not aotwatch's: left alone
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # BlockingIOError: it lives
            path.unlink()
            log.info("aotwatch: removed %s, left by a worker that died writing it", path)
        except OSError:
            pass
        finally:
            os.close(fd)
