"""Append-only JSON-lines archives: ``<dir>/records.jsonl``, and the private directories that
hold them.

Every byte read back is hostile until validated: a line that is not UTF-8, not JSON, nested
too deeply or longer than a record can be comes back as a ``RecordError`` to count and skip.
Files are opened without following links, created 0600, in directories that belong to the
running user and that nobody else can write (``private_directory``).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from aotwatch.core.records import (
    MAX_RECORD_BYTES,
    Record,
    RecordError,
    decode_line,
    parse_json,
    to_json,
)

log = logging.getLogger(__name__)

ARCHIVE_FILE = "records.jsonl"
_READ_CHUNK = 1 << 16


class UnsafePath(OSError):
    """A directory or file that someone other than the running user controls."""


def archive_file(path: str | os.PathLike) -> Path:
    """The records file of an archive given as its directory or as the file itself."""
    path = Path(path)
    return path / ARCHIVE_FILE if path.is_dir() or not path.suffix else path


def private_directory(path: str | os.PathLike, mode: int = 0o700) -> Path:
    """``path``, created with ``mode`` (and missing parents) if absent. UnsafePath if it is a
    link or not a directory, belongs to another user, or group or others may write to it."""
    path = Path(path)
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=mode, parents=True)
    info = os.lstat(path)
    problem = _ownership_problem(info, stat.S_ISDIR, "a directory")
    if problem:
        raise UnsafePath(
            f"{path}: {problem}; aotwatch keeps its files only in a directory of "
            "its own user that nobody else can write to"
        )
    return path


def _ownership_problem(info: os.stat_result, is_kind, kind: str) -> str | None:
    if stat.S_ISLNK(info.st_mode):
        return "is a symbolic link"
    if not is_kind(info.st_mode):
        return f"is not {kind}"
    if info.st_uid != os.geteuid():
        return f"belongs to uid {info.st_uid}, not to this user (uid {os.geteuid()})"
    if info.st_mode & 0o022:
        return f"may be written by group or others (mode {stat.S_IMODE(info.st_mode):04o})"
    return None


def open_private(path: Path, flags: int) -> int:
    """A descriptor of the regular file ``path`` (created 0600 when ``flags`` say so), never
    through a link and never waiting on a FIFO; UnsafePath for a link, a file of another
    user or one others may write, or anything but a regular file."""
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o600)
    except OSError as err:
        if err.errno == errno.ELOOP:  # the last component is a link
            raise UnsafePath(f"{path}: is a symbolic link; refusing to follow it") from None
        if err.errno in (errno.ENXIO, errno.EISDIR):  # a FIFO nobody reads, a directory
            raise UnsafePath(f"{path}: is not a regular file") from None
        raise
    problem = _ownership_problem(os.fstat(fd), stat.S_ISREG, "a regular file")
    if problem:
        os.close(fd)
        raise UnsafePath(f"{path}: {problem}")
    os.set_blocking(fd, True)  # O_NONBLOCK was for the open alone
    return fd


def set_aside(path: Path, problem: UnsafePath) -> None:
    """Rename a file that ``open_private`` refused (the link, FIFO or directory itself, never
    what it points to) to ``<name>.unsafe-<time>`` beside it, out of the way and kept for a
    person to look at; logged."""
    aside = path.with_name(f"{path.name}.unsafe-{time.time_ns()}")
    try:
        os.rename(path, aside)
    except OSError as err:
        log.warning("aotwatch: skipped %s (%s); cannot move it aside: %s", path, problem, err)
        return
    log.warning("aotwatch: skipped %s, moved aside to %s", problem, aside.name)


class RecordArchive(Protocol):
    """Where a sink appends the lines of the records it accepts: one ``ArchiveWriter``, or a
    collector's per-job archives."""

    path: Path

    def write_records(self, records: list[Record], lines: list[bytes]) -> None: ...

    def close(self) -> None: ...


