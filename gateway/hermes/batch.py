"""One ``LiveRecorder.apply``: the batch of spooled records it works through.

``Batch`` keeps the records in order, opens the Hermes home's ``state.db`` (read-only,
in place, one read transaction) when a record first needs it, folds runs of activity
records for one session into one recording, and turns what a record cannot do into a
skipped record of the report. The recording itself is ``hermes.live.LiveRecorder``'s.
"""

from __future__ import annotations

import sqlite3
from datetime import datetime
from typing import TYPE_CHECKING

from hermes_ledger.gateway.hermes.reading import HermesHome, HermesImportError, open_hermes_home
from hermes_ledger.gateway.hermes.records import LiveReport, Record, RecordError, SkippedRecord
from hermes_ledger.ledger import IdempotencyError
from hermes_ledger.ledger.errors import EventValidationError

if TYPE_CHECKING:
    from hermes_ledger.gateway.hermes.live import LiveRecorder

__all__ = ["Batch"]


class Batch:
    """One ``apply``: the records in order, ``state.db`` opened (read-only, in place,
    one read transaction) when first needed, and runs of activity records for one
    session recorded once."""

    def __init__(self, recorder: LiveRecorder, report: LiveReport) -> None:
        self.recorder = recorder
        self.report = report
        self.at = datetime.now().astimezone()
        self._home: HermesHome | None = None
        self._pending: dict[str, tuple[list[int], Record]] = {}  # session → its activities

    def __enter__(self) -> Batch:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        try:
            if exc_type is None:
                self._flush()
        finally:
            if self._home is not None:
                self._home.close()

    def hermes(self) -> HermesHome:
        if self._home is None:
            self._home = open_hermes_home(self.recorder.home, snapshot=False)
        return self._home

    def warn(self, text: str) -> None:
        if text not in self.report.warnings:
            self.report.warnings.append(text)

    def add(self, index: int, record: Record) -> None:
        if record.kind == "activity":
            session_id = record.session_id
            if session_id is None:
                self.report.skipped.append(SkippedRecord(index, "activity", "no session_id"))
                return
            indices, earlier = self._pending.get(session_id, ([], record))
            if earlier.session_key and not record.session_key:
                record = earlier
            self._pending[session_id] = ([*indices, index], record)
            return
        self._flush()  # what came before this record is recorded before it
        self._run([index], record)

    def _flush(self) -> None:
        pending, self._pending = self._pending, {}
        for indices, record in pending.values():
            self._run(indices, record)

    def _run(self, indices: list[int], record: Record) -> None:
        recorder = self.recorder
        self.at = record.at
        try:
            try:
                if record.kind == "dispatch":
                    recorder._dispatch(record)
                elif record.kind == "activity":
                    assert record.session_id is not None
                    side = record.platform == "subagent"
                    recorder._sync(self, record.session_id, record.session_key, side=side)
                elif record.kind == "subagent":
                    if record.session_id is None:
                        raise RecordError("a subagent record needs a child_session_id")
                    recorder._remember(recorder._side, record.session_id, None)
                    if self.hermes().session(record.session_id) is not None:
                        recorder._sync(self, record.session_id, None, side=True)
                else:
                    recorder._finalize(self, record)
            except sqlite3.Error as exc:  # reading state.db failed: not this record's fault
                raise HermesImportError(
                    f"cannot read {self.recorder.home / 'state.db'}: {exc}",
                    hint="the records stay in the spool; they are applied again later",
                ) from exc
            finally:
                if self._home is not None:
                    for text in self._home.warnings:
                        self.warn(text)
                    self._home.warnings.clear()
        except (RecordError, EventValidationError, IdempotencyError) as exc:
            for index in indices:
                self.report.skipped.append(SkippedRecord(index, record.kind, str(exc)))
            return
        self.report.applied += len(indices)
