"""hermes-ledger's event store: an append-only, hash-chained log in one SQLite file."""

from ledger.errors import (
    ConcurrencyError,
    EventValidationError,
    IdempotencyError,
    ImmutableLogError,
    LedgerBusyError,
    LedgerError,
    LedgerTooNewError,
    NotALedgerError,
    SessionAlreadyEndedError,
)
from ledger.records import AppendResult, Recorded, VerifyReport
from ledger.store import InlineProjector, Ledger
from ledger.versions import ANY, NO_STREAM, STREAM_EXISTS

__all__ = [
    "ANY",
    "NO_STREAM",
    "STREAM_EXISTS",
    "AppendResult",
    "ConcurrencyError",
    "EventValidationError",
    "IdempotencyError",
    "ImmutableLogError",
    "InlineProjector",
    "Ledger",
    "LedgerBusyError",
    "LedgerError",
    "LedgerTooNewError",
    "NotALedgerError",
    "Recorded",
    "SessionAlreadyEndedError",
    "VerifyReport",
]
