"""hermes-ledger's event store: an append-only, hash-chained log, in one SQLite file
(``Ledger``) or a PostgreSQL database (``postgres.PostgresLog``), both ``EventLog``s
(``backend``); ``open_log(path_or_dsn)`` opens either."""

from hermes_ledger.ledger.backend import EventLog, open_log
from hermes_ledger.ledger.errors import (
    ConcurrencyError,
    EventValidationError,
    ExpectedVersionError,
    IdempotencyError,
    ImmutableLogError,
    LedgerBusyError,
    LedgerError,
    LedgerTooNewError,
    NoLedgerError,
    NotALedgerError,
    SessionAlreadyEndedError,
)
from hermes_ledger.ledger.records import AppendResult, Recorded, VerifyReport
from hermes_ledger.ledger.store import InlineProjector, Ledger
from hermes_ledger.ledger.versions import ANY, NO_STREAM, STREAM_EXISTS

__all__ = [
    "ANY",
    "NO_STREAM",
    "STREAM_EXISTS",
    "AppendResult",
    "ConcurrencyError",
    "EventLog",
    "EventValidationError",
    "ExpectedVersionError",
    "IdempotencyError",
    "ImmutableLogError",
    "InlineProjector",
    "Ledger",
    "LedgerBusyError",
    "LedgerError",
    "LedgerTooNewError",
    "NoLedgerError",
    "NotALedgerError",
    "Recorded",
    "SessionAlreadyEndedError",
    "VerifyReport",
    "open_log",
]
