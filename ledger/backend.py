"""The log's backend interface (issue 14): ``EventLog``, what the SQLite ``Ledger``
and the PostgreSQL ``PostgresLog`` both are, and ``open_log``, which opens either.

The operations below are the log's contract; their docstrings are the one place
that says what they do (the implementations refer here), and tests/test_contract.py
runs the same tests against both backends. Code that may be given either backend
takes an ``EventLog`` and uses nothing else.

Not part of the interface, because their types are the backend's own:
``connection`` (an apsw or a psycopg connection), ``add_inline_projector`` and
``add_scrubber`` (a projector or a scrubber writes through that connection), and
the SQLite ``Ledger``'s ``query``, ``write`` and ``check_file``. ``erase`` is part of it: both
backends forget the same scopes (``ledger.erasure.SCOPE_PARTS``) the same way.

Opening. ``Ledger`` is the SQLite class, so ``Ledger.open`` is typed as returning
one; ``open_log(path_or_dsn)`` is typed ``EventLog`` and is the entry point for
code that works with either. ``Ledger.open`` accepts a DSN too (the spelling of
docs/design.md), handing it to ``open_log``, so the value it returns for a DSN is
a ``PostgresLog``: use only the interface on what it returns for a DSN.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol, Self, runtime_checkable

from hermes_ledger.ledger.chain import GENESIS
from hermes_ledger.ledger.clock import Clock
from hermes_ledger.ledger.errors import LedgerError
from hermes_ledger.ledger.events import EventModel
from hermes_ledger.ledger.records import AppendResult, Recorded, VerifyReport
from hermes_ledger.ledger.versions import ANY, ExpectedVersion

if TYPE_CHECKING:
    from hermes_ledger.ledger.erasure import ErasureReport, ErasureScope

__all__ = ["DSN_SCHEMES", "EventLog", "is_dsn", "open_log"]

DSN_SCHEMES = ("postgresql://", "postgres://")
"""How a PostgreSQL connection URI starts; anything else names a SQLite file."""

POSTGRES_HINT = "pip install 'hermes-ledger[postgres]'"


@runtime_checkable
class EventLog(Protocol):
    """An append-only, hash-chained event log: gap-free positions 1..n over the
    whole log, versions 1..n per stream, one ``session_ended`` per session id.

    Every method raises ``LedgerError`` subclasses (``hermes_ledger.ledger.errors``)
    and the same ones on every backend; a closed log raises ``LedgerError`` saying
    so. One instance may be shared by threads (calls take turns); several
    processes may open the same log. Use it as a context manager (``close`` on
    exit); ``close`` twice is harmless.
    """

    def append(
        self,
        stream: str,
        events: Iterable[EventModel | Mapping[str, Any]],
        expected_version: ExpectedVersion = ANY,
        *,
        meta: Mapping[str, Any] | None = None,
    ) -> AppendResult:
        """Append ``events`` to ``stream`` in one transaction (all or nothing).

        ``expected_version`` is ANY, NO_STREAM, STREAM_EXISTS, or the exact version
        the stream must be at; otherwise ConcurrencyError is raised and nothing is
        written (ExpectedVersionError, a TypeError too, for anything else). If every
        event_id is already in the log with the same stream, type and content (a
        retried append), the original positions are returned with
        ``duplicate=True`` and nothing is written; some ids known and others not, or
        a known id with other content, is IdempotencyError. A second
        ``session_ended`` for a session id is SessionAlreadyEndedError. Events are
        models or dicts (parsed; EventValidationError when malformed), with stream,
        event and session ids checked by ``store.check_name``. ``meta``
        (causation/correlation ids, actor…) is stored with each event next to its
        schema version.
        """
        ...

    def read_all(
        self, after: int = 0, *, types: Iterable[str] | None = None, limit: int | None = None
    ) -> Iterator[Recorded]:
        """Events after position ``after``, in position order, optionally only
        ``types``, at most ``limit``. Lazy, in pages: constant memory, and nothing is
        held open between pages (events appended meanwhile are read too)."""
        ...

    def read_stream(self, stream: str, *, after_version: int = 0) -> Iterator[Recorded]:
        """The events of one stream in version order, after ``after_version``."""
        ...

    def stream_version(self, stream: str) -> int:
        """The stream's current version (0 if it has no events)."""
        ...

    def head(self) -> int:
        """The position of the last event (0 for an empty log)."""
        ...

    def head_row(self) -> tuple[int, str]:
        """(position, hash) of the last event, (0, GENESIS) for an empty log: what
        an anchor (``ledger.anchors``) pins."""
        ...

    def hash_at(self, position: int) -> str | None:
        """The hash stored at ``position`` (None if there is no such row): what an
        anchor is checked against."""
        ...

    @property
    def identity(self) -> str:
        """The name this log's anchors carry, taken from outside the log: a SQLite
        file's resolved path; ``postgresql://host:port/dbname`` for PostgreSQL
        (no user, no password: any role reading the same database matches)."""
        ...

    def verify(
        self,
        progress: Callable[[int, int], None] | None = None,
        *,
        after: tuple[int, str] = (0, GENESIS),
    ) -> VerifyReport:
        """Walk the whole log: gap-free positions, versions 1..n per stream, every
        row's hash against its content and the previous row's hash, then every
        payload (forgettable content) against the digest its event's meta holds.

        ``progress(done, total)`` is called as rows are checked. ``after`` =
        (position, hash) walks only the rows after a row already trusted (an
        anchor): their hashes chain from ``hash``; versions are checked only for
        streams that start after it. A failure is reported (``ok`` false,
        ``first_bad_position``, ``problem``), not raised."""
        ...

    def erase(
        self, scope: ErasureScope, *, requested_by: str, dry_run: bool = True
    ) -> ErasureReport:
        """Forget the personal content of ``scope`` (``ledger.erasure``, which says
        what each scope kind covers). ``dry_run`` (the default) only counts what
        would be forgotten. Otherwise, in one transaction under the append lock:
        append ``subject_erased`` (the scope, ``requested_by``, when, the position
        it covers up to; no content; the same event on every backend), delete the
        scope's payloads, and let the attached projections rewrite their rows to
        "[erased]"; then the backend's clean-up (SQLite: checkpoint the WAL;
        PostgreSQL: VACUUM when the role may). Reads show "[erased]" after,
        ``verify`` passes, a re-run is harmless. Returns an ``ErasureReport``;
        LedgerError (nothing written) when the scope is malformed, ``requested_by``
        empty, or the connection may not erase."""
        ...

    def close(self) -> None:
        """Close the connection; later calls raise LedgerError. Idempotent."""
        ...

    def __enter__(self) -> Self: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


