"""Append-only JSON-lines archives of records: ``<dir>/records.jsonl``."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from aotwatch.records import RecordError, from_json, to_json

ARCHIVE_FILE = "records.jsonl"


def archive_file(path: str | os.PathLike) -> Path:
    """The records file of an archive given as its directory or as the file itself."""
    path = Path(path)
    return path / ARCHIVE_FILE if path.is_dir() or not path.suffix else path


class ArchiveWriter:
    """Appends one line per record and flushes it, so a crash loses at most the line in flight."""

    def __init__(self, directory: str | os.PathLike, file_name: str = ARCHIVE_FILE) -> None:
        Path(directory).mkdir(parents=True, exist_ok=True)
        self.path = Path(directory) / file_name
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed by close()
        self._lock = threading.Lock()
        if _ends_torn(self.path):  # a crash mid-line: keep the next record on its own line
            self._file.write("\n")
            self._file.flush()

    def append(self, *records: dict[str, Any]) -> None:
        """Append records with one write and one flush."""
        with self._lock:
            self._file.write("".join(to_json(record) + "\n" for record in records))
            self._file.flush()

    def close(self) -> None:
        with self._lock:
            self._file.close()


def _ends_torn(path: Path) -> bool:
    """Whether the file's last line lacks its newline."""
    with open(path, "rb") as raw:
        if raw.seek(0, os.SEEK_END) == 0:
            return False
        raw.seek(-1, os.SEEK_END)
        return raw.read(1) != b"\n"


def read_archive(path: str | os.PathLike) -> Iterator[dict[str, Any] | RecordError]:
    """Every line of an archive: a valid record, or the RecordError that refuses it."""
    with open(archive_file(path), encoding="utf-8") as lines:
        for line in lines:
            if line.strip():
                try:
                    yield from_json(line)
                except RecordError as err:
                    yield err
