"""Copying a SQLite ledger into PostgreSQL (``hermes-ledger migrate --to``).

``copy_ledger(source, dsn)`` copies every events row and every payload row as it
is (position, event_id, stream, version, type, session_id, data, meta,
recorded_at, hash byte for byte: nothing is re-hashed; each row is checked to
chain from the one before, ``PostgresLog.insert_copied``) in batches, each
committed, then verifies the copy: the chain and payloads end to end on
PostgreSQL, and the counts and head hash against the source. Erased payloads
stay erased (there is no row to copy); ``subject_erased`` events are copied like
any other, so verify on PostgreSQL finds every missing payload covered.

Resumable: a PostgreSQL log that already holds rows must be a prefix of the
source (the source's hash at PostgreSQL's head is PostgreSQL's head hash); the
copy continues after it. Any other log is refused before anything is written.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from hermes_ledger.ledger.chain import GENESIS
from hermes_ledger.ledger.errors import LedgerError
from hermes_ledger.ledger.postgres.log import PostgresLog
from hermes_ledger.ledger.store import Ledger

__all__ = ["BATCH", "MigrationReport", "copy_ledger"]

BATCH = 5_000
"""Rows per committed batch."""

SQL_SOURCE_HEAD = "SELECT position, hash FROM events ORDER BY position DESC LIMIT 1"
SQL_SOURCE_HASH_AT = "SELECT hash FROM events WHERE position = ?"
SQL_SOURCE_ROWS = (
    "SELECT position, event_id, stream, version, type, session_id, data, meta, recorded_at,"
    " hash FROM events WHERE position > ? AND position <= ? ORDER BY position LIMIT ?"
)
SQL_SOURCE_PAYLOADS = (
    "SELECT position, salt, body FROM payloads WHERE position >= ? AND position <= ?"
    " ORDER BY position"
)
SQL_SOURCE_PAYLOAD_COUNT = "SELECT count(*) FROM payloads WHERE position <= ?"
SQL_TARGET_COUNTS = "SELECT (SELECT count(*) FROM events), (SELECT count(*) FROM payloads)"


@dataclass(frozen=True)
class MigrationReport:
    """What ``copy_ledger`` did: the source and target, the rows already there
    (``resumed_from``: PostgreSQL's head before), the rows and payloads copied now,
    the final counts and head, and whether the copy verified."""

    source: str
    target: str
    resumed_from: int
    copied_events: int
    copied_payloads: int
    events: int
    payloads: int
    head: int
    head_hash: str
    verified: bool

    @property
    def warnings(self) -> list[str]:
        return []

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> list[str]:
        lines = [f"Copied {self.copied_events} events and {self.copied_payloads} payloads"
                 f" from {self.source} to {self.target}"]  # fmt: skip
        if self.resumed_from:
            lines.append(f"  resumed after position {self.resumed_from} (already copied)")
        lines.append(
            f"  verified: {self.events} events, {self.payloads} payloads, head {self.head}"
            f" {self.head_hash}"
        )
        return lines


def _source_head(led: Ledger) -> tuple[int, str]:
    rows = led.query(SQL_SOURCE_HEAD)
    return (int(rows[0][0]), str(rows[0][1])) if rows else (0, GENESIS)


def _check_prefix(led: Ledger, log: PostgresLog, head: int) -> tuple[int, str]:
    """PostgreSQL's head (position, hash), if its log is a prefix of the source's."""
    position, digest = log.head_row()
    if position == 0:
        return position, digest
    hint = "migrate into an empty database (or the one an interrupted migrate of this ledger left)"
    if position > head:
        raise LedgerError(
            f"{log.where} already holds {position} events, more than {led.path} ({head}):"
            " it is not a copy of this ledger",
            hint=hint,
        )
    rows = led.query(SQL_SOURCE_HASH_AT, (position,))
    if not rows or rows[0][0] != digest:
        raise LedgerError(
            f"{log.where} holds another log: its event {position} is not {led.path}'s"
            " (the hashes differ)",
            hint=hint,
        )
    return position, digest


def copy_ledger(
    source: Path,
    dsn: str,
    *,
    batch: int = BATCH,
    progress: Callable[[int, int], None] | None = None,
) -> MigrationReport:
    """Copy the SQLite ledger at ``source`` into the PostgreSQL database ``dsn``
    (migrating its schema first), resuming an interrupted copy; LedgerError (with a
    hint, nothing written) for a database holding another log. Returns the report;
    a copy that does not verify raises LedgerError."""
    with Ledger.open_existing(source, readonly=True) as led, PostgresLog.open(dsn) as log:
        head, head_hash = _source_head(led)
        position, _digest = _check_prefix(led, log, head)
        resumed = position
        copied = payloads_copied = 0
        if progress is not None:
            progress(position, head)
        while position < head:
            rows = [tuple(r) for r in led.query(SQL_SOURCE_ROWS, (position, head, batch))]
            last = rows[-1][0]
            payloads = [
                (p, bytes(s), b) for p, s, b in led.query(SQL_SOURCE_PAYLOADS, (position + 1, last))
            ]
            log.insert_copied(rows, payloads)  # type: ignore[arg-type]
            copied += len(rows)
            payloads_copied += len(payloads)
            position = last
            if progress is not None:
                progress(position, head)
        return _verified(led, log, head, head_hash, resumed, copied, payloads_copied)


def _verified(
    led: Ledger, log: PostgresLog, head: int, head_hash: str, resumed: int, copied: int,
    payloads_copied: int,
) -> MigrationReport:  # fmt: skip
    """The report, after checking the copy end to end (LedgerError if it is not one)."""
    report = log.verify()
    if not report.ok:
        raise LedgerError(
            f"the copy in {log.where} does not verify: {report}",
            hint="drop the database and run migrate again",
        )
    row = log.connection.execute(SQL_TARGET_COUNTS).fetchone()
    assert row is not None
    events, payloads = int(row[0]), int(row[1])
    source_payloads = int(led.query(SQL_SOURCE_PAYLOAD_COUNT, (head,))[0][0])
    target_head = log.head_row()
    if (events, payloads, target_head) != (head, source_payloads, (head, head_hash)):
        raise LedgerError(
            f"the copy in {log.where} differs from {led.path}: {events} events,"
            f" {payloads} payloads, head {target_head[0]} (the source: {head},"
            f" {source_payloads}, {head})",
            hint="drop the database and run migrate again",
        )
    return MigrationReport(
        str(led.path), log.where, resumed, copied, payloads_copied, events, payloads, head,
        head_hash, True,
    )  # fmt: skip