def is_dsn(target: str | os.PathLike[str]) -> bool:
    """Whether ``target`` is a PostgreSQL connection URI (a ``str`` starting with
    ``postgresql://`` or ``postgres://``) rather than a SQLite file's path."""
    return isinstance(target, str) and target.lower().startswith(DSN_SCHEMES)


def open_log(
    target: str | os.PathLike[str], *, clock: Clock | None = None, **options: Any
) -> EventLog:
    """Open the log at ``target``: a PostgreSQL connection URI opens a
    ``PostgresLog`` (``PostgresLog.open(dsn, clock=…, connect_timeout=…)``), any
    other string or path the SQLite ``Ledger`` (``Ledger.open(path, clock=…,
    readonly=…, …)``). Both create and migrate the log if needed. ``options`` are
    the chosen backend's; LedgerError (with the install hint) for a DSN when
    psycopg, the ``postgres`` extra, is not installed."""
    if is_dsn(target):
        assert isinstance(target, str)
        return _open_postgres(target, clock=clock, **options)
    from hermes_ledger.ledger.store import Ledger

    return Ledger.open(target, clock=clock, **options)


def _open_postgres(dsn: str, **options: Any) -> EventLog:
    try:
        from hermes_ledger.ledger.postgres import PostgresLog
    except ImportError:
        raise LedgerError(
            "a PostgreSQL ledger needs psycopg, which is not installed",
            hint=POSTGRES_HINT,
        ) from None
    unknown = sorted(set(options) - {"clock", "connect_timeout"})
    if unknown:
        raise LedgerError(
            f"{', '.join(unknown)}: not an option of a PostgreSQL ledger",
            hint="pass those options only when opening a SQLite file",
        )
    return PostgresLog.open(dsn, **options)


if TYPE_CHECKING:  # mypy checks that both backends implement the interface
    from hermes_ledger.ledger.postgres.log import PostgresLog
    from hermes_ledger.ledger.store import Ledger

    _SQLITE: type[EventLog] = Ledger
    _POSTGRES: type[EventLog] = PostgresLog
