"""Restoring a JSONL export into an empty PostgreSQL ledger (``hermes-ledger import
--db postgresql://…``): the same rows, byte for byte, as ``ledger.restore`` writes
them into a SQLite ledger.

Every line is read and checked by ``ledger.restore`` itself (its ``_read`` and
``_Restore``: JSON, fields, positions from 1, stream versions, each row's hash,
each body against its event model, each line's ``occurred_at``, the manifest, the
payloads); only the writing differs: the checked rows go in through
``PostgresLog.insert_copied``, the raw-row path ``migrate`` uses, and everything
happens in ONE transaction on a log that must be empty. Any problem raises a
``RestoreError`` naming the line and rolls it back: nothing is written.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, cast

import psycopg

from hermes_ledger.ledger.errors import LedgerError
from hermes_ledger.ledger.postgres.log import PostgresLog
from hermes_ledger.ledger.postgres.payloads import check_payloads
from hermes_ledger.ledger.restore import (
    SQL_HAS_EVENTS,
    RestoreError,
    RestoreResult,
    _read,
    _Restore,
)

__all__ = ["restore_jsonl"]

SQL_OCCURRED_AT_RANGE = (
    "SELECT position, occurred_at FROM events WHERE position BETWEEN %s AND %s ORDER BY position"
)
"""The business times the database derived for the rows just restored."""

_HINT_NEW = (
    "import into a new, empty database: createdb NEW, then"
    " hermes-ledger import --db postgresql://…/NEW FILE"
)


class _PostgresRestore(_Restore):
    """``ledger.restore``'s checks, writing into ``log`` (inside the caller's
    transaction: each batch is a savepoint of it)."""

    def __init__(self, log: PostgresLog) -> None:
        super().__init__(cast(Any, None))
        self.log = log

    def flush(self) -> None:
        if not self.pending:
            return
        try:
            self.log.insert_copied(self.pending, self.payloads)
        except LedgerError as exc:
            raise RestoreError(
                f"the ledger refused the events: {exc}", line=self.pending_lines[0]
            ) from None
        self._check_occurred_at()
        self.payloads.clear()
        self.pending.clear()
        self.pending_lines.clear()
        self.pending_occurred.clear()

    def derived_occurred_at(self, first: int, last: int) -> Iterable[tuple[int, str]]:
        return self.log.connection.execute(SQL_OCCURRED_AT_RANGE, (first, last)).fetchall()

    def payload_problem(self) -> tuple[int | None, str] | None:
        return check_payloads(self.log.connection, self.position)


def restore_jsonl(
    log: PostgresLog,
    lines: Iterable[bytes | str],
    *,
    progress: Callable[[int], None] | None = None,
) -> RestoreResult:
    """Write the events of a JSONL export (``lines``) into the empty PostgreSQL log
    ``log``, as ``ledger.restore.restore_jsonl`` does into a SQLite ledger: every row
    with its original position, event_id, recorded_at and hash, checked first, in
    one transaction. ``RestoreError`` (naming the line), nothing written, when
    anything is wrong or when ``log`` already has events."""
    conn = log.connection
    try:
        with conn.transaction():
            row: Any = conn.execute(SQL_HAS_EVENTS).fetchone()
            if row[0]:
                raise RestoreError(
                    f"{log.where} already has events; an export is restored only into an"
                    " empty ledger",
                    hint=_HINT_NEW,
                )
            return _read(_PostgresRestore(log), lines, progress)
    except psycopg.Error as exc:
        raise LedgerError(
            f"{log.where}: the restore failed and was rolled back: {str(exc).strip()}",
            hint="check that this role may write the ledger (the owner, or a member of"
            " hermes_ledger_writer); nothing was imported",
        ) from None
