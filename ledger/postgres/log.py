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

from hermes_ledger.ledger.appending import (
    PayloadRow,
    Prepared,
    Row,
    chain_rows,
    prepare_append,
    row_checks,
)
from hermes_ledger.ledger.chain import GENESIS, walk_chain
from hermes_ledger.ledger.clock import Clock, format_utc, system_clock
from hermes_ledger.ledger.erasure import (
    ERASURE_STREAM,
    ErasureReport,
    ErasureScope,
    check_requested_by,
    erasure_event,
)
from hermes_ledger.ledger.errors import (
    ConcurrencyError,
    EventValidationError,
    IdempotencyError,
    ImmutableLogError,
    LedgerError,
    SessionAlreadyEndedError,
)
from hermes_ledger.ledger.events import EventModel
from hermes_ledger.ledger.personal import original_result
from hermes_ledger.ledger.postgres.payloads import (
    ERASER_ROLE,
    Scrubber,
    check_payloads,
    count_erasing,
    delete_payloads,
    fill_erasing,
    vacuum,
)
from hermes_ledger.ledger.postgres.schema import SCHEMA, migrate
from hermes_ledger.ledger.records import AppendResult, Recorded, VerifyReport
from hermes_ledger.ledger.versions import ANY, ExpectedVersion, check_expected

__all__ = ["InlineProjector", "PostgresLog", "connect", "describe_dsn"]

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
SQL_INSERT_WITH_PAYLOAD = (
    "WITH payload AS (INSERT INTO payloads (position, salt, body) VALUES (%s, %s, %s)) "
    + SQL_INSERT
)
SQL_COPY_EVENTS = f"COPY events ({_COLUMNS}) FROM STDIN"
SQL_COPY_PAYLOADS = "COPY payloads (position, salt, body) FROM STDIN"
SQL_BY_EVENT_ID = (
    "SELECT e.position, e.stream, e.version, e.type, e.data, p.body IS NULL,"
    " hl_merged(e.data, p.body) FROM events AS e"
    " LEFT JOIN payloads AS p ON p.position = e.position WHERE e.event_id = %s"
)
# The log as stored (verify walks it); readers get event_bodies: each event whole,
# its payload merged in ("[erased]" once erased), as on SQLite.
SQL_PAGE_ALL = f"SELECT {_COLUMNS} FROM events WHERE position > %s ORDER BY position LIMIT %s"
SQL_BODIES_ALL = (
    f"SELECT {_COLUMNS} FROM event_bodies WHERE position > %s ORDER BY position LIMIT %s"
)
SQL_BODIES_TYPES = (
    f"SELECT {_COLUMNS} FROM event_bodies WHERE type = ANY(%s) AND position > %s"
    " ORDER BY position LIMIT %s"
)
SQL_BODIES_STREAM = (
    f"SELECT {_COLUMNS} FROM event_bodies WHERE stream = %s AND version > %s"
    " ORDER BY version LIMIT %s"
)
# The top of the (stream, version) index, never max(version): a prepared statement's
# generic plan of max() can read the whole stream (migration 5 says why).
SQL_STREAM_VERSION = (
    "SELECT coalesce((SELECT version FROM events WHERE stream = %s"
    " ORDER BY version DESC LIMIT 1), 0)"
)
SQL_HEAD_POSITION = "SELECT coalesce(max(position), 0) FROM events"
SQL_HEAD_ROW = "SELECT position, hash FROM events ORDER BY position DESC LIMIT 1"
SQL_HASH_AT = "SELECT hash FROM events WHERE position = %s"

_PAGE = 512


def _insert_rows(
    conn: psycopg.Connection[Any], rows: Sequence[Row], payloads: Sequence[PayloadRow]
) -> None:
    """An append's rows and payload rows, inside its transaction: one prepared
    statement for a single event (its payload row inserted by the same statement:
    one round trip, about a tenth of a one-event append), COPY for more (one
    statement per table whatever the count: about a third of executemany's time at
    1,000 rows)."""
    if len(rows) == 1:
        if payloads:
            conn.execute(SQL_INSERT_WITH_PAYLOAD, (*payloads[0], *rows[0]))
        else:
            conn.execute(SQL_INSERT, rows[0])
        return
    _copy_rows(conn, SQL_COPY_EVENTS, rows)
    _copy_rows(conn, SQL_COPY_PAYLOADS, payloads)


def _copy_rows(conn: psycopg.Connection[Any], statement: str, rows: Sequence[Any]) -> None:
    if rows:
        with conn.cursor() as cur, cur.copy(statement) as copy:
            for row in rows:
                copy.write_row(row)


KEEPALIVES = {"keepalives": "1", "keepalives_idle": "30", "keepalives_interval": "10",
              "keepalives_count": "3"}  # fmt: skip
