"""A collector's archive, one directory per job: ``jobs/<slug>/records.jsonl`` and
``jobs/<slug>/job.json`` (the job's name, when it finished).

A finished job's file is closed and never replayed: a restarted collector reads only the jobs
still live, so its restart costs what is running, not all history. Finished jobs' directories
are removed once older than ``archive.retention_days`` and, oldest first, while they hold more
than ``archive.max_bytes``; ``aotwatch report --job NAME`` finds a job's directories by name.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

from aotwatch.core.archive import ARCHIVE_FILE, ArchiveWriter, open_private, private_directory
from aotwatch.core.lru import LruCache
from aotwatch.core.records import Record, RecordError, parse_json
from aotwatch.core.wire import JobFile, WireError, decode, to_wire

log = logging.getLogger(__name__)

JOBS_DIR = "jobs"
JOB_FILE = "job.json"
MAX_JOB_FILE = 4096
"""Bytes of a ``job.json`` read; a longer one is not aotwatch's (it fails to parse)."""
MAX_OPEN = 64
"""Job archives kept open at once; the least recently written are closed first."""
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def job_slug(job_name: str) -> str:
    """A directory name for a job: readable, and distinct by a 48-bit hash of the whole name
    (``JobArchives`` checks the name each directory holds: a crafted collision is told apart)."""
    readable = _UNSAFE.sub("_", job_name)[:64].strip("._") or "job"
    return f"{readable}-{hashlib.sha256(job_name.encode()).hexdigest()[:12]}"


def read_job_file(directory: Path) -> JobFile | None:
    """A job directory's ``job.json``, or None if it is missing or malformed."""
    try:
        fd = open_private(directory / JOB_FILE, os.O_RDONLY)
        with os.fdopen(fd, "rb") as stream:
            return decode(JobFile, parse_json(stream.read(MAX_JOB_FILE)))
    except (OSError, RecordError, WireError):  # missing, another user's, torn, hostile
        return None


def job_directories(root: Path) -> Iterator[tuple[Path, JobFile]]:
    """(directory, job.json) of every job under a collector's ``jobs`` directory."""
    if not root.is_dir():
        return
    for directory in sorted(root.iterdir()):
        is_directory = directory.is_dir() and not directory.is_symlink()
        info = read_job_file(directory) if is_directory else None
        if info is not None:
            yield directory, info


class JobArchives:
    """Appends each record to its job's file (see module doc); not thread-safe: the sink's
    lock serialises writes, the collector's housekeeping the rest."""

    def __init__(self, collector_directory: Path) -> None:
        self.path = private_directory(collector_directory / JOBS_DIR)
        self._writers = LruCache(MAX_OPEN, on_evict=lambda _, writer: writer.close())

    def write_records(self, records: list[Record], lines: list[bytes]) -> None:
        """Append each line to its record's job file; OSError when the disk refuses."""
        by_job: dict[str, list[bytes]] = {}
        for record, line in zip(records, lines, strict=True):
            by_job.setdefault(record.job_name, []).append(line)
        for job_name, job_lines in by_job.items():
            self._writer(job_name).write(b"".join(job_lines))

    def _writer(self, job_name: str) -> ArchiveWriter:
        writer = self._writers.get(job_name)
        if writer is None:
            directory, info = self._directory(job_name)
            if info is None or info.finished is not None:  # new, or running again
                self._write_job_file(directory, JobFile(job_name))
            writer = ArchiveWriter(directory)
            self._writers.put(job_name, writer)
        return writer

    def finish(self, job_name: str) -> None:
        """The job finished: close its file and mark it, so no restart replays it."""
        writer = self._writers.pop(job_name)
        if writer is not None:
            writer.close()
        directory, _ = self._directory(job_name)
        if directory.is_dir():
            self._write_job_file(directory, JobFile(job_name, time.time()))

    def archive_file(self, job_name: str) -> Path:
        """Where the job's records are (or would be) archived on this node."""
        return self._directory(job_name)[0] / ARCHIVE_FILE

    def _directory(self, job_name: str) -> tuple[Path, JobFile | None]:
        """The job's directory and its ``job.json``: ``job_slug``, or, where that directory
        holds another job (a name crafted to collide in the slug's hash), the first of
        ``<slug>-2``, ``<slug>-3``, ... that holds this job or none."""
        slug = job_slug(job_name)
        for attempt in itertools.count(1):
            directory = self.path / (slug if attempt == 1 else f"{slug}-{attempt}")
            info = read_job_file(directory)
            if info is None or info.job_name == job_name:
                return directory, info

    def _write_job_file(self, directory: Path, info: JobFile) -> None:
        private_directory(directory)
        temporary = directory / f".{JOB_FILE}.tmp"
        temporary.unlink(missing_ok=True)
        fd = open_private(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
        with os.fdopen(fd, "wb") as stream:
            stream.write(json.dumps(to_wire(info)).encode())
        os.replace(temporary, directory / JOB_FILE)

    def survey(self) -> tuple[list[Path], set[str]]:
        """One pass over the jobs: (the archive files of those not finished, which a restart
        replays; the names of the finished ones)."""
        live, finished = [], set()
        for directory, info in job_directories(self.path):
            if info.finished is not None:
                finished.add(info.job_name)
            elif os.path.lexists(directory / ARCHIVE_FILE):  # a link too: replay refuses it
                live.append(directory / ARCHIVE_FILE)
        return live, finished

    def prune(self, retention_days: float, max_bytes: int) -> list[str]:
        """Remove finished jobs' directories past ``retention_days`` (0: none by age), then
        the oldest while they hold more than ``max_bytes`` (0: no bound). Returns the jobs."""
        finished = sorted(
            (info.finished, directory, info.job_name)
            for directory, info in job_directories(self.path)
            if info.finished is not None
        )
        sizes = {directory: _size(directory) for _, directory, _ in finished}
        total, removed = sum(sizes.values()), []
        for finished_at, directory, job_name in finished:
            too_old = retention_days and time.time() - finished_at > retention_days * 86_400
            if too_old or (max_bytes and total > max_bytes):
                shutil.rmtree(directory, ignore_errors=True)
                total -= sizes[directory]
                removed.append(job_name)
        if removed:
            log.info("aotwatch: removed the archives of finished jobs %s", ", ".join(removed))
        return removed

    def close(self) -> None:
        for job_name in list(self._writers.keys()):
            self._writers.pop(job_name).close()


def _size(directory: Path) -> int:
    return sum(entry.stat().st_size for entry in directory.iterdir() if entry.is_file())
