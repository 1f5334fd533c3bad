"""Reading a PostgreSQL log for the command line: what it holds (``status``), the
events an ``EventFilter`` chooses (``events``, and ``follow_events`` for ``events
--follow``), and the row source of an export (``postgres_rows``): ``ledger.export``'s
writers make every format from it, line for line the SQLite export's, so
``hermes-ledger import`` restores a JSONL export into a SQLite ledger.

Every statement reads ``event_bodies`` (each event whole, its payload merged in,
"[erased]" once erased) in one ``REPEATABLE READ`` snapshot; the conditions of a
filter are on ``events`` (the stored rows, indexed).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from functools import partial
from typing import IO, Any

import psycopg

from hermes_ledger.ledger.clock import Clock, system_clock
from hermes_ledger.ledger.errors import InvalidInputError, LedgerError
from hermes_ledger.ledger.export import ExportManifest, Progress, export_rows
from hermes_ledger.ledger.export_rows import JsonlPage, Summary
from hermes_ledger.ledger.postgres.log import PostgresLog
from hermes_ledger.ledger.postgres.payloads import PG_DIALECT
from hermes_ledger.ledger.query import EventFilter
from hermes_ledger.ledger.query import follow as poll_follow
from hermes_ledger.ledger.records import Recorded

__all__ = [
    "PostgresRows",
    "PostgresStatus",
    "export",
    "follow_events",
    "list_events",
    "matching_events",
    "migrations_applied_here",
    "postgres_rows",
    "snapshot",
    "status",
]

Connection = psycopg.Connection[Any]

_COLUMNS = "position, event_id, stream, version, type, session_id, data, meta, recorded_at, hash"
_PAGE = 1000

SQL_SNAPSHOT = "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY"
SQL_STATUS = (
    "SELECT count(*), coalesce(max(position), 0), count(DISTINCT stream),"
    " min(recorded_at), max(recorded_at) FROM events"
)
SQL_HEAD_HASH = "SELECT hash FROM events ORDER BY position DESC LIMIT 1"
SQL_SCHEMA_VERSION = "SELECT coalesce(max(version), 0) FROM schema_migrations"
SQL_HAS_SESSION_MAP = "SELECT to_regclass('session_map') IS NOT NULL"
SQL_SESSIONS = "SELECT count(*) FROM session_map"
SQL_APPLIED_HERE = (
    "SELECT count(*) FROM schema_migrations WHERE applied_at >="
    " (SELECT backend_start FROM pg_stat_activity WHERE pid = pg_backend_pid())"
)
"""How many migrations this connection applied (``PostgresLog.open`` applies the
missing ones): all of them when it created the ledger."""
SQL_PAGE = (
    f"SELECT {_COLUMNS} FROM event_bodies WHERE position > %s{{where}} ORDER BY position LIMIT %s"
)
SQL_TAIL = (
    f"SELECT {_COLUMNS} FROM (SELECT {_COLUMNS} FROM event_bodies WHERE TRUE{{where}}"
    " ORDER BY position DESC LIMIT %s) AS newest ORDER BY position"
)
SQL_COUNT_AFTER = "SELECT count(*) FROM event_bodies WHERE position > %s{where}"
# The export (``PostgresRows``): the chosen positions from ``events``, each event
# whole from ``event_bodies``, with its payload's salt (a JSONL line names it).
SQL_EXPORT_PAGE = (
    "SELECT b.position, b.event_id, b.stream, b.version, b.type, b.session_id, b.data,"
    " b.meta, b.recorded_at, b.occurred_at, b.hash, encode(p.salt, 'hex')"
    " FROM event_bodies AS b LEFT JOIN payloads AS p ON p.position = b.position"
    " WHERE b.position IN (SELECT position FROM events WHERE position > %s{where}"
    " ORDER BY position LIMIT %s) ORDER BY b.position"
)
SQL_EXPORT_COUNT = "SELECT count(*) FROM events WHERE TRUE{where}"
SQL_EXPORT_SUMMARY = (
    "SELECT count(*), min(position), max(position),"
    " (SELECT hash FROM events WHERE TRUE{where} ORDER BY position DESC LIMIT 1)"
    " FROM events WHERE TRUE{where}"
)
SQL_EXPORT_BODIES = (
    f"SELECT {_COLUMNS} FROM event_bodies"
    " WHERE position IN (SELECT position FROM events WHERE TRUE{where}) ORDER BY position"
)
SQL_HASH_AT = "SELECT hash FROM events WHERE position = %s"
# As on SQLite (``export_rows.SQL_SESSION_START``): the stored body, without its payload.
SQL_SESSION_START = (
    "SELECT data, recorded_at FROM events WHERE type = 'session_started' AND session_id = %s"
    " ORDER BY position LIMIT 1"
)
# The events of one person: ``ledger.query.SQL_USER_EVENTS`` in PostgreSQL's SQL.
SQL_USER_EVENTS = (
    "(session_id IN (SELECT session_id FROM events WHERE type = 'session_started'"
    f" AND {PG_DIALECT.json_text(('source', 'user_id'))} = %s)"
    f" OR (type = 'message_appended' AND {PG_DIALECT.json_text(('user_id',))} = %s))"
)
_TIME_COLUMN = {False: "occurred_at", True: "recorded_at"}


@dataclass(frozen=True)
class PostgresStatus:
    """What ``hermes-ledger status`` says about a PostgreSQL ledger. ``where`` is
    ``host:port/dbname as user`` (never a password); ``sessions`` is None when the
    projections are not there."""

    backend: str
    where: str
    schema_version: int
    events: int
    head: int
    head_hash: str | None
    streams: int
    sessions: int | None
    first_recorded_at: str | None
    last_recorded_at: str | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@contextmanager
def snapshot(log: PostgresLog) -> Iterator[Connection]:
    """One read-only repeatable-read transaction on the log's connection."""
    conn = log.connection
    try:
        with conn.transaction():
            conn.execute(SQL_SNAPSHOT)
            yield conn
    except psycopg.Error as exc:
        raise LedgerError(
            f"cannot read the ledger at {log.where}: {str(exc).strip()}",
            hint="check the connection string and that this role may read the ledger",
        ) from None