"""TCP keepalives for every connection of the ledger (what ``dsn`` sets wins): a
server or network that goes silent is noticed in about a minute (the connection
fails, and ``run`` reconnects) instead of a pass hanging until the kernel gives up."""


def connect(dsn: str, *, connect_timeout: int = 10) -> psycopg.Connection[Any]:
    """An autocommit UTF-8 connection to ``dsn`` with ``KEEPALIVES``; LedgerError
    with a hint (and never the password) when the server cannot be reached or
    refuses it."""
    try:
        given = psycopg.conninfo.conninfo_to_dict(dsn)
        keepalives = {k: v for k, v in KEEPALIVES.items() if k not in given}
        return psycopg.connect(
            psycopg.conninfo.make_conninfo(dsn, **keepalives), autocommit=True,
            connect_timeout=connect_timeout, client_encoding="utf8",
        )  # fmt: skip
    except psycopg.Error as exc:
        raise LedgerError(
            f"cannot connect to PostgreSQL at {describe_dsn(dsn)}: {str(exc).strip()}",
            hint="check the connection string (host, port, dbname, user) and that"
            " the server is running",
        ) from None


def describe_dsn(dsn: str, *, user: bool = True) -> str:
    """``host:port/dbname as user`` of a connection string, never its password
    (``user=False``: ``host:port/dbname``, what names the log in anchors)."""
    try:
        info = psycopg.conninfo.conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "the PostgreSQL server (the connection string cannot be read)"
    host = info.get("host") or "localhost"
    port = info.get("port") or "5432"
    who = f" as {info['user']}" if user and info.get("user") else ""
    return f"{host}:{port}/{info.get('dbname') or '(default database)'}{who}"


