"""The event store in one SQLite file: append to streams, read them back, verify the chain.

``Ledger`` is the SQLite backend of ``backend.EventLog`` (whose docstrings say what
the log operations do); the SQL it runs is below, one named statement per purpose,
always with bindings.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, Self, cast

import apsw

from hermes_ledger.ledger.appending import check_name, prepare_append, prepare_models
from hermes_ledger.ledger.backend import is_dsn, open_log
from hermes_ledger.ledger.chain import GENESIS, row_hash, walk_chain
from hermes_ledger.ledger.clock import Clock, format_utc, system_clock
from hermes_ledger.ledger.erasure import ErasureReport, ErasureScope, Scrubber
from hermes_ledger.ledger.errors import (
    ConcurrencyError,
    IdempotencyError,
    LedgerError,
    LedgerTooOldError,
    NoLedgerError,
    SessionAlreadyEndedError,
    translate,
)
from hermes_ledger.ledger.events import EventModel
from hermes_ledger.ledger.file_check import check_file
from hermes_ledger.ledger.personal import merged_sql, original_result
from hermes_ledger.ledger.records import AppendResult, FileReport, Recorded, VerifyReport
from hermes_ledger.ledger.schema import (
    CACHE_KIB,
    Migration,
    connect,
    load_migrations,
    migrate,
    retry_busy,
)
from hermes_ledger.ledger.sql import SQL_HEAD_POSITION, scalar
from hermes_ledger.ledger.versions import ANY, ExpectedVersion, check_expected

SQL_HEAD_ROW = "SELECT position, hash FROM events ORDER BY position DESC LIMIT 1"
SQL_HASH_AT = "SELECT hash FROM events WHERE position = ?"

__all__ = ["InlineProjector", "Ledger", "check_name"]

_COLUMNS = "position, event_id, stream, version, type, session_id, data, meta, recorded_at, hash"

SQL_STREAM_VERSION = "SELECT max(version) FROM events WHERE stream = ?"
# What an append needs under the write lock, in one statement: the stream's version
# and the log's last position and hash (NULLs for an empty log).
SQL_APPEND_STATE = (
    "SELECT v.version, h.position, h.hash"
    " FROM (SELECT max(version) AS version FROM events WHERE stream = ?) AS v"
    " LEFT JOIN (SELECT position, hash FROM events ORDER BY position DESC LIMIT 1) AS h"
)
SQL_INSERT = (
    "INSERT INTO events (position, event_id, stream, version, type, session_id, data, meta,"
    " recorded_at, hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
# OR REPLACE: a row at a new position is left over from a truncation (anchors find those).
SQL_INSERT_PAYLOAD = "INSERT OR REPLACE INTO payloads (position, salt, body) VALUES (?, ?, ?)"
SQL_HAS_PAYLOADS = "SELECT count(*) FROM sqlite_schema WHERE type = 'table' AND name = 'payloads'"
SQL_BY_EVENT_ID = (
    "SELECT e.position, e.stream, e.version, e.type, e.data, p.body IS NULL,"
    f" {merged_sql('e.data', 'p.body')} FROM events AS e"
    " LEFT JOIN payloads AS p ON p.position = e.position WHERE e.event_id = ?"
)
SQL_PAGE_ALL = f"SELECT {_COLUMNS} FROM events WHERE position > ? ORDER BY position LIMIT ?"
# What readers get: each event whole, its payload merged in ("[erased]" once erased).
_BODIES = (
    "SELECT e.position, e.event_id, e.stream, e.version, e.type, e.session_id, "
    + merged_sql("e.data", "p.body")
    + ", e.meta, e.recorded_at, e.hash FROM events AS e"
    " LEFT JOIN payloads AS p ON p.position = e.position WHERE "
)
_PAYLOAD_JOIN = "LEFT JOIN payloads AS p ON p.position = e.position"
_NO_PAYLOADS = "LEFT JOIN (SELECT NULL AS position, NULL AS body) AS p ON false"
SQL_BODIES_ALL = _BODIES + "e.position > ? ORDER BY e.position LIMIT ?"
SQL_BODIES_TYPES = _BODIES + "e.type IN ({marks}) AND e.position > ? ORDER BY e.position LIMIT ?"
SQL_BODIES_STREAM = _BODIES + "e.stream = ? AND e.version > ? ORDER BY e.version LIMIT ?"


_PAGE = 512
_MAX_CACHED_STREAMS = 50_000


class InlineProjector(Protocol):
    """Runs inside the append transaction, after the rows are inserted.

    It writes its read-model rows (and its checkpoint) through ``conn``; raising
    rolls the whole append back. Public: it is what ``Ledger.add_inline_projector``
    takes, so any read model can implement it (``hermes_ledger.projections`` does).
    """

    def __call__(self, conn: apsw.Connection, records: Sequence[Recorded]) -> None: ...


def _not_utf8() -> LedgerError:
    """Text SQLite cannot store: a str with lone surrogates (a non-UTF-8 command-line
    argument or file name, as Python decodes one)."""
    return LedgerError(
        "a value is not valid UTF-8 text (a non-UTF-8 argument?)",
        hint="pass keys, ids and names as UTF-8 text",
    )


class Ledger:
    """An append-only event log in one SQLite file: the SQLite ``backend.EventLog``.

    Open with ``Ledger.open(path)`` (creates and migrates the file if needed) and
    use it as a context manager. One ``Ledger`` may be shared by threads; several
    processes may open the same file.
    """

    def __init__(
        self,
        conn: apsw.Connection,
        path: Path,
        *,
        clock: Clock,
        readonly: bool,
        busy_timeout: float,
    ) -> None:
        self._conn = conn
        self.path = path
        self.readonly = readonly
        self._clock = clock
        self._busy_timeout = busy_timeout
        self._lock = threading.RLock()
        self._projectors: list[InlineProjector] = []
        self._scrubbers: list[Scrubber] = []
        self._forgettable = True
        self._closed = False
        # What the last append of this connection left behind (head position and
        # hash, stream versions), valid while SQLite's data_version says nobody
        # has written since; it saves the state queries on the hot path.
        self._seen_version: int | None = None
        self._head: tuple[int, str] = (0, GENESIS)
        self._versions: dict[str, int] = {}
        self._pending: tuple[str, int, int, str] | None = None

    # -- opening and closing -------------------------------------------------

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        *,
        synchronous: str = "NORMAL",
        busy_timeout: float = 30.0,
        clock: Clock | None = None,
        readonly: bool = False,
        cache_kib: int = CACHE_KIB,
        migrations: Sequence[Migration] | None = None,
    ) -> Self:
        """Open (creating and migrating if needed) the ledger at ``path``.

        A ``postgresql://`` URI opens a ``PostgresLog`` (``backend.open_log``, which
        code that may get either backend calls): use only ``EventLog`` on it.

        Refuses, without changing the file, anything that is not a ledger, and a
        ledger written by a newer version. ``synchronous`` is SQLite's durability
        setting (NORMAL by default: durable across process crashes; FULL also
        across power loss). ``clock`` stamps ``recorded_at``. ``cache_kib`` caps
        SQLite's page cache for this connection. ``migrations`` replace the shipped
        schema migrations (``schema.load_migrations()``), as a test of an upgrade does.
        """
        if is_dsn(path):
            if readonly or migrations is not None:
                msg = "readonly and migrations are options of a SQLite ledger"
                raise LedgerError(msg, hint="open the PostgreSQL ledger without them")
            return cast(Self, open_log(path, clock=clock))
        path = Path(path)
        if migrations is None:
            migrations = load_migrations()
        conn, version = connect(
            path,
            synchronous=synchronous,
            busy_timeout=busy_timeout,
            readonly=readonly,
            cache_kib=cache_kib,
            migrations=migrations,
        )
        try:
            if readonly:
                if version == 0:
                    raise NoLedgerError(path, " (the file holds no ledger yet)")
                if version < len(migrations):
                    raise LedgerTooOldError(
                        f"{path} uses an older schema (v{version}) and is opened read-only",
                        version=version,
                    )
            else:
                migrate(conn, path, migrations)
        except BaseException:
            conn.close()
            raise
        led = cls(
            conn, path, clock=clock or system_clock, readonly=readonly, busy_timeout=busy_timeout
        )
        # A schema before migration 4 (a test's, or a read of an old file) has no
        # payloads: events are stored and read whole.
        led._forgettable = bool(scalar(conn, SQL_HAS_PAYLOADS))
        return led

    @classmethod
    def open_existing(cls, path: str | os.PathLike[str], **options: Any) -> Self:
        """``open`` a ledger that must already exist (``open`` would create one):
        NoLedgerError if there is no file at ``path``. A DSN is just ``open``ed."""
        if is_dsn(path):
            return cls.open(path, **options)
        target = Path(path)
        if not target.exists():
            raise NoLedgerError(path)
        if target.is_file() and target.stat().st_size == 0:
            raise NoLedgerError(path, " (the file is empty)")
        return cls.open(path, **options)

    def close(self) -> None:
        """See ``EventLog.close``."""
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
    def connection(self) -> apsw.Connection:
        """The underlying apsw connection (for projections and read-only SQL)."""
        return self._conn

    def add_inline_projector(self, projector: InlineProjector) -> None:
        """Run ``projector`` inside every later append's transaction."""
        self._projectors.append(projector)

    # -- transactions --------------------------------------------------------

    def _begin(self) -> None:
        """BEGIN IMMEDIATE, retrying a busy lock (with jitter) until the busy timeout."""
        retry_busy(lambda: self._conn.execute("BEGIN IMMEDIATE"), self._busy_timeout, self.path)

    def write(self, work: Callable[[apsw.Connection], Any]) -> Any:
        """Run ``work(conn)`` in one ``BEGIN IMMEDIATE`` transaction; commit or roll back."""
        if self.readonly:
            raise LedgerError(f"{self.path} is open read-only")
        with self._lock:
            self._check_open()
            self._begin()
            self._pending = None
            try:
                try:
                    result = work(self._conn)
                except UnicodeEncodeError:
                    raise _not_utf8() from None
                self._conn.execute("COMMIT")
            except BaseException:
                self._seen_version = None
                if not self._conn.getautocommit():
                    self._conn.execute("ROLLBACK")
                raise
            self._remember_commit()
            return result

    def _remember_commit(self) -> None:
        """After a commit: keep the append's head and stream version, or forget all."""
        if self._pending is None:
            self._seen_version = None
            return
        stream, version, position, digest = self._pending
        self._pending = None
        if len(self._versions) >= _MAX_CACHED_STREAMS:
            self._versions.clear()
        self._versions[stream] = version
        self._head = (position, digest)
        self._seen_version = self._conn.data_version()

    def _append_state(self, conn: apsw.Connection, stream: str) -> tuple[int, int, str]:
        """(stream version, head position, head hash), read under the write lock."""
        if conn.data_version() == self._seen_version:
            position, digest = self._head
            current = self._versions.get(stream)
            if current is None:
                current = scalar(conn, SQL_STREAM_VERSION, (stream,)) or 0
            return current, position, digest
        self._versions.clear()
        state: Any = conn.execute(SQL_APPEND_STATE, (stream,)).fetchone()
        current, position, digest = state
        if position is None:
            return current or 0, 0, GENESIS
        return current or 0, position, digest

    def _check_open(self) -> None:
        if self._closed:
            raise LedgerError(f"{self.path}: the ledger is closed")

    # -- appending -----------------------------------------------------------

    def append(
        self,
        stream: str,
        events: Iterable[EventModel | Mapping[str, Any]],
        expected_version: ExpectedVersion = ANY,
        *,
        meta: Mapping[str, Any] | None = None,
    ) -> AppendResult:
        """See ``EventLog.append``."""
        checked = prepare_append(
            stream, events, expected_version, meta, forgettable=self._forgettable
        )
        prepared, expected = checked.events, checked.expected

        def work(conn: apsw.Connection) -> AppendResult:
            return self._append_in(conn, stream, prepared, expected)

        try:
            return self.write(work)  # type: ignore[no-any-return]
        except _Duplicate:
            # Some event_id is already in the log: the append was rolled back.
            # If it is a retry of an earlier append, answer with that append's result.
            with self._lock:
                original = self._original_result(self._conn, stream, prepared)
            if original is None:
                raise IdempotencyError(
                    "some event_ids of this append are already in the log, others are not",
                    hint="resend an earlier append unchanged, or give new events new ids",
                ) from None
            return original
        except apsw.Error as exc:
            translate(exc, path=str(self.path), stream=stream)

    def _prepare(
        self, models: Sequence[EventModel], extra_json: str = "{}"
    ) -> list[tuple[Any, ...]]:
        """Per event: (event_id, type, session_id, data, meta, whole body, payload)."""
        return prepare_models(models, extra_json, self._forgettable)

    def _append_in(
        self,
        conn: apsw.Connection,
        stream: str,
        prepared: Sequence[tuple[Any, ...]],
        expected: ExpectedVersion = ANY,
    ) -> AppendResult:
        """The append itself, inside the caller's write transaction."""
        current, position, previous = self._append_state(conn, stream)
        if not check_expected(expected, current):
            original = self._original_result(conn, stream, prepared)
            if original is not None:
                return original
            raise ConcurrencyError(stream, expected, current)
        recorded_at = format_utc(self._clock())
        rows = []
        payloads = []
        full_rows = []
        version = current
        for event_id, event_type, session_id, data, meta_json, full, payload in prepared:
            position += 1
            version += 1
            previous = row_hash(
                previous, position, event_id, stream, version, event_type,
                session_id, data, meta_json, recorded_at,
            )  # fmt: skip
            row = (position, event_id, stream, version, event_type, session_id, data,
                   meta_json, recorded_at, previous)  # fmt: skip
            rows.append(row)
            if payload is not None:
                payloads.append((position, *payload))
            if self._projectors:
                full_rows.append(row if payload is None else (*row[:6], full, *row[7:]))
        try:
            if len(rows) == 1:
                conn.execute(SQL_INSERT, rows[0])
            else:
                conn.executemany(SQL_INSERT, rows)
        except apsw.ConstraintError as exc:
            if "events.event_id" in str(exc):
                raise _Duplicate from exc
            if "events.session_id" in str(exc):
                ended = [p[2] for p in prepared if p[1] == "session_ended"]
                raise SessionAlreadyEndedError(ended[0] if ended else None) from exc
            translate(exc, path=str(self.path), stream=stream)
        if len(payloads) == 1:
            conn.execute(SQL_INSERT_PAYLOAD, payloads[0])
        elif payloads:
            conn.executemany(SQL_INSERT_PAYLOAD, payloads)
        if self._projectors:
            # The projections see each event whole (its payload merged in).
            records = [Recorded(*row) for row in full_rows]
            for projector in self._projectors:
                projector(conn, records)
        self._pending = (stream, version, position, previous)
        return AppendResult(tuple(r[0] for r in rows), version)

    def _original_result(
        self, conn: apsw.Connection, stream: str, prepared: Sequence[tuple[Any, ...]]
    ) -> AppendResult | None:
        """The result of the earlier append of these exact events, if there was one."""
        return original_result(conn, self._bodies(SQL_BY_EVENT_ID), stream, prepared)

    # -- reading -------------------------------------------------------------

    def _pages(
        self, sql: str, prefix: tuple[Any, ...], start: int, limit: int | None, key: int
    ) -> Iterator[Recorded]:
        """Keyset pagination over ``sql`` (bound as ``*prefix, after, size``): constant
        memory, and no read transaction held between pages. ``key`` is the index of
        the column the pages are ordered by."""
        remaining = limit
        after = start
        while remaining is None or remaining > 0:
            size = _PAGE if remaining is None else min(_PAGE, remaining)
            with self._lock:
                self._check_open()
                try:
                    rows: list[Any] = self._conn.execute(sql, (*prefix, after, size)).fetchall()
                except apsw.Error as exc:
                    translate(exc, path=str(self.path))
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
        """See ``EventLog.read_all``."""
        if types is None:
            return self._pages(self._bodies(SQL_BODIES_ALL), (), after, limit, key=0)
        wanted = tuple(sorted(set(types)))
        if not wanted:
            return iter(())
        sql = self._bodies(SQL_BODIES_TYPES.format(marks=", ".join("?" for _ in wanted)))
        return self._pages(sql, wanted, after, limit, key=0)

    def read_stream(self, stream: str, *, after_version: int = 0) -> Iterator[Recorded]:
        """See ``EventLog.read_stream``."""
        return self._pages(self._bodies(SQL_BODIES_STREAM), (stream,), after_version, None, key=3)

    def _bodies(self, sql: str) -> str:
        """``sql`` (one of SQL_BODIES_*), or its form for a schema without payloads."""
        return sql if self._forgettable else sql.replace(_PAYLOAD_JOIN, _NO_PAYLOADS)

    def stream_version(self, stream: str) -> int:
        """See ``EventLog.stream_version``."""
        with self._lock:
            self._check_open()
            return scalar(self._conn, SQL_STREAM_VERSION, (stream,)) or 0

    def query(self, sql: str, args: tuple[Any, ...] | Mapping[str, Any] = ()) -> list[Any]:
        """Run one read statement (with bindings) and return all its rows.

        For read models over the ledger file (projections, audits); it holds the
        ledger's lock only while the statement runs.
        """
        with self._lock:
            self._check_open()
            try:
                return self._conn.execute(sql, args).fetchall()
            except apsw.Error as exc:
                translate(exc, path=str(self.path))
            except UnicodeEncodeError:
                raise _not_utf8() from None

    def head(self) -> int:
        """See ``EventLog.head``."""
        with self._lock:
            self._check_open()
            try:
                return int(scalar(self._conn, SQL_HEAD_POSITION))
            except apsw.Error as exc:
                translate(exc, path=str(self.path))

    def head_row(self) -> tuple[int, str]:
        """See ``EventLog.head_row``."""
        rows = self.query(SQL_HEAD_ROW)
        return (int(rows[0][0]), str(rows[0][1])) if rows else (0, GENESIS)

    def hash_at(self, position: int) -> str | None:
        """See ``EventLog.hash_at``."""
        rows = self.query(SQL_HASH_AT, (position,))
        return str(rows[0][0]) if rows else None

    @property
    def identity(self) -> str:
        """See ``EventLog.identity``: the resolved absolute path of the file."""
        return str(Path(self.path).expanduser().resolve())

    # -- verifying -----------------------------------------------------------

    def verify(
        self,
        progress: Callable[[int, int], None] | None = None,
        *,
        after: tuple[int, str] = (0, GENESIS),
    ) -> VerifyReport:
        """See ``EventLog.verify``."""
        head = self.head()
        rows = self._pages(SQL_PAGE_ALL, (), after[0], None, key=0)
        report = walk_chain(rows, head, after, progress)
        if not report.ok or not self._forgettable:
            return report
        from hermes_ledger.ledger.erasure import check_payloads

        with self._lock:
            bad = check_payloads(self._conn, report.head)
        if bad is not None:
            return VerifyReport(False, report.checked, head, *bad)
        return report

    # -- erasing -------------------------------------------------------------

    def add_scrubber(self, scrubber: Scrubber) -> None:
        """Run ``scrubber`` inside every later erasure's transaction (``ledger.erasure``)."""
        self._scrubbers.append(scrubber)

    def erase(
        self, scope: ErasureScope, *, requested_by: str, dry_run: bool = True
    ) -> ErasureReport:
        """Forget the personal content of ``scope`` (``ledger.erasure.ErasureScope``).

        ``dry_run`` (the default) only counts what would be forgotten. Otherwise, in
        one write transaction: appends ``subject_erased`` (scope, ``requested_by``,
        when; no content), deletes the scope's payloads under ``secure_delete`` and
        runs the scrubbers (attached projections rewrite their rows and full-text
        index to "[erased]"); then checkpoints the WAL. Reads show "[erased]" after,
        ``verify`` passes, and a re-run is harmless (it finishes an interrupted one).
        Returns an ``ErasureReport`` (counts, sessions, the event's position)."""
        from hermes_ledger.ledger.erasure import erase

        return erase(
            self, scope, requested_by=requested_by, dry_run=dry_run,
            scrubbers=tuple(self._scrubbers),
        )  # fmt: skip

    def check_file(self, *, quick: bool | None = None) -> FileReport:
        """The file around the chain: triggers, indexes and pages (see
        ``ledger.file_check.check_file``)."""
        with self._lock:
            self._check_open()
            return check_file(self._conn, self.path, quick=quick)


class _Duplicate(Exception):
    """Internal: an insert hit the UNIQUE event_id index (the append was rolled back)."""