def status(log: PostgresLog) -> PostgresStatus:
    """Counts, head and times of ``log``, in one snapshot."""
    with snapshot(log) as conn:
        row: Any = conn.execute(SQL_STATUS).fetchone()
        head_hash: Any = conn.execute(SQL_HEAD_HASH).fetchone()
        version: Any = conn.execute(SQL_SCHEMA_VERSION).fetchone()
        has_map: Any = conn.execute(SQL_HAS_SESSION_MAP).fetchone()
        sessions: Any = conn.execute(SQL_SESSIONS).fetchone() if has_map[0] else None
    return PostgresStatus(
        backend="postgresql",
        where=log.where,
        schema_version=int(version[0]),
        events=int(row[0]),
        head=int(row[1]),
        head_hash=head_hash[0] if head_hash else None,
        streams=int(row[2]),
        sessions=int(sessions[0]) if sessions is not None else None,
        first_recorded_at=row[3],
        last_recorded_at=row[4],
    )


def migrations_applied_here(log: PostgresLog) -> int:
    """How many schema migrations ``log``'s connection applied when it opened."""
    with snapshot(log) as conn:
        row: Any = conn.execute(SQL_APPLIED_HERE).fetchone()
    return int(row[0])


def _where(events: EventFilter) -> tuple[str, tuple[Any, ...]]:
    """``events`` as ``" AND …"`` conditions on ``events`` (or ``event_bodies``) and
    their bindings: ``EventFilter.where`` in PostgreSQL's SQL."""
    time_column = _TIME_COLUMN[events.recorded]
    conditions: list[tuple[str, tuple[Any, ...] | None]] = [
        ("stream = %s", _given(events.session_key)),
        ("session_id = %s", _given(events.session_id)),
        (SQL_USER_EVENTS, None if events.user is None else (events.user, events.user)),
        ("type = ANY(%s)", (list(events.types),) if events.types else None),
        (f"{time_column} >= %s", _given(events.since)),
        (f"{time_column} < %s", _given(events.until)),
        ("position >= %s", _given(events.from_position)),
        ("position <= %s", _given(events.to_position)),
    ]
    given = [(sql, values) for sql, values in conditions if values is not None]
    where = "".join(f" AND {sql}" for sql, _ in given)
    return where, tuple(value for _, values in given for value in values)


