"""Reading the log from outside: filtered listings, following new events, read-only SQL.

``EventFilter`` is the one description of "which events" shared by ``hermes-ledger
events`` and ``hermes-ledger export``; ``select_events`` and ``follow_events`` list
them; ``run_sql`` runs a user's query on a connection that cannot write.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any

import apsw
import apsw.ext

from hermes_ledger.ledger.clock import Clock, format_utc, system_clock
from hermes_ledger.ledger.errors import InvalidInputError, LedgerError, translate
from hermes_ledger.ledger.events import EVENT_TYPES
from hermes_ledger.ledger.records import Recorded
from hermes_ledger.ledger.schema import connect
from hermes_ledger.ledger.store import Ledger

__all__ = [
    "DEFAULT_SQL_TIMEOUT",
    "SQL_PRAGMA_LOOKUPS",
    "SQL_PRAGMA_READS",
    "TIME_FORMS",
    "TIME_HINT",
    "EventFilter",
    "QueryResult",
    "QueryTimeoutError",
    "follow",
    "follow_events",
    "list_events",
    "parse_time",
    "refuse_write",
    "run_sql",
    "select_events",
]

COLUMNS = "position, event_id, stream, version, type, session_id, data, meta, recorded_at, hash"

# A filtered page of the log: "{where}" is built by EventFilter.where() from fixed
# fragments; every value is a binding.
# event_bodies: each event whole, its personal fields merged in ("[erased]" once erased).
SQL_EVENTS_PAGE = (
    "SELECT {columns} FROM event_bodies WHERE position > ?{where} ORDER BY position LIMIT ?"
)
# The position of the N-th newest matching event (OFFSET N - 1), for ``--tail N``.
SQL_EVENTS_TAIL_START = (
    "SELECT position FROM events WHERE position > 0{where} ORDER BY position DESC LIMIT 1 OFFSET ?"
)
# How many matching events come after position ? (what a --limit left out).
SQL_EVENTS_COUNT_AFTER = "SELECT count(*) FROM events WHERE position > ?{where}"

# The events about one person (EventFilter.user; the one definition, shared by
# export --user and the erasure of a user): every event of the sessions they
# started (all roles: the whole conversation they opened, its usage and ends),
# and their own messages in other sessions. Both types read have one schema
# version, so ``data`` is read as stored (a later version of either must keep
# user_id where it is, or upcast).
SQL_USER_EVENTS = (
    "(session_id IN (SELECT session_id FROM events WHERE type = 'session_started'"
    " AND data ->> '$.source.user_id' = ?)"
    " OR (type = 'message_appended' AND data ->> '$.user_id' = ?))"
)

_RELATIVE = re.compile(r"^(\d+)\s*([smhdw])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
_DAYS_BACK = {"today": 0, "yesterday": 1}
_PAGE = 1000
TIME_FORMS = (
    "an ISO-8601 time (2026-11-22, 2026-11-22T09:30, with Z or an offset like +01:00), "
    "a duration ago (30s, 15m, 2h, 7d, 1w), now, today or yesterday"
)
"""What ``parse_time`` reads, for the hint of every time option."""
TIME_HINT = f"give {TIME_FORMS}"


def parse_time(text: str, *, now: Clock = system_clock, tz: tzinfo | None = None) -> str:
    """A time given on the command line, as UTC text in the format of ``recorded_at``
    (and of ``occurred_at``), so it compares with either column.

    The one reader of every time option (``--since``, ``--until``, ``--at``):
    ISO-8601 (``2026-11-22``, ``2026-11-22T09:30``, ``2026-11-22 09:30:05.25``, with
    ``Z`` or an offset); a time or date without a zone is in ``tz`` (default UTC).
    A duration ago: ``30s``, ``15m``, ``2h``, ``7d``, ``1w``. ``now``; ``today`` and
    ``yesterday`` (midnight starting that day in ``tz``). Anything else raises an
    InvalidInputError (a usage error) naming the text.
    """
    value = text.strip()
    zone = tz or UTC
    word = value.lower()
    match = _RELATIVE.match(value)
    try:
        if match:
            amount, unit = int(match.group(1)), _UNITS[match.group(2)]
            return format_utc(now() - timedelta(**{unit: amount}))
        if word == "now":
            return format_utc(now())
        if word in _DAYS_BACK:
            day = now().astimezone(zone).date() - timedelta(days=_DAYS_BACK[word])
            return format_utc(datetime.combine(day, datetime.min.time(), tzinfo=zone))
        moment = datetime.fromisoformat(value)
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=zone)
        return format_utc(moment)
    except (ValueError, OverflowError):
        raise InvalidInputError(f"cannot read {text!r} as a time", hint=TIME_HINT) from None


# The column each kind of time filter compares: business time (when it happened at
# the gateway; the default) or recorded time (when it was appended).
_TIME_COLUMN = {False: "occurred_at", True: "recorded_at"}


@dataclass(frozen=True)
class EventFilter:
    """Which events: all the given conditions hold (an empty filter matches all).

    ``since`` is inclusive and ``until`` exclusive, both UTC text (see
    ``parse_time``) compared with each event's business time (``occurred_at``:
    when it happened at the gateway, which for an imported session is long before
    it was recorded), or, with ``recorded``, with ``recorded_at`` (when it was
    appended to this log). ``from_position`` and ``to_position`` are both inclusive.
    """

    session_key: str | None = None
    session_id: str | None = None
    # One person (SQL_USER_EVENTS): every event of the sessions they started
    # (``session_started`` with their source), and the messages they sent
    # (``message_appended`` naming them as who spoke) in any other session.
    user: str | None = None
    types: tuple[str, ...] = ()
    since: str | None = None
    until: str | None = None
    from_position: int | None = None
    to_position: int | None = None
    recorded: bool = False

    def __post_init__(self) -> None:
        if self.user is not None and not self.user.strip():
            raise InvalidInputError(
                "the user id is empty", hint="give the user_id of one person (--user ID)"
            )
        unknown = sorted(set(self.types) - set(EVENT_TYPES))
        if unknown:
            raise InvalidInputError(
                f"unknown event type {unknown[0]!r}",
                hint=f"use one of: {', '.join(sorted(EVENT_TYPES))}",
            )
        for name in ("from_position", "to_position"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise LedgerError(f"positions start at 1, not {value}", hint="use --from 1")
        for name in ("since", "until"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise TypeError(f"{name} must be UTC time text (see parse_time)")

    @property
    def is_empty(self) -> bool:
        return replace(self, recorded=False) == EventFilter()

    @property
    def time_column(self) -> str:
        """The column ``since`` and ``until`` compare: ``occurred_at`` or ``recorded_at``."""
        return _TIME_COLUMN[self.recorded]

    def where(self) -> tuple[str, tuple[Any, ...]]:
        """``" AND …"`` conditions (possibly empty) and their bindings, in order."""
        parts: list[str] = []
        args: list[Any] = []
        if self.session_key is not None:
            parts.append("stream = ?")
            args.append(self.session_key)
        if self.session_id is not None:
            parts.append("session_id = ?")
            args.append(self.session_id)
        if self.user is not None:
            parts.append(SQL_USER_EVENTS)
            args.extend((self.user, self.user))
        if self.types:
            parts.append(f"type IN ({', '.join('?' for _ in self.types)})")
            args.extend(self.types)
        if self.since is not None:
            parts.append(f"{self.time_column} >= ?")
            args.append(self.since)
        if self.until is not None:
            parts.append(f"{self.time_column} < ?")
            args.append(self.until)
        if self.from_position is not None:
            parts.append("position >= ?")
            args.append(self.from_position)
        if self.to_position is not None:
            parts.append("position <= ?")
            args.append(self.to_position)
        return "".join(f" AND {p}" for p in parts), tuple(args)

    def describe(self) -> dict[str, Any]:
        """The conditions that are set, for manifests and messages (``recorded`` only
        when ``since`` or ``until`` is set: it says which time they are)."""
        timed = self.since is not None or self.until is not None
        return {
            name: list(value) if isinstance(value, tuple) else value
            for name, value in (
                ("session_key", self.session_key),
                ("session_id", self.session_id),
                ("user", self.user),
                ("types", self.types),
                ("since", self.since),
                ("until", self.until),
                ("recorded", self.recorded and timed),
                ("from_position", self.from_position),
                ("to_position", self.to_position),
            )
            if value not in (None, (), False)
        }


def _pages(
    led: Ledger, where: str, args: tuple[Any, ...], after: int, limit: int | None
) -> Iterator[Recorded]:
    """Keyset pagination: constant memory, no read transaction held between pages."""
    sql = SQL_EVENTS_PAGE.format(columns=COLUMNS, where=where)
    remaining = limit
    while remaining is None or remaining > 0:
        size = _PAGE if remaining is None else min(_PAGE, remaining)
        rows = led.query(sql, (after, *args, size))
        for row in rows:
            yield Recorded(*row)
        if len(rows) < size:
            return
        after = rows[-1][0]
        if remaining is not None:
            remaining -= len(rows)


def select_events(
    led: Ledger, events: EventFilter = EventFilter(), *, limit: int | None = None
) -> Iterator[Recorded]:
    """The events matching ``events``, in position order, at most ``limit`` of them."""
    if limit is not None and limit < 0:
        raise LedgerError(f"limit must be >= 0, not {limit}")
    where, args = events.where()
    return _pages(led, where, args, 0, limit)


def follow_events(
    led: Ledger,
    events: EventFilter = EventFilter(),
    *,
    after: int,
    poll_interval: float = 0.5,
    timeout: float | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> Iterator[Recorded]:
    """Matching events appended after position ``after``, as they arrive.

    Polls every ``poll_interval`` seconds until the caller stops iterating (Ctrl-C),
    ``timeout`` seconds have passed, or the filter's ``to_position`` is reached.
    """
    where, args = events.where()

    def read(seen: int, head: int) -> Iterator[Recorded]:
        return _pages(led, where + " AND position <= ?", (*args, head), seen, None)

    return follow(
        led.head, read, after=after, to_position=events.to_position,
        poll_interval=poll_interval, timeout=timeout, sleep=sleep,
    )  # fmt: skip


def follow(
    head: Callable[[], int],
    read: Callable[[int, int], Iterator[Recorded]],
    *,
    after: int,
    to_position: int | None = None,
    poll_interval: float = 0.5,
    timeout: float | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> Iterator[Recorded]:
    """The polling of ``follow_events``, for any backend: ``head()`` is the log's
    head position, ``read(seen, head)`` the matching events after ``seen`` up to
    ``head``. A log whose positions become visible in order (both backends) is
    followed without a gap or a repeat."""
    deadline = None if timeout is None else time.monotonic() + timeout
    seen = after
    while to_position is None or seen < to_position:
        now = head()
        if now > seen:
            yield from read(seen, now)
            seen = now
            continue
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            sleep(min(poll_interval, left))
        else:
            sleep(poll_interval)


def list_events(
    led: Ledger,
    events: EventFilter = EventFilter(),
    *,
    limit: int | None = None,
    tail: int | None = None,
    follow: bool = False,
    poll_interval: float = 0.5,
    timeout: float | None = None,
    sleep: Callable[[float], None] = time.sleep,
    on_more: Callable[[int], None] | None = None,
) -> Iterator[Recorded]:
    """What ``hermes-ledger events`` prints: the matching events up to the current
    head — the oldest ``limit`` of them, or the newest ``tail`` (still oldest
    first), not both — then, if ``follow``, those appended afterwards as they
    arrive (see ``follow_events``), with no event missed or repeated in between.

    When ``limit`` left matching events out, ``on_more(count)`` is called with how
    many, after the last event shown and before following.
    """
    if limit is not None and tail is not None:
        raise LedgerError(
            "give a limit (the oldest events) or a tail (the newest), not both",
            hint="use --limit N for the first N events, or --tail N for the last N",
        )
    if tail is not None and tail < 0:
        raise LedgerError(f"tail must be >= 0, not {tail}")
    head = led.head()
    to = head if events.to_position is None else min(events.to_position, head)
    now = replace(events, to_position=to) if to >= 1 and tail != 0 else None
    if now is not None and tail is not None:
        now = _newest(led, now, tail)
    if now is not None:
        shown, last = 0, 0
        for rec in select_events(led, now, limit=limit):
            shown, last = shown + 1, rec.position
            yield rec
        if limit is not None and shown == limit and on_more is not None:
            where, args = now.where()
            sql = SQL_EVENTS_COUNT_AFTER.format(where=where)
            left = led.query(sql, (last, *args))[0][0]
            if left:
                on_more(left)
    if follow:
        yield from follow_events(
            led, events, after=head, poll_interval=poll_interval, timeout=timeout, sleep=sleep
        )


def _newest(led: Ledger, events: EventFilter, count: int) -> EventFilter:
    """``events`` narrowed to its newest ``count`` events (``count`` >= 1)."""
    where, args = events.where()
    rows = led.query(SQL_EVENTS_TAIL_START.format(where=where), (*args, count - 1))
    return events if not rows else replace(events, from_position=rows[0][0])


# -- read-only SQL ---------------------------------------------------------------


@dataclass
class QueryResult:
    """The columns of a query and an iterator over its rows (tuples).

    Iterate the rows before closing the ledger the query ran on.
    """

    columns: list[str]
    rows: Iterator[tuple[Any, ...]]


# What the authorizer lets a query do: read, call functions, recurse, and the
# pragmas below. Anything else (INSERT, CREATE, ATTACH, VACUUM INTO, setting any
# pragma…) is refused when the statement is prepared, before it can run.
_ALLOWED = {
    apsw.SQLITE_SELECT,
    apsw.SQLITE_READ,
    apsw.SQLITE_FUNCTION,
    apsw.SQLITE_RECURSIVE,
}
# Pragmas that only report (``PRAGMA name``, no value), and those that describe
# or check the named table or index (``PRAGMA name(arg)``). docs/export.md lists
# the same names; no other pragma runs.
SQL_PRAGMA_READS = frozenset(
    {
        "application_id",
        "collation_list",
        "compile_options",
        "data_version",
        "database_list",
        "encoding",
        "foreign_keys",
        "freelist_count",
        "function_list",
        "module_list",
        "page_count",
        "page_size",
        "pragma_list",
        "schema_version",
        "user_version",
    }
)
SQL_PRAGMA_LOOKUPS = frozenset(
    {
        "foreign_key_check",
        "foreign_key_list",
        "index_info",
        "index_list",
        "index_xinfo",
        "integrity_check",
        "quick_check",
        "table_info",
        "table_list",
        "table_xinfo",
    }
)
DEFAULT_SQL_TIMEOUT = 30.0
# SQLite calls the progress handler every this many virtual-machine steps (well
# under a millisecond): it checks the deadline and lets Ctrl-C through.
_PROGRESS_STEPS = 10_000
_SQL_HINT = (
    'list the tables with `hermes-ledger sql "SELECT name FROM sqlite_schema WHERE type = '
    "'table'\"` and a table's columns with `hermes-ledger sql \"PRAGMA table_info(events)\"`"
)
_READ_ONLY_HINT = (
    "query with SELECT (e.g. SELECT type, count(*) FROM events GROUP BY type); "
    "the log changes only by appending events"
)
# What may follow the one statement: whitespace, semicolons and comments (an
# unterminated /* comment runs to the end, as SQLite reads it).
_NOTHING = re.compile(r"(?:\s+|;|--[^\n]*(?:\n|\Z)|/\*(?:[^*]|\*(?!/))*(?:\*/|\Z))*")


class QueryTimeoutError(LedgerError):
    """A ``run_sql`` query ran past its timeout and was stopped (nothing changed)."""

    hint = (
        "narrow the query (a WHERE or a LIMIT), or give it more time with "
        "--timeout SECONDS (0: no limit)"
    )

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        super().__init__(f"the query ran longer than {seconds:g} s and was stopped")


def _authorize(action: int, arg1: str | None, arg2: str | None, *_: object) -> int:
    if action == apsw.SQLITE_PRAGMA:
        name = (arg1 or "").lower()
        if name in SQL_PRAGMA_LOOKUPS or (name in SQL_PRAGMA_READS and arg2 is None):
            return apsw.SQLITE_OK
        return apsw.SQLITE_DENY
    return apsw.SQLITE_OK if action in _ALLOWED else apsw.SQLITE_DENY


def refuse_write(sql: str) -> LedgerError:
    """The error for a statement that would change the ledger (both backends)."""
    shown = " ".join(sql.split())
    if len(shown) > 60:
        shown = shown[:57] + "..."
    return LedgerError(
        f"the ledger is open read-only for queries; refused: {shown}",
        hint=_READ_ONLY_HINT,
    )


def _is_nothing(sql: str) -> bool:
    """Whether ``sql`` is only whitespace, semicolons and comments."""
    return _NOTHING.fullmatch(sql) is not None


def _query_connection(led: Ledger) -> apsw.Connection:
    """A new read-only connection to ``led``'s file, in ``query_only`` mode with the
    authorizer: the ledger's own connection (which may be the one that appends) is
    never changed."""
    conn, _version = connect(led.path, readonly=True)
    try:
        conn.execute("PRAGMA query_only = ON").fetchall()
        conn.authorizer = _authorize
    except BaseException:
        conn.close()
        raise
    return conn


def run_sql(
    led: Ledger,
    sql: str,
    params: Sequence[Any] | Mapping[str, Any] = (),
    *,
    timeout: float | None = DEFAULT_SQL_TIMEOUT,
) -> QueryResult:
    """Run one SQL statement on ``led``'s file and return its columns and rows.

    The query runs on a connection of its own, opened read-only, in ``query_only``
    mode and with an authorizer that refuses, when the statement is prepared,
    anything but reads (and the pragmas in ``SQL_PRAGMA_READS`` and
    ``SQL_PRAGMA_LOOKUPS``): a statement that would write raises a LedgerError
    saying so, and nothing changes. ``led`` itself is not touched, so a read-write
    ``Ledger`` keeps appending. ``params`` are the bindings (a sequence for ``?``,
    a mapping for ``:name``).

    ``timeout`` (seconds, from this call to the last row, the caller's time between
    rows included; ``None`` or 0: no limit) bounds the query: past it the query
    stops with QueryTimeoutError. A KeyboardInterrupt (Ctrl-C) stops it within
    milliseconds. Either way, and once the rows are exhausted or closed, the
    query's connection is closed, which ends its read of the WAL.
    """
    text = sql.strip()
    if _is_nothing(text):
        raise LedgerError("the query is empty", hint="e.g. SELECT count(*) FROM events")
    limit = timeout if timeout else None
    deadline = None if limit is None else time.monotonic() + limit
    conn = _query_connection(led)
    try:
        columns, cursor = _start(conn, text, params, deadline)
    except apsw.InterruptError:
        conn.close()
        raise QueryTimeoutError(limit or 0) from None
    except BaseException:
        conn.close()
        raise
    rows = _rows(conn, cursor, text, deadline, limit or 0, str(led.path))
    next(rows)  # started: closing the iterator (or dropping it) closes the connection
    return QueryResult(columns, rows)


def _start(
    conn: apsw.Connection,
    text: str,
    params: Sequence[Any] | Mapping[str, Any],
    deadline: float | None,
) -> tuple[list[str], apsw.Cursor]:
    """Check that ``text`` is one read, then execute it (its first step)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise LedgerError(
            "the query is not valid UTF-8 text (it holds bytes the terminal could not decode)",
            hint="check the shell's locale, or write the query in UTF-8",
        ) from None
    try:
        info = apsw.ext.query_info(conn, text)
    except apsw.AuthError:
        raise refuse_write(text) from None
    except apsw.Error as exc:
        raise LedgerError(f"the query failed: {exc}", hint=_SQL_HINT) from None
    if not _is_nothing(info.query_remaining or ""):
        raise LedgerError(
            "the query holds more than one statement",
            hint="run one statement per `hermes-ledger sql` call",
        )
    if not info.is_readonly:
        raise refuse_write(text)

    def progress() -> bool:
        # Python code runs here, so a pending Ctrl-C is raised here (SQLite stops).
        return deadline is not None and time.monotonic() > deadline

    conn.set_progress_handler(progress, _PROGRESS_STEPS)
    columns = [name for name, _decl in info.description or ()]
    try:
        return columns, conn.execute(text, params)
    except (apsw.AuthError, apsw.ReadOnlyError):
        raise refuse_write(text) from None
    except (apsw.BindingsError, KeyError) as exc:  # KeyError: a :NAME with no value
        raise LedgerError(
            f"the query's parameters do not match its placeholders: {exc}",
            hint="give one -p NAME VALUE per :NAME placeholder",
        ) from None
    except apsw.InterruptError:
        raise
    except apsw.Error as exc:
        raise LedgerError(f"the query failed: {exc}", hint=_SQL_HINT) from None


def _rows(
    conn: apsw.Connection,
    cursor: apsw.Cursor,
    text: str,
    deadline: float | None,
    limit: float,
    path: str,
) -> Iterator[tuple[Any, ...]]:
    """The rows of ``cursor`` (after one priming ``None``); closes ``conn`` at the end."""
    try:
        yield ()
        for row in cursor:
            yield row
            if deadline is not None and time.monotonic() > deadline:
                raise QueryTimeoutError(limit)
    except apsw.InterruptError:
        raise QueryTimeoutError(limit) from None
    except (apsw.AuthError, apsw.ReadOnlyError):
        raise refuse_write(text) from None
    except apsw.Error as exc:
        translate(exc, path=path)
    finally:
        conn.close(True)  # force: also when the caller stops between rows
