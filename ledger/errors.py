"""The ledger's exceptions, and the one place where driver errors become them."""

from __future__ import annotations

import os
from pathlib import Path
from typing import NoReturn

import apsw

__all__ = [
    "ConcurrencyError",
    "EventValidationError",
    "ExpectedVersionError",
    "IdempotencyError",
    "ImmutableLogError",
    "InvalidInputError",
    "LedgerBusyError",
    "LedgerError",
    "LedgerTooNewError",
    "LedgerTooOldError",
    "NoLedgerError",
    "NotALedgerError",
    "SessionAlreadyEndedError",
]


class LedgerError(Exception):
    """Base of every error the ledger raises on purpose.

    ``hint`` says what the user can do about it; the CLI prints it as ``Try: …``.
    """

    hint: str | None = None

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        if hint is not None:
            self.hint = hint


class InvalidInputError(LedgerError):
    """A value the user gave cannot be used (an unknown event type, a time that
    cannot be read): a usage error, which the CLI reports with exit status 2."""


class ConcurrencyError(LedgerError):
    """The stream was not at the expected version; nothing was written."""

    hint = "re-read the stream and retry with its current version"

    def __init__(self, stream: str, expected: object, actual: int) -> None:
        self.stream = stream
        self.expected = expected
        self.actual = actual
        shown = "has no events" if actual == 0 else f"is at version {actual}"
        super().__init__(f"stream {stream!r} was expected at {_describe(expected)}, but it {shown}")


class IdempotencyError(LedgerError):
    """An event_id that is already in the log was reused for a different append."""

    hint = "give each new event its own event_id; resend an append only unchanged"


class EventValidationError(LedgerError, ValueError):
    """An event (or a stored body) does not match its model."""

    hint = "check the event's type and fields against `hermes-ledger schema`"


class ExpectedVersionError(LedgerError, TypeError):
    """An ``expected_version`` that is neither a marker nor an int >= 0 (a TypeError
    too, as it was before it became a LedgerError)."""

    hint = "pass ANY, NO_STREAM, STREAM_EXISTS or the stream's version (an int >= 0)"


class SessionAlreadyEndedError(LedgerError):
    """A second ``session_ended`` for one session_id: the database refused it."""

    def __init__(self, session_id: str | None) -> None:
        self.session_id = session_id
        super().__init__(f"session {session_id!r} has already ended; a session ends exactly once")


class ImmutableLogError(LedgerError):
    """Something tried to UPDATE or DELETE an event."""


class NoLedgerError(LedgerError):
    """There is no file at the path of a ledger that must already exist
    (``Ledger.open_existing``: commands that read or administer a ledger, never
    creating one by accident)."""

    hint = "create one with `hermes-ledger init`, or pass --db / HERMES_LEDGER_DB"

    def __init__(self, path: str | os.PathLike[str], why: str = "") -> None:
        self.path = Path(path)
        super().__init__(f"there is no ledger at {self.path}{why}")


class NotALedgerError(LedgerError):
    """The file exists but is not a hermes-ledger (or not SQLite at all)."""


class LedgerTooNewError(LedgerError):
    """The ledger was written by a newer version of hermes-ledger."""


class LedgerTooOldError(LedgerError):
    """A ledger of an older schema (``version``) was opened read-only, so it could not
    be migrated; nothing was written."""

    hint = "open it once read-write (e.g. `hermes-ledger status`) to migrate it"

    def __init__(self, message: str, *, version: int) -> None:
        super().__init__(message)
        self.version = version


class LedgerBusyError(LedgerError):
    """Another process held the write lock for longer than the busy timeout."""

    hint = "another process is writing a very large batch; retry, or raise busy_timeout"


CORRUPT_HINT = (
    "restore it from a backup or an export (`hermes-ledger import --db NEW.db EXPORT`), "
    "or salvage what SQLite can read: sqlite3 {path} .recover | sqlite3 NEW.db"
)


def _describe(expected: object) -> str:
    from hermes_ledger.ledger.versions import describe_expected

    return describe_expected(expected)


def translate(exc: apsw.Error, *, path: str, stream: str | None = None) -> NoReturn:
    """Re-raise a driver error as the matching LedgerError (``raise … from exc``)."""
    message = str(exc)
    if isinstance(exc, apsw.ConstraintError):
        if "events_one_end_per_session" in message or "events.session_id" in message:
            raise SessionAlreadyEndedError(None) from exc
        if "append-only" in message:
            raise ImmutableLogError(message.split("ConstraintError: ")[-1]) from exc
        if "events.event_id" in message:
            raise IdempotencyError(f"an event_id is already in the log: {message}") from exc
        raise EventValidationError(f"the log refused an event: {message}") from exc
    if isinstance(exc, apsw.BusyError):
        raise LedgerBusyError(f"{path}: the ledger stayed locked by another writer") from exc
    if isinstance(exc, apsw.NotADBError):
        raise NotALedgerError(
            f"{path} is not a SQLite database",
            hint="point --db (or HERMES_LEDGER_DB) at a ledger file, or at a new path",
        ) from exc
    if isinstance(exc, apsw.CorruptError):
        raise NotALedgerError(
            f"{path} is damaged ({message.split(': ', 1)[-1]}); it was not changed",
            hint=CORRUPT_HINT.format(path=path),
        ) from exc
    if isinstance(exc, apsw.CantOpenError):
        raise LedgerError(
            f"cannot open {path}: {message}",
            hint="check that the directory exists and that you may write to it",
        ) from exc
    raise LedgerError(f"{path}: {message}") from exc