class PostgresLog:
    """The append-only, hash-chained log in a PostgreSQL database: the PostgreSQL
    ``EventLog`` (``ledger.backend``, whose docstrings are the log operations'
    contract; ``open_log(dsn)`` or ``Ledger.open(dsn)`` open one too).

    Open with ``PostgresLog.open(dsn)`` (applies missing migrations when the role
    may) and use it as a context manager. One instance holds one connection and may
    be shared by threads (calls take turns); several processes and hosts may open
    the same database.
    """

    def __init__(
        self, conn: psycopg.Connection[Any], where: str, *, clock: Clock, identity: str = ""
    ) -> None:
        self._conn = conn
        self.where = where
        self._identity = identity or f"postgresql://{where}"
        self._clock = clock
        self._lock = threading.RLock()
        self._closed = False
        self._projectors: list[InlineProjector] = []
        self._scrubbers: list[Scrubber] = []

    # -- opening and closing -------------------------------------------------

    @classmethod
    def open(cls, dsn: str, *, clock: Clock | None = None, connect_timeout: int = 10) -> Self:
        """Connect to the database named by ``dsn`` (a libpq connection string or
        URI), apply the migrations it lacks, and return the log. LedgerError with
        a hint when the server cannot be reached or the database cannot hold a
        ledger (not UTF-8, newer schema, migrations the role may not apply)."""
        where = describe_dsn(dsn)
        conn = connect(dsn, connect_timeout=connect_timeout)
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
        identity = "postgresql://" + describe_dsn(dsn, user=False)
        return cls(conn, where, clock=clock or system_clock, identity=identity)

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
            at = format_utc(self._clock())
            rows, payloads = chain_rows(prepared, current, position, previous, at)
            _insert_rows(conn, rows, payloads)
            if self._projectors:
                # The projections see each event whole (its payload merged in).
                records = [
                    Recorded(*row[:6], event[5], *row[7:])
                    for row, event in zip(rows, prepared.events, strict=True)
                ]
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
        """The result of the earlier append of these exact events, if there was one
        (``personal.original_result``: the same stream, type and whole body, or the
        same rest once the content was erased)."""
        return original_result(self._conn, SQL_BY_EVENT_ID, prepared.stream, prepared.events)

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
            return self._pages(SQL_BODIES_ALL, (), after, limit, key=0)
        wanted = sorted(set(types))
        if not wanted:
            return iter(())
        return self._pages(SQL_BODIES_TYPES, (wanted,), after, limit, key=0)

    def read_stream(self, stream: str, *, after_version: int = 0) -> Iterator[Recorded]:
        """The events of one stream in version order, after ``after_version``."""
        return self._pages(SQL_BODIES_STREAM, (stream,), after_version, None, key=3)

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

    @property
    def identity(self) -> str:
        """See ``EventLog.identity``: ``postgresql://host:port/dbname``."""
        return self._identity

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
        row (an anchor) walks only the rows after it. Then, as on SQLite, every
        payload against the digest in its event's meta, and every missing payload
        against the recorded erasures (``ledger.postgres.payloads``)."""
        head = self.head()
        rows = self._pages(SQL_PAGE_ALL, (), after[0], None, key=0)
        report = walk_chain(rows, head, after=after, progress=progress)
        if not report.ok:
            return report
        with self._lock:
            self._check_open()
            try:
                bad = check_payloads(self._conn, report.head)
            except psycopg.Error as exc:
                self._translate(exc)
        if bad is not None:
            return VerifyReport(False, report.checked, head, *bad)
        return report

    # -- erasing -------------------------------------------------------------

    def add_scrubber(self, scrubber: Scrubber) -> None:
        """Run ``scrubber(conn)`` inside every later erasure's transaction (the
        PostgreSQL projections register theirs when attached)."""
        self._scrubbers.append(scrubber)

    def erase(
        self, scope: ErasureScope, *, requested_by: str, dry_run: bool = True
    ) -> ErasureReport:
        """Forget the personal content of ``scope``, as ``Ledger.erase`` does: a dry
        run (the default) only counts; otherwise one transaction under the append
        lock appends ``subject_erased`` (the SQLite ledger's event body), deletes the
        scope's payload rows and runs the scrubbers (attached projections rewrite
        their rows to "[erased]"); then VACUUMs those tables if the role may
        (``ErasureReport.vacuumed``). Needs a member of hermes_ledger_eraser; any
        other role is refused with nothing written. A re-run is harmless."""
        check_requested_by(requested_by)
        conn = self._conn
        tables = ["payloads"]
        with self._lock:
            self._check_open()
            try:
                with conn.transaction(force_rollback=dry_run):
                    if dry_run:
                        head = int(conn.execute(SQL_HEAD_POSITION).fetchone()[0])  # type: ignore[index]
                    else:
                        head = int(conn.execute(SQL_APPEND_STATE, (ERASURE_STREAM,)).fetchone()[1])  # type: ignore[index]
                    fill_erasing(conn, scope, head)
                    events, messages, sessions, payloads, held = count_erasing(conn)
                    if dry_run:
                        return ErasureReport(
                            scope, requested_by, True, events, messages, sessions, payloads,
                            held_in_log=held,
                        )  # fmt: skip
                    when = format_utc(self._clock())
                    event = erasure_event(scope, when, head, requested_by)
                    result = self._append(prepare_append(ERASURE_STREAM, [event], ANY, None))
                    delete_payloads(conn)
                    for scrub in self._scrubbers:
                        tables.extend(scrub(conn))
            except pg_errors.InsufficientPrivilege as exc:
                raise LedgerError(
                    f"{self.where}: this role may not erase"
                    f" ({exc.diag.message_primary or 'permission denied'}); nothing was written",
                    hint=f"connect as the database owner or a member of {ERASER_ROLE}",
                ) from None
            except psycopg.Error as exc:
                self._translate(exc)
            try:
                vacuumed = vacuum(conn, tables)
            except psycopg.Error:
                vacuumed = False
        return ErasureReport(
            scope, requested_by, False, events, messages, sessions, payloads,
            position=result.positions[0], recorded_at=when, held_in_log=held, vacuumed=vacuumed,
        )  # fmt: skip

    # -- copying -------------------------------------------------------------

    def insert_copied(self, rows: Sequence[Row], payloads: Sequence[PayloadRow]) -> tuple[int, str]:
        """Insert rows copied from another ledger as they are (``rows`` in position
        order, with their hashes; ``payloads`` for those positions) in one
        transaction, under the log's lock: the first must follow the log's head and
        each row's hash must be its content's chained from the row before, else
        LedgerError and nothing is written. Returns the new (head position, hash)."""
        if not rows:
            return self.head_row()
        with self._lock:
            self._check_open()
            conn = self._conn
            try:
                with conn.transaction():
                    state = conn.execute(SQL_APPEND_STATE, (rows[0][2],)).fetchone()
                    assert state is not None  # the function always returns one row
                    _version, position, previous = state
                    for row in rows:
                        if row[0] != position + 1:
                            raise LedgerError(
                                f"{self.where}: copied row {row[0]} does not follow the"
                                f" log's head (position {position})",
                                hint="copy the rows in position order, from the head on",
                            )
                        if not row_checks(row, previous):
                            raise LedgerError(
                                f"the row at position {row[0]} does not chain: its hash does"
                                " not match its content and the previous hash",
                                hint="verify the source ledger (`hermes-ledger verify`)",
                            )
                        position, previous = row[0], row[9]
                    _copy_rows(conn, SQL_COPY_EVENTS, rows)
                    _copy_rows(conn, SQL_COPY_PAYLOADS, payloads)
            except psycopg.Error as exc:
                self._translate(exc)
        return position, previous
