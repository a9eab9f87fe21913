"""The JSON-lines archive survives a crash in the middle of a line."""

from __future__ import annotations

from aotwatch.core.archive import ArchiveWriter, read_archive
from aotwatch.core.records import RecordError, new_record


def test_a_torn_last_line_does_not_swallow_the_next_record(tmp_path):
    writer = ArchiveWriter(tmp_path)
    first = new_record()
    writer.append(first)
    writer.close()
    with (tmp_path / "records.jsonl").open("a") as torn:
        torn.write('{"schema": 1, "record_id": "half')  # the process died here
    writer = ArchiveWriter(tmp_path)
    second = new_record()
    writer.append(second)
    writer.close()
    items = list(read_archive(tmp_path))
    assert [i.record_id for i in items if not isinstance(i, RecordError)] == [
        first["record_id"],
        second["record_id"],
    ]
    assert [i.reason for i in items if isinstance(i, RecordError)] == ["not_json"]
