"""The log on PostgreSQL: ``PostgresLog``, the SQLite ``Ledger``'s log methods
(append, read_all, read_stream, stream_version, head, verify) over one psycopg
connection.

Positions are allocated inside the append's transaction, under the log's lock
(``hl_append_state``: ``LOCK TABLE events IN EXCLUSIVE MODE``, migration 1), so
appends commit in position order and a reader never sees position n+1 without n;
docs/postgres.md says why this lock and what it costs. The SQL is below, one named
statement per purpose, always with bindings.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any, NoReturn, Self

import psycopg
from psycopg import errors as pg_errors

from hermes_ledger.ledger.chain import GENESIS
from hermes_ledger.ledger.clock import Clock, format_utc, system_clock
from hermes_ledger.ledger.errors import (
    ConcurrencyError,
    EventValidationError,
    IdempotencyError,
    ImmutableLogError,
    LedgerError,
    SessionAlreadyEndedError,
)
from hermes_ledger.ledger.events import EventModel
from hermes_ledger.ledger.postgres.schema import SCHEMA, migrate
from hermes_ledger.ledger.postgres.shared import Prepared, chain_rows, prepare_append, walk_chain
from hermes_ledger.ledger.records import AppendResult, Recorded, VerifyReport
from hermes_ledger.ledger.versions import ANY, ExpectedVersion, check_expected

__all__ = ["InlineProjector", "PostgresLog", "describe_dsn"]

InlineProjector = Callable[[psycopg.Connection[Any], Sequence[Recorded]], None]
"""``fn(conn, records)``: runs inside the append's transaction after the rows are
inserted (``records`` are the appended events, whole); raising rolls the append back."""

_COLUMNS = "position, event_id, stream, version, type, session_id, data, meta, recorded_at, hash"

SQL_SEARCH_PATH = f"SET search_path = {SCHEMA}, pg_temp"
SQL_ENCODING = "SHOW server_encoding"
SQL_APPEND_STATE = "SELECT stream_version, head_position, head_hash FROM hl_append_state(%s)"
SQL_INSERT = (
    "INSERT INTO events (position, event_id, stream, version, type, session_id, data, meta,"
    " recorded_at, hash) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
)
SQL_BY_EVENT_ID = "SELECT position, stream, version, type, data FROM events WHERE event_id = %s"
SQL_PAGE_ALL = f"SELECT {_COLUMNS} FROM events WHERE position > %s ORDER BY position LIMIT %s"
SQL_PAGE_TYPES = (
    f"SELECT {_COLUMNS} FROM events WHERE type = ANY(%s) AND position > %s"
    " ORDER BY position LIMIT %s"
)
SQL_PAGE_STREAM = (
    f"SELECT {_COLUMNS} FROM events WHERE stream = %s AND version > %s ORDER BY version LIMIT %s"
)
SQL_STREAM_VERSION = "SELECT coalesce(max(version), 0) FROM events WHERE stream = %s"
SQL_HEAD_POSITION = "SELECT coalesce(max(position), 0) FROM events"
SQL_HEAD_ROW = "SELECT position, hash FROM events ORDER BY position DESC LIMIT 1"
SQL_HASH_AT = "SELECT hash FROM events WHERE position = %s"

_PAGE = 512


def describe_dsn(dsn: str) -> str:
    """``host:port/dbname as user`` of a connection string, never its password."""
    try:
        info = psycopg.conninfo.conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "the PostgreSQL server (the connection string cannot be read)"
    host = info.get("host") or "localhost"
    port = info.get("port") or "5432"
    user = f" as {info['user']}" if info.get("user") else ""
    return f"{host}:{port}/{info.get('dbname') or '(default database)'}{user}"


class PostgresLog:
    """The append-only, hash-chained log in a PostgreSQL database.

    Open with ``PostgresLog.open(dsn)`` (applies missing migrations when the role
    may) and use it as a context manager. One instance holds one connection and may
    be shared by threads (calls take turns); several processes and hosts may open
    the same database.
    """

    def __init__(self, conn: psycopg.Connection[Any], where: str, *, clock: Clock) -> None:
        self._conn = conn
        self.where = where
        self._clock = clock
        self._lock = threading.RLock()
        self._closed = False
        self._projectors: list[InlineProjector] = []

    # -- opening and closing -------------------------------------------------

    @classmethod
    def open(cls, dsn: str, *, clock: Clock | None = None, connect_timeout: int = 10) -> Self:
        """Connect to the database named by ``dsn`` (a libpq connection string or
        URI), apply the migrations it lacks, and return the log. LedgerError with
        a hint when the server cannot be reached or the database cannot hold a
        ledger (not UTF-8, newer schema, migrations the role may not apply)."""
        where = describe_dsn(dsn)
        try:
            conn = psycopg.connect(
                dsn, autocommit=True, connect_timeout=connect_timeout, client_encoding="utf8"
            )
        except psycopg.Error as exc:
            raise LedgerError(
                f"cannot connect to PostgreSQL at {where}: {str(exc).strip()}",
                hint="check the connection string (host, port, dbname, user) and that"
                " the server is running",
            ) from None
        try:
            encoding = conn.execute(SQL_ENCODING).fetchone()
            if encoding is None or encoding[0].upper() not in ("UTF8", "UTF-8"):
                raise LedgerError(
                    f"the database at {where} is not UTF-8 ({encoding and encoding[0]})",
                    hint="create it with ENCODING 'UTF8'",
                )
            migrate(conn)
            conn.execute(SQL_SEARCH_PATH)
        except BaseException:
            conn.close()
            raise
        return cls(conn, where, clock=clock or system_clock)

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._conn.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def connection(self) -> psycopg.Connection[Any]:
        """The underlying psycopg connection (autocommit; search_path = the log's schema)."""
        return self._conn

    def add_inline_projector(self, projector: InlineProjector) -> None:
        """Run ``projector(conn, records)`` inside every later append's transaction."""
        self._projectors.append(projector)

    def _check_open(self) -> None:
        if self._closed:
            raise LedgerError(f"{self.where}: the log is closed")

    # -- appending -----------------------------------------------------------

    def append(
        self,
        stream: str,
        events: Iterable[EventModel | Mapping[str, Any]],
        expected_version: ExpectedVersion = ANY,
        *,
        meta: Mapping[str, Any] | None = None,
    ) -> AppendResult:
        """Append ``events`` to ``stream`` in one transaction (all or nothing), as
        ``Ledger.append`` does: ``expected_version`` is ANY, NO_STREAM,
        STREAM_EXISTS or the stream's exact version (else ConcurrencyError, nothing
        written); a retried append (every event_id already in the log with the same
        content) returns the original positions with ``duplicate=True``."""
        prepared = prepare_append(stream, events, expected_version, meta)
        with self._lock:
            self._check_open()
            try:
                return self._append(prepared)
            except pg_errors.UniqueViolation as exc:
                constraint = exc.diag.constraint_name
                if constraint == "events_event_id_key":
                    return self._retried(prepared)
                if constraint == "events_one_end_per_session":
                    ended = [e[2] for e in prepared.events if e[1] == "session_ended"]
                    raise SessionAlreadyEndedError(ended[0] if ended else None) from None
                self._translate(exc)
            except psycopg.Error as exc:
                self._translate(exc)

    def _append(self, prepared: Prepared) -> AppendResult:
        conn = self._conn
        with conn.transaction():
            state = conn.execute(SQL_APPEND_STATE, (prepared.stream,)).fetchone()
            assert state is not None  # the function always returns one row
            current, position, previous = state
            if not check_expected(prepared.expected, current):
                original = self._original_result(prepared)
                if original is not None:
                    return original
                raise ConcurrencyError(prepared.stream, prepared.expected, current)
            rows = chain_rows(prepared, current, position, previous, format_utc(self._clock()))
            if len(rows) == 1:
                conn.execute(SQL_INSERT, rows[0])
            else:
                with conn.cursor() as cur:
                    cur.executemany(SQL_INSERT, rows)
            if self._projectors:
                records = [Recorded(*row) for row in rows]
                for projector in self._projectors:
                    projector(conn, records)
        return AppendResult(tuple(r[0] for r in rows), rows[-1][3])

    def _retried(self, prepared: Prepared) -> AppendResult:
        """After an insert hit a known event_id (the append was rolled back): the
        earlier append's result if this is its retry, else IdempotencyError."""
        original = self._original_result(prepared)
        if original is None:
            raise IdempotencyError(
                "some event_ids of this append are already in the log, others are not",
                hint="resend an earlier append unchanged, or give new events new ids",
            )
        return original

    def _original_result(self, prepared: Prepared) -> AppendResult | None:
        """The result of the earlier append of these exact events, if there was one."""
        found: list[tuple[str, int, int]] = []
        for event_id, event_type, _sid, data, _meta in prepared.events:
            row = self._conn.execute(SQL_BY_EVENT_ID, (event_id,)).fetchone()
            if row is None:
                if found:
                    raise IdempotencyError(
                        f"event_id {found[0][0]!r} is already in the log but {event_id!r} is not: "
                        "this is not a retry of an earlier append",
                        hint="give new events new event_ids",
                    )
                return None
            position, row_stream, version, row_type, row_data = row
            if row_stream != prepared.stream or row_type != event_type or row_data != data:
                raise IdempotencyError(
                    f"event_id {event_id!r} is already recorded at position {position} "
                    f"({row_type} in stream {row_stream!r}) with different content",
                    hint="give each new event its own event_id",
                )
            found.append((event_id, position, version))
        return AppendResult(tuple(p for _, p, _ in found), max(v for _, _, v in found), True)

    def _translate(self, exc: psycopg.Error) -> NoReturn:
        """Re-raise a driver error as the matching LedgerError."""
        message = exc.diag.message_primary or str(exc).strip()
        if "append-only" in message:
            raise ImmutableLogError(message) from exc
        if isinstance(exc, pg_errors.IntegrityError | pg_errors.DataError):
            raise EventValidationError(f"the log refused an event: {message}") from exc
        if isinstance(exc, pg_errors.InsufficientPrivilege):
            raise LedgerError(
                f"{self.where}: {message}",
                hint="connect as the database owner or a member of hermes_ledger_writer",
            ) from exc
        raise LedgerError(f"{self.where}: {message}") from exc

    # -- reading -------------------------------------------------------------

    def _rows(self, sql: str, args: tuple[Any, ...]) -> list[Any]:
        with self._lock:
            self._check_open()
            try:
                return self._conn.execute(sql, args).fetchall()
            except psycopg.Error as exc:
                self._translate(exc)

    def _pages(
        self, sql: str, prefix: tuple[Any, ...], start: int, limit: int | None, key: int
    ) -> Iterator[Recorded]:
        """Keyset pagination (bound as ``*prefix, after, size``): constant memory, no
        transaction held between pages. ``key`` is the index of the ordering column."""
        remaining = limit
        after = start
        while remaining is None or remaining > 0:
            size = _PAGE if remaining is None else min(_PAGE, remaining)
            rows = self._rows(sql, (*prefix, after, size))
            for row in rows:
                yield Recorded(*row)
            if len(rows) < size:
                return
            after = rows[-1][key]
            if remaining is not None:
                remaining -= len(rows)

    def read_all(
        self, after: int = 0, *, types: Iterable[str] | None = None, limit: int | None = None
    ) -> Iterator[Recorded]:
        """Events after position ``after``, in position order, optionally only ``types``."""
        if types is None:
            return self._pages(SQL_PAGE_ALL, (), after, limit, key=0)
        wanted = sorted(set(types))
        if not wanted:
            return iter(())
        return self._pages(SQL_PAGE_TYPES, (wanted,), after, limit, key=0)

    def read_stream(self, stream: str, *, after_version: int = 0) -> Iterator[Recorded]:
        """The events of one stream in version order, after ``after_version``."""
        return self._pages(SQL_PAGE_STREAM, (stream,), after_version, None, key=3)

    def stream_version(self, stream: str) -> int:
        """The stream's current version (0 if it has no events)."""
        return int(self._rows(SQL_STREAM_VERSION, (stream,))[0][0])

    def head(self) -> int:
        """The position of the last event (0 for an empty log)."""
        return int(self._rows(SQL_HEAD_POSITION, ())[0][0])

    def head_row(self) -> tuple[int, str]:
        """(position, hash) of the last event, (0, GENESIS) for an empty log: what an
        anchor pins."""
        rows = self._rows(SQL_HEAD_ROW, ())
        return (rows[0][0], rows[0][1]) if rows else (0, GENESIS)

    def hash_at(self, position: int) -> str | None:
        """The hash stored at ``position`` (None if there is no such row): what an
        anchor is checked against."""
        rows = self._rows(SQL_HASH_AT, (position,))
        return rows[0][0] if rows else None

    # -- verifying -----------------------------------------------------------

    def verify(
        self,
        progress: Callable[[int, int], None] | None = None,
        *,
        after: tuple[int, str] = (0, GENESIS),
    ) -> VerifyReport:
        """Walk the log as ``Ledger.verify`` does: gap-free positions, versions 1..n
        per stream, and every row's hash; ``after`` = (position, hash) of a trusted
        row (an anchor) walks only the rows after it."""
        head = self.head()
        rows = self._pages(SQL_PAGE_ALL, (), after[0], None, key=0)
        return walk_chain(rows, head, after=after, progress=progress)