def _given(value: Any) -> tuple[Any, ...] | None:
    return None if value is None else (value,)


def matching_events(
    log: PostgresLog,
    events: EventFilter | None = None,
    *,
    limit: int | None = None,
    tail: int | None = None,
    on_more: Callable[[int], None] | None = None,
) -> Iterator[Recorded]:
    """The events ``events`` chooses, oldest first: the oldest ``limit`` (then
    ``on_more(count)`` with how many more match, when some do) or the newest
    ``tail``. One snapshot, read in pages."""
    if limit is not None and tail is not None:
        raise InvalidInputError("give a limit or a tail, not both")
    where, args = _where(events or EventFilter())
    with snapshot(log) as conn:
        if tail is not None:
            for row in conn.execute(SQL_TAIL.format(where=where), (*args, tail)):
                yield Recorded(*row)
            return
        after, remaining = 0, limit
        while remaining is None or remaining > 0:
            size = _PAGE if remaining is None else min(_PAGE, remaining)
            rows = conn.execute(SQL_PAGE.format(where=where), (after, *args, size)).fetchall()
            for row in rows:
                yield Recorded(*row)
            if len(rows) < size:
                return
            after = rows[-1][0]
            if remaining is not None:
                remaining -= len(rows)
        more: Any = conn.execute(SQL_COUNT_AFTER.format(where=where), (after, *args)).fetchone()
        if more[0] and on_more is not None:
            on_more(int(more[0]))