class ArchiveWriter:
    """Appends whole lines or nothing: a write the disk cuts short (a full disk returns a short
    count, not an error) is cut back to where it began and raised, so nothing written is torn
    and nothing refused is half kept. The file is created 0600 in a private directory, never
    through a link."""

    def __init__(self, directory: str | os.PathLike, file_name: str = ARCHIVE_FILE) -> None:
        self.path = private_directory(directory) / file_name
        self._fd = open_private(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT)
        self._lock = threading.Lock()
        self._torn = _ends_torn(self._fd)  # a crash mid-line: the next write starts afresh

    def write(self, lines: bytes) -> None:
        """Append whole lines (each ending in a newline), all of them or none: OSError, with
        the file as it was, when the disk refuses any part."""
        with self._lock:
            data = b"\n" + lines if self._torn else lines
            done = 0
            try:
                done = os.write(self._fd, data)
                while done < len(data):  # cut short: the rest, or the disk's error
                    written = os.write(self._fd, memoryview(data)[done:])
                    if not written:
                        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                    done += written
            except OSError:
                if done:
                    self._undo(done)
                raise
            self._torn = False

    def _undo(self, written: int) -> None:
        """Remove the ``written`` bytes of a failed write from the end of the file; when that
        fails, or another process appended after them (local mode: ranks may share a file),
        the next write starts on a new line instead."""
        with contextlib.suppress(OSError):
            end = os.lseek(self._fd, 0, os.SEEK_CUR)  # O_APPEND: the end of what this wrote
            if os.fstat(self._fd).st_size == end:
                os.ftruncate(self._fd, end - written)
                return
        self._torn = True

    def write_records(self, records: list[Record], lines: list[bytes]) -> None:
        """Append the lines of ``records`` (the interface a sink writes through)."""
        self.write(b"".join(lines))

    def append(self, *entries: dict[str, Any]) -> None:
        """Append JSON objects, one line each."""
        self.write("".join(to_json(entry) + "\n" for entry in entries).encode("utf-8"))

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1


def _ends_torn(fd: int) -> bool:
    """Whether the file's last line lacks its newline."""
    size = os.fstat(fd).st_size
    return size > 0 and os.pread(fd, 1, size - 1) != b"\n"


def read_lines(path: str | os.PathLike, private: bool = False) -> Iterator[bytes | RecordError]:
    """Every non-blank line of a file, or RecordError ``too_large`` for one longer than a
    record can be (skipped without reading it whole). ``private``: the file is one of
    aotwatch's own, opened as ``open_private`` does. The file is opened before this returns
    (an OSError is raised here, not by the first line)."""
    if private:
        fd = open_private(Path(path), os.O_RDONLY)
    else:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    return _lines(os.fdopen(fd, "rb"))


def _lines(stream: BinaryIO) -> Iterator[bytes | RecordError]:
    with stream:
        while line := stream.readline(MAX_RECORD_BYTES + 1):
            if len(line) > MAX_RECORD_BYTES:
                while line and not line.endswith(b"\n"):  # the rest of the long line
                    line = stream.readline(_READ_CHUNK)
                yield RecordError("too_large", f"a line of more than {MAX_RECORD_BYTES} bytes")
            elif line.strip():
                yield line


def read_json_lines(path: str | os.PathLike, private: bool = False) -> Iterator[Any]:
    """Every line of a JSON-lines file parsed, or the RecordError that refuses it."""
    for line in read_lines(path, private):
        if isinstance(line, RecordError):
            yield line
            continue
        try:
            yield parse_json(line)
        except RecordError as err:
            yield err


def archive_files(path: str | os.PathLike) -> list[Path]:
    """The archive files at ``path`` (none if there is none): the file itself, or a
    directory's records.jsonl and those of its subdirectories (one per process that
    ``aotwatch trace`` traced)."""
    path = Path(path)
    if not path.is_dir():
        file = archive_file(path)
        return [file] if file.is_file() or file.is_symlink() else []  # a link: refused on read
    own = path / ARCHIVE_FILE
    return [own] * own.is_file() + sorted(path.glob(f"*/{ARCHIVE_FILE}"))


def read_archive(path: str | os.PathLike, private: bool = False) -> Iterator[Record | RecordError]:
    """Every line of an archive (every one of ``archive_files``): a valid record, or the
    RecordError that refuses it."""
    for file in archive_files(path):
        yield from read_records(file, private)


def read_records(path: Path, private: bool = False) -> Iterator[Record | RecordError]:
    """Every line of one archive file: a valid record, or the RecordError that refuses it."""
    for line in read_lines(path, private):
        try:
            yield line if isinstance(line, RecordError) else decode_line(line)
        except RecordError as err:
            yield err
