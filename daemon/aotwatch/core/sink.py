"""The record sink of local mode and of every collector: a locked Aggregate and
optionally an archive, written before anything is folded."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from typing import Any

from aotwatch.core.aggregate import Aggregate, Snapshot
from aotwatch.core.archive import RecordArchive
from aotwatch.core.identity import rank_and_world_size
from aotwatch.core.liveness import LOCAL_WORKER, Liveness
from aotwatch.core.metrics import CAPTURE_ERRORS, RECORDS_DROPPED, RECORDS_REJECTED, Family, Labels
from aotwatch.core.records import Record, RecordError, decode_lines, record_line
from aotwatch.core.wire import Compiling

log = logging.getLogger(__name__)


def _checked(obj: Any) -> tuple[Record, bytes] | RecordError:
    """A record dict validated, with its archive line; or why it is refused."""
    try:
        return record_line(obj)
    except RecordError as err:
        return err


class RecordSink:
    """Validates records, appends the new ones to the archive, then folds them, under one
    lock.

    ``strict``: a failed archive write raises (a collector: its worker keeps the batch and
    sends it again). Otherwise (local mode, where nothing can resend) the records are folded
    anyway and counted in ``aotwatch_records_dropped_total{reason="archive_write"}``: they
    are in /metrics but missing from the archive.
    """

    def __init__(
        self,
        max_series_per_metric: int,
        archive: RecordArchive | None = None,
        *,
        strict: bool = False,
        liveness: Liveness | None = None,
        per_rank: bool = True,
    ) -> None:
        self.aggregate = Aggregate(max_series_per_metric, per_rank=per_rank)
        self.archive = archive
        self.strict = strict
        self.liveness = liveness
        self._lock = threading.Lock()

    def record(self, record: Record | dict[str, Any]) -> bool:
        """Archive and fold ``record``; False if it was a duplicate or malformed."""
        return bool(self.record_batch([record]))

    def record_batch(self, records: list[Any] | bytes) -> list[Record]:
        """Archive the new, valid records with one write, then fold them; returns those.

        ``records``: record dicts, or JSON lines (the archive's format, as workers send
        them). Malformed ones are counted in ``aotwatch_records_rejected_total``. When
        ``strict`` and the write fails, raises OSError with nothing folded or counted.
        """
        checked = decode_lines(records) if isinstance(records, bytes) else map(_checked, records)
        with self._lock:
            accepted, lines, rejected = self._new(checked)
            if self.archive is not None and lines:
                try:
                    self.archive.write_records(accepted, lines)
                except OSError:
                    if self.strict:
                        raise
                    log.warning("aotwatch: cannot append to %s", self.archive.path, exc_info=True)
                    for record in accepted:
                        self.aggregate.inc(
                            RECORDS_DROPPED, job_name=record.job_name, reason="archive_write"
                        )
            for reason in rejected:
                self.aggregate.inc(RECORDS_REJECTED, reason=reason)
            self.aggregate.fold_batch(accepted)
            return accepted

    def _new(
        self, checked: Iterable[tuple[Record, bytes] | RecordError]
    ) -> tuple[list[Record], list[bytes], list[str]]:
        """(new valid records, their archive lines, the reasons of the rejected ones)."""
        accepted, lines, rejected, ids = [], [], [], set()
        has_seen = self.aggregate.has_seen
        for item in checked:
            if type(item) is RecordError:
                rejected.append(item.reason)
                continue
            record, line = item
            record_id = record.record_id
            if record_id not in ids and not has_seen(record_id):
                ids.add(record_id)
                accepted.append(record)
                lines.append(line)
        return accepted, lines, rejected

    def inc(self, family: Family, amount: float = 1, **labels: str) -> None:
        """Add to one of aotwatch's own counters, its labels given by name."""
        with self._lock:
            self.aggregate.inc(family, amount, **labels)

    def refuse(self, family: Family, labels: Labels) -> None:
        """Count a label set refused by ``family``'s cap (see ``Aggregate.refuse``)."""
        with self._lock:
            self.aggregate.refuse(family, labels)

    def capture_error(self, job_name: str, stage: str) -> None:
        self.inc(CAPTURE_ERRORS, job_name=job_name, stage=stage)

    def finish_job(self, job_name: str, finished: bool = True) -> None:
        with self._lock:
            self.aggregate.finish_job(job_name, finished)

    def forget_job(self, job_name: str) -> None:
        with self._lock:
            self.aggregate.forget_job(job_name)

    def close(self) -> None:
        """Close the archive, if any."""
        if self.archive is not None:
            self.archive.close()

    def compiling(self, state: Compiling | None) -> None:
        """This process began a compile (``state``) or ended one (None): shown while it lasts
        (local mode)."""
        if self.liveness is not None:
            rank = rank_and_world_size()[0]
            with self._lock:
                self.liveness.compiling(LOCAL_WORKER, state, rank)

    def snapshot(self) -> Snapshot:
        """The aggregate, and with ``liveness`` the workers attached (local mode)."""
        with self._lock:
            snapshot = self.aggregate.snapshot()
            return snapshot if self.liveness is None else self.liveness.apply(snapshot)