def follow_events(
    log: PostgresLog,
    events: EventFilter | None = None,
    *,
    after: int,
    poll_interval: float = 0.5,
    timeout: float | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> Iterator[Recorded]:
    """``ledger.query.follow_events`` on PostgreSQL: the matching events appended
    after position ``after`` (by any process or host), as they arrive. Appends
    commit in position order (docs/postgres.md), so reading up to the head seen
    misses nothing."""
    events = events or EventFilter()
    where, args = _where(events)
    sql = SQL_PAGE.format(where=where + " AND position <= %s")

    def read(seen: int, head: int) -> Iterator[Recorded]:
        while True:
            with snapshot(log) as conn:
                rows = conn.execute(sql, (seen, *args, head, _PAGE)).fetchall()
            for row in rows:
                yield Recorded(*row)
            if len(rows) < _PAGE:
                return
            seen = rows[-1][0]

    return poll_follow(
        log.head, read, after=after, to_position=events.to_position,
        poll_interval=poll_interval, timeout=timeout, sleep=sleep,
    )  # fmt: skip


def list_events(
    log: PostgresLog,
    events: EventFilter | None = None,
    *,
    limit: int | None = None,
    tail: int | None = None,
    follow: bool = False,
    poll_interval: float = 0.5,
    timeout: float | None = None,
    sleep: Callable[[float], None] = time.sleep,
    on_more: Callable[[int], None] | None = None,
) -> Iterator[Recorded]:
    """``ledger.query.list_events`` on PostgreSQL (what ``hermes-ledger events``
    prints): the matching events up to the head (the oldest ``limit`` or the newest
    ``tail``), then, if ``follow``, those appended afterwards, with no event missed
    or repeated in between."""
    events = events or EventFilter()
    head = log.head()
    to = head if events.to_position is None else min(events.to_position, head)
    if to >= 1 and tail != 0:
        yield from matching_events(
            log, replace(events, to_position=to), limit=limit, tail=tail, on_more=on_more
        )
    if follow:
        yield from follow_events(
            log, events, after=head, poll_interval=poll_interval, timeout=timeout, sleep=sleep
        )


def _embedded(name: str, text: str) -> str:
    """A ``data`` or ``meta`` text as the SQLite export embeds it: verbatim, or, when
    it holds a line break (which the ledger never writes), re-serialised on one line
    followed by its exact text as ``<name>_text``."""
    if "\n" not in text and "\r" not in text:
        return text
    compact = json.dumps(json.loads(text), ensure_ascii=False, separators=(",", ":"))
    return f'{compact},"{name}_text":{_quoted(text)}'


def _quoted(value: str | None) -> str:
    """``json.dumps(value, ensure_ascii=False)``, without its per-call set-up (the
    same C encoder: every line calls this six times)."""
    return "null" if value is None else _ENCODE_TEXT(value)


_ENCODE_TEXT: Callable[[str], str] = json.encoder.encode_basestring  # type: ignore[attr-defined]


def _line(row: tuple[Any, ...]) -> str:
    """One export line: the SQLite export's keys in its order (``ledger.export``)."""
    pos, event_id, stream, version, type_, session_id, data, meta, rec, occ, hash_, salt = row
    payload = f',"payload":{{"salt":"{salt}"}}' if salt is not None else ""
    return (
        f'{{"position":{pos},"event_id":{_quoted(event_id)},"stream":{_quoted(stream)},'
        f'"version":{version},"type":{_quoted(type_)},"session_id":{_quoted(session_id)},'
        f'"data":{_embedded("data", data)},"meta":{_embedded("meta", meta)},'
        f'"recorded_at":{_quoted(rec)},"occurred_at":{_quoted(occ)},"hash":{_quoted(hash_)}'
        f"{payload}}}\n"
    )


class PostgresRows:
    """``ledger.export_rows.ExportRows`` of a PostgreSQL log, inside the snapshot
    ``postgres_rows`` opened: the JSONL lines are made here, a page at a time."""

    def __init__(self, conn: Connection, events: EventFilter) -> None:
        self._conn = conn
        self._where, self._args = _where(events)

    def summary(self) -> Summary:
        sql = SQL_EXPORT_SUMMARY.format(where=self._where)
        row: Any = self._conn.execute(sql, self._args + self._args).fetchone()
        return int(row[0]), row[1], row[2], row[3]

    def count(self) -> int:
        sql = SQL_EXPORT_COUNT.format(where=self._where)
        row: Any = self._conn.execute(sql, self._args).fetchone()
        return int(row[0])

    def _pages(self) -> Iterator[list[Any]]:
        sql = SQL_EXPORT_PAGE.format(where=self._where)
        after = 0
        while True:
            page = self._conn.execute(sql, (after, *self._args, _PAGE)).fetchall()
            if not page:
                return
            after = page[-1][0]
            yield page

    def rows(self) -> Iterator[tuple[Any, ...]]:
        for page in self._pages():
            for row in page:
                yield tuple(row[:11])

    def jsonl_pages(self) -> Iterator[JsonlPage]:
        for page in self._pages():
            yield "".join(_line(row) for row in page).encode(), len(page), page[0][0], page[-1][0]

    def hash_at(self, position: int) -> str | None:
        row: Any = self._conn.execute(SQL_HASH_AT, (position,)).fetchone()
        return None if row is None else row[0]

    def bodies(self) -> Iterator[Recorded]:
        sql = SQL_EXPORT_BODIES.format(where=self._where)
        return (Recorded(*row) for row in self._conn.execute(sql, self._args).fetchall())

    def session_start(self, session_id: str) -> tuple[str, str] | None:
        row: Any = self._conn.execute(SQL_SESSION_START, (session_id,)).fetchone()
        return None if row is None else (row[0], row[1])


@contextmanager
def postgres_rows(log: PostgresLog, events: EventFilter) -> Iterator[PostgresRows]:
    """The export rows of ``events`` in ``log``, in one read-only snapshot."""
    with snapshot(log) as conn:
        yield PostgresRows(conn, events)


def export(
    log: PostgresLog,
    output: str | os.PathLike[str] | None,
    *,
    format: str | None = None,
    events: EventFilter | None = None,
    progress: Progress | None = None,
    stdout: IO[bytes] | None = None,
    clock: Clock = system_clock,
) -> ExportManifest:
    """``ledger.export.export`` for a PostgreSQL ledger, every format: to ``output``
    (created owner-only, complete or not at all; ``.gz`` compresses) or ``stdout``."""
    return export_rows(
        partial(postgres_rows, log), output, format=format, events=events,
        progress=progress, stdout=stdout, clock=clock,
    )  # fmt: skip
